"""What the gateway costs: the ensemble through the gateway vs tritonserver's own port, same server, same run.

    .venv/bin/python benchmarks/bench_gateway.py --repository model_repository [--requests 400]

Batch 1 (real seeds), gRPC and HTTP, concurrency 1 and 8; the two paths are measured interleaved in rounds of
50 requests so that the shared machine's noise falls on both. Prints p50/p99 latency and throughput, and the
ratio gateway / direct.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

from widefunnel.client.client import WidefunnelClient
from widefunnel.security import with_keys
from widefunnel.server import TritonServer


def _seeds(repository: Path, n: int) -> np.ndarray:
    catalogue = sorted(repository.glob("preprocess/*/catalogue.npy"))[-1]
    return np.random.default_rng(0).choice(np.load(catalogue), n)


def _run(url: str, protocol: str, seeds: np.ndarray, concurrency: int, gateway_key: str | None = None
         ) -> tuple[list[float], float]:
    """Latencies (ms) of every request and the wall time of all of them (``gateway_key``: for tritonserver's
    own port, which answers only the gateway)."""
    latencies: list[float] = []
    lock = threading.Lock()
    parts = np.array_split(seeds, concurrency)

    def worker(part: np.ndarray) -> None:
        with WidefunnelClient(url, protocol) as client:
            with_keys(client.client, gateway_key=gateway_key, protocol=protocol)
            for seed in part:
                start = time.perf_counter()
                client.recommend([int(seed)], top_n=10)
                with lock:
                    latencies.append((time.perf_counter() - start) * 1e3)

    threads = [threading.Thread(target=worker, args=(p,)) for p in parts]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--requests", type=int, default=400, help="per path, protocol and concurrency")
    parser.add_argument("--round", type=int, default=50)
    args = parser.parse_args(argv)
    seeds = _seeds(args.repository, args.requests)
    rows = []
    with TritonServer(args.repository) as server:
        paths = {"gateway": {"http": server.http_url, "grpc": server.grpc_url},
                 "direct": {"http": server.triton_http_url, "grpc": server.triton_grpc_url}}
        keys = {"gateway": None, "direct": server.gateway_key}
        for protocol in ("grpc", "http"):
            for concurrency in (1, 8):
                for path in paths:  # warm-up
                    _run(paths[path][protocol], protocol, seeds[:40], concurrency, keys[path])
                result = {p: ([], 0.0) for p in paths}
                for r0 in range(0, args.requests, args.round):
                    for path in paths:
                        lat, wall = _run(paths[path][protocol], protocol, seeds[r0:r0 + args.round], concurrency,
                                         keys[path])
                        result[path] = (result[path][0] + lat, result[path][1] + wall)
                stats = {p: (statistics.median(lat), float(np.percentile(lat, 99)), len(lat) / wall)
                         for p, (lat, wall) in result.items()}
                rows.append((protocol, concurrency, stats))
    print(f"ensemble `widefunnel`, batch 1, {args.requests} requests per cell, interleaved rounds of {args.round}\n")
    print("| protocol | concurrency | direct p50 ms | gateway p50 ms | p50 ratio | direct p99 | gateway p99 | "
          "direct req/s | gateway req/s | throughput ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for protocol, concurrency, s in rows:
        d, g = s["direct"], s["gateway"]
        print(f"| {protocol} | {concurrency} | {d[0]:.2f} | {g[0]:.2f} | {g[0] / d[0]:.2f}x | {d[1]:.2f} | "
              f"{g[1]:.2f} | {d[2]:.0f} | {g[2]:.0f} | {g[2] / d[2]:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
