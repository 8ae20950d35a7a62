"""Ingestion at scale (issue 29, point 7): a synthetic shop generated, written as atomic files and as Parquet
parts, and read back through the dataset layer, each stage timed, with the process's peak RSS during it.

The issue's target is 20M interactions over 1M items (build end to end within 15 minutes, peak under 8 GB):

    .venv/bin/python benchmarks/bench_ingest.py --interactions 20000000 --items 1000000 --users 2000000

The default is a smaller run that fits a shared machine. Peak RSS is reset before each stage where the kernel
allows it (/proc/self/clear_refs), so each row's peak is that stage's, counting what earlier stages still hold.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from widefunnel.dataset import load_dataset
from widefunnel.dataset.synthetic_shop import generate_shop, write_atomic, write_parquet


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _size_mib(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def _funnel_stages(ds, folder: Path, stage) -> None:
    """What a build does next with the loaded dataset, before the encoder and training: the catalogue, features
    and filter fields in internal ids (`funnel_data`), the co-engaged pairs and the time split."""
    import tomllib

    from widefunnel.config import default_config
    from widefunnel.data import co_engagement_pairs, funnel_data, time_split
    from widefunnel.dataset.synthetic_shop import DATASET_CONFIG

    cfg = default_config()
    table = cfg["dataset"] | tomllib.loads(DATASET_CONFIG)["dataset"] | {"path": str(folder)}
    with stage("  funnel_data") as row:
        catalogue, inter = funnel_data(ds, table)
        row[3] = f"{len(catalogue.item_ids):,} items, features + filter fields + coding"
    with stage("  co-engaged pairs") as row:
        pairs = co_engagement_pairs(inter, cfg["data"]["window"])
        row[3] = f"{len(pairs.query):,} pairs (window {cfg['data']['window']})"
    with stage("  time split") as row:
        split = time_split(pairs, inter, cfg["data"]["split_quantile"], catalogue.table_size)
        row[3] = f"{len(split.train.query):,} train / {len(split.test.query):,} test"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--interactions", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--parts", type=int, default=8, help="Parquet part files per table")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temporary folder)")
    parser.add_argument("--funnel", action="store_true",
                        help="also time what the build does next: funnel_data, the co-engaged pairs, the split")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench_ingest_", dir=args.dir))
    rows: list[list] = []
    resets = _reset_peak()

    @contextmanager
    def stage(name: str):
        """Times the block; its peak RSS; the block may append a note to rows[-1]."""
        gc.collect()
        _reset_peak()
        row = [name, 0.0, 0.0, ""]
        start = time.perf_counter()
        yield row
        row[1], row[2] = time.perf_counter() - start, _peak_mib()
        rows.append(row)

    try:
        with stage("generate"):
            tables = generate_shop(args.users, args.items, args.interactions, args.seed)
        with stage("write atomic") as row:
            atomic = write_atomic(tables, root / "atomic")
            row[3] = f"{_size_mib(atomic):.0f} MiB"
        with stage("write parquet") as row:
            parquet = write_parquet(tables, root / "parquet", parts=args.parts)
            row[3] = f"{_size_mib(parquet):.0f} MiB, {args.parts} parts/table"
        del tables
        for name, folder in (("atomic", atomic), ("parquet", parquet)):
            timings: dict[str, float] = {}
            with stage(f"load {name}") as row:
                ds = load_dataset(folder, timings=timings)
                row[3] = ", ".join(f"{k} {v:.2f}s" for k, v in timings.items())
            queries = ds.items.ids[ds.interactions.items]
            with stage(f"  index lookup ({name})") as row:
                ds.items.index.rows(queries)
                row[3] = f"{len(queries) / 1e6:.1f}M ids -> rows"
            with stage(f"  text ({name})") as row:
                texts = ds.text(np.arange(min(len(ds.items), 100_000)))
                row[3] = f"{len(texts)} items"
            if name == "parquet" and args.funnel:
                _funnel_stages(ds, folder, stage)
            del ds, queries, texts
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print(f"\n{args.interactions:,} interactions, {args.items:,} items, {args.users:,} users, "
          f"{os.cpu_count()} CPUs" + ("" if resets else " (peak RSS not resettable: cumulative)"))
    print(f"{'stage':<26}{'seconds':>9}{'peak RSS MiB':>14}  notes")
    for name, seconds, peak, note in rows:
        print(f"{name:<26}{seconds:>9.2f}{peak:>14.0f}  {note}")


if __name__ == "__main__":
    main()
