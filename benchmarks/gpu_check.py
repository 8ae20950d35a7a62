"""GPU check of the int8 ANN (issues 20, 31): the kernel's compile, its time and exactness at N = 10M, the served path.

One script, one call on a lent GPU (the `device` tool), bounded by ``--budget-s``. It writes its markdown tables
row by row, each flushed as it is measured (a killed run still leaves what it measured), to
``benchmarks/gpu/<date>-<gpu>.md`` (``--out-dir`` another folder, ``--out`` a file), the command line at the
top, and prints them. The default run (sections 0, 2b, 2c and 7) fits one call of 6 minutes:

0. **Compile.** The Triton kernel (``triton_kernel._bar_scan_kernel``) for every d the run uses, unfiltered and
   filtered, on a tiny index, before anything is timed: the first call's time (the JIT compile), the second's,
   and their difference, reported apart from every other cell.
2b. **Issue 16's grid at N = 10,000,000, d = 32** (clustered, normalised rows; the funnel's seeds as queries,
   each excluded, one all-zero query): batch 1 and 8 x K = 1,000, 10,000, 100,000. ``GpuIndex.search`` (what a
   KIND_GPU ``widefunnel_ann`` instance runs; device time, CUDA events, median), the torch fp16 peer (matmul +
   ``topk``), the HBM floor (index bytes over this run's measured copy bandwidth), the CPU int8 path on the
   machine's cores, equality key for key (ids and float32 score bits), and the kernel's passes over the index
   (a pass more per rescan: a query the bar left short, or whose buffer overflowed).
2c. **Filters and rescans at N = 10M**: the request's row bitmap at 30 %, 1 % and 0.5 % (fewer rows than K:
   padded), against the CPU's filtered scan, key for key, with the kernel's passes.
7. **The served path.** ``GpuIndex.search_dlpack`` (DLPack in and out, ids and exclusions mapped on the
   device, embeddings) against the CPU path at N = 1M; ``InProcessFunnel`` with its ANN on the GPU against the
   CPU funnel, from a small built repository carried to the GPU machine (``--prepare-carry``; without one that
   row says skipped). A 10M-item funnel cannot be built yet (RESULTS.md, "On a GPU").

``--sections`` picks others (``all``; 1 exactness at every k and 2 time at N = 1M, 3 and 5 the big N and batch
256, d = 64 and 128). Cells run in order of importance; a failing cell records ``ERROR: ...`` and the run goes
on; once the budget is spent the remaining cells say ``skipped: budget``. Exit status 1 if any exactness cell
is not exact or any cell failed. numba compiles the CPU scan in a child process meanwhile (its cache), so no
compile holds this process's GIL while the GPU is timed.

    .venv/bin/python benchmarks/gpu_check.py --prepare-carry benchmarks/out/gpu_carry --repository REPO  # here
    PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --out-dir $OUT --budget-s 270   # the GPU, timeout_s 360
    .venv/bin/python benchmarks/gpu_check.py --smoke             # here: the default run, tiny, interpreted
    .venv/bin/python benchmarks/gpu_check.py --interpret         # here: every section, tiny, interpreted

On the GPU machine (the `device` tool's ``run``) carry ``benchmarks/out/gpu_carry`` (an ignored folder, about
2 MiB: the funnel's repository and tritonclient's ``model_config_pb2.py``); copy the file it leaves under $OUT
into ``benchmarks/gpu/``.

``--smoke`` runs the default sections on CPU through ``TRITON_INTERPRET=1`` at N = 3,000, d = 32, K = 10, 100,
1,000 (``tests/unit/test_gpu_check.py``, about 15 s); ``--interpret`` every section at N = 1,000 and 2,000,
d = 16 and 48 (about 20 s). Their times mean nothing: they prove the script.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

if "--interpret" in sys.argv or "--smoke" in sys.argv:  # must precede the first import of triton
    os.environ["TRITON_INTERPRET"] = "1"

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the GPU machine runs this from a copy of the tree, the package not installed

from widefunnel.ann import filters, kernels, triton_kernel  # noqa: E402
from widefunnel.ann.index import Int8Index  # noqa: E402
from widefunnel.ann.quantize import quantize_rows  # noqa: E402
from widefunnel.ann.search import exact_search, int_mm_is_exact, prepare_index  # noqa: E402
from widefunnel.ann.triton_kernel import (  # noqa: E402
    GpuIndex,
    KernelTrace,
    gpu_search,
    kernel_settings,
    quantize_rows_torch,
    sample_rows,
    triton,
)

log = logging.getLogger("gpu_check")

DEFAULT_CARRY = ROOT / "benchmarks" / "out" / "gpu_carry"  # ignored by git: carried to the GPU machine by name
PB2 = "model_config_pb2.py"  # tritonclient's generated model-config module (the GPU machine has no tritonclient)
QUERY_ELEMS = 1 << 30  # a torch baseline scores at most this many (query, item) pairs at once (topk indexing)
REF_ROWS = 1 << 20  # float64 reference: item rows per block
SERVED_K = 200  # the default build's ann k (widefunnel/default.toml)
SECTIONS = ("0", "1", "2", "2b", "2c", "3", "5", "7")
DEVICE_SECTIONS = ("0", "2b", "2c", "7")  # the default run: one call of 6 minutes
OUT_DIR = ROOT / "benchmarks" / "gpu"


@dataclass(frozen=True)
class Grid:
    """What one run covers; the GPU defaults follow issue 20, ``--interpret`` shrinks them."""

    sizes: tuple[int, ...]
    dims: tuple[int, ...]
    batches: tuple[int, ...]
    ks: tuple[int, ...]  # the ks
    small_ks: tuple[int, ...]  # smaller ones (the old kernel's, which stopped at k = 32)
    exact_batch: int
    pad_sizes: tuple[int, ...]  # tiny indexes for the padding cells (k > N)
    copy_gib: float
    target_s: float  # timed calls per measurement: about this many seconds ...
    min_reps: int  # ... and at least this many (0: the first call only, for the interpreter)
    wide_dim: int = 32  # issue 16's cells: the build's embedding_dim ...
    wide_ks: tuple[int, ...] = (1000, 10_000, 100_000)  # ... its candidates per head ...
    wide_batches: tuple[int, ...] = (1, 8)  # ... and batches
    served_batches: tuple[int, ...] = (1, 32, 256)  # section 7's


GPU_GRID = Grid((1_000_000, 10_000_000), (64, 128), (1, 32, 256), (100, 10_000, 100_000), (10, 32), 32,
                (20, 1000), 2.0, 0.3, 3)
INTERPRET_GRID = Grid((1000, 2000), (16, 48), (1, 20), (50, 300, 900), (10, 32), 20, (20, 300), 0.01, 0.0, 0,
                      16, (50, 900), (1, 8))
SMOKE_GRID = Grid((3000,), (32,), (1, 8), (100, 1000), (10,), 8, (20,), 0.01, 0.0, 0, 32, (10, 100, 1000), (1, 8),
                  (1, 8))


# --------------------------------------------------------------------------------------------- the report
@dataclass
class Report:
    """Markdown rows to stdout and ``out``, flushed one by one; the budget clock; the run's verdict."""

    out: Path | None
    budget_s: float
    start: float = field(default_factory=time.monotonic)
    failed: list[str] = field(default_factory=list)
    columns: int = 0
    _file: TextIO | None = None

    def __post_init__(self) -> None:
        if self.out is not None:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.out, "w")  # noqa: SIM115 - held for the whole run, closed by close()

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.start)

    def line(self, text: str = "") -> None:
        print(text, flush=True)
        if self._file is not None:
            self._file.write(text + "\n")
            self._file.flush()

    def table(self, title: str, columns: list[str], note: str = "") -> None:
        self.line(f"\n### {title}\n")
        if note:
            self.line(note + "\n")
        self.columns = len(columns)
        self.line("| " + " | ".join(columns) + " |")
        self.line("|" + "---|" * len(columns))

    def row(self, key: list[str], fn: Callable[[], list[str]], exact: bool = False) -> list[str]:
        """One row: ``key`` cells, then ``fn()``'s; ``skipped: budget`` or ``ERROR: ...`` instead of failing.
        ``exact``: a value starting with "NO" fails the run."""
        n = self.columns - len(key)
        if self.left() <= 0:
            values = ["skipped: budget"]
        else:
            try:
                values = fn()
            except Exception as exc:  # one failing cell must not cost the rest of the run
                log.exception("cell %s failed", key)
                values = [f"ERROR: {type(exc).__name__}: {exc}"[:300]]
                self.failed.append(f"{key}: {values[0]}")
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            if exact and any(str(v).startswith("NO") for v in values):
                self.failed.append(f"{key}: not exact")
        values = [str(v).replace("|", "/").replace("\n", " ") for v in values]
        values += [""] * (n - len(values))
        self.line("| " + " | ".join(key + values) + " |")
        return values

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


