"""The served funnel on a large repository (issue 30, point 4): exact and IVF search, K up to 100,000 per head,
batch 1 and 8, every request knob, and field filters checked against the build's own fields table.

The ANN steps serve ``search = exact`` as built; the IVF rows reload both ANN steps with ``search = ivf`` (and
``--nprobe``) through the admin API, as an operator would, and IVF's recall@K is its candidates' overlap with the
exact scan's for the same seeds. Every answer of a filtered request is checked against `item_fields`.

    .venv/bin/python benchmarks/served_at_scale.py --repository REPO [--requests 3] [--nprobe 4]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from widefunnel import layout
from widefunnel.arrays import load_table
from widefunnel.client.client import WidefunnelClient
from widefunnel.config import load_config
from widefunnel.field_filters import ItemFields
from widefunnel.merge import HEADS
from widefunnel.model_configs import STEP_MODELS
from widefunnel.security import with_admin_key
from widefunnel.server import TritonServer

MAX_REQUEST_CANDIDATES = load_config()["serving"]["max_request_candidates"]  # seeds x K, per request


def _ann_search(server, search: str, nprobe: int) -> None:
    import tritonclient.http as http

    client = with_admin_key(http.InferenceServerClient(server.http_url, network_timeout=600.0,
                                                       connection_timeout=600.0), server.admin_key)
    try:
        for head in HEADS:
            config = client.get_model_config(f"ann_{head}")
            config["parameters"]["search"] = {"string_value": search}
            config["parameters"]["nprobe"] = {"string_value": str(nprobe)}
            client.load_model(f"ann_{head}", config=json.dumps(config))
    finally:
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--requests", type=int, default=3, help="timed requests per cell, after one warm-up")
    parser.add_argument("--nprobe", type=int, default=4)
    args = parser.parse_args()
    repo = args.repository
    version = max(layout.complete_versions(repo, STEP_MODELS))
    catalogue = load_table(repo / "preprocess" / str(version) / layout.CATALOGUE_FILE)
    fields = ItemFields.load(repo / "preprocess" / str(version) / layout.ITEM_FIELDS)
    rng = np.random.default_rng(0)
    seeds = [int(s) for s in rng.choice(catalogue, 8 * (args.requests + 1))]
    exact: dict[tuple[int, int], dict] = {}
    print(f"{repo}: {len(catalogue):,} items, version {version}\n")
    print("| search | K per head | batch | recommend ms | retrieve ms | recall@K vs exact (per head) |")
    print("|---|---:|---:|---:|---:|---|")
    with TritonServer(repo) as server, WidefunnelClient(server.grpc_url, "grpc", 600.0) as client:
        for search in ("exact", "ivf"):
            if search == "ivf":
                t0 = time.monotonic()
                _ann_search(server, "ivf", args.nprobe)
                print(f"| (ANN steps reloaded with search = ivf, nprobe = {args.nprobe} in "
                      f"{time.monotonic() - t0:.0f} s) | | | | | |")
            for k in (1000, 10_000, 100_000):
                for batch in (1, 8):
                    if k * batch > MAX_REQUEST_CANDIDATES:
                        print(f"| {search} | {k:,} | {batch} | refused: past serving.max_request_candidates | | |")
                        continue
                    rec_ms, ret_ms, recalls = [], [], {h: [] for h in HEADS}
                    for i in range(args.requests + 1):
                        chunk = seeds[i * batch:(i + 1) * batch]
                        t0 = time.perf_counter()
                        client.recommend(chunk, top_n=100, candidates=k)
                        t1 = time.perf_counter()
                        got = client.retrieve(chunk, candidates=k)
                        t2 = time.perf_counter()
                        if i:
                            rec_ms.append((t1 - t0) * 1e3)
                            ret_ms.append((t2 - t1) * 1e3)
                        if search == "exact":
                            exact[(k, batch, i)] = got
                        else:
                            for h in HEADS:
                                for a, b in zip(got[h][0], exact[(k, batch, i)][h][0], strict=True):
                                    recalls[h].append(len(set(a[a >= 0]) & set(b[b >= 0])) / max(1, (b >= 0).sum()))
                    recall = ", ".join(f"{np.mean(v):.3f}" for v in recalls.values()) if search == "ivf" else "-"
                    print(f"| {search} | {k:,} | {batch} | {np.median(rec_ms):.0f} | {np.median(ret_ms):.0f} | "
                          f"{recall} |", flush=True)
        # every knob, and filters checked item by item against the build's fields
        genre = fields.tokens[0]
        vocabulary = genre.vocabulary
        years = fields.floats[0].values
        filtered = client.recommend(seeds[:8], alpha=0.3, top_n=50, value_weights=[1.0, 0.5, 2.0, 0.0],
                                    candidates=10_000, keep=500, exclude=seeds[8:16], include_genres=["Comedy"],
                                    years=(1990, 1995))
        ids = filtered.item_id[filtered.item_id >= 0]
        internal = ids  # a --items build numbers items by their own ids
        ok_genre = all("Comedy" in {vocabulary[c] for c in genre.codes[genre.offsets[i]:genre.offsets[i + 1]]}
                       for i in internal.tolist())
        ok_year = bool(((years[internal] >= 1990) & (years[internal] <= 1995)).all())
        ok_exclude = not set(ids.tolist()) & set(seeds[8:16])
        print(f"\nevery knob (alpha 0.3, top_n 50, value weights, K 10,000, keep 500) with exclude, include_genres "
              f"[Comedy] and years 1990-1995, 8 seeds: {len(ids)} items answered; genre ok {ok_genre}, year ok "
              f"{ok_year}, exclusions ok {ok_exclude}")


if __name__ == "__main__":
    main()
