"""Resident memory of a served repository's whole process tree (issue 30, point 4): the gateway, tritonserver and
every Python stub, each with its RSS, its PSS (shared pages divided among the processes that map them, so the
PSS column sums to what the tree really takes) and its anonymous memory (what no file backs: the heap, copies
of tables; mapped tables are file pages in the page cache, which the kernel can drop and read again), after a
round of requests has touched the tables.

    .venv/bin/python benchmarks/server_memory.py REPOSITORY [REPOSITORY ...] [--requests 200]

Several repositories are served one after the other in the same run, for a before/after comparison.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from widefunnel import layout
from widefunnel.arrays import load_table
from widefunnel.client.client import WidefunnelClient
from widefunnel.model_configs import STEP_MODELS
from widefunnel.server import TritonServer
from widefunnel.server.processes import children, instance_stubs, smaps_kib, stub_processes


def measure(repository: Path, requests: int, k: int) -> list[tuple[str, int, int, int]]:
    """[(process, RSS KiB, PSS KiB, anonymous KiB)] of the served tree after ``requests`` recommendations."""
    version = max(layout.complete_versions(repository, STEP_MODELS))
    catalogue = load_table(repository / "preprocess" / str(version) / layout.CATALOGUE_FILE)
    seeds = np.random.default_rng(0).choice(catalogue, requests)
    server = TritonServer(repository).start()
    try:
        with WidefunnelClient(server.grpc_url, "grpc", 60.0) as client:
            for seed in seeds:
                client.recommend([int(seed)], top_n=10, candidates=k)
        time.sleep(1.0)
        rows = [("gateway", server.gateway_process.pid), ("tritonserver", server.process.pid)]
        stubs = instance_stubs(stub_processes(server.process.pid))
        rows += [(f"stub {stub[0]} v{stub[1]}", pid) for pid, stub in sorted(stubs.items(), key=lambda s: s[1])]
        known = {pid for _, pid in rows}
        rows += [("other child", pid) for pid in children(server.process.pid) if pid not in known]
        return [(name, smaps_kib(pid, "Rss"), smaps_kib(pid, "Pss"), smaps_kib(pid, "Anonymous")) for name, pid in rows]
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("repositories", type=Path, nargs="+")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--k", type=int, default=1000, help="candidates per head per request")
    args = parser.parse_args()
    results = {repo: measure(repo, args.requests, args.k) for repo in args.repositories}
    names = list(dict.fromkeys(row[0] for rows in results.values() for row in rows))
    by_name = {repo: {row[0]: row for row in rows} for repo, rows in results.items()}
    print(f"\n{args.requests} recommendations (K={args.k}) each, then RSS / PSS / anonymous in MiB")
    print("| process | " + " | ".join(f"{r.name}: RSS | PSS | anon" for r in results) + " |")
    print("|---|" + "---:|---:|---:|" * len(results))
    for name in names:
        cells = " | ".join(" | ".join(f"{v / 1024:,.0f}" for v in rows[name][1:]) if name in rows else "- | - | -"
                           for rows in by_name.values())
        print(f"| {name} | {cells} |")
    print("| **tree** | " + " | ".join(" | ".join(f"**{sum(r[j] for r in rows) / 1024:,.0f}**" for j in (1, 2, 3))
                                      for rows in results.values()) + " |")

if __name__ == "__main__":
    main()
