"""GPU check of the `triton` ANN kernel (issue 4): correctness on fresh random data and time against HBM.

Run it on a machine with a CUDA GPU (the `device` tool, when a session has one):

    .venv/bin/python benchmarks/bench_gpu.py                     # N = 1M, d = 64 and 128, k = 10 and 32
    .venv/bin/python benchmarks/bench_gpu.py --n 10000000 --batches 1 32 256

For every (d, batch, k) cell it prints, in one table:

* **correctness** on fresh random data, three ways: the kernel's keys equal the torch fallback's and the CPU
  ``exact_search``'s key for key (same ids, same float32 score bits), and the returned scores equal a float64
  recomputation ``(sum q_code * item_code) * s_item * s_query`` within float32 rounding (2 ulp), whose top-k
  set they match up to float32 ties;
* **time** of the kernel and of the torch fallback (CUDA events, median of ``--reps`` calls after warm-up);
* **the HBM floor**: the bytes one scan must read (N x (d + 4): int8 codes + float32 scales) over the
  device's copy bandwidth measured in the same run, and the kernel's time over it.

``--interpret`` runs the same checks on CPU through the Triton interpreter (tiny sizes only: the timings
are then meaningless, it only proves the script); the test suite runs it that way.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

if "--interpret" in sys.argv:  # must precede the first import of triton
    os.environ["TRITON_INTERPRET"] = "1"

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from widefunnel.ann.index import build_index  # noqa: E402
from widefunnel.ann.search import exact_search  # noqa: E402
from widefunnel.ann.triton_kernel import KERNEL_MAX_K, gpu_search, quantize_rows_torch  # noqa: E402


def copy_bandwidth(device: torch.device, gib: float) -> float:
    """Bytes/s of a device-to-device copy (read + write counted), best of 5: the HBM rate a scan can reach."""
    n = int(gib * 2**30) // 4
    a, b = torch.empty(n, dtype=torch.float32, device=device), torch.empty(n, dtype=torch.float32, device=device)
    a.fill_(1.0)
    best = min(_timed(lambda: b.copy_(a), device, reps=3) for _ in range(5))
    return 2 * 4 * n / best


def _timed(fn, device: torch.device, reps: int) -> float:
    """Median seconds per call (CUDA events on a GPU, wall clock otherwise), after one warm-up call."""
    fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


def float64_reference(codes: np.ndarray, scales: np.ndarray, queries: np.ndarray, k: int
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Top-k rows and scores of the quantised scores recomputed in float64 (blocked, bounded memory)."""
    qc, qs = (t.numpy() for t in quantize_rows_torch(torch.from_numpy(queries)))
    qc64 = qc.astype(np.float64)
    best_s = np.full((len(queries), 0), -np.inf)
    best_r = np.zeros((len(queries), 0), np.int64)
    for r0 in range(0, len(codes), 1 << 18):
        c = codes[r0:r0 + (1 << 18)].astype(np.float64)
        s = (qc64 @ c.T) * scales[r0:r0 + len(c)].astype(np.float64)[None, :] * qs.astype(np.float64)[:, None]
        s = np.concatenate([best_s, s], axis=1)
        r = np.concatenate([best_r, np.broadcast_to(np.arange(r0, r0 + len(c)), (len(queries), len(c)))], axis=1)
        top = np.argsort(-s, axis=1, kind="stable")[:, :k]
        best_s, best_r = np.take_along_axis(s, top, 1), np.take_along_axis(r, top, 1)
    return best_r, best_s


