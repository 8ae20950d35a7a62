"""Sharded ANN: scatter-gather overhead vs one server holding the same index, the merge's cost as S grows,
and the per-item serving costs the capacity model in benchmarks/RESULTS.md is built from.

    .venv/bin/python benchmarks/bench_sharding.py                 # 200k items x 64 d, S = 2, 3
    .venv/bin/python benchmarks/bench_sharding.py --items 50000 --requests 40   # quicker

Everything runs on loopback on this machine: the single server, S shard servers and the router. With
OMP_NUM_THREADS=1 per server, a single server scans with one core while S shards scan with S; on a box with
fewer free cores than S + 1 the shards queue for CPU, which this benchmark measures rather than hides.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

from widefunnel.ann.index import build_index
from widefunnel.builders import shards as sb
from widefunnel.cli.cluster import LocalCluster, _parallel
from widefunnel.client.client import build_inputs
from widefunnel.server import Ports, TritonServer
from widefunnel.sharding import merge_topk

MODEL = "ann_engagement"
OUTPUTS = ("CANDIDATE_ID", "CANDIDATE_SCORE", "FINGERPRINT")


def _inputs(queries: np.ndarray, k: int) -> list:
    return build_inputs(grpcclient, {"QUERY": queries, "K": np.full((len(queries), 1), k, np.int32)})


def _compute_us(url: str, model: str) -> tuple[int, int]:
    """(successful requests, cumulative compute_infer us) of a model, from Triton's statistics API."""
    with grpcclient.InferenceServerClient(url) as c:
        stats = c.get_inference_statistics(model, as_json=True)["model_stats"]
    count = sum(int(s["inference_stats"]["success"].get("count", 0)) for s in stats)
    ns = sum(int(s["inference_stats"]["compute_infer"].get("ns", 0)) for s in stats)
    return count, ns // 1000


def _stats(times: list[float]) -> dict:
    times = sorted(times)
    return {"p50": statistics.median(times), "p99": times[min(len(times) - 1, int(0.99 * len(times)))],
            "mean": statistics.fmean(times), "n": len(times)}


def latency(targets: dict[str, str], queries: np.ndarray, batch: int, k: int, requests: int, rng) -> dict:
    """Sequential requests (concurrency 1), interleaved across targets (the same queries, one request to each
    in turn), so that load from elsewhere on the machine hits every target alike. -> {target: ms stats}."""
    clients = {name: grpcclient.InferenceServerClient(url) for name, url in targets.items()}
    wanted = [grpcclient.InferRequestedOutput(o) for o in OUTPUTS]
    times: dict[str, list[float]] = {name: [] for name in targets}
    try:
        for i in range(requests + 3):
            inputs = _inputs(queries[rng.integers(0, len(queries), batch)], k)
            names = list(targets)
            for name in names[i % len(names):] + names[:i % len(names)]:
                start = time.perf_counter()
                result = clients[name].infer(MODEL, inputs, outputs=wanted)
                elapsed = time.perf_counter() - start
                assert result.as_numpy("CANDIDATE_ID").shape[0] == batch
                if i >= 3:  # warm-up
                    times[name].append(elapsed * 1e3)
    finally:
        for client in clients.values():
            client.close()
    return {name: _stats(t) for name, t in times.items()}


