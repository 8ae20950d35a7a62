"""Filtered exact search benchmark (issue 18): filters inside the int8 scan vs the unfiltered scan, vs faiss
IndexFlatIP with an IDSelectorBitmap, and vs post-filtering an over-fetch.

One row per (batch, k, selectivity). Methods, all on the same queries, interleaved call by call within a cell
(one warm-up round, then ``--reps-b1`` (batch 1) or ``--reps`` timed rounds; the method order rotates each round; median
ms per query):

* **unfiltered**: ``exact_search(index, q, k)``, no filter (the yardstick "at 1% no slower than unfiltered").
* **filtered**: ``exact_search(index, q, k, allow=bitmap)``: the filter checked inside the scan.
* **faiss+sel**: ``faiss.IndexFlatIP`` over the float32 embeddings, ``search(q, k,
  params=faiss.SearchParameters(sel=faiss.IDSelectorBitmap(...)))``.
* **post-filter**: unfiltered ``exact_search`` with k' = min(N, ceil(--overfetch * k / selectivity)), then
  drop the inadmissible ids and keep the first k (numpy; included in its time). On average only k of the k'
  are admissible, so its recall falls below 1 about half the time; at k' = N it is exact but scans/sorts all.
* **faiss** (context only): the same IndexFlatIP without a selector. With a selector faiss tests each id
  before scoring it, so its time falls with the selectivity (at 50% it is slower than without one: the
  selector path does not use its batched GEMM), while a scan that reads every row does not get cheaper.

The filter: one random item set per selectivity (exactly round(s * N) items, fixed seed), **shared by all
queries of a batch and by all methods** (faiss takes one selector per search call, so a per-query filter
would need one faiss call per query). Building the bitmaps (item mask -> row bitmap ``filters.pack_rows``
over the index's row order, item mask -> faiss's byte bitmap) is outside the timed calls.

Recall: against a numpy brute force over the admissible rows with the int8 rule (``(float32(int dot) *
item_scale) * query_scale``, queries quantised by ``quantize_rows``, lower row first on ties), on every query
a cell ran (batch 1: one query per call, rotating): |found ∩ reference| / |reference| (the reference holds
min(k, admissible) ids). ``exact``: the filtered scan's ids and scores equal the brute force's, position by
position (pads included). faiss scores the float32 embeddings, not the int8 codes, so its recall against
the int8 reference is slightly below 1 by construction.

Data: standard normal embeddings and queries (fixed seeds), d = 64, item id = faiss position = 0..N-1.

    .venv/bin/python benchmarks/bench_filters.py --out /tmp/filters.md  # N = 1M, reps 5 (est. 3-6 min on 2 quiet cores)
    .venv/bin/python benchmarks/bench_filters.py --n 50000 --reps 1 --reps-b1 1    # smoke test (seconds)
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

# OpenMP wait policy, set before torch/faiss/numba load libgomp (as in bench_ann.py)
if "--passive" in sys.argv:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import faiss  # noqa: E402
import numba  # noqa: E402
import torch  # noqa: E402

from widefunnel.ann import filters  # noqa: E402
from widefunnel.ann.index import build_index  # noqa: E402
from widefunnel.ann.quantize import quantize_rows  # noqa: E402
from widefunnel.ann.search import exact_search, prepare_index  # noqa: E402

METHODS = ("unfiltered", "filtered", "faiss+sel", "post-filter", "faiss")
RECALLED = ("filtered", "faiss+sel", "post-filter")


# ------------------------------------------------------------------------------------------- reference
def int8_scores(index, q: np.ndarray, block: int = 131072) -> np.ndarray:
    """float32 [Q, N] int8 scores in the index's row order: (float32(dot) * item_scale) * query_scale.
    The dot is a float32 GEMM on integer-valued operands: exact (|partial sums| < 2**24 for d <= 1024)."""
    qc, qs = quantize_rows(q)
    qf = qc.astype(np.float32)
    out = np.empty((len(q), index.count), np.float32)
    for r0 in range(0, index.count, block):
        r1 = min(index.count, r0 + block)
        dot = qf @ index.codes[r0:r1].astype(np.float32).T
        out[:, r0:r1] = (dot * index.scales[r0:r1][None, :]) * qs[:, None]
    return out


def brute_force(index, scores: np.ndarray, row_mask: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact filtered top-k per query from the full score matrix -> (ids [Q, min(k, N)], scores), best first,
    lower row first on ties, padded with id -1 / score -inf past the admissible rows."""
    k_out = min(k, index.count)
    rows = np.flatnonzero(row_mask)
    kk = min(k_out, len(rows))
    ids = np.full((len(scores), k_out), -1, np.int64)
    out = np.full((len(scores), k_out), -np.inf, np.float32)
    for i in range(len(scores)):
        s = scores[i, rows]
        if kk < len(rows):  # candidates: every row scoring at least the kk-th best (ties at the cut included)
            cut = np.partition(s, len(s) - kk)[len(s) - kk]
            cand = np.flatnonzero(s >= cut)
        else:
            cand = np.arange(len(rows))
        order = cand[np.lexsort((rows[cand], -s[cand]))][:kk]  # -0.0 == +0.0 here, as in the scan's keys
        ids[i, :kk] = index.ids[rows[order]]
        out[i, :kk] = s[order]
    return ids, out