class CpuWarmUp:
    """numba compiles the CPU scan's kernels on first use (about a minute on a fresh machine): a child process
    compiles them into numba's cache (``cache=True``) while the GPU cells run, so no compile holds this process's
    GIL while the GPU is timed; ``join`` waits for it, then loads them here (from the cache, or compiles them if
    the child could not)."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.done = False

    def start(self) -> None:
        code = "from widefunnel.ann import kernels, plan; plan.int_mm_is_exact(); kernels.warm_up()"
        try:
            self.proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        except OSError as exc:
            log.warning("numba warm-up child: %s", exc)

    def join(self) -> None:
        if self.done:
            return
        if self.proc is not None:
            self.proc.wait()
        t0 = time.monotonic()
        int_mm_is_exact()
        kernels.warm_up()
        log.info("CPU kernels loaded in %.1f s", time.monotonic() - t0)
        self.done = True

    def close(self) -> None:
        """Stop the child if no cell needed the CPU scan before the run ended."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait()


# --------------------------------------------------------------------------------------------- measuring
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, grid: Grid, events: bool = True
          ) -> tuple[float, float | None]:
    """-> (median seconds per call, peak extra device MiB of one call; None off the GPU).

    A first call (it compiles; its peak memory is the one reported), a second to size the run, then enough
    calls for about ``grid.target_s`` (``grid.min_reps`` to 30; 2 for calls over a second; with ``min_reps``
    0 the first call's wall time is all). ``events``: CUDA
    events around each call (device time); else the wall clock to a synchronize, what a caller waits."""
    peak = None
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    first = time.perf_counter() - t0
    if device.type == "cuda":
        peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    if grid.min_reps == 0:
        return first, peak
    t0 = time.perf_counter()
    fn()
    sync(device)
    once = time.perf_counter() - t0
    reps = 2 if once > 1.0 else int(min(30, max(grid.min_reps, grid.target_s / max(once, 1e-6))))
    times = []
    for _ in range(reps):
        if device.type == "cuda" and events:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            sync(device)
            times.append(time.perf_counter() - t0)
    return float(np.median(times)), peak


def copy_bandwidth(device: torch.device, grid: Grid) -> float:
    """Bytes/s of a device-to-device copy (read + write counted), best of 5: the HBM rate a scan can reach."""
    n = int(grid.copy_gib * 2**30) // 4
    a, b = torch.ones(n, dtype=torch.float32, device=device), torch.empty(n, dtype=torch.float32, device=device)
    best = min(timed(lambda: b.copy_(a), device, grid)[0] for _ in range(5))
    return 2 * 4 * n / best


def ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1e3:.3f}"


def mib(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f}"


# ------------------------------------------------------------------------------------------------ the data
@dataclass
class Dataset:
    """One fresh index, made on the device (quantised with the torch twin of ``quantize_rows``, rows sorted
    by descending scale as ``build_index`` sorts them); the CPU ``Int8Index`` of the same rows on demand."""

    n: int
    d: int
    kind: str
    x: torch.Tensor  # float32 [N, d], the unquantised vectors, rows in index order (float64 reference)
    gpu: GpuIndex
    warm: CpuWarmUp
    _cpu: Int8Index | None = None
    _x16: torch.Tensor | None = None

    def cpu(self) -> Int8Index:
        if self._cpu is None:
            self.warm.join()  # the CPU kernels' compile, started in the background at start-up
            g = self.gpu
            self._cpu = Int8Index(codes=g.codes.cpu().numpy(), scales=g.scales.cpu().numpy(), ids=g.ids.cpu().numpy(),
                                  manifest={"dim": self.d, "count": self.n, "tower_fingerprint": "gpu-check"})
            prepare_index(self._cpu)
        return self._cpu

    @property
    def x16(self) -> torch.Tensor:
        if self._x16 is None:
            self._x16 = self.x.half()
        return self._x16