def _rss_mb(server: TritonServer) -> float:
    """Resident memory of the server's whole process group (tritonserver + Python stubs), MiB."""
    pgid, total = server.process.pid, 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) != pgid:
                continue
            fields = (entry / "statm").read_text().split()
            total += int(fields[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ProcessLookupError):
            continue
    return total / 2**20


def merge_cost(dim: int, repeats: int = 20) -> list[dict]:
    """In-process cost of the exact merge (router CPU) as S grows, ids + scores only and with embeddings."""
    rng = np.random.default_rng(0)
    rows = []
    for k in (100, 10_000):
        for batch in (1, 32):
            for shards in (2, 4, 8, 16, 32, 64):
                ids = [rng.integers(0, 2**40, (batch, k)) for _ in range(shards)]
                scores = [np.sort(rng.random((batch, k), np.float32), axis=1)[:, ::-1].copy() for _ in range(shards)]
                emb = [rng.random((batch, k, dim), np.float32) for _ in range(shards)] if k * shards <= 20_000 \
                    else None
                best = {}
                for name, e in (("ids+scores", None), ("with embeddings", emb)):
                    if name == "with embeddings" and e is None:
                        continue
                    t = []
                    for _ in range(repeats if k * shards * batch <= 2_000_000 else 3):
                        start = time.perf_counter()
                        merge_topk(ids, scores, k, e)
                        t.append(time.perf_counter() - start)
                    best[name] = min(t) * 1e3
                rows.append({"k": k, "batch": batch, "shards": shards, **{f"ms {n}": v for n, v in best.items()}})
    return rows


@contextlib.contextmanager
def _removed(path: Path):
    """Delete a scratch repository when done (the 2M-item one is ~150 MB)."""
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def per_item_costs(dim: int, sizes: tuple[int, ...], requests: int = 20) -> list[dict]:
    """One single server per index size: resident memory after every row was scanned, and the server-side
    compute time of batch-32 k=100 requests. Slopes between sizes give the per-item costs."""
    rows = []
    for items in sizes:
        rng = np.random.default_rng(items)
        index = build_index(rng.normal(size=(items, dim)).astype(np.float32), np.arange(items), "5eed5eed")
        root = Path(tempfile.mkdtemp(prefix="bench-items-"))
        sb.write_index_repository(root, {1: index}, k=100, max_k=100_000, emit_embeddings=False)
        del index
        with TritonServer(root, Ports().resolved()) as server, _removed(root):
            queries = rng.normal(size=(256, dim)).astype(np.float32)
            latency({"one": server.grpc_url}, queries, 32, 100, 2, rng)  # touch every page of the mmap'd codes
            before = _compute_us(server.grpc_url, MODEL)
            timing = latency({"one": server.grpc_url}, queries, 32, 100, requests, rng)["one"]
            after = _compute_us(server.grpc_url, MODEL)
            rows.append({"items": items, "rss_mb": _rss_mb(server), "p50 ms": timing["p50"],
                         "compute ms": (after[1] - before[1]) / max(after[0] - before[0], 1) / 1e3})
        print(f"single server, {items} items: RSS {rows[-1]['rss_mb']:.0f} MiB, batch 32 k 100 compute "
              f"{rows[-1]['compute ms']:.1f} ms/request", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--requests", type=int, default=60, help="per (config, batch, k); a third for k=10000")
    parser.add_argument("--shards", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--json", type=Path, default=None, help="also write the raw numbers here")
    parser.add_argument("--cost-sizes", type=int, nargs="*", default=[200_000, 2_000_000],
                        help="index sizes for the per-item memory / scan-time slopes (none: skip)")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.items, args.dim)).astype(np.float32)
    index = build_index(x, rng.permutation(10 * args.items)[:args.items], "5eed5eed")
    queries = rng.normal(size=(1024, args.dim)).astype(np.float32)
    root = Path(tempfile.mkdtemp(prefix="bench-sharding-"))
    src = root / "source"
    sb.write_index_repository(src, {1: index}, k=100, max_k=100_000, emit_embeddings=False)
    single = TritonServer(src, Ports().resolved())
    clusters = {s: LocalCluster(src, s, workdir=root / f"s{s}", instances=2) for s in args.shards}
    print(f"index: {args.items} items x {args.dim} d int8 ({index.nbytes / 2**20:.1f} MiB); starting 1 + "
          f"{sum(s + 1 for s in args.shards)} servers ...", flush=True)
    results: dict = {"items": args.items, "dim": args.dim, "cpus": os.cpu_count(), "latency": [], "memory": []}
    try:
        _parallel([single.start] + [c.start for c in clusters.values()])
        targets = {"single": single.grpc_url} | {f"S={s}": c.router.grpc_url for s, c in clusters.items()}
        for batch in (1, 32):
            for k in (100, 10_000):
                n = args.requests if k == 100 else max(10, args.requests // 3)
                before = _compute_us(single.grpc_url, MODEL)
                rows = latency(targets, queries, batch, k, n, np.random.default_rng(batch * k))
                after = _compute_us(single.grpc_url, MODEL)
                rows["single"]["server compute ms"] = (after[1] - before[1]) / max(after[0] - before[0], 1) / 1e3
                for name, row in rows.items():
                    results["latency"].append({"config": name, "batch": batch, "k": k, **row})
                    print(f"{name:>7} batch {batch:>2} k {k:>6}: p50 {row['p50']:8.2f} ms  p99 {row['p99']:8.2f} ms  "
                          f"mean {row['mean']:8.2f} ms  (n={row['n']})", flush=True)
        results["memory"].append({"server": "single", "items": index.count, "rss_mb": _rss_mb(single)})
        for s, cluster in clusters.items():
            for i, server in enumerate(cluster.shard_servers):
                rows = json.loads((cluster.workdir / "shards" / f"shard-{i}" / MODEL / "1" / sb.SHARD_FILE).read_text())
                results["memory"].append({"server": f"S={s} shard {i}", "items": rows["row_stop"] - rows["row_start"],
                                          "rss_mb": _rss_mb(server)})
            results["memory"].append({"server": f"S={s} router", "items": 0, "rss_mb": _rss_mb(cluster.router)})
    finally:
        for cluster in clusters.values():
            cluster.stop()
        single.stop()
        single.cleanup()
        shutil.rmtree(root, ignore_errors=True)

    results["merge"] = merge_cost(args.dim)
    results["per_item"] = per_item_costs(args.dim, tuple(args.cost_sizes)) if args.cost_sizes else []
    print("\n| batch | k | one server p50 / p99 ms | " + " | ".join(
        f"S={s} router p50 / p99 ms | S={s} overhead p50" for s in args.shards) + " |")
    print("|---|---|---|" + "---|---|" * len(args.shards))
    for batch in (1, 32):
        for k in (100, 10_000):
            cell = {r["config"]: r for r in results["latency"] if r["batch"] == batch and r["k"] == k}
            one = cell["single"]
            line = f"| {batch} | {k} | {one['p50']:.2f} / {one['p99']:.2f} |"
            for s in args.shards:
                r = cell[f"S={s}"]
                extra = r["p50"] - one["p50"]
                line += f" {r['p50']:.2f} / {r['p99']:.2f} | {extra:+.2f} ms ({r['p50'] / one['p50']:.2f}x) |"
            print(line)
    print("\n| server | items | RSS MiB |\n|---|---|---|")
    for m in results["memory"]:
        print(f"| {m['server']} | {m['items']} | {m['rss_mb']:.0f} |")
    print("\n| k | batch | S | merge ms (ids+scores) | merge ms (with embeddings) |\n|---|---|---|---|---|")
    for m in results["merge"]:
        emb = f"{m['ms with embeddings']:.3f}" if "ms with embeddings" in m else "-"
        print(f"| {m['k']} | {m['batch']} | {m['shards']} | {m['ms ids+scores']:.3f} | {emb} |")
    costs = results["per_item"]
    if len(costs) >= 2:
        (a, b) = costs[0], costs[-1]
        per_item_bytes = (b["rss_mb"] - a["rss_mb"]) * 2**20 / (b["items"] - a["items"])
        per_item_ns = (b["compute ms"] - a["compute ms"]) * 1e6 / (b["items"] - a["items"]) / 32
        results["slopes"] = {"rss_bytes_per_item": per_item_bytes, "scan_ns_per_query_item": per_item_ns}
        print("\n| items | RSS MiB | batch 32 k 100: p50 ms | server compute ms |\n|---|---|---|---|")
        for c in costs:
            print(f"| {c['items']} | {c['rss_mb']:.0f} | {c['p50 ms']:.1f} | {c['compute ms']:.1f} |")
        print(f"\nslopes: {per_item_bytes:.1f} resident bytes per item; {per_item_ns:.2f} ns of scan per "
              f"(query, item) at batch 32 (one core)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