def recall(found: np.ndarray, ref: np.ndarray) -> float:
    """Mean over queries of |found ∩ ref| / |ref| (valid ids only; -1 pads ignored)."""
    vals = []
    for f, r in zip(found, ref, strict=True):
        r = r[r >= 0]
        if len(r):
            vals.append(np.isin(r, f[f >= 0]).sum() / len(r))
    return float(np.mean(vals)) if vals else 1.0


# ------------------------------------------------------------------------------------------------ output
def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def fmt_ms(sec: float) -> str:
    ms = sec * 1e3
    return f"{ms:,.0f}" if ms >= 100 else f"{ms:.2f}" if ms < 10 else f"{ms:.1f}"


def fmt_ratio(r: float) -> str:
    return f"{r:.0f}x" if r >= 10 else f"{r:.1f}x" if r >= 1 else f"{r:.2f}x"


def fmt_sel(s: float) -> str:
    return f"{s * 100:g}%"


# -------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--ks", type=int, nargs="+", default=[100, 10000])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--selectivities", type=float, nargs="+", default=[0.5, 0.1, 0.01, 0.001])
    ap.add_argument("--reps-b1", type=int, default=5 * len(METHODS),
                    help="timed rounds per batch-1 cell: one query per call (a few ms) varies more than a batch")
    ap.add_argument("--reps", type=int, default=len(METHODS),
                    help="timed rounds per batched cell (median), after --warmup rounds. A multiple of the methods "
                         "times each method equally often after each of the others (a fast call is slower after one "
                         "that evicts its rows from the caches)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--overfetch", type=float, default=1.0,
                    help="post-filter fetches k' = min(N, ceil(overfetch * k / selectivity)) then filters")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--passive", action="store_true", help="OMP_WAIT_POLICY=PASSIVE (for a shared box)")
    ap.add_argument("--out", type=Path, default=None, help="also write the markdown report to this file")
    args = ap.parse_args(argv)
    if min(args.reps, args.reps_b1) < 1 or args.warmup < 0:
        ap.error("--reps and --reps-b1 must be >= 1 and --warmup >= 0")

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    t_start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:6.1f}s] {msg}", file=sys.stderr, flush=True)

    report: list[str] = []

    def emit(text: str = "") -> None:
        print(text, flush=True)
        report.append(text)

    n, d = args.n, args.d
    n_q = max(args.batches)
    emit(f"## Filtered exact search (issue 18): N={n:,}, d={d}, threads={args.threads}\n")
    emit(f"- command: `{shlex.join([Path(sys.executable).name, *sys.argv])}`")
    emit(f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible; python "
         f"{platform.python_version()}, numpy {np.__version__}, torch {torch.__version__}, faiss {faiss.__version__}, "
         f"numba {numba.__version__}")
    emit(f"- OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset (libgomp default)')}; load average at "
         f"start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    emit(f"- timing: {args.warmup} warm-up + {args.reps_b1} (batch 1) or {args.reps} timed rounds per cell, "
         "methods interleaved (rotating "
         f"order); median ms per query (call time / batch). One random filter per selectivity, shared by all "
         f"queries and methods. Post-filter over-fetch k' = min(N, ceil({args.overfetch:g} * k / s)).")

    rng = np.random.default_rng(args.seed)
    x = rng.standard_normal((n, d), dtype=np.float32)
    q = rng.standard_normal((n_q, d), dtype=np.float32)
    t0 = time.perf_counter()
    index = build_index(x, np.arange(n, dtype=np.int64), "bench-filters")
    prepare_index(index)
    log(f"built int8 index in {time.perf_counter() - t0:.1f}s")
    flat = faiss.IndexFlatIP(d)
    flat.add(x)
    scores = int8_scores(index, q)
    log("int8 reference scores")

    # one item set per selectivity (exactly round(s * N) items); masks over items and over the index's rows
    masks = {}
    for j, s in enumerate(args.selectivities):
        m = max(1, round(s * n))
        item_mask = np.zeros(n, bool)
        item_mask[np.random.default_rng(args.seed + 1 + j).choice(n, m, replace=False)] = True
        bitmap = np.packbits(item_mask, bitorder="little")  # faiss: bit (id & 7) of byte id >> 3
        # IDSelectorBitmap(n, ptr): n is the bitmap's size in BYTES (is_member: (id >> 3) < n); it keeps a raw
        # pointer, so ``bitmap`` must stay alive as long as the selector does (it does: both live in ``masks``)
        sel = faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(bitmap))
        masks[s] = {"items": item_mask, "rows": item_mask[index.ids], "bitmap": bitmap,
                    "params": faiss.SearchParameters(sel=sel), "sel": sel, "count": m}

    rows_out, cells, refs = [], {}, {}
    for batch in args.batches:
        for k in args.ks:
            for s in args.selectivities:
                f = masks[s]
                allow = np.repeat(filters.pack_rows(f["rows"][None]), batch, axis=0)
                kp = min(n, math.ceil(args.overfetch * k / s))
                if (k, s) not in refs:  # the same for every batch size
                    refs[(k, s)] = brute_force(index, scores, f["rows"], k)
                ref_ids, ref_scores = refs[(k, s)]
                item_mask = f["items"]

                def post_filter(qb: np.ndarray, k=k, kp=kp, item_mask=item_mask) -> np.ndarray:
                    ids = exact_search(index, qb, kp)[0]
                    ok = (ids >= 0) & item_mask[np.maximum(ids, 0)]
                    out = np.full((len(qb), min(k, n)), -1, np.int64)
                    for i in range(len(qb)):
                        kept = ids[i, ok[i]][:k]
                        out[i, :len(kept)] = kept
                    return out

                run: dict[str, Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]] = {
                    "unfiltered": lambda qb, k=k: exact_search(index, qb, k),
                    "filtered": lambda qb, k=k, allow=allow: exact_search(index, qb, k, allow=allow),
                    "faiss+sel": lambda qb, k=k, p=f["params"]: flat.search(qb, k, params=p)[::-1],
                    "post-filter": lambda qb, pf=post_filter: (pf(qb), None),
                    "faiss": lambda qb, k=k: flat.search(qb, k)[::-1],
                }
                times = {m: [] for m in METHODS}
                found: dict[str, dict[int, np.ndarray]] = {m: {} for m in METHODS}
                filt_scores: dict[int, np.ndarray] = {}
                for rnd in range(args.warmup + (args.reps_b1 if batch == 1 else args.reps)):
                    qi = np.array([rnd % n_q]) if batch == 1 else np.arange(batch)
                    qb = np.ascontiguousarray(q[qi])
                    for j in range(len(METHODS)):
                        name = METHODS[(j + rnd) % len(METHODS)]
                        t0 = time.perf_counter()
                        ids, sc = run[name](qb)
                        dt = time.perf_counter() - t0
                        if rnd >= args.warmup:
                            times[name].append(dt / batch)
                        for i, row in zip(qi, ids, strict=True):
                            found[name][int(i)] = row
                        if name == "filtered":
                            for i, row in zip(qi, sc, strict=True):
                                filt_scores[int(i)] = row
                med = {m: float(np.median(times[m])) for m in METHODS}
                seen = sorted(found["filtered"])
                rec = {m: recall(np.stack([found[m][i] for i in seen]), ref_ids[seen]) for m in RECALLED}
                exact = all(np.array_equal(found["filtered"][i], ref_ids[i])
                            and np.array_equal(filt_scores[i], ref_scores[i]) for i in seen)
                cells[(batch, k, s)] = (med, rec, exact)
                rows_out.append([str(batch), f"{k:,}", fmt_sel(s), f"{f['count']:,}",
                                 fmt_ms(med["unfiltered"]), fmt_ms(med["filtered"]), fmt_ms(med["faiss+sel"]),
                                 f"{fmt_ms(med['post-filter'])} (k'={kp:,})",
                                 fmt_ms(med["faiss"]), fmt_ratio(med["filtered"] / med["unfiltered"]),
                                 fmt_ratio(med["faiss+sel"] / med["filtered"]),
                                 f"{rec['filtered']:.4f}", "yes" if exact else "NO",
                                 f"{rec['faiss+sel']:.4f}", f"{rec['post-filter']:.4f}"])
                log(f"batch {batch} k {k} s {fmt_sel(s)}: " + ", ".join(f"{m} {fmt_ms(v)} ms" for m, v in med.items()))

    emit("\n### Median ms per query (one row per batch, k, selectivity)\n")
    emit(table(["batch", "k", "selectivity", "admissible", "unfiltered ms", "filtered ms", "faiss+sel ms",
                "post-filter ms (k')", "faiss unfiltered ms", "filtered / unfiltered", "faiss / filtered",
                "recall filtered", "exact", "recall faiss", "recall post-filter"], rows_out))

    # ---- the goals, judged on this run
    all_exact = all(c[2] for c in cells.values())
    speedups = {key: c[0]["faiss+sel"] / c[0]["filtered"] for key, c in cells.items()}
    worst = min(speedups, key=speedups.get)
    one_pct = {key: c[0]["filtered"] / c[0]["unfiltered"] for key, c in cells.items() if key[2] == 0.01}
    emit("\n### Goals (this run)\n")
    goal_rows = [
        ["exact: filtered top-k = brute-force int8 on the filtered set (every cell, every query run)",
         f"{sum(c[2] for c in cells.values())}/{len(cells)} cells exact", "yes" if all_exact else "no"],
        [">= 3x faiss IndexFlatIP + IDSelectorBitmap at every selectivity",
         f"min {fmt_ratio(speedups[worst])} (batch {worst[0]}, k {worst[1]:,}, {fmt_sel(worst[2])})",
         "yes" if speedups[worst] >= 3 else "no"],
    ]
    if one_pct:
        worst1 = max(one_pct, key=one_pct.get)
        goal_rows.append(["at 1% selectivity no slower than the unfiltered scan",
                          f"filtered / unfiltered max {fmt_ratio(one_pct[worst1])} "
                          f"(batch {worst1[0]}, k {worst1[1]:,}); "
                          + ", ".join(f"B={b} k={kk:,}: {fmt_ratio(v)}" for (b, kk, _), v in one_pct.items()),
                          "yes" if one_pct[worst1] <= 1.0 else "no"])
    emit(table(["goal", "measured", "met?"], goal_rows))
    emit(f"\n- load average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}; total wall time "
         f"{time.perf_counter() - t_start:.0f} s")
    if args.out is not None:
        args.out.write_text("\n".join(report) + "\n")
        log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