def make_dataset(n: int, d: int, kind: str, seed: int, device: torch.device, warm: CpuWarmUp) -> Dataset:
    """``random``: standard normal. ``clustered``: N/100 unit centres plus noise, normalised (as bench_ann), so
    scores crowd together. Both: rows 10 to 13 duplicate row 0 (exact ties); ids a permutation, not the rows."""
    g = torch.Generator(device=device).manual_seed(seed)
    if kind == "random":
        x = torch.randn(n, d, generator=g, device=device)
    else:
        centres = torch.randn(max(1, n // 100), d, generator=g, device=device)
        x = centres[torch.randint(0, len(centres), (n,), generator=g, device=device)]
        x += 0.6 * torch.randn(n, d, generator=g, device=device)
        x /= x.norm(dim=1, keepdim=True)
    x[10:14] = x[0]
    codes, scales = quantize_rows_torch(x)
    order = torch.sort(scales, descending=True, stable=True).indices
    x, codes, scales = x[order].contiguous(), codes[order].contiguous(), scales[order].contiguous()
    ids = (torch.randperm(n, generator=g, device=device) * 3 + 5).to(torch.int64)
    sorted_ids, rows_by_id = torch.sort(ids, stable=True)
    return Dataset(n, d, kind, x, GpuIndex(codes, scales, ids, sorted_ids, rows_by_id), warm)


def subset(ds: Dataset, n: int) -> Dataset:
    """The first ``n`` rows of a dataset (still scale-sorted): a tiny index for the padding cells."""
    g = ds.gpu
    sorted_ids, rows_by_id = torch.sort(g.ids[:n], stable=True)
    return Dataset(n, ds.d, ds.kind, ds.x[:n], GpuIndex(g.codes[:n], g.scales[:n], g.ids[:n], sorted_ids, rows_by_id),
                   ds.warm)


def exact_queries(ds: Dataset, b: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """-> (queries float32 [b, d] on the device, exclude ids [b]). Every 4th query is a stored item's own
    vector with that item excluded (the funnel's seed); query 1 is all zeros (every score ties at 0); query 3
    excludes an id that is not in the index; the rest are fresh vectors of the data's kind."""
    g = torch.Generator(device=ds.x.device).manual_seed(seed)
    rows = torch.randint(0, ds.n, (b,), generator=g, device=ds.x.device)
    q = ds.x[rows] + 0.5 * torch.randn(b, ds.d, generator=g, device=ds.x.device)
    ex = np.full(b, -1, np.int64)
    seeds = np.arange(0, b, 4)
    q[seeds] = ds.x[rows[seeds]]
    ex[seeds] = ds.gpu.ids[rows[seeds]].cpu().numpy()
    if b > 1:
        q[1] = 0.0
    if b > 3:
        ex[3] = int(ds.gpu.ids.max()) + 1
    return q.contiguous(), ex


def float64_topk(ds: Dataset, q: torch.Tensor, ex_rows: torch.Tensor, k: int) -> torch.Tensor:
    """Rows of the float64 top-k of the unquantised vectors (the excluded row left out), blocked."""
    q64 = q.double()
    best_s = torch.empty((len(q), 0), dtype=torch.float64, device=q.device)
    best_r = torch.empty((len(q), 0), dtype=torch.int64, device=q.device)
    for r0 in range(0, ds.n, REF_ROWS):
        x = ds.x[r0:r0 + REF_ROWS].double()
        rows = torch.arange(r0, r0 + len(x), device=q.device)
        s = (q64 @ x.T).masked_fill_(rows[None, :] == ex_rows[:, None], -float("inf"))
        s, r = torch.cat([best_s, s], 1), torch.cat([best_r, rows.expand(len(q), -1)], 1)
        top = torch.topk(s, min(k, s.shape[1]), dim=1)
        best_s, best_r = top.values, r.gather(1, top.indices)
    return best_r


# ------------------------------------------------------------------------------------------- the torch ways
def torch_int8_topk(codes: torch.Tensor, scales: torch.Tensor, q: torch.Tensor, k: int) -> torch.Tensor:
    """What one would write with torch alone, int8: quantise, ``_int_mm`` (cuBLASLt wants > 16 rows and
    multiples of 8: the batch is zero-padded), scale, ``topk``; chunks of queries bound the score matrix."""
    qc, qs = quantize_rows_torch(q)
    n = codes.shape[0]
    step = max(1, QUERY_ELEMS // n)
    out = []
    for b0 in range(0, len(qc), step):
        chunk = qc[b0:b0 + step]
        m = max(24, -(-len(chunk) // 8) * 8)
        padded = torch.nn.functional.pad(chunk, (0, 0, 0, m - len(chunk)))
        s = torch._int_mm(padded, codes.T)[:len(chunk)].float() * scales * qs[b0:b0 + step, None]
        out.append(torch.topk(s, k, dim=1).indices)
    return torch.cat(out)


def torch_fp16_topk(x16: torch.Tensor, q: torch.Tensor, k: int) -> torch.Tensor:
    """What one would write with torch alone, fp16: the float vectors in half precision, matmul, ``topk``."""
    n = x16.shape[0]
    step = max(1, QUERY_ELEMS // n)
    return torch.cat([torch.topk(q[b0:b0 + step].half() @ x16.T, k, dim=1).indices
                      for b0 in range(0, len(q), step)])


# ----------------------------------------------------------------------------------------------- the cells
def same(got: tuple[np.ndarray, np.ndarray], want_ids: np.ndarray, want_scores: np.ndarray) -> str:
    """"yes" when ids and float32 score bits equal the CPU's, else "NO (rows differing)"."""
    ids, scores = got
    if ids.shape != want_ids.shape:
        return f"NO (shape {ids.shape} vs {want_ids.shape})"
    bad = ~((ids == want_ids) & (scores.view(np.int32) == want_scores.view(np.int32))).all(axis=1)
    return "yes" if not bad.any() else f"NO ({int(bad.sum())} of {len(bad)} rows)"


def recall(ds: Dataset, q: torch.Tensor, ex: np.ndarray, got_ids: torch.Tensor, k: int) -> str:
    """Mean recall@k of the int8 result against the float64 top-k (the all-zero query left out)."""
    ref_ids = ds.gpu.ids[float64_topk(ds, q, ds.gpu.exclude_rows(torch.from_numpy(ex)), k)]
    keep = [i for i in range(len(q)) if bool(q[i].any())]
    hits = [int(torch.isin(got_ids[i], ref_ids[i]).sum()) / max(1, ref_ids.shape[1]) for i in keep]
    return f"{np.mean(hits):.4f}" if hits else "—"


@dataclass
class GpuSide:
    """An exactness cell's device half: its queries and each path's (ids, scores) on the host, or the error
    of a forced kernel (a measurement, not the served path: its failure is noted, not fatal)."""

    q: np.ndarray
    ex: np.ndarray
    kernel_default: bool
    found: dict[str, tuple[np.ndarray, np.ndarray] | str]
    recall: str


def gpu_side(ds: Dataset, b: int, k: int, grid: Grid, seed: int) -> GpuSide:
    """The default path (the kernel, for any k, where triton is importable) and the torch fallback forced;
    recall@k of the default path."""
    q, ex = exact_queries(ds, b, seed)
    ex_t = torch.from_numpy(ex)
    kk = min(k, ds.n)
    kernel_default = triton is not None

    def run(use_kernel: bool | None) -> tuple[np.ndarray, np.ndarray]:
        out = ds.gpu.search(q, k, ex_t, use_kernel=use_kernel)
        return out["CANDIDATE_ID"].cpu().numpy(), out["CANDIDATE_SCORE"].cpu().numpy()

    found: dict[str, tuple[np.ndarray, np.ndarray] | str] = {"default": run(None)}
    if kernel_default:
        found["fallback"] = run(False)
    rec = recall(ds, q, ex, torch.from_numpy(found["default"][0]).to(q.device), kk)
    return GpuSide(q.cpu().numpy(), ex, kernel_default, found, rec)


def exact_cell(ds: Dataset, b: int, k: int, grid: Grid, seed: int, side: GpuSide | Exception | None = None
               ) -> list[str]:
    """GPU (the default path, and the fallback forced) vs the CPU int8 path, key for key.
    ``side``: the device half, computed earlier (while the CPU kernels compiled), or the error it raised."""
    if isinstance(side, Exception):
        raise side
    side = side or gpu_side(ds, b, k, grid, seed)
    want_ids, want_scores = exact_search(ds.cpu(), side.q, k, side.ex)
    verdict = {name: got if isinstance(got, str) else same(got, want_ids, want_scores)
               for name, got in side.found.items()}
    return [str(b), f"{k:,}", "kernel" if side.kernel_default else "fallback", verdict["default"],
            verdict["default"] if side.kernel_default else verdict.get("kernel", "—"),
            verdict["fallback"] if side.kernel_default else verdict["default"], str(int((want_ids < 0).sum())),
            side.recall]


def filtered_cell(ds: Dataset, b: int, k: int, share: float, seed: int) -> list[str]:
    """Issue 18 on the device: a per-query row bitmap (``share`` of the rows admissible, one query admitting
    nothing) through the kernel and the fallback, against the CPU's filtered scan, key for key."""
    q, ex = exact_queries(ds, b, seed)
    mask = np.random.default_rng(seed).random((b, ds.n)) < share
    mask[min(2, b - 1)] = False
    allow = filters.pack_rows(mask)
    want_ids, want_scores = exact_search(ds.cpu(), q.cpu().numpy(), k, ex, allow=allow)
    verdict = {}
    for name, use_kernel in (("kernel", True), ("fallback", False)):
        if use_kernel and triton is None:
            verdict[name] = "—"
            continue
        out = ds.gpu.search(q, k, torch.from_numpy(ex), use_kernel=use_kernel, allow=torch.from_numpy(allow))
        verdict[name] = same((out["CANDIDATE_ID"].cpu().numpy(), out["CANDIDATE_SCORE"].cpu().numpy()),
                             want_ids, want_scores)
    return [str(b), f"{k:,}", f"filtered {share:.0%}", verdict["kernel"] if verdict["kernel"] != "—"
            else verdict["fallback"], verdict["kernel"], verdict["fallback"], str(int((want_ids < 0).sum())), "—"]


def timing_cell(ds: Dataset, b: int, k: int, grid: Grid, bw: float, seed: int, report: Report) -> list[str]:
    """Device time of one search of ``b`` plain queries: the default path, the torch fallback forced, torch int8
    and fp16 + topk; the HBM floor; peak extra memory of a call."""
    g = ds.gpu
    dev = g.device
    q = torch.randn(b, ds.d, generator=torch.Generator(device=dev).manual_seed(seed), device=dev)
    floor = ds.n * (ds.d + 4) / bw  # int8 codes + float32 scale per row, read once
    t_auto, mem = timed(lambda: gpu_search(g.codes, g.scales, q, k), dev, grid)

    def maybe(fn: Callable[[], object]) -> tuple[str, float | None, float | None]:
        if report.left() <= 0:
            return "skipped: budget", None, None
        try:
            t, m = timed(fn, dev, grid)
            return ms(t), t, m
        except Exception as exc:  # a baseline torch cannot run here (e.g. _int_mm's shape rules) is a note
            log.warning("cell %s x %s: %s", b, k, exc)
            return f"ERROR: {type(exc).__name__}: {str(exc)[:80]}", None, None

    fallback = ("—", None, None)
    if triton is not None and b <= 32:
        fallback = maybe(lambda: gpu_search(g.codes, g.scales, q, k, use_kernel=False))
    i8 = maybe(lambda: torch_int8_topk(g.codes, g.scales, q, k))
    f16 = maybe(lambda: torch_fp16_topk(ds.x16, q, k))
    torch_best = min((t for _, t, _ in (i8, f16) if t is not None), default=None)
    path = "kernel" if triton is not None else "fallback"
    ahead = "—" if torch_best is None else f"{torch_best / t_auto:.2f}x"
    return [str(b), f"{k:,}", path, ms(t_auto), fallback[0], i8[0], f16[0], ms(floor), f"{t_auto / floor:.1f}x",
            ahead, f"{mib(mem)} / {mib(f16[2])}"]


def wide_cell(ds: Dataset, b: int, k: int, grid: Grid, bw: float, seed: int, report: Report) -> list[str]:
    """Issue 16 on the device: one head's retrieval of K candidates per seed, as the funnel's ANN step runs it
    (seeds' own vectors, the seed excluded): ``GpuIndex.search`` against the torch fp16 peer, the HBM floor
    and the CPU int8 path on this machine's cores (``exact_search``), with equal keys."""
    g = ds.gpu
    dev = g.device
    q, ex = exact_queries(ds, b, seed)
    ex_t = torch.from_numpy(ex)
    floor = ds.n * (ds.d + 4) / bw
    t_gpu, mem = timed(lambda: g.search(q, k, ex_t), dev, grid)
    f16 = "skipped: budget"
    if report.left() > 0:
        f16 = ms(timed(lambda: torch_fp16_topk(ds.x16, q, min(k, ds.n)), dev, grid)[0])
    q_np = q.cpu().numpy()
    index = ds.cpu()
    t_cpu = timed(lambda: exact_search(index, q_np, k, ex), torch.device("cpu"), grid)[0]
    got = g.search(q, k, ex_t)
    ok = same((got["CANDIDATE_ID"].cpu().numpy(), got["CANDIDATE_SCORE"].cpu().numpy()),
              *exact_search(index, q_np, k, ex))
    return [str(b), f"{k:,}", ms(t_gpu), f16, ms(floor), f"{t_gpu / floor:.1f}x", ms(t_cpu),
            f"{t_cpu / t_gpu:.1f}x", mib(mem), ok, passes(g, q, k, ex_t)]


def passes(g: GpuIndex, q: torch.Tensor, k: int, ex_t: torch.Tensor, allow: torch.Tensor | None = None) -> str:
    """The kernel's passes over the index for one search, and why any was a rescan (``KernelTrace``)."""
    if triton is None:
        return "— (fallback)"
    trace = KernelTrace()
    gpu_search(g.codes, g.scales, q, k, g.exclude_rows(ex_t), allow=allow, trace=trace)
    why = [f"{n} {what}" for n, what in ((trace.short, "short"), (trace.overflowed, "overflowed")) if n]
    return f"{trace.passes}" + (f" ({', '.join(why)})" if why else "")


def filtered_wide_cell(ds: Dataset, b: int, k: int, share: float | None, bw: float, grid: Grid, seed: int
                       ) -> list[str]:
    """Section 2c: the funnel's seeds under a row bitmap admitting ``share`` of the rows at random (the same for
    the whole batch, as a shared genre or price filter), or (None) exactly the rows the kernel samples for its
    bar, which misleads it, against the CPU's filtered scan, key for key."""
    g = ds.gpu
    q, ex = exact_queries(ds, b, seed)
    ex_t = torch.from_numpy(ex)
    if share is None:
        mask = np.zeros(ds.n, bool)
        mask[sample_rows(ds.n).numpy()] = True
    else:
        mask = np.random.default_rng(seed).random(ds.n, dtype=np.float32) < share
    allow_np = filters.pack_rows(np.broadcast_to(mask, (b, ds.n)))
    allow = torch.from_numpy(allow_np.view(np.int64)).to(g.device)
    t_gpu, _ = timed(lambda: g.search(q, k, ex_t, allow=allow), g.device, grid)
    got = g.search(q, k, ex_t, allow=allow)
    want = exact_search(ds.cpu(), q.cpu().numpy(), k, ex, allow=allow_np)
    ok = same((got["CANDIDATE_ID"].cpu().numpy(), got["CANDIDATE_SCORE"].cpu().numpy()), *want)
    what = "the sampled rows" if share is None else f"{share:.1%}"
    return [str(b), f"{k:,}", f"{what} ({int(mask.sum()):,} rows)", ms(t_gpu), ms(ds.n * (ds.d + 4) / bw),
            str(int((want[0] < 0).sum())), ok, passes(g, q, k, ex_t, allow)]


def compile_cell(device: torch.device, d: int, filtered: bool) -> list[str]:
    """Section 0: the kernel's JIT compile for ``d`` (unfiltered or filtered) on a tiny index, apart from every
    timed cell: the first call (compile + run), the second (run), the difference. Sizes are not specialised on,
    so these compiles serve every N, batch and k the run meets."""
    if triton is None:
        return ["skipped: triton absent (the torch fallback serves)"]
    g = torch.Generator(device=device).manual_seed(d)
    n = 3 * 256 + 5
    codes = torch.randint(-127, 128, (n, d), generator=g, device=device).to(torch.int8)
    scales = torch.rand(n, generator=g, device=device) + 0.5
    q = torch.randn(2, d, generator=g, device=device)
    allow = torch.full((2, -(-n // 64)), -1, dtype=torch.int64, device=device) if filtered else None
    gpu_search(codes, scales, q, 10, allow=allow, use_kernel=False)  # torch's own first calls, not the kernel's

    def call() -> float:
        t0 = time.perf_counter()
        gpu_search(codes, scales, q, 10, allow=allow, use_kernel=True)
        sync(device)
        return time.perf_counter() - t0

    first, second = call(), call()
    return [str(d), "yes" if filtered else "no", f"{first:.2f}", ms(second), f"{first - second:.2f}"]


def quantize_cell(ds: Dataset) -> list[str]:
    """The query quantisation twin: ``quantize_rows_torch`` on the device against numpy's ``quantize_rows``,
    bit for bit, over the dataset's unquantised rows (as queries)."""
    codes, scales = quantize_rows_torch(ds.x)
    want_codes, want_scales = quantize_rows(ds.x.cpu().numpy())
    bad = ~((codes.cpu().numpy() == want_codes).all(axis=1)
            & (scales.cpu().numpy().view(np.int32) == want_scales.view(np.int32)))
    return [f"{ds.n:,} rows", "—", "—", "—", "yes" if not bad.any() else f"NO ({int(bad.sum()):,} rows)"]


def served_cell(ds: Dataset, b: int, k: int, grid: Grid, seed: int) -> list[str]:
    """``GpuIndex.search_dlpack`` as a KIND_GPU instance calls it (query and outputs as DLPack capsules,
    EXCLUDE_ID as numpy) vs the CPU path a KIND_CPU instance runs (``search`` + ``dequantized``); wall time
    to results ready, and equality of ids, score bits and embeddings."""
    import torch.utils.dlpack as dl

    from widefunnel.ann.query import search
    from widefunnel.ann.search import dequantized

    index = ds.cpu()
    gi = GpuIndex.from_index(index, ds.gpu.device)  # as the plugin's initialize does
    q, ex = exact_queries(ds, b, seed)
    q_np = q.cpu().numpy()
    dev = gi.device

    def gpu_call() -> dict[str, torch.Tensor]:
        outs = gi.search_dlpack(dl.to_dlpack(q), k, ex, True, 12345)
        return {name: dl.from_dlpack(capsule) for name, capsule in outs}  # the next step takes them

    def cpu_call() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ids, scores = search(index, q_np, k, ex)
        return ids, scores, dequantized(index, ids)

    t_gpu, _ = timed(gpu_call, dev, grid, events=False)
    t_cpu, _ = timed(cpu_call, torch.device("cpu"), grid)
    got, (ids, scores, emb) = gpu_call(), cpu_call()
    ok = same((got["CANDIDATE_ID"].cpu().numpy(), got["CANDIDATE_SCORE"].cpu().numpy()), ids, scores)
    if ok == "yes" and not np.array_equal(got["CANDIDATE_EMB"].cpu().numpy(), emb):
        ok = "NO (embeddings)"
    if ok == "yes" and not bool((got["FINGERPRINT"] == 12345).all()):
        ok = "NO (fingerprint)"
    return [str(b), str(k), ms(t_gpu), ms(t_cpu), ok]


def load_model_config_pb2(carry: Path | None) -> str | None:
    """Make ``widefunnel.model_configs`` importable: tritonclient's ``model_config_pb2``, or the copy carried
    (the GPU machine has no tritonclient). -> None, or why the funnel cannot run."""
    try:
        import tritonclient.grpc.model_config_pb2  # noqa: F401
        return None
    except ImportError:
        pass
    path = None if carry is None else carry / PB2
    if path is None or not path.is_file():
        return f"tritonclient absent and no {PB2} carried (--prepare-carry)"
    for name in ("tritonclient", "tritonclient.grpc"):
        sys.modules.setdefault(name, types.ModuleType(name))
    spec = importlib.util.spec_from_file_location("tritonclient.grpc.model_config_pb2", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    sys.modules["tritonclient.grpc"].model_config_pb2 = module
    return None


def funnel_cells(report: Report, repository: Path | None, carry: Path | None, device: torch.device,
                 batches: tuple[int, ...], grid: Grid) -> None:
    """``InProcessFunnel`` with the ANN on ``device`` vs on the CPU: recommend() wall time and equal answers."""
    why = "no built repository (--repository, or carry one with --prepare-carry)" if repository is None else None
    if why is None and not (repository / "widefunnel" / "config.pbtxt").is_file():
        why = f"{repository} is not a built repository"
    try:
        why = why or load_model_config_pb2(carry)
        if why is None:
            from widefunnel.evaluation.pipeline import InProcessFunnel
    except Exception as exc:  # e.g. no protobuf or onnxruntime on the GPU machine
        why = f"cannot import the pipeline: {type(exc).__name__}: {exc}"
    if why is not None:
        report.row(["funnel", "—"], lambda: [f"skipped: {why}"])
        return

    funnels: dict[str, InProcessFunnel] = {}

    def cell(b: int) -> list[str]:
        if not funnels:
            funnels["cpu"], funnels["gpu"] = InProcessFunnel(repository), InProcessFunnel(repository, str(device))
        cpu, gpu = funnels["cpu"], funnels["gpu"]
        catalogue = np.sort(cpu.indexes["engagement"].ids)
        seeds = catalogue[np.linspace(0, len(catalogue) - 1, b).astype(np.int64)][:, None]
        t_gpu, _ = timed(lambda: gpu.recommend(seeds), device, grid, events=False)
        t_cpu, _ = timed(lambda: cpu.recommend(seeds), torch.device("cpu"), grid)
        a, w = gpu.recommend(seeds), cpu.recommend(seeds)
        ok = all(np.array_equal(getattr(a, f), getattr(w, f)) for f in ("item_id", "score", "source_head"))
        k = cpu.ann_params["engagement"]["k"]
        n = cpu.indexes["engagement"].count
        return [f"{n:,} items, k = {k}, ANN heads on {device.type}: {sorted(gpu.gpu_indexes)}", ms(t_gpu),
                ms(t_cpu), "yes" if ok else "NO"]

    for b in batches:
        report.row(["funnel (InProcessFunnel.recommend)", str(b)], lambda b=b: cell(b), exact=True)


# -------------------------------------------------------------------------------------------------- the run
def output_path(folder: Path, gpu_name: str) -> Path:
    """``folder/<date>-<gpu>.md``, with -2, -3, ... when a run of the day already wrote one."""
    stem = f"{time.strftime('%Y-%m-%d')}-{re.sub(r'[^a-z0-9]+', '-', gpu_name.lower()).strip('-')}"
    path, i = folder / f"{stem}.md", 1
    while path.exists():
        i += 1
        path = folder / f"{stem}-{i}.md"
    return path


def environment(device: torch.device, bw: float, args: argparse.Namespace) -> list[str]:
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        dev = (f"{p.name}, {p.total_memory / 2**30:.0f} GiB, compute capability {p.major}.{p.minor}, "
               f"CUDA {torch.version.cuda}")
    else:
        dev = "CPU through the Triton interpreter (times mean nothing)"
    versions = [f"python {platform.python_version()}", f"torch {torch.__version__}",
                f"triton {getattr(triton, '__version__', 'absent')}", f"numpy {np.__version__}"]
    for name in ("numba", "onnxruntime"):
        try:
            versions.append(f"{name} {__import__(name).__version__}")
        except ImportError:
            versions.append(f"{name} absent")
    return [f"- device: {dev}", f"- {', '.join(versions)}; {os.cpu_count()} CPUs",
            f"- device copy bandwidth (read + write, best of 5): {bw / 1e9:,.0f} GB/s",
            f"- kernel: {kernel_settings()}", f"- budget {args.budget_s:.0f} s; seed {args.seed}"]


def prepare_carry(target: Path, repository: Path | None) -> int:
    """Here, not on the GPU machine: fill the carried folder with tritonclient's model-config module and a
    copy of a built repository (without caches), for the funnel cells."""
    import tritonclient.grpc.model_config_pb2 as pb2

    if repository is None or not (repository / "widefunnel" / "config.pbtxt").is_file():
        print("--prepare-carry needs --repository: a built repository (e.g. `widefunnel build`'s)")
        return 2
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy2(pb2.__file__, target / PB2)
    copy = target / "model_repository"
    if repository.resolve() != copy.resolve():
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(repository, copy, ignore=shutil.ignore_patterns("__pycache__"))
    size = sum(f.stat().st_size for f in target.rglob("*") if f.is_file())
    print(f"{target}: {size / 2**20:.1f} MiB (the device tool carries at most 64 MiB)")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="the markdown file, written row by row (default: OUT_DIR/<date>-<gpu>.md)")
    ap.add_argument("--out-dir", type=Path, default=OUT_DIR,
                    help=f"its folder when --out is not given (default {OUT_DIR.relative_to(ROOT)}; on the GPU $OUT)")
    ap.add_argument("--budget-s", type=float, default=270.0, help="stop starting cells after this many seconds")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--interpret", action="store_true", help="CPU via the Triton interpreter, tiny sizes")
    ap.add_argument("--smoke", action="store_true",
                    help="the default sections on CPU via the Triton interpreter, N = 3,000: proves the script")
    ap.add_argument("--carry", type=Path, default=DEFAULT_CARRY if DEFAULT_CARRY.is_dir() else None,
                    help=f"folder from --prepare-carry (default {DEFAULT_CARRY.relative_to(ROOT)} if present)")
    ap.add_argument("--repository", type=Path, help="a built repository (default: the carried one)")
    ap.add_argument("--prepare-carry", type=Path, metavar="DIR", help="fill DIR for the GPU machine and exit")
    ap.add_argument("--sizes", type=int, nargs="+", help="N of the datasets (default 1M 10M)")
    ap.add_argument("--dims", type=int, nargs="+")
    ap.add_argument("--tile", type=int, nargs=2, metavar=("BN", "WARPS"),
                    help="the kernel's rows per tile and warps (default: triton_kernel's _BN and _WARPS)")
    ap.add_argument("--sections", nargs="+", choices=(*SECTIONS, "all"), default=list(DEVICE_SECTIONS),
                    help="which tables to run (default 0 2b 2c 7: 0 the kernel's compile, 1-2 exact and timed at "
                         "the small N, 2b issue 16's grid at the big N, 2c its filters, 3 the big N (3 and 4), 5 the "
                         "big batch and ks (5 and 6), 7 the served path; all: every one)")
    args = ap.parse_args(argv)
    command = "python3 benchmarks/gpu_check.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    if args.prepare_carry is not None:
        return prepare_carry(args.prepare_carry, args.repository)
    if args.tile:  # before the first compile: the tile is a compile-time constant of the kernel
        triton_kernel._BN, triton_kernel._WARPS = args.tile
    if args.interpret or args.smoke:
        device, grid = torch.device("cpu"), SMOKE_GRID if args.smoke else INTERPRET_GRID
    elif torch.cuda.is_available():
        device, grid = torch.device("cuda"), GPU_GRID
    else:
        print("no CUDA device: run this on a GPU machine, or pass --smoke / --interpret (tiny sizes, the Triton "
              "interpreter) to check the script")
        return 2
    sizes, dims = tuple(args.sizes or grid.sizes), tuple(args.dims or grid.dims)
    sections = set(SECTIONS) if "all" in args.sections else set(args.sections)
    repository = args.repository or (args.carry / "model_repository" if args.carry is not None else None)
    if repository is not None and not repository.is_dir():
        repository = None

    # numba compiles the CPU scan's kernels in a child process (into its cache) from the start, while the GPU
    # cells run; joined before the first CPU search
    warm = CpuWarmUp()
    warm.start()
    gpu_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "interpreter"
    out = args.out or output_path(args.out_dir, gpu_name)
    report = Report(out, args.budget_s)
    report.line(f"# GPU check, {time.strftime('%Y-%m-%d %H:%M')} UTC{time.strftime('%z')}, {gpu_name}\n")
    report.line(f"    {command}\n")
    bw = copy_bandwidth(device, grid)
    report.line("## GPU check of the int8 ANN (benchmarks/gpu_check.py, issues 20 and 31)\n")
    for text in environment(device, bw, args):
        report.line(text)

    # 0. the kernel's compiles, before anything is timed, each d the sections use, unfiltered and filtered
    if "0" in sections:
        needed = set()
        if sections & {"2b", "2c"}:
            needed.add(grid.wide_dim)
        if "7" in sections:
            needed.add(dims[0])
        if sections & {"1", "2", "3", "5"} or not needed:
            needed.update(dims)
        report.table("0. The kernel's compile (before any timed cell)",
                     ["kernel", "d", "filtered", "first call s", "second call ms", "compile s (first - second)"],
                     "`_bar_scan_kernel` on a tiny index: one compile per (d, filtered), sizes not specialised on, "
                     "so these serve every N, batch and K below. Wall time to a synchronize.")
        for d in sorted(needed):
            for filtered in (False, True):
                report.row(["_bar_scan_kernel"], lambda d=d, filtered=filtered: compile_cell(device, d, filtered))

    datasets: dict[tuple[int, int, str], Dataset] = {}

    def dataset(n: int, d: int, kind: str) -> Dataset:
        key = (n, d, kind)
        if key not in datasets:
            for other in [o for o in datasets if o[0] != n and o != (sizes[0], dims[0], "random")]:
                del datasets[other]  # one size on the device at a time (and the served path's index)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            log.info("dataset N=%s d=%s %s", n, d, kind)
            datasets[key] = make_dataset(n, d, kind, args.seed + n + d + (kind == "clustered"), device, warm)
        return datasets[key]

    exact_cols = ["N", "d", "data", "batch", "k", "default path", "default = CPU", "kernel = CPU",
                  "fallback = CPU", "padded results", "recall@k vs float64"]
    exact_note = ("`= CPU`: ids and float32 score bits equal `exact_search`'s for every query (`—`: that path "
                  "does not serve this k). Queries: every 4th a stored item's own vector with that item "
                  "excluded, query 1 all zeros (all scores tie), query 3 excludes an unknown id; rows 10-13 "
                  "duplicate row 0. recall@k: against float64 on the unquantised vectors, zero query left out.")
    time_cols = ["N", "d", "batch", "k", "default path", "gpu_search ms", "fallback ms", "torch int8 ms",
                 "torch fp16 ms", "HBM floor ms", "gpu_search / floor", "torch best / gpu_search",
                 "peak extra MiB (search / fp16)"]
    time_note = ("Device time per call (CUDA events, median); plain random queries. HBM floor: N x (d + 4) bytes "
                 "over the copy bandwidth above. `torch best / gpu_search` > 1: ahead of torch.")
    small, big = sizes[0], sizes[-1]
    small_ks, big_ks = grid.ks[:1], grid.ks[1:]
    all_ks = tuple(grid.small_ks) + small_ks

    def exact_cells(n: int, batches: tuple[int, ...], ks: tuple[int, ...], kinds: tuple[str, ...]
                    ) -> list[tuple[int, int, str, int, int]]:
        return [(n, d, kind, b, k) for d in dims for kind in kinds for b in batches for k in ks]

    def exact_rows(cells: list[tuple[int, int, str, int, int]], sides: dict | None = None) -> None:
        for n, d, kind, b, k in cells:
            report.row([f"{n:,}", str(d), kind], lambda n=n, d=d, kind=kind, b=b, k=k: exact_cell(
                dataset(n, d, kind), b, k, grid, args.seed + b + k, (sides or {}).get((n, d, kind, b, k))),
                exact=True)

    def device_halves(cells: list[tuple[int, int, str, int, int]]) -> dict:
        """The device halves of exactness cells first, while numba compiles the CPU scan (an error is kept
        for its row to report)."""
        sides: dict[tuple[int, int, str, int, int], GpuSide | Exception] = {}
        for n, d, kind, b, k in cells:
            if report.left() <= 0:
                break
            try:
                t0 = time.monotonic()
                sides[(n, d, kind, b, k)] = gpu_side(dataset(n, d, kind), b, k, grid, args.seed + b + k)
                log.info("device half N=%s d=%s %s batch %s k %s: %.1f s", n, d, kind, b, k, time.monotonic() - t0)
            except Exception as exc:  # noqa: BLE001 - its row raises it again
                log.exception("device half of %s", (n, d, kind, b, k))
                sides[(n, d, kind, b, k)] = exc
        return sides

    def time_rows(n: int, batches: tuple[int, ...], ks: tuple[int, ...]) -> None:
        for d in reversed(dims):
            for b in batches:
                for k in ks:
                    report.row([f"{n:,}", str(d)], lambda d=d, b=b, k=k: timing_cell(
                        dataset(n, d, "random"), b, k, grid, bw, args.seed + b, report))

    # 1. exactness at the small size: every k, batch 32 and 1, random and clustered; padding (k > N)
    if "1" in sections:
        report.table(f"1. Exact: GPU = CPU int8 path, key for key (N = {small:,})", exact_cols, exact_note)
        cells = exact_cells(small, (grid.exact_batch, 1), all_ks + big_ks, ("random", "clustered"))
        exact_rows(cells, device_halves(cells))
        for n_pad in grid.pad_sizes:
            k = n_pad + 50
            report.row([f"{n_pad:,}", str(dims[0]), "random (first rows)"], lambda n_pad=n_pad, k=k: exact_cell(
                subset(dataset(small, dims[0], "random"), min(n_pad, small)), grid.exact_batch, k, grid, args.seed),
                exact=True)
        for share, k in ((0.3, 32), (0.01, 32), (0.01, 100)):  # filters inside the scan
            report.row([f"{small:,}", str(dims[0]), "random"], lambda share=share, k=k: filtered_cell(
                dataset(small, dims[0], "random"), grid.exact_batch, k, share, args.seed), exact=True)

    # 2. time at the small size, batch 1 and 32, the kernel's ks and k = 100
    if "2" in sections:
        report.table("2. Timed", time_cols, time_note)
        time_rows(small, tuple(b for b in grid.batches if b <= 32), all_ks)

    # 2b. issue 16's grid at the big size: one head's K candidates per seed, batch 1 and 8
    if "2b" in sections:
        report.table(f"2b. Issue 16: the funnel's ANN step at N = {big:,}, d = {grid.wide_dim} (one head)",
                     ["N", "d", "batch", "K", "GPU ms", "torch fp16 ms", "HBM floor ms", "GPU / floor", "CPU int8 ms",
                      "CPU / GPU", "peak extra MiB", "= CPU", "kernel passes"],
                     "`GpuIndex.search` (what a KIND_GPU `widefunnel_ann` instance runs), device time, median; "
                     "clustered, normalised rows (as the towers' L2-normalised embeddings); queries: stored items' "
                     "own vectors with the item excluded (the funnel's seeds), one all-zero. torch fp16: the peer "
                     "one would write on a GPU (faiss-GPU stops at k = 2,048). CPU int8: `exact_search` on this "
                     f"machine's {os.cpu_count()} CPUs, wall time. `= CPU`: ids and score bits equal. The funnel "
                     "runs two such steps (one per head). Kernel passes: over the index, one more per rescan (a query "
                     "the sampled bar left short of K, or whose buffer overflowed: the all-zero query ties "
                     "everywhere).")
        for b in grid.wide_batches:
            for k in grid.wide_ks:
                report.row([f"{big:,}", str(grid.wide_dim)], lambda b=b, k=k: wide_cell(
                    dataset(big, grid.wide_dim, "clustered"), b, k, grid, bw, args.seed + b, report), exact=True)

    # 2c. the request's filters at the big size: the bitmap inside the kernel's tile, and its rescans
    if "2c" in sections:
        report.table(f"2c. Filters inside the kernel at N = {big:,}, d = {grid.wide_dim}",
                     ["N", "d", "batch", "K", "filter (rows admitted)", "GPU ms", "HBM floor ms", "padded results",
                      "= CPU", "kernel passes"],
                     "As 2b, under one row bitmap for the batch; against `exact_search(allow=...)`. 0.5 % admits "
                     "fewer rows than K (the sample shows it: no bar, every admitted row kept, padded). The last row "
                     "admits exactly the rows the kernel samples for its bar: the bar is far too high, every query "
                     "is left short and rescanned with lower bars.")
        mid_k, big_k = grid.wide_ks[-2:]
        for b, k, share in ((8, mid_k, 0.3), (8, mid_k, 0.01), (8, big_k, 0.005), (8, big_k, None)):
            report.row([f"{big:,}", str(grid.wide_dim)], lambda b=b, k=k, share=share: filtered_wide_cell(
                dataset(big, grid.wide_dim, "clustered"), b, k, share, bw, grid, args.seed + b), exact=True)

    # 3, 4. the big size: exactness at k = 100 (batch 32 and 1), time at batch 1 and 32
    if "3" in sections and big != small:
        report.table(f"3. Exact at N = {big:,} (k = {small_ks[0]})", exact_cols, "Columns as in 1.")
        exact_rows(exact_cells(big, (grid.exact_batch, 1), small_ks, ("random", "clustered")))
        report.table(f"4. Timed at N = {big:,}", time_cols, "Columns as in 2.")
        time_rows(big, tuple(b for b in grid.batches if b <= 32), all_ks)

    # 5, 6. the wide batch and the big ks, both sizes; the big ks' exactness at the big size (batch 1)
    if "5" in sections:
        report.table(f"5. Timed: batch {grid.batches[-1]} and the big ks", time_cols, "Columns as in 2.")
        for n in dict.fromkeys((small, big)):
            time_rows(n, tuple(b for b in grid.batches if b > 32), all_ks)
            time_rows(n, grid.batches, big_ks)
        if big != small:
            report.table(f"6. Exact at N = {big:,}, the big ks (batch 1)", exact_cols, "Columns as in 1.")
            exact_rows(exact_cells(big, (1,), big_ks, ("random",)))

    # 7. the served path: the plugin's GPU search (DLPack in and out) and the in-process funnel
    if "7" in sections:
        report.table("7. The served path against the CPU path", ["path", "batch", "k", "GPU ms", "CPU ms", "= CPU"],
                     "Wall time to results ready (the GPU path to a synchronize), median. Plugin path: "
                     f"`GpuIndex.search_dlpack` on the N = {small:,}, d = {dims[0]} index, k = {SERVED_K} (the "
                     "default build's), with embeddings; CPU: `search` + `dequantized` as a KIND_CPU instance.")
        report.row(["quantize_rows_torch on the device = quantize_rows"], lambda: quantize_cell(
            dataset(small, dims[0], "random")), exact=True)
        for b in grid.served_batches:
            report.row(["widefunnel_ann GPU (search_dlpack)"], lambda b=b: served_cell(
                dataset(small, dims[0], "random"), b, SERVED_K, grid, args.seed), exact=True)
        funnel_cells(report, repository, args.carry, device, (1, 32), grid)

    elapsed = time.monotonic() - report.start
    report.line(f"\n{len(report.failed)} failing cell(s); {elapsed:.0f} s of {args.budget_s:.0f} s budget used.")
    for failure in report.failed:
        report.line(f"- {failure}")
    report.close()
    warm.close()
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
