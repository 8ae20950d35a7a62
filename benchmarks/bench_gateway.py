"""What the gateway costs: the ensemble through the gateway vs tritonserver's own port, same server, same run.

    .venv/bin/python benchmarks/bench_gateway.py --repository model_repository [--requests 400]

Batch 1 (real seeds), gRPC and HTTP, concurrency 1 and 8; the paths are measured interleaved in rounds of
50 requests so that the shared machine's noise falls on all. Prints p50/p99 latency and throughput, and the
ratio gateway / direct. `--baseline-python OTHER/.venv/bin/python` adds a third path: another checkout's gateway
in front of the same tritonserver (its clients send the gateway key themselves when it predates the key), so a
change to the gateway is measured against the previous one in the same run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from widefunnel.client.client import WidefunnelClient
from widefunnel.security import GATEWAY_KEY_ENV, with_keys
from widefunnel.server import TritonServer
from widefunnel.server.ports import free_port


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


def _gateway_process(python: str, server: TritonServer, repository: Path | None, workdir: Path) -> tuple[
        subprocess.Popen, dict[str, str]]:
    """Another gateway in front of the same tritonserver: ``python -m widefunnel.gateway`` of any checkout (the
    baseline's interpreter has its own package), on free ports; ``repository`` for gateways that take one."""
    http, grpc_port, metrics = free_port(), free_port(), free_port()
    command = [python, "-m", "widefunnel.gateway", "--http", f"127.0.0.1:{http}", "--grpc", f"127.0.0.1:{grpc_port}",
               "--metrics", f"127.0.0.1:{metrics}", "--http-upstream", server.triton_http_url,
               "--grpc-upstream", server.triton_grpc_url]
    if repository is not None:
        command += ["--repository", str(repository)]
    env = dict(os.environ, **({GATEWAY_KEY_ENV: server.gateway_key} if server.gateway_key else {}))
    log = open(workdir / f"gateway-{http}.log", "wb")  # noqa: SIM115 - lives as long as the process
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with WidefunnelClient(f"127.0.0.1:{http}", "http") as client:
                if client.ready():
                    break
        except Exception:  # noqa: BLE001 - not listening yet
            time.sleep(0.3)
    return proc, {"http": f"127.0.0.1:{http}", "grpc": f"127.0.0.1:{grpc_port}"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--requests", type=int, default=400, help="per path, protocol and concurrency")
    parser.add_argument("--round", type=int, default=50)
    parser.add_argument("--baseline-python", default=None,
                        help="the interpreter of another checkout: its gateway joins the run as a third path "
                             "(e.g. the previous release's venv/bin/python)")
    parser.add_argument("--baseline-takes-repository", action="store_true",
                        help="the baseline gateway takes --repository (checkouts from the one-door work on)")
    args = parser.parse_args(argv)
    seeds = _seeds(args.repository, args.requests)
    rows = []
    baseline = None
    with TritonServer(args.repository) as server, tempfile.TemporaryDirectory() as workdir:
        paths = {"gateway": {"http": server.http_url, "grpc": server.grpc_url},
                 "direct": {"http": server.triton_http_url, "grpc": server.triton_grpc_url}}
        # a baseline from before the gateway key forwards the clients' headers: they send the key through it
        keys = {"gateway": None, "direct": server.gateway_key,
                "baseline": None if args.baseline_takes_repository else server.gateway_key}
        if args.baseline_python:
            baseline, paths["baseline"] = _gateway_process(
                args.baseline_python, server, args.repository if args.baseline_takes_repository else None,
                Path(workdir))
        try:
            for protocol in ("grpc", "http"):
                for concurrency in (1, 8):
                    for path in paths:  # warm-up
                        _run(paths[path][protocol], protocol, seeds[:40], concurrency, keys[path])
                    result = {p: ([], 0.0) for p in paths}
                    for r0 in range(0, args.requests, args.round):
                        for path in paths:
                            lat, wall = _run(paths[path][protocol], protocol, seeds[r0:r0 + args.round],
                                             concurrency, keys[path])
                            result[path] = (result[path][0] + lat, result[path][1] + wall)
                    stats = {p: (statistics.median(lat), float(np.percentile(lat, 99)), len(lat) / wall)
                             for p, (lat, wall) in result.items()}
                    rows.append((protocol, concurrency, stats))
        finally:
            if baseline is not None:
                baseline.terminate()
                baseline.wait(10)
    print(f"ensemble `widefunnel`, batch 1, {args.requests} requests per cell, interleaved rounds of {args.round}\n")
    extra = "baseline p50 ms | baseline p50 ratio | baseline req/s | " if baseline is not None else ""
    print("| protocol | concurrency | direct p50 ms | gateway p50 ms | p50 ratio | direct p99 | gateway p99 | "
          f"direct req/s | gateway req/s | throughput ratio | {extra}")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" * 3 if baseline is not None else ""))
    for protocol, concurrency, s in rows:
        d, g = s["direct"], s["gateway"]
        line = (f"| {protocol} | {concurrency} | {d[0]:.2f} | {g[0]:.2f} | {g[0] / d[0]:.2f}x | {d[1]:.2f} | "
                f"{g[1]:.2f} | {d[2]:.0f} | {g[2]:.0f} | {g[2] / d[2]:.2f}x |")
        if "baseline" in s:
            b = s["baseline"]
            line += f" {b[0]:.2f} | {b[0] / d[0]:.2f}x | {b[2]:.0f} |"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
