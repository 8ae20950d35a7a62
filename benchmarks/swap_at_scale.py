"""A swap under load on a large repository (issue 30, point 4): C client threads (gRPC and HTTP alternating)
recommend from random seeds while `swap` moves the served ensembles from version A to version B; every answer's
fingerprints are checked (one build per answer, A's or B's: 0 mixed), failures counted, and the served tree's
memory sampled throughout (PSS and anonymous memory of gateway, tritonserver and every stub), so the table gives
the peak while both versions are resident.

    .venv/bin/python benchmarks/swap_at_scale.py --repository REPO --from-version 1 --to-version 2
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

import numpy as np

from widefunnel import layout
from widefunnel.arrays import load_table
from widefunnel.client.client import WidefunnelClient
from widefunnel.client.swap import persist_pins, swap
from widefunnel.model_configs import ENSEMBLES
from widefunnel.server import TritonServer
from widefunnel.server.processes import children, smaps_kib


def _tree_kib(pid: int, field: str) -> int:
    return sum(smaps_kib(p, field) for p in [pid, *children(pid)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--from-version", type=int, required=True)
    parser.add_argument("--to-version", type=int, required=True)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--k", type=int, default=1000, help="candidates per head per request")
    parser.add_argument("--before", type=float, default=10.0, help="seconds of load before the swap")
    parser.add_argument("--after", type=float, default=10.0, help="seconds of load after it")
    args = parser.parse_args()
    repo = args.repository
    builds = layout.read_builds(repo)
    fps = {v: builds[str(v)]["fingerprint"] for v in (args.from_version, args.to_version)}
    catalogue = load_table(repo / "preprocess" / str(args.from_version) / layout.CATALOGUE_FILE)
    # the server starts on what the ensembles on disk pin: the from-version
    for ensemble in ENSEMBLES:
        persist_pins(repo, ensemble, args.from_version)
    layout.record_served(repo, args.from_version)
    started = time.monotonic()
    with TritonServer(repo) as server:
        print(f"{repo}: {len(catalogue):,} items; server up in {time.monotonic() - started:.0f} s")
        stop = threading.Event()
        lock = threading.Lock()
        outcomes: list[tuple[float, str, tuple[str, ...]]] = []  # (time, error, fingerprints)

        def client(i: int) -> None:
            url, protocol = (server.grpc_url, "grpc") if i % 2 == 0 else (server.http_url, "http")
            rng = np.random.default_rng(i)
            with WidefunnelClient(url, protocol, 120.0) as c:
                while not stop.is_set():
                    seeds = [int(s) for s in rng.choice(catalogue, int(rng.integers(1, 4)))]
                    try:
                        rec = c.recommend(seeds, top_n=10, candidates=args.k)
                        outcome = (time.monotonic(), "", tuple(rec.fingerprint))
                    except Exception as exc:  # noqa: BLE001 - counted and shown
                        outcome = (time.monotonic(), str(exc)[:200], ())
                    with lock:
                        outcomes.append(outcome)

        samples: list[tuple[float, int, int]] = []

        def sampler() -> None:
            while not stop.is_set():
                samples.append((time.monotonic(), _tree_kib(server.process.pid, "Pss")
                                + _tree_kib(server.gateway_process.pid, "Pss"),
                                _tree_kib(server.process.pid, "Anonymous")
                                + _tree_kib(server.gateway_process.pid, "Anonymous")))
                time.sleep(0.5)

        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(args.clients)]
        threads.append(threading.Thread(target=sampler, daemon=True))
        for t in threads:
            t.start()
        time.sleep(args.before)
        t0 = time.monotonic()
        report = swap(server.http_url, repo, args.to_version, admin_key=server.admin_key)
        t1 = time.monotonic()
        time.sleep(args.after)
        stop.set()
        for t in threads:
            t.join(timeout=180)
    failed = [o for o in outcomes if o[1]]
    mixed = [o for o in outcomes if not o[1] and (len(set(o[2])) != 1 or o[2][0] not in fps.values())]
    served = {"before": [o for o in outcomes if not o[1] and o[0] < t0],
              "during": [o for o in outcomes if not o[1] and t0 <= o[0] <= t1],
              "after": [o for o in outcomes if not o[1] and o[0] > t1]}

    def phase_mib(lo: float, hi: float) -> tuple[float, float]:
        rows = [s for s in samples if lo <= s[0] <= hi] or [(0, 0, 0)]
        return max(r[1] for r in rows) / 1024, max(r[2] for r in rows) / 1024

    print(f"\nswap {args.from_version} -> {args.to_version} took {t1 - t0:.1f} s "
          f"({report.fingerprint}); {args.clients} clients, K = {args.k}\n")
    print(f"requests: {len(outcomes)}, failed {len(failed)}, mixed {len(mixed)}")
    for name, rows in served.items():
        prints = sorted({o[2][0] for o in rows})
        print(f"  {name} the swap: {len(rows)} answers, builds {[v for v, fp in fps.items() if fp in prints]}")
    if failed:
        print("first failures:", [o[1] for o in failed[:3]])
    print("\n| phase | tree PSS peak, MiB | tree anonymous peak, MiB |")
    print("|---|---:|---:|")
    for name, (lo, hi) in {"before": (0, t0), "during the swap": (t0, t1), "after": (t1, float("inf"))}.items():
        pss, anon = phase_mib(lo, hi)
        print(f"| {name} | {pss:,.0f} | {anon:,.0f} |")


if __name__ == "__main__":
    main()
