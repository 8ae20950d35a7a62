"""Field filters (issue 29, must-have 5) at catalogue scale: what a filter named after a field adds to a search.

One field of each kind on N synthetic items (``brand`` token, ``categories`` token_seq with 1-4 values an item,
``price`` float with 5% missing), keyed by internal id as a build writes them (``field_filters.ItemFields``). Per
filter: ``mask`` is ``HeadFilter.allow`` (validation excluded: it is preprocess's, per distinct value), the row
bitmap the ANN step builds for one batch; ``scan`` the filtered exact int8 scan with that bitmap; ``unfiltered``
the same scan without one; ``exact``: the scan's ids equal a numpy brute force over the admissible rows. Median
ms per batch over ``--reps`` rounds after one warm-up.

    .venv/bin/python benchmarks/bench_field_filters.py                      # N = 1M (about a minute on 2 cores)
    .venv/bin/python benchmarks/bench_field_filters.py --n 50000 --reps 1   # smoke test
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import pyarrow as pa

from widefunnel.ann import filters
from widefunnel.ann.index import build_index
from widefunnel.ann.plan import prepare_index
from widefunnel.ann.quantize import quantize_rows
from widefunnel.ann.search import exact_search
from widefunnel.dataset.columns import FloatColumn, TokenSeqColumn, token_column
from widefunnel.field_filters import ItemFields, field_of_column
from widefunnel.validation import validate_field_filters


def shop_fields(n: int, rng: np.random.Generator) -> ItemFields:
    brands = pa.array([f"brand{j}" for j in rng.integers(0, 2000, n)])
    lengths = rng.integers(1, 5, n)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    vocabulary = pa.array(["", *(f"cat{j:03d}" for j in range(500))])
    categories = TokenSeqColumn(offsets, rng.integers(1, 501, int(offsets[-1])).astype(np.int32), vocabulary)
    price = np.exp(rng.uniform(1, 6, n)).astype(np.float32)
    price[rng.random(n) < 0.05] = np.nan
    ids = np.arange(1, n + 1)
    return ItemFields(tuple(field_of_column(name, column, ids, n + 1) for name, column in
                            (("brand", token_column(brands)), ("categories", categories),
                             ("price", FloatColumn(price)))))


def timed(fn, reps: int) -> tuple[float, object]:
    fn()
    times, out = [], None
    for _ in range(reps):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3, out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    fields = shop_fields(args.n, rng)
    index = build_index(rng.standard_normal((args.n, args.d)).astype(np.float32), np.arange(1, args.n + 1), "bench")
    head = filters.HeadFilter(index.ids, prepare_index(index).rows_of, None, lambda: np.zeros(0, np.int64))
    head.fields = filters.RowFields(fields, np.asarray(index.ids, np.int64))
    requests = {"include_brand (10 of 2000)": {"include_brand": [f"brand{j}" for j in range(10)]},
                "exclude_categories (50 of 500)": {"exclude_categories": [f"cat{j:03d}" for j in range(50)]},
                "min/max_price (~10%)": {"min_price": 20.0, "max_price": 35.0}}
    print(f"N = {args.n}, d = {args.d}, k = {args.k}; median ms per batch over {args.reps} rounds\n")
    print("| filter | batch | admitted | mask | scan | unfiltered | exact |\n|---|---|---|---|---|---|---|")
    for batch in args.batches:
        queries = rng.standard_normal((batch, args.d)).astype(np.float32)
        t_plain, _ = timed(lambda q=queries: exact_search(index, q, args.k), args.reps)
        for label, request in requests.items():
            tensors = {name: (np.full((batch, 1), v, np.float32) if isinstance(v, float) else
                              np.repeat(np.array([[x.encode() for x in v]], object), batch, axis=0))
                       for name, v in request.items()}
            tokens, ranges = validate_field_filters(fields.schema(), batch, tensors)
            t_mask, allow = timed(lambda b=batch, t=tokens, r=ranges: head.allow(b, field_tokens=t, field_ranges=r),
                                  args.reps)
            t_scan, (ids, _) = timed(lambda q=queries, a=allow: exact_search(index, q, args.k, allow=a), args.reps)
            rows = filters.unpack_rows(allow, index.count)
            qc, qs = quantize_rows(queries)
            dot = (qc[:1].astype(np.int64) @ index.codes.astype(np.int64).T).astype(np.float32)
            scores = (dot * index.scales[None, :])[0] * qs[0]
            order = np.lexsort((np.arange(index.count), -scores))
            want = index.ids[order[rows[0][order]][: args.k]]
            exact = np.array_equal(ids[0][: len(want)], want)
            print(f"| {label} | {batch} | {rows[0].mean():.1%} | {t_mask:.1f} | {t_scan:.1f} | {t_plain:.1f} | "
                  f"{exact} |")


if __name__ == "__main__":
    main()