def check_cell(codes: np.ndarray, scales: np.ndarray, ids: np.ndarray, index, queries: np.ndarray, k: int,
               device: torch.device) -> dict[str, str]:
    codes_t, scales_t = torch.from_numpy(codes).to(device), torch.from_numpy(scales).to(device)
    q_t = torch.from_numpy(queries).to(device)
    rows_k, scores_k = (t.cpu().numpy() for t in gpu_search(codes_t, scales_t, q_t, k, use_kernel=True))
    rows_f, scores_f = (t.cpu().numpy() for t in gpu_search(codes_t, scales_t, q_t, k, use_kernel=False))
    cpu_ids, cpu_scores = exact_search(index, queries, k)
    same_fallback = np.array_equal(rows_k, rows_f) and np.array_equal(scores_k.view(np.int32),
                                                                      scores_f.view(np.int32))
    same_cpu = np.array_equal(ids[rows_k], cpu_ids) and np.array_equal(scores_k.view(np.int32),
                                                                       cpu_scores.view(np.int32))
    ref_rows, ref_scores = float64_reference(codes, scales, queries, k)
    rel = np.abs(scores_k.astype(np.float64) - ref_scores) / np.maximum(np.abs(ref_scores), 1e-30)
    # the sets may differ only where float32 rounding ties a score with the k-th one
    lost = [set(r[s > s[-1] + 4e-7 * abs(s[-1])]) - set(rows_k[i])
            for i, (r, s) in enumerate(zip(ref_rows, ref_scores))]
    return {"kernel = fallback": "yes" if same_fallback else "NO", "kernel = CPU exact": "yes" if same_cpu else "NO",
            "max rel. err vs float64": f"{rel.max():.1e}",
            "float64 top-k kept": "yes" if not any(lost) and rel.max() < 2.4e-7 else "NO"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dims", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32, 256])
    ap.add_argument("--ks", type=int, nargs="+", default=[10, KERNEL_MAX_K])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--interpret", action="store_true", help="CPU via the Triton interpreter (tiny sizes)")
    args = ap.parse_args(argv)
    if args.interpret:
        device = torch.device("cpu")
    elif torch.cuda.is_available():
        device = torch.device("cuda")
    else:
        print("no CUDA device: run this on a GPU machine, or pass --interpret (tiny sizes) to check the script")
        return 2
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU (Triton interpreter)"
    bw = copy_bandwidth(device, 0.01 if args.interpret else 2.0)
    print(f"## GPU ANN kernel: N={args.n:,}, device {name}, torch {torch.__version__}\n")
    print(f"- copy bandwidth (read + write, best of 5): {bw / 1e9:,.0f} GB/s")
    rng = np.random.default_rng(args.seed)
    print("\n| d | batch | k | kernel = fallback | kernel = CPU exact | max rel. err vs float64 | float64 top-k kept "
          "| kernel ms | fallback ms | HBM floor ms | kernel / floor |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    failed = False
    for d in args.dims:
        x = rng.standard_normal((args.n, d), dtype=np.float32)  # fresh random data per dimension
        index = build_index(x, np.arange(args.n, dtype=np.int64), "bench-gpu")
        codes, scales, ids = np.asarray(index.codes), np.asarray(index.scales), np.asarray(index.ids)
        codes_t, scales_t = torch.from_numpy(codes).to(device), torch.from_numpy(scales).to(device)
        floor = args.n * (d + 4) / bw  # bytes one scan reads, at the bytes/s HBM moved in the copy
        for b in args.batches:
            queries = rng.standard_normal((b, d), dtype=np.float32)
            q_t = torch.from_numpy(queries).to(device)
            for k in args.ks:
                ok = check_cell(codes, scales, ids, index, queries, k, device)
                failed |= "NO" in ok.values()
                t_kernel = _timed(lambda: gpu_search(codes_t, scales_t, q_t, k, use_kernel=True), device,  # noqa: B023
                                  args.reps)
                t_fall = _timed(lambda: gpu_search(codes_t, scales_t, q_t, k, use_kernel=False), device,  # noqa: B023
                                args.reps)
                print(f"| {d} | {b} | {k} | " + " | ".join(ok.values()) + f" | {t_kernel * 1e3:.3f} | "
                      f"{t_fall * 1e3:.3f} | {floor * 1e3:.3f} | {t_kernel / floor:.2f}x |", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
