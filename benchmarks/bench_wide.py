"""The wide funnel (issue 16): served vs in process vs the floor vs a faiss-based peer, and the bytes that cross
each step boundary.

  default   the default catalogue (1,682 items, K = 200): served (perf_analyzer, gRPC) at batch 1 and 8,
            concurrency 1 and 8, against `InProcessFunnel` on one thread, measured before and after the served
            runs in the same process (the ratio uses their mean)
  scale     a catalogue-scale build (`widefunnel build --items 1000000`): K in {1,000, 10,000, 100,000} per head,
            top_n 100, batch 1 and 8, one request at a time, interleaved round-robin on the same seeds:
            served (gRPC) vs in process (`--threads` ONNX Runtime and scan threads, and once more with one ONNX
            Runtime thread) vs the peer a user would build in one process (faiss IndexFlatIP top-K
            over the same vectors + the same ONNX reranker and scorer + the same merge) vs the floor
            (scan: max(index bytes / copy bandwidth, 2BNd / the faster of the float32 and int8 GEMM rates);
            scoring: reranker and scorer FLOPs / float32 GEMM rate; every rate measured between the cell's own
            rounds, the best taken). Every path's item ids are checked equal to in-process.
  synthetic how the synthetic items of a catalogue-scale build score next to the real ones: per head, the
            quantiles of seed . item over real seeds against all real and all synthetic items, and the synthetic
            share of each seed's top 100 against their share of the catalogue
  fold      the reranker's served form (first layer folded per seed, `Reranker.serve`) against its training
            form (`forward`, [q, c, q*c] concatenated), both exported as the served graph with the same random
            weights over the repository's own item table, timed interleaved in ONNX Runtime on one thread
  cold      one ANN search of the repository's engagement index, warm (back to back) and after this process
            touched 1 to 64 MiB of other memory (as 9 steps' processes do between a stub's calls on 2 cores)
  crossover the exact scan's paths for a batch: the fused int8 GEMV (a pass per query) vs one GEMM per block
            + the compiled filter, the GEMM as torch's int8 `_int_mm` (where it is exact and fast here) and as
            the exact float32 fallback; forced through ``plan._GEMV_MAX_BATCH`` and ``plan.use_int_mm``,
            on the repository's engagement index and on a random 1M x 64 index, batch 1 to 12, k 100 and
            10,000, at ``--threads``; ids checked equal between the paths
  bytes     the bytes each step receives per request (the ensemble's wiring, replayed step by step through
            the server: `client.perf.DirectChain`), now and as before issue 16 (when each ANN step also sent
            its K candidates' float32 embeddings to the reranker: measured by asking an ANN step for them)

    .venv/bin/python benchmarks/bench_wide.py default --repository benchmarks/out/model_repository
    .venv/bin/python benchmarks/bench_wide.py fold --repository benchmarks/out/wide_1m
    .venv/bin/python benchmarks/bench_wide.py cold --repository benchmarks/out/model_repository
    .venv/bin/python benchmarks/bench_wide.py crossover --repository benchmarks/out/wide_1m
    .venv/bin/python benchmarks/bench_wide.py scale --repository benchmarks/out/wide_1m
    .venv/bin/python benchmarks/bench_wide.py synthetic --repository benchmarks/out/wide_1m
    .venv/bin/python benchmarks/bench_wide.py bytes --repository benchmarks/out/wide_1m --k 10000

The catalogue-scale repository: `widefunnel build --items 1000000 --config benchmarks/out/wide.toml` with the
test suite's shortened training and `serving.max_request_candidates = 1000000` (batch 8 x K = 100,000).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")


def _ms(samples: list[float]) -> float:
    return float(np.median(samples) * 1e3)


# ------------------------------------------------------------------------------------------------ the default
def in_process_rate(funnel, seeds: np.ndarray, batch: int, seconds: float = 8.0) -> tuple[float, float]:
    """(p50 ms per request, seeds/s) of ``funnel.recommend`` on one thread, cycling through ``seeds``."""
    times, i, start = [], 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        chunk = np.take(seeds, range(i, i + batch), mode="wrap")
        t0 = time.perf_counter()
        funnel.recommend(chunk)
        times.append(time.perf_counter() - t0)
        i += batch
    return _ms(times), batch * len(times) / sum(times)


def default_part(repository: Path, out: Path) -> str:
    from widefunnel import model_configs as mcfg
    from widefunnel.client.perf import SweepSettings, input_data, run_perf, sample_seeds
    from widefunnel.evaluation.pipeline import InProcessFunnel
    from widefunnel.server import TritonServer

    funnel = InProcessFunnel(repository)
    seeds = sample_seeds(repository, funnel.versions["preprocess"], 256, seed=3)
    data = out / "default_seeds.json"
    data.write_text(__import__("json").dumps(input_data({"seed_item_id": np.array([[s]], np.int64)} for s in seeds)))
    for _ in range(20):
        funnel.recommend(seeds[:8])
    rows = []
    with TritonServer(repository) as server:
        settings = SweepSettings("1,8", measurement_interval_ms=2000, max_trials=6, admin_key=server.admin_key)
        for batch in (1, 8):
            before = in_process_rate(funnel, seeds, batch)
            served = run_perf(mcfg.ENSEMBLE, server.grpc_url, "grpc", data, out, settings, batch=batch)
            after = in_process_rate(funnel, seeds, batch)
            local_p50, local_rate = (before[0] + after[0]) / 2, (before[1] + after[1]) / 2
            for row in served:
                p50, rate = row["p50 latency"] / 1e3, row["Inferences/Second"]
                rows.append(f"| {batch} | {int(row['Concurrency'])} | {p50:.2f} | {local_p50:.2f} | "
                            f"{p50 / local_p50:.2f}x | {rate:.0f} | {local_rate:.0f} | {rate / local_rate:.2f}x |")
    head = ("| batch | concurrency | served p50 ms | in-process p50 ms | p50 ratio | served seeds/s | "
            "in-process seeds/s (1 thread) | throughput ratio |\n|---:|---:|---:|---:|---:|---:|---:|---:|")
    return head + "\n" + "\n".join(rows)


# -------------------------------------------------------------------------------------------------- the scale
class FaissPeer:
    """What a user would build in one process: faiss IndexFlatIP over the same (dequantised) item vectors for
    the top K, then the same ONNX reranker and scorer and the same merge (through ``InProcessFunnel``)."""

    def __init__(self, funnel, threads: int):
        import faiss

        from widefunnel.ann.search import dequantized

        faiss.omp_set_num_threads(threads)
        self.funnel, self.faiss, self.indexes = funnel, faiss, {}
        for head, index in funnel.indexes.items():
            flat = faiss.IndexFlatIP(index.dim)
            flat.add(np.ascontiguousarray(dequantized(index, index.ids)))
            self.indexes[head] = (flat, index.ids)

    def recommend(self, seeds: np.ndarray, top_n: int, k: int):
        from widefunnel.merge import HEADS, merge_batch

        f = self.funnel
        item_id = np.asarray(seeds, np.int64).reshape(-1, 1)
        emb = dict(zip(HEADS, f.tower.run(["EMB_ENGAGEMENT", "EMB_RELEVANCE"], {"ITEM_ID": item_id})))
        keep = np.full((len(item_id), 1), f.limits.default_keep, np.int32)
        weights = np.tile(f.limits.default_value_weights, (len(item_id), 1)).astype(np.float32)
        heads = {}
        for head in HEADS:
            flat, ids = self.indexes[head]
            _, rows = flat.search(emb[head], k + 1)
            found = np.where(rows >= 0, ids[np.maximum(rows, 0)], -1)
            not_seed = found != item_id  # the seed itself is excluded, as the funnel excludes it
            found = np.stack([r[m][:k] for r, m in zip(found, not_seed)])
            kept, _ = f.rerank(head, emb[head], found, keep)
            probs, score = f.scorer.run(["TASK_PROBS", "SCORE"], {"ITEM_ID": item_id, "CANDIDATE_ID": kept,
                                                                  "VALUE_WEIGHTS": weights})
            heads[head] = (kept, score, probs)
        alpha = np.full((len(item_id), 1), f.limits.default_alpha, np.float32)
        return merge_batch(heads["engagement"], heads["relevance"], alpha,
                           np.full((len(item_id), 1), top_n, np.int32)).ids


def _rates(threads: int, repeats: int = 5) -> dict[str, float]:
    """Copy bandwidth (bytes/s, read + write), float32 GEMM rate (FLOP/s) and int8 GEMM rate (torch's
    `_int_mm`, op/s; 0 where it is not exact here), measured now, best of ``repeats`` after one untimed run of
    each (the copy's first run faults its destination in)."""
    import torch

    from widefunnel.ann.search import int_mm_is_exact

    torch.set_num_threads(threads)
    src = np.ones(64 << 20, np.float32)  # 256 MB
    dst = np.empty_like(src)
    np.copyto(dst, src)
    copy = min(_timed(lambda: np.copyto(dst, src)) for _ in range(repeats))
    a, b = torch.randn(256, 96), torch.randn(96, 100_000)
    torch.mm(a, b)
    gemm = min(_timed(lambda: torch.mm(a, b)) for _ in range(repeats))
    int8 = 0.0
    if int_mm_is_exact():
        c, q = torch.ones(65_536, 64, dtype=torch.int8), torch.ones(64, 256, dtype=torch.int8)
        torch._int_mm(c, q)
        int8 = 2 * 65_536 * 64 * 256 / min(_timed(lambda: torch._int_mm(c, q)) for _ in range(repeats))
    return {"bandwidth": 2 * src.nbytes / copy, "gemm": 2 * 256 * 96 * 100_000 / gemm, "int8": int8}


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _flops_per_candidate(path: Path, candidates: int = 1000) -> float:
    """The matmul FLOPs an ONNX graph performs per candidate: its MatMul and Gemm nodes at one seed with
    ``candidates`` candidates (ONNX shape inference), over ``candidates``. Counted from the graph as it runs, so a
    reranker whose first layer is folded per query (`Reranker.serve`: d x h per candidate, not 3d x h) is
    held to the work it does; per-query products come amortised. Item-table lookups are gathers: not counted."""
    import onnx
    from onnx import shape_inference

    model = onnx.load(str(path), load_external_data=False)  # shapes only; tables may be hard links
    for tensor in model.graph.input:  # dim 0 is the batch, dim 1 the candidates
        for axis, dim in enumerate(tensor.type.tensor_type.shape.dim):
            if dim.dim_param:
                dim.dim_value = 1 if axis == 0 else candidates
    model = shape_inference.infer_shapes(model, data_prop=True)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in [*model.graph.value_info, *model.graph.input, *model.graph.output]}
    shapes.update({t.name: list(t.dims) for t in model.graph.initializer})
    flops = 0
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Gemm"):
            continue
        a, b = shapes[node.input[0]], shapes[node.input[1]]
        if not all(a + b):
            raise SystemExit(f"{path}: shape inference left {node.name}'s shapes open ({a}, {b})")
        if node.op_type == "Gemm":
            trans_b = next((attr.i for attr in node.attribute if attr.name == "transB"), 0)
            flops += 2 * a[0] * a[1] * (b[0] if trans_b else b[1])
        else:
            flops += 2 * int(np.prod(a[:-1])) * a[-1] * b[-1]
    return flops / candidates


