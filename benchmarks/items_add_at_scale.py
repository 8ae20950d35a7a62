"""`items add` on a large MovieLens-shaped build, swap included, under load (issue 30, point 5): C client threads
recommend from random seeds while `widefunnel items add FILE --url` (a subprocess, as an operator runs it, under
`/usr/bin/time -v`) writes the grown version and swaps it in; every answer's fingerprints are checked (one build
per answer: 0 mixed) and failures counted. Prints the add's own seconds, the wall time with the swap, its peak
memory, and the bytes it put on disk (each file once, as `du` counts) against the version's bytes.

    .venv/bin/python benchmarks/items_add_at_scale.py --repository REPO --items 1000
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from widefunnel import layout
from widefunnel import model_configs as mcfg
from widefunnel.arrays import load_table
from widefunnel.client.client import WidefunnelClient
from widefunnel.security import ADMIN_KEY_ENV
from widefunnel.server import TritonServer

GENRES = ["Drama", "Comedy", "Documentary", "Sci-Fi", "Thriller"]


def _disk(repository: Path) -> int:
    return sum({os.stat(p).st_ino: os.stat(p).st_size for p in repository.rglob("*") if p.is_file()}.values())


def _version_bytes(repository: Path, version: int) -> int:
    files = [p for m in mcfg.STEP_MODELS for p in (repository / m / str(version)).rglob("*") if p.is_file()]
    return sum({os.stat(p).st_ino: os.stat(p).st_size for p in files}.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--items", type=int, default=1000, help="new films in the file")
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--k", type=int, default=1000, help="candidates per head per request")
    args = parser.parse_args()
    repo = args.repository
    source = max(layout.complete_versions(repo, mcfg.STEP_MODELS))
    catalogue = load_table(repo / "preprocess" / str(source) / layout.CATALOGUE_FILE)
    first = int(catalogue[-1]) + 1
    rng = np.random.default_rng(0)
    new = Path(tempfile.mkdtemp()) / "new.jsonl"
    new.write_text("".join(json.dumps({"id": first + i, "title": f"New film {i}", "year": int(rng.integers(1950, 2025)),
                                       "genres": list(rng.choice(GENRES, int(rng.integers(1, 3)), replace=False))})
                           + "\n" for i in range(args.items)))
    version_bytes = _version_bytes(repo, source)
    with TritonServer(repo) as server:
        stop = threading.Event()
        outcomes: list[tuple[str, tuple[str, ...]]] = []

        def client(i: int) -> None:
            url, protocol = (server.grpc_url, "grpc") if i % 2 == 0 else (server.http_url, "http")
            seeds = np.random.default_rng(i)
            with WidefunnelClient(url, protocol, 120.0) as c:
                while not stop.is_set():
                    try:
                        rec = c.recommend([int(catalogue[seeds.integers(len(catalogue))])], top_n=10,
                                          candidates=args.k)
                        outcomes.append(("", tuple(rec.fingerprint)))
                    except Exception as exc:  # noqa: BLE001 - counted and shown
                        outcomes.append((str(exc)[:200], ()))

        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(args.clients)]
        for t in threads:
            t.start()
        time.sleep(5)
        disk = _disk(repo)
        env = os.environ | {ADMIN_KEY_ENV: server.admin_key}
        cmd = ["/usr/bin/time", "-v", str(Path(sys.executable).with_name("widefunnel")), "items", "add", str(new),
               "--repository", str(repo), "--url", server.http_url]
        t0 = time.monotonic()
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.monotonic() - t0
        time.sleep(5)
        stop.set()
        for t in threads:
            t.join(timeout=180)
    if done.returncode:
        raise SystemExit(done.stdout + done.stderr)
    written = _disk(repo) - disk
    peak = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
    in_call = float(re.search(r"added to build \d+ in (\d+)s", done.stdout).group(1))
    swap_s = float(re.search(r"serving version \d+, was \d+ \(([\d.]+)s\)", done.stdout).group(1))
    builds = layout.read_builds(repo)
    fps = {builds[str(source)]["fingerprint"], builds[str(source + 1)]["fingerprint"]}
    failed = [o for o in outcomes if o[0]]
    mixed = [o for o in outcomes if not o[0] and (len(set(o[1])) != 1 or o[1][0] not in fps)]
    print(f"{repo}: {len(catalogue):,} items, version {source} -> {source + 1}, {args.items} films added\n")
    print("| add, in call | add + swap, wall | swap | peak RSS | bytes on disk | share of the version | requests | "
          "failed | mixed |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {in_call:.0f} s | {wall:.1f} s | {swap_s:.1f} s | {peak / 1024:,.0f} MiB | {written:,} | "
          f"{written / version_bytes:.2%} of {version_bytes:,} | {len(outcomes)} | {len(failed)} | {len(mixed)} |")
    if failed:
        print("first failures:", [o[0] for o in failed[:3]])


if __name__ == "__main__":
    main()
