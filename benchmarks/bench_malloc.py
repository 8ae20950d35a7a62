"""What the stubs' allocator settings cost a wide request, served (issue 16; `server_environment`).

Each variant starts its own server on the same repository with glibc's malloc told otherwise (environment
variables the stubs inherit), then times the same wide requests over gRPC (after one warm-up request per
cell) and reads the whole server tree's resident size at the end:

  before    MALLOC_MMAP_THRESHOLD_ 256 KiB, MALLOC_TRIM_THRESHOLD_ 1 MiB (every block over 256 KiB mapped and
            returned: each wide request page-faults all of its tensors again)
  reserve   32 MiB / 32 MiB (blocks under 32 MiB reused from the heap), no huge pages
  now       32 MiB / 4 MiB and GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (the default)

Variants run one after another (a server each), so compare them within one run only.

    .venv/bin/python benchmarks/bench_malloc.py --repository benchmarks/out/wide_1m
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")

VARIANTS = {
    "before": {"MALLOC_MMAP_THRESHOLD_": str(256 << 10), "MALLOC_TRIM_THRESHOLD_": str(1 << 20),
               "GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"},
    "reserve": {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(32 << 20),
                "GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"},
    "now": {},
}
CELLS = ((10_000, 1), (10_000, 8), (100_000, 8))


def run(repository: Path, requests: int) -> str:
    from widefunnel.client.client import WidefunnelClient
    from widefunnel.client.perf import sample_seeds
    from widefunnel.evaluation.pipeline import InProcessFunnel
    from widefunnel.server import TritonServer, tree_rss_kib

    version = InProcessFunnel(repository).versions["preprocess"]
    seeds = sample_seeds(repository, version, 8 * (requests + 1), seed=5)
    lines = ["| variant | " + " | ".join(f"K = {k:,} x {b} seeds, ms" for k, b in CELLS) + " | tree RSS at end, MiB |",
             "|---|" + "---:|" * (len(CELLS) + 1)]
    for name, env in VARIANTS.items():
        cells = []
        with TritonServer(repository, env=env) as server, WidefunnelClient(server.grpc_url, "grpc") as client:
            for k, batch in CELLS:
                times = []
                for i in range(requests + 1):  # the first warms up
                    chunk = seeds[i * batch:(i + 1) * batch]
                    t0 = time.perf_counter()
                    client.recommend(chunk, top_n=100, candidates=k)
                    if i:
                        times.append(time.perf_counter() - t0)
                cells.append(f"{np.median(times) * 1e3:.1f}")
            rss = tree_rss_kib(server.process.pid) // 1024
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {rss:,} |")
        print(lines[-1], flush=True)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--requests", type=int, default=5, help="timed requests per cell and variant")
    args = parser.parse_args(argv)
    print(run(args.repository, args.requests))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