def floor_ms(funnel, repository: Path, batch: int, k: int, rates: dict[str, float]) -> float:
    v = funnel.versions
    total = 0.0
    for head, index in funnel.indexes.items():
        # int8 x int8 dot products at the faster of this host's int8 and float32 GEMM rates (without VNNI the
        # exact float32 GEMM on integer operands is the faster way to compute them)
        scan = max((index.codes.nbytes + index.scales.nbytes) / rates["bandwidth"],
                   2 * batch * index.count * index.dim / max(rates["gemm"], rates["int8"]))
        rerank = batch * k * _flops_per_candidate(
            repository / f"rerank_{head}" / str(v[f"rerank_{head}"]) / "model.onnx") / rates["gemm"]
        score = batch * funnel.limits.default_keep * _flops_per_candidate(
            repository / "composite_scorer" / str(v["composite_scorer"]) / "model.onnx") / rates["gemm"]
        total += scan + rerank + score
    return total * 1e3


def scale_part(repository: Path, requests: int, threads: int) -> str:
    from widefunnel.client.client import WidefunnelClient
    from widefunnel.client.perf import sample_seeds
    from widefunnel.evaluation.pipeline import InProcessFunnel
    from widefunnel.server import TritonServer

    funnel = InProcessFunnel(repository, threads=threads)
    single = InProcessFunnel(repository, threads=1)  # ONNX Runtime on one thread, as before session 10
    peer = FaissPeer(funnel, threads)
    index = funnel.indexes["engagement"]
    # this host's speed drifts within a run (float32 GEMM measured from 57 to 147 GFLOP/s in one session): each
    # cell's floor uses the rates measured between its own rounds, the best of them
    lines = [f"{threads} threads, N = {index.count:,}, d = {index.dim}; the floor's rates measured in each cell's "
             "rounds (best of them)",
             "", "| K per head | batch | served ms | in-process ms | in-process ms, 1 ORT thread | faiss peer ms | "
             "copy GB/s, GEMM GFLOP/s, int8 GOP/s | floor ms | served / in-process throughput | "
             "in-process share of floor | in-process vs peer |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    seeds = sample_seeds(repository, funnel.versions["preprocess"], 8 * (requests + 1), seed=5)
    with TritonServer(repository) as server, WidefunnelClient(server.grpc_url, "grpc") as client:
        for k in (1000, 10_000, 100_000):
            for batch in (1, 8):
                if batch * k > funnel.limits.max_request_candidates:  # the server refuses it by name
                    lines.append(f"| {k:,} | {batch} | refused: {batch * k:,} candidates in one request, more than "
                                 f"`serving.max_request_candidates` |")
                    print(lines[-1], flush=True)
                    continue
                paths = {"served": lambda s, k=k: client.recommend(s, top_n=100, candidates=k).item_id,
                         "in-process": lambda s, k=k: funnel.recommend(s, top_n=100, candidates=k).item_id,
                         "in-process 1": lambda s, k=k: single.recommend(s, top_n=100, candidates=k).item_id,
                         "peer": lambda s, k=k: peer.recommend(s, 100, k)}
                times = {name: [] for name in paths}
                samples = []
                for i in range(requests + 1):  # the first round warms up
                    samples.append(_rates(threads, repeats=1))
                    chunk = seeds[i * batch:(i + 1) * batch]
                    answers = {}
                    for j in range(len(paths)):
                        name = list(paths)[(i + j) % len(paths)]
                        t0 = time.perf_counter()
                        answers[name] = paths[name](chunk)
                        if i:
                            times[name].append(time.perf_counter() - t0)
                    if not (np.array_equal(answers["served"], answers["in-process"])
                            and np.array_equal(answers["in-process 1"], answers["in-process"])):
                        raise SystemExit(f"K={k} batch={batch}: served and in-process answers differ")
                    same = np.mean([len(set(a) & set(b)) / max(1, len(set(b)))
                                    for a, b in zip(answers["peer"], answers["in-process"])])
                served, local, one, other = (_ms(times[n])
                                             for n in ("served", "in-process", "in-process 1", "peer"))
                rates = {name: max(r[name] for r in samples) for name in samples[0]}
                floor = floor_ms(funnel, repository, batch, k, rates)
                lines.append(f"| {k:,} | {batch} | {served:.1f} | {local:.1f} | {one:.1f} | {other:.1f} | "
                             f"{rates['bandwidth'] / 1e9:.1f}, {rates['gemm'] / 1e9:.0f}, {rates['int8'] / 1e9:.0f} | "
                             f"{floor:.2f} | "
                             f"{local / served:.2f}x | {floor / local:.0%} | {other / local:.2f}x "
                             f"(same items {same:.0%}) |")
                print(lines[-1], flush=True)
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ the fold and cold
def fold_part(repository: Path, rounds: int = 15) -> str:
    import torch

    from widefunnel.ann.index import item_table
    from widefunnel.builders.export import export_reranker
    from widefunnel.builders.models import Reranker
    from widefunnel.config import load_config
    from widefunnel.evaluation.pipeline import InProcessFunnel, _session

    funnel = InProcessFunnel(repository)
    index = funnel.indexes["engagement"]
    codes, scales = item_table(index, int(funnel.limits.catalogue.max()) + 1)
    torch.manual_seed(0)
    reranker = Reranker(index.dim, load_config()["rerank"]["hidden"]).eval()
    concatenated = copy.deepcopy(reranker)
    concatenated.serve = concatenated.forward  # the graph as it was exported before session 10
    sessions = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, model in (("forward", concatenated), ("serve", reranker)):
            export_reranker(model, codes, scales, "00000000000000ff", Path(tmp) / f"{name}.onnx")
            sessions[name] = _session(Path(tmp) / f"{name}.onnx", threads=1)  # as InProcessFunnel's, 1 thread
    rng = np.random.default_rng(0)
    lines = ["| seeds x K | [q, c, q*c] ms | folded ms | folded / concatenated | kept ids in common | largest score "
             "difference |", "|---|---:|---:|---:|---:|---:|"]
    for batch, k in ((1, 1000), (1, 10_000), (8, 10_000)):
        feeds = {"QUERY": rng.standard_normal((batch, index.dim)).astype(np.float32),
                 "CANDIDATE_ID": rng.choice(index.ids, (batch, k)).astype(np.int64),
                 "KEEP": np.full((batch, 1), 100, np.int32)}
        times, out = {n: [] for n in sessions}, {}
        for _ in range(rounds):
            for name, session in sessions.items():
                t0 = time.perf_counter()
                out[name] = session.run(None, feeds)
                times[name].append(time.perf_counter() - t0)
        old, new = _ms(times["forward"]), _ms(times["serve"])
        common = np.mean([len(set(a) & set(b)) / len(set(a)) for a, b in zip(out["forward"][0], out["serve"][0])])
        diff = float(np.abs(out["forward"][1] - out["serve"][1]).max())  # kept scores, in rank order
        lines.append(f"| {batch} x {k:,} | {old:.2f} | {new:.2f} | {new / old:.2f}x | {common:.1%} | {diff:.1e} |")
    return "\n".join(lines)


def cold_part(repository: Path, calls: int = 300) -> str:
    from widefunnel.ann.query import search
    from widefunnel.evaluation.pipeline import InProcessFunnel

    funnel = InProcessFunnel(repository)
    index = funnel.indexes["engagement"]
    query = np.random.default_rng(0).standard_normal((1, index.dim)).astype(np.float32)
    others = {mib: np.ones(mib << 18, np.float32) for mib in (1, 4, 16, 64)}
    lines = [f"one exact search, N = {index.count:,}, d = {index.dim}, K = {funnel.limits.default_candidates}", "",
             "| before each call | median µs |", "|---|---:|"]
    for touched in (None, 1, 4, 16, 64, None):
        times = []
        for _ in range(calls):
            if touched is not None:
                others[touched] += 1.0
            t0 = time.perf_counter()
            search(index, query, funnel.limits.default_candidates, np.array([1]), None, None)
            times.append(time.perf_counter() - t0)
        label = "nothing (back to back)" if touched is None else f"touch {touched} MiB of other memory"
        lines.append(f"| {label} | {_ms(times) * 1e3:.0f} |")
    return "\n".join(lines)


def crossover_part(repository: Path, threads: int, rounds: int = 7) -> str:
    import torch

    from widefunnel.ann import plan
    from widefunnel.ann import search as scan
    from widefunnel.ann.index import build_index, load_index
    from widefunnel.evaluation.pipeline import _pinned_versions

    torch.set_num_threads(threads)
    v = _pinned_versions(repository)
    rng = np.random.default_rng(0)
    random = rng.standard_normal((1_000_000, 64)).astype(np.float32)
    random /= np.linalg.norm(random, axis=1, keepdims=True)
    indexes = {"repository": load_index(repository / "ann_engagement" / str(v["ann_engagement"]) / "index"),
               "random": build_index(random, np.arange(len(random)), "00000000000000ff")}
    del random
    int8 = scan.int_mm_is_fast()
    paths = {"gemv": (None, True), **({"int8": (0, True)} if int8 else {}), "float": (0, False)}
    default_max = plan._GEMV_MAX_BATCH_INT8 if int8 else plan._GEMV_MAX_BATCH_FLOAT
    lines = [f"torch's int8 GEMM exact and fast here: {int8} (so the scan runs the GEMV up to batch {default_max})",
             "",
             "| index | batch | k | GEMV ms | int8 GEMM ms | float32 GEMM ms | same ids |",
             "|---|---:|---:|---:|---:|---:|---|"]
    default, use_int_mm = plan._GEMV_MAX_BATCH, plan.use_int_mm
    try:
        for name, index in indexes.items():
            scan.prepare_index(index)
            for batch in (1, 2, 4, 8, 12):
                for k in (100, 10_000):
                    q = rng.standard_normal((batch, index.dim)).astype(np.float32)
                    times, ids = {}, {}
                    for path, (threshold, int_mm) in paths.items():
                        plan._GEMV_MAX_BATCH = batch if threshold is None else threshold
                        plan.use_int_mm = use_int_mm if int_mm else (lambda t: False)
                        ids[path] = scan.exact_search(index, q, k)[0]  # also the warm-up
                        samples = []
                        for _ in range(rounds):
                            t0 = time.perf_counter()
                            scan.exact_search(index, q, k)
                            samples.append(time.perf_counter() - t0)
                        times[path] = _ms(samples)
                    cells = " | ".join(f"{times[p]:.1f}" if p in times else "-" for p in ("gemv", "int8", "float"))
                    same = all((ids[p] == ids["gemv"]).all() for p in ids)
                    lines.append(f"| {name} {index.count:,} x {index.dim} | {batch} | {k:,} | {cells} | {same} |")
    finally:
        plan._GEMV_MAX_BATCH, plan.use_int_mm = default, use_int_mm
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- the synthetic
def synthetic_part(repository: Path, seeds: int = 200) -> str:
    import json

    from widefunnel.ann.search import dequantized
    from widefunnel.evaluation.pipeline import InProcessFunnel
    from widefunnel.merge import HEADS

    funnel = InProcessFunnel(repository)
    record = json.loads((repository / "builds.json").read_text())[str(funnel.versions["preprocess"])]
    first = int(record["synthetic_items"]["first_id"])
    real_seeds = np.random.default_rng(11).choice(funnel.limits.catalogue[funnel.limits.catalogue < first], seeds,
                                                  replace=False).reshape(-1, 1)
    emb = dict(zip(HEADS, funnel.tower.run(["EMB_ENGAGEMENT", "EMB_RELEVANCE"], {"ITEM_ID": real_seeds})))
    qs = (1, 10, 50, 90, 99, 99.9)
    lines = [f"{len(real_seeds)} real seeds; {int((funnel.limits.catalogue < first).sum()):,} real and "
             f"{int(record['synthetic_items']['count']):,} synthetic items", "",
             "| head | items | " + " | ".join(f"p{q}" for q in qs) + " | share of catalogue | share of top 100 |",
             "|---|---|" + "---:|" * (len(qs) + 2)]
    for head in HEADS:
        index = funnel.indexes[head]
        vectors = dequantized(index, index.ids)
        scores = emb[head] @ vectors.T
        synthetic = index.ids >= first
        top = np.argpartition(-scores, 100, axis=1)[:, :100]
        for name, mask in (("real", ~synthetic), ("synthetic", synthetic)):
            values = np.percentile(scores[:, mask], qs)
            lines.append(f"| {head} | {name} | " + " | ".join(f"{v:.3f}" for v in values)
                         + f" | {mask.mean():.1%} | {mask[top].mean():.1%} |")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------------- the bytes
def bytes_part(repository: Path, k: int) -> str:
    import tritonclient.grpc as grpc

    from widefunnel.client.perf import DirectChain, sample_seeds, served_steps
    from widefunnel.security import with_admin_key
    from widefunnel.server import TritonServer

    rows = []
    with TritonServer(repository) as server:
        client = with_admin_key(grpc.InferenceServerClient(server.grpc_url), server.admin_key, "grpc")
        steps = served_steps(client)
        seed = int(sample_seeds(repository, steps[0].version, 1, seed=7)[0])
        received: list[tuple[str, dict[str, int]]] = []
        request = {"seed_item_id": np.array([[seed]], np.int64), "candidates_per_head": np.array([[k]], np.int32)}
        final = DirectChain(client, steps).run(
            request, lambda step, tensors: received.append((step.model, {n: a.nbytes for n, a in tensors.items()})))
        # before issue 16 the ANN steps also sent CANDIDATE_EMB to the rerankers: ask an ANN step for it
        query = final["_emb_engagement"]
        inputs = [grpc.InferInput("QUERY", list(query.shape), "FP32"), grpc.InferInput("K", [1, 1], "INT32")]
        inputs[0].set_data_from_numpy(query)
        inputs[1].set_data_from_numpy(np.array([[k]], np.int32))
        emb = client.infer("ann_engagement", inputs, outputs=[grpc.InferRequestedOutput("CANDIDATE_EMB")])
        emb_bytes = emb.as_numpy("CANDIDATE_EMB").nbytes
        client.close()
    for model, sizes in received:
        now = sum(sizes.values())
        before = now - sizes.get("KEEP", 0) + emb_bytes if model.startswith("rerank_") else now
        rows.append(f"| {model} | {', '.join(sorted(sizes))} | {before:,} | {now:,} |")
    total_before = sum(int(r.split("|")[3].replace(",", "")) for r in rows)
    total_now = sum(int(r.split("|")[4].replace(",", "")) for r in rows)
    head = (f"K = {k:,} per head, batch 1 (one seed)\n\n| step | inputs now | bytes in before | bytes in now |\n"
            "|---|---|---:|---:|")
    return head + "\n" + "\n".join(rows) + f"\n| all steps | | {total_before:,} | {total_now:,} |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=("default", "scale", "synthetic", "bytes", "fold", "cold",
                                             "crossover"))
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--requests", type=int, default=10, help="scale: requests per path and cell")
    parser.add_argument("--threads", type=int, default=2,
                        help="scale: threads of in process, the peer and the measured rates")
    parser.add_argument("--k", type=int, default=10_000, help="bytes: candidates per head")
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        out = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        if args.part == "default":
            print(default_part(args.repository, out))
        elif args.part == "scale":
            print(scale_part(args.repository, args.requests, args.threads))
        elif args.part == "fold":
            print(fold_part(args.repository))
        elif args.part == "cold":
            print(cold_part(args.repository))
        elif args.part == "crossover":
            print(crossover_part(args.repository, args.threads))
        elif args.part == "synthetic":
            print(synthetic_part(args.repository))
        else:
            print(bytes_part(args.repository, args.k))
    return 0


if __name__ == "__main__":
    sys.exit(main())
