"""Bytes per item of a built repository (issue 30, point 2): each step's version folder, file by file, divided by
the catalogue's items; and what the versions on disk take together, counting a hard-linked file once.

    .venv/bin/python benchmarks/repository_bytes.py --repository model_repository [--version N]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from widefunnel import layout
from widefunnel.arrays import load_table
from widefunnel.model_configs import STEP_MODELS


def version_files(repository: Path, version: int) -> dict[str, list[Path]]:
    """Each step's files in ``version`` (every file under its version folder)."""
    return {model: sorted(p for p in (repository / model / str(version)).rglob("*") if p.is_file())
            for model in STEP_MODELS if (repository / model / str(version)).is_dir()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--version", type=int, default=None, help="default: the newest complete version")
    args = parser.parse_args()
    repo = args.repository
    version = args.version or max(layout.complete_versions(repo, STEP_MODELS))
    items = len(load_table(repo / "preprocess" / str(version) / layout.CATALOGUE_FILE))
    print(f"{repo}, version {version}: {items:,} items\n")
    print("| step | file | MB | bytes per item |")
    print("|---|---|---:|---:|")
    total = 0
    for model, files in version_files(repo, version).items():
        for path in files:
            size = path.stat().st_size
            total += size
            if size >= 1 << 16:  # code, configs and small tables are noise here
                print(f"| {model} | {path.relative_to(repo / model / str(version))} | {size / 1e6:,.1f} | "
                      f"{size / items:,.1f} |")
    print(f"| **version {version}** | all files | **{total / 1e6:,.1f}** | **{total / items:,.1f}** |")
    seen: dict[tuple[int, int], int] = {}
    for v in layout.complete_versions(repo, STEP_MODELS):
        for files in version_files(repo, v).values():
            for path in files:
                st = path.stat()
                seen[(st.st_dev, st.st_ino)] = st.st_size
    print(f"\nevery version on disk ({', '.join(map(str, layout.complete_versions(repo, STEP_MODELS)))}): "
          f"{sum(seen.values()) / 1e6:,.1f} MB, a hard-linked file counted once")


if __name__ == "__main__":
    main()
