"""A whole build at scale (issue 29, point 7): a synthetic shop written as Parquet parts, then `widefunnel build
--dataset` on it as a user runs it, each build stage's seconds and peak RSS (the `build stage` lines the build
logs) and the whole process's peak (`/usr/bin/time`). Run twice with one cache: the second build finds every
content embedding cached by text, as a rebuild does.

The issue's target is 20M interactions over 1M items within 15 minutes, peak under 8 GB:

    .venv/bin/python benchmarks/bench_build_scale.py --interactions 20000000 --items 1000000 --users 2000000

Never run it beside another large job: it takes most of the machine's memory at that size.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from widefunnel.dataset.synthetic_shop import DATASET_CONFIG, generate_shop, write_parquet

STAGE = re.compile(r"build stage (.+?)\s+([\d.]+) s\s+peak RSS\s+(\d+) MiB")


def run_build(dataset: Path, config: Path, repository: Path, cache: Path) -> tuple[list[tuple[str, float, int]],
                                                                                   float, float]:
    """(stages, wall seconds, peak RSS MiB of the whole build process)."""
    cmd = ["/usr/bin/time", "-f", "MAXRSS %M", sys.executable, "-m", "widefunnel.cli.main", "build", "--quiet",
           "--version", "1",
           "--dataset", str(dataset), "--config", str(config), "--repository", str(repository)]
    env = {**os.environ, "WIDEFUNNEL_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    log = repository.with_name(f"{repository.name}-build.log")  # grows while the build runs: follow it with tail -f
    start = time.perf_counter()
    with open(log, "w") as out:
        code = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, text=True, env=env).returncode
    wall = time.perf_counter() - start
    text = log.read_text()
    if code != 0:
        raise SystemExit(f"build failed ({code}):\n{text[-3000:]}")
    stages = [(m.group(1).strip(), float(m.group(2)), int(m.group(3))) for m in STAGE.finditer(text)]
    peak = int(re.search(r"MAXRSS (\d+)", text).group(1)) / 1024
    return stages, wall, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--interactions", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--text-fields", default="title,categories",
                        help="the content encoder's fields (the config's text_fields)")
    parser.add_argument("--builds", type=int, default=2, help="builds with one text cache (the 2nd finds it warm)")
    parser.add_argument("--int8", action="store_true", help="[teacher] int8 = true: the int8 content encoder")
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temporary folder)")
    args = parser.parse_args()

    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="bench_build_", dir=args.dir))
    try:
        start = time.perf_counter()
        dataset = write_parquet(generate_shop(args.users, args.items, args.interactions, 0), root / "shop", parts=8)
        generated = time.perf_counter() - start
        fields = ", ".join(f'"{f}"' for f in args.text_fields.split(","))
        config = root / "shop.toml"
        config.write_text(DATASET_CONFIG.replace("[dataset]\n", f"[dataset]\ntext_fields = [{fields}]\n", 1)
                          + ("\n[teacher]\nint8 = true\n" if args.int8 else ""))
        runs = [run_build(dataset, config, root / f"repo{i + 1}", root / "cache") for i in range(args.builds)]
        print(f"\n{args.interactions:,} interactions, {args.items:,} items, {args.users:,} users; text fields "
              f"{args.text_fields}{'; int8 encoder' if args.int8 else ''}; dataset generated and written in "
              f"{generated:.0f} s")
        names = [name for name, _, _ in runs[0][0]]
        print("| stage | " + " | ".join(f"build {i + 1}: s | peak RSS MiB" for i in range(len(runs))) + " |")
        print("|---|" + "---:|---:|" * len(runs))
        for row, name in enumerate(names):
            cells = " | ".join(f"{r[0][row][1]:.1f} | {r[0][row][2]:,}" for r in runs)
            print(f"| {name} | {cells} |")
        print("| **whole build** | " + " | ".join(f"**{wall:.0f}** | **{peak:,.0f}**" for _, wall, peak in runs) + " |")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
