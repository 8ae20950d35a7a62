"""What does serving the funnel as one Triton ensemble cost, beyond the models' own work?

Three ways to answer the same batch-1 request (one seed, default alpha/top_n), measured interleaved round-robin
on the same seeds so that drift on a shared machine hits all three alike:

  ensemble      one gRPC request to `widefunnel` (Triton routes the tensors between the steps in-process)
  direct chain  the same step models called one after another, one gRPC request each (DirectChain, wired as
                the ensemble wires them; 9 calls: composite_scorer runs once per head)
  in-process    `widefunnel.evaluation.pipeline.InProcessFunnel`: the same ONNX files, ANN and merge code in this
                process

All three must return the same item ids for every seed (checked). Then, from Triton's statistics API, where an
ensemble request spends its time server-side: per step, queue time (dynamic batching waits up to
`max_queue_delay_microseconds` for company) and compute time (which includes each Python-based step's IPC to its
stub). Usage:

    .venv/bin/python benchmarks/ensemble_overhead.py --repository model_repository            # starts a server
    .venv/bin/python benchmarks/ensemble_overhead.py --repository model_repository --queue-delay-us 0
    .venv/bin/python benchmarks/ensemble_overhead.py --repository model_repository --grpc-url 127.0.0.1:8001
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")


def percentiles(samples_s: list[float]) -> dict[str, float]:
    ms = np.asarray(samples_s) * 1e3
    return {"p50": float(np.percentile(ms, 50)), "p90": float(np.percentile(ms, 90)),
            "p99": float(np.percentile(ms, 99)), "mean": float(ms.mean())}


def measure(grpc_url: str, repository: Path, requests: int, warmup: int, seed: int = 0,
            admin_key: str | None = None) -> dict:
    import tritonclient.grpc as grpc

    from widefunnel.client.perf import DirectChain, sample_seeds, served_steps
    from widefunnel.evaluation.pipeline import InProcessFunnel
    from widefunnel.security import read_key, with_admin_key

    # reading the served steps' configs is a restricted API: the server's key
    client = with_admin_key(grpc.InferenceServerClient(grpc_url), admin_key or read_key(), "grpc")
    steps = served_steps(client)
    chain = DirectChain(client, steps)
    local = InProcessFunnel(repository)
    if local.versions != {s.model: s.version for s in steps}:
        raise SystemExit(f"the server pins {[(s.model, s.version) for s in steps]} but {repository} pins "
                         f"{local.versions}: measure the build that is served")
    outputs = [grpc.InferRequestedOutput(n) for n in ("item_id", "score", "source_head", "task_probs", "fingerprint")]
    seeds = sample_seeds(repository, steps[0].version, requests + warmup, seed)

    def ensemble(request):
        inp = grpc.InferInput("seed_item_id", [1, 1], "INT64")
        inp.set_data_from_numpy(request["seed_item_id"])
        return client.infer("widefunnel", [inp], outputs=outputs).as_numpy("item_id")

    def direct(request):
        return chain.run(request)["item_id"]

    def in_process(request):
        return local.recommend(request["seed_item_id"]).item_id

    methods = {"ensemble (1 gRPC call)": ensemble, "direct chain (9 gRPC calls)": direct,
               "in-process (InProcessFunnel)": in_process}
    times: dict[str, list[float]] = {m: [] for m in methods}
    names = list(methods)
    for i, item in enumerate(seeds):
        request = {"seed_item_id": np.array([[item]], np.int64)}
        answers = {}
        for j in range(len(names)):  # rotate the order so no method always runs first
            name = names[(i + j) % len(names)]
            start = time.perf_counter()
            answers[name] = methods[name](request)
            elapsed = time.perf_counter() - start
            if i >= warmup:
                times[name].append(elapsed)
        ids = [a.ravel().tolist() for a in answers.values()]
        if any(x != ids[0] for x in ids):
            raise SystemExit(f"seed {item}: the three paths disagree: {dict(zip(names, ids))}")
    client.close()
    return {"requests": requests, "stats": {m: percentiles(t) for m, t in times.items()},
            "versions": sorted({s.version for s in steps})}


def _stats(client) -> dict[tuple[str, str], dict[str, int]]:
    raw = client.get_inference_statistics(as_json=True)["model_stats"]
    return {(m["name"], m["version"]): {k: int(m["inference_stats"][k].get(f, 0)) for k, f in
                                        (("success", "count"), ("queue", "ns"), ("compute_input", "ns"),
                                         ("compute_infer", "ns"), ("compute_output", "ns"))}
            for m in raw}


def server_breakdown(grpc_url: str, seeds: np.ndarray) -> list[dict]:
    """Ensemble-only requests, one at a time; per model: requests, mean queue and compute time per request (ms).

    Every step is a Python-based model with dynamic batching, so each step costs an IPC round trip to its stub
    and, alone in its queue, up to `max_queue_delay_microseconds` of waiting for a batch.
    """
    import tritonclient.grpc as grpc

    client = grpc.InferenceServerClient(grpc_url)
    before = _stats(client)
    for item in seeds:
        inp = grpc.InferInput("seed_item_id", [1, 1], "INT64")
        inp.set_data_from_numpy(np.array([[item]], np.int64))
        client.infer("widefunnel", [inp])
    after = _stats(client)
    client.close()
    rows = []
    for key, stats in after.items():
        d = {k: v - before.get(key, {}).get(k, 0) for k, v in stats.items()}
        if d["success"] > 0:
            n = len(seeds)  # per ensemble request (composite_scorer runs twice per request)
            rows.append({"model": key[0], "version": key[1], "calls": d["success"] / n,
                         "queue_ms": d["queue"] / n / 1e6,
                         "compute_ms": (d["compute_input"] + d["compute_infer"] + d["compute_output"]) / n / 1e6})
    return sorted(rows, key=lambda r: (r["model"] != "widefunnel", r["model"]))


def breakdown_table(rows: list[dict]) -> str:
    lines = ["| model | calls per request | queue ms per request | compute ms per request |", "|---|---:|---:|---:|"]
    steps = [r for r in rows if r["model"] != "widefunnel"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['calls']:.0f} | {r['queue_ms']:.3f} | {r['compute_ms']:.3f} |")
    lines.append(f"| sum of steps | {sum(r['calls'] for r in steps):.0f} | {sum(r['queue_ms'] for r in steps):.3f} | "
                 f"{sum(r['compute_ms'] for r in steps):.3f} |")
    return "\n".join(lines)


def set_queue_delay(http_url: str, repository: Path, delay_us: int, admin_key: str) -> None:
    """Reload every step model with another dynamic-batching delay (a config override; the disk is untouched)."""
    import tritonclient.http as http

    from widefunnel import model_configs as mcfg
    from widefunnel.security import with_admin_key

    with with_admin_key(http.InferenceServerClient(http_url, network_timeout=300.0), admin_key) as client:
        for model in mcfg.STEP_MODELS:
            config = mcfg.from_pbtxt((repository / model / "config.pbtxt").read_text())
            config.dynamic_batching.max_queue_delay_microseconds = delay_us
            client.load_model(model, config=mcfg.to_json(config))


def table(result: dict) -> str:
    stats = result["stats"]
    base = stats["in-process (InProcessFunnel)"]["p50"]
    lines = ["| path | p50 ms | p90 ms | p99 ms | mean ms | p50 over in-process |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, s in stats.items():
        lines.append(f"| {name} | {s['p50']:.2f} | {s['p90']:.2f} | {s['p99']:.2f} | {s['mean']:.2f} | "
                     f"{s['p50'] - base:+.2f} ms ({s['p50'] / base:.2f}x) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--grpc-url", default=None, help="a running server; default: start one on --repository")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--queue-delay-us", type=int, default=None,
                        help="reload the steps with this max_queue_delay_microseconds first (own server only)")
    args = parser.parse_args(argv)
    if args.queue_delay_us is not None and args.grpc_url is not None:
        parser.error("--queue-delay-us reconfigures the server: only with the server this script starts")
    from widefunnel.server import TritonServer

    with contextlib.ExitStack() as stack:
        url, key = args.grpc_url, None
        if url is None:
            server = stack.enter_context(TritonServer(args.repository))
            url, key = server.grpc_url, server.admin_key
            if args.queue_delay_us is not None:
                set_queue_delay(server.http_url, args.repository, args.queue_delay_us, server.admin_key)
                print(f"steps reloaded with max_queue_delay_microseconds = {args.queue_delay_us}")
        result = measure(url, args.repository, args.requests, args.warmup, admin_key=key)
        from widefunnel.client.perf import sample_seeds

        breakdown = server_breakdown(url, sample_seeds(args.repository, result["versions"][0], args.requests, 1))
    print(f"batch 1, {result['requests']} requests per path (after {args.warmup} warm-up), "
          f"build version {result['versions']}, all three paths returned identical item ids\n")
    print(table(result))
    s = result["stats"]
    ens, chain = s["ensemble (1 gRPC call)"]["p50"], s["direct chain (9 gRPC calls)"]["p50"]
    print("\nserver side, ensemble requests only (statistics API; compute includes each step's IPC to its stub):\n")
    print(breakdown_table(breakdown))
    print(f"\nensemble saves {chain - ens:.2f} ms at p50 over calling the 9 steps directly; it costs "
          f"{ens - s['in-process (InProcessFunnel)']['p50']:.2f} ms over one process")
    return 0


if __name__ == "__main__":
    sys.exit(main())
