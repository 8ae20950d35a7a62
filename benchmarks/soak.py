"""Bounded soak of the served ensemble: concurrency C for S seconds over HTTP and gRPC (asyncio clients),
counting failures and sampling the resident memory of tritonserver and its Python stubs.

    .venv/bin/python benchmarks/soak.py --repository model_repository --concurrency 16 --seconds 60
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

import numpy as np

from widefunnel.client.client import AsyncWidefunnelClient
from widefunnel.server import TritonServer, tree_rss_kib


async def soak(server: TritonServer, concurrency: int, seconds: float, sample_every: float) -> None:
    counts = {"ok": 0, "failed": 0}
    errors: list[str] = []
    latencies: list[float] = []
    seeds_pool = np.load(sorted((Path(server.repository) / "preprocess").glob("[0-9]*"))[-1] / "catalogue.npy")

    async def worker(i: int, deadline: float) -> None:
        protocol = "grpc" if i % 2 else "http"
        client = AsyncWidefunnelClient(server.grpc_url if i % 2 else server.http_url, protocol)
        rng = np.random.default_rng(i)
        while time.monotonic() < deadline:
            seeds = rng.choice(seeds_pool, size=int(rng.integers(1, 9)))
            start = time.perf_counter()
            try:
                await client.recommend(seeds, top_n=10)
                counts["ok"] += 1
                latencies.append(time.perf_counter() - start)
            except Exception as exc:  # noqa: BLE001 - counted and shown
                counts["failed"] += 1
                errors.append(str(exc)[:160])
        await client.close()

    async def sampler(deadline: float) -> None:
        t0 = time.monotonic()
        print("| t (s) | requests ok | failed | RSS server+stubs (MiB) |")
        print("|---:|---:|---:|---:|")
        while time.monotonic() < deadline:
            rss = tree_rss_kib(server.process.pid) / 1024
            print(f"| {time.monotonic() - t0:5.0f} | {counts['ok']} | {counts['failed']} | {rss:.0f} |", flush=True)
            await asyncio.sleep(sample_every)
        rss = tree_rss_kib(server.process.pid) / 1024
        print(f"| {time.monotonic() - t0:5.0f} | {counts['ok']} | {counts['failed']} | {rss:.0f} |")

    deadline = time.monotonic() + seconds
    await asyncio.gather(sampler(deadline), *(worker(i, deadline) for i in range(concurrency)))
    lat = np.array(latencies) * 1e3
    print(f"\nconcurrency {concurrency}, {seconds:.0f} s: {counts['ok']} ok, {counts['failed']} failed, "
          f"{counts['ok'] / seconds:.1f} req/s, latency p50 {np.percentile(lat, 50):.1f} ms, "
          f"p99 {np.percentile(lat, 99):.1f} ms")
    if errors:
        print("first errors:", errors[:3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--sample-every", type=float, default=10)
    args = parser.parse_args()
    with TritonServer(args.repository) as server:
        asyncio.run(soak(server, args.concurrency, args.seconds, args.sample_every))


if __name__ == "__main__":
    main()
