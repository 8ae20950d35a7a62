"""`widefunnel` command line: build, serve, demo, query, stats (and the operations commands)."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path

import numpy as np

DEFAULT_REPOSITORY = Path("model_repository")
DEMO_SEEDS = (1, 50, 181, 98, 423)  # Toy Story, Star Wars, Return of the Jedi, Silence of the Lambs, E.T.


def _build(args: argparse.Namespace) -> int:
    from widefunnel.builders.repository import build
    from widefunnel.builders.stages import stage
    from widefunnel.builders.train import load_configured_dataset
    from widefunnel.config import ConfigError, load_config, load_config_file
    from widefunnel.dataset import DatasetConfigError, DatasetError
    from widefunnel.dataset.conditions import implicit_feedback_labels
    from widefunnel.model_configs import Target

    dataset_path = getattr(args, "dataset", None)
    try:
        cfg = load_config(args.config, {"dataset": {"path": str(dataset_path)}} if dataset_path else None)
        with stage("dataset"):
            dataset = load_configured_dataset(cfg)  # checked whole before anything is written
        if cfg["dataset"]["path"]:
            user = load_config_file(args.config).get("dataset", {}) if args.config else {}
            cfg["dataset"], notes = implicit_feedback_labels(cfg["dataset"], user,
                                                             set(dataset.interactions.columns))
            for note in notes:
                print(f"note: {note} (set [dataset] positive / [dataset.tasks] to choose)")
    except (ConfigError, DatasetError, DatasetConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        result = build(args.repository, cfg, Target(kind=args.target), args.version, progress=not args.quiet,
                       items=args.items, dataset=dataset)
    except DatasetConfigError as exc:  # a task condition naming a field the log lacks: before anything is written
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"built version {result.version} (fingerprint {result.fingerprint}) of {result.repository} "
          f"for target {args.target} in {result.seconds:.0f}s")
    return 0


def _print_endpoints(server) -> None:
    print(f"HTTP    http://{server.http_url}")
    print(f"gRPC    {server.grpc_url}")
    print(f"metrics {server.metrics_url}", flush=True)


def _admin_key(args: argparse.Namespace) -> str | None:
    """The key a control-plane command sends: --admin-key-file, else WIDEFUNNEL_ADMIN_KEY or the default file."""
    from widefunnel.security import AdminKeyError, read_key

    try:
        return read_key(getattr(args, "admin_key_file", None))
    except AdminKeyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _record_served(repository: Path) -> None:
    """What the started server serves (the ensembles' pins on disk), so that no later build prunes it."""
    from widefunnel.builders.repository import disk_pinned_version
    from widefunnel.layout import record_served

    version = disk_pinned_version(repository)
    if version is not None:
        try:
            record_served(repository, version)
        except OSError as exc:  # a read-only repository: nothing is built there either
            print(f"note: cannot record the served version in {repository}: {exc}", file=sys.stderr)


def _serve(args: argparse.Namespace) -> int:
    from widefunnel.security import AdminKeyError, ensure_key
    from widefunnel.server import Keeper, Ports, ServerError, TritonServer

    try:
        key, source = ensure_key(args.admin_key_file)
    except (AdminKeyError, OSError) as exc:
        print(f"error: admin key: {exc}", file=sys.stderr)
        return 1
    server = TritonServer(Path(args.repository), Ports(args.http_port, args.grpc_port, args.metrics_port),
                          host=args.host, admin_key=key, log_path=args.log)
    try:
        server.start()
    except ServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    _record_served(Path(args.repository))
    for line in server.exposure():
        print(line)
    print(f"admin key: {source}")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"exposed on {args.host}: anyone who reaches these ports can query; only the key holder can "
              "load, unload or register shared memory", flush=True)
    print("serving; Ctrl-C or SIGTERM stops", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())

    def report(event: str, text: str) -> None:
        if event == "restarted":
            print(text, flush=True)
        else:
            print(f"error: {text}", file=sys.stderr, flush=True)

    keeper = Keeper(server, report=report)
    keeper.start()
    stop.wait()
    keeper.stop(timeout=server.settings.startup_timeout)
    code = server.stop()
    server.cleanup()
    print(f"stopped (tritonserver exit code {code})")
    return 0


def format_recommendations(seeds, rec, titles: dict[int, str]) -> str:
    lines = []
    width = max([5, *(len(str(int(i))) for i in rec.item_id.ravel() if i >= 0)])  # 13-digit SKUs line up too
    for b, seed in enumerate(seeds):
        lines.append(f"\nseed {seed}: {titles.get(int(seed), '?')}   [build {rec.fingerprint[b]}]")
        lines.append(f"  {'#':>2}  {'item':>{width}}  {'score':>7}  {'head':<10}  title")
        for j, item in enumerate(rec.item_id[b]):
            if item < 0:
                continue
            lines.append(f"  {j + 1:>2}  {item:>{width}}  {rec.score[b, j]:7.4f}  {rec.source_head[b, j]:<10}  "
                         f"{titles.get(int(item), '?')}")
    return "\n".join(lines)


def parse_field_filters(specs: list[str] | None) -> dict[str, object]:
    """``--filter`` values, e.g. ``include_brand=acme,zeta`` or ``min_price=10``, by the build's filter tensor
    names: a number for ``min_``/``max_``, else a comma-separated list of values. ValueError names the spec."""
    out: dict[str, object] = {}
    for spec in specs or []:
        name, sep, value = spec.partition("=")
        if not sep or not name:
            raise ValueError(f"--filter {spec!r}: expected NAME=VALUE, e.g. include_brand=acme or min_price=10")
        if name.startswith(("min_", "max_")):
            try:
                out[name] = float(value)
            except ValueError:
                raise ValueError(f"--filter {name}: {value!r} is not a number") from None
        else:
            out[name] = [v for v in value.split(",") if v]
    return out


def _query(args: argparse.Namespace) -> int:
    from widefunnel.client.client import WidefunnelClient, WidefunnelError
    from widefunnel.item_titles import load_titles
    from widefunnel.tensor_names import Client

    try:
        fields = parse_field_filters(args.filter)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        with WidefunnelClient(args.url, args.protocol) as client:
            filters = {"exclude": args.exclude, "include_genres": args.genre, "exclude_genres": args.not_genre,
                       "years": args.years, "fields": fields or None}
            rec = client.recommend(args.seeds, alpha=args.alpha, top_n=args.top_n, candidates=args.candidates,
                                   keep=args.keep, **{k: v for k, v in filters.items() if v is not None})
    except WidefunnelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({Client.ITEM_ID: rec.item_id.tolist(), Client.SCORE: rec.score.tolist(),
                          Client.SOURCE_HEAD: rec.source_head.tolist(), Client.FINGERPRINT: rec.fingerprint}))
    else:
        print(format_recommendations(args.seeds, rec, load_titles(args.repository)))
    return 0


def _stats(args: argparse.Namespace) -> int:
    from widefunnel.client.client import WidefunnelClient

    with WidefunnelClient(args.url, "http") as client:
        stats = client.statistics(args.model or "")
    print(f"{'model':<20} {'ver':>3} {'success':>8} {'fail':>6} {'queue us':>9} {'compute us':>11}")
    for m in stats.get("model_stats", []):
        s = m["inference_stats"]
        n = max(int(s["success"]["count"]), 1)
        queue = int(s["queue"]["ns"]) / n / 1e3
        compute = sum(int(s[k]["ns"]) for k in ("compute_input", "compute_infer", "compute_output")) / n / 1e3
        print(f"{m['name']:<20} {m['version']:>3} {s['success']['count']:>8} {s['fail']['count']:>6} "
              f"{queue:9.0f} {compute:11.0f}")
    return 0


# The demo's new film, added from its content alone: no interactions, no retraining.
DEMO_FILM = {"id": 1683, "title": "Toy Story 2", "year": 1999, "genres": ["Animation", "Children's", "Comedy"]}
DEMO_FILM_SEED = 1  # Toy Story


def _demo_new_film(server, repository: Path, titles: dict[int, str]) -> None:
    """Add DEMO_FILM to the served build (once), swap it in, and show it recommended for a related seed."""
    import json
    import tempfile

    from widefunnel.builders.new_items import add_items
    from widefunnel.client.client import WidefunnelClient, WidefunnelError
    from widefunnel.client.swap import swap
    from widefunnel.tensor_names import Client

    film = DEMO_FILM["id"]
    titles[film] = f"{DEMO_FILM['title']} ({DEMO_FILM['year']})  <- new, from its content only"
    with WidefunnelClient(server.grpc_url, "grpc") as client:
        try:
            client.recommend([film], top_n=1)
            print(f"\n{DEMO_FILM['title']} ({film}) is already in the served catalogue")
        except WidefunnelError as exc:  # not in this build's catalogue: add it
            if exc.field != Client.SEED_ITEM_ID:
                raise
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "new_film.jsonl"
                path.write_text(json.dumps(DEMO_FILM) + "\n")
                print(f"\nadding a new film from its content (widefunnel items add): {json.dumps(DEMO_FILM)}",
                      flush=True)
                result = add_items(repository, path)
            report = swap(server.http_url, repository, result.version, "http", admin_key=server.admin_key)
            print(f"version {result.version} written in {result.seconds:.0f}s and swapped in ({report.seconds:.1f}s)")
        rec = client.recommend([DEMO_FILM_SEED, film], top_n=10)
        deeper = client.recommend([DEMO_FILM_SEED], top_n=100).item_id[0]
    print(format_recommendations([DEMO_FILM_SEED, film], rec, titles))
    where = np.flatnonzero(deeper == film)
    print(f"\n{DEMO_FILM['title']} among the recommendations for {titles[DEMO_FILM_SEED]}: "
          + (f"#{int(where[0]) + 1}" if len(where) else "not in the top 100"))


def _demo(args: argparse.Namespace) -> int:
    from widefunnel.client.client import WidefunnelClient
    from widefunnel.data import SOURCE
    from widefunnel.item_titles import load_titles
    from widefunnel.layout import CONFIG_FILE
    from widefunnel.model_configs import ENSEMBLE
    from widefunnel.server import TritonServer

    repository = Path(args.repository)
    if args.rebuild or not (repository / ENSEMBLE / CONFIG_FILE).exists():
        print(f"building the model repository in {repository} from MovieLens-100K ({SOURCE})", flush=True)
        rc = _build(argparse.Namespace(config=args.config, repository=repository, target="cpu", version=None,
                                       quiet=False, items=None))
        if rc:
            return rc
    titles = load_titles(repository)
    seeds = list(args.seeds)
    print("starting tritonserver ...", flush=True)
    with TritonServer(repository) as server:
        _print_endpoints(server)
        results = {}
        for protocol, url in (("http", server.http_url), ("grpc", server.grpc_url)):
            with WidefunnelClient(url, protocol) as client:
                results[protocol] = client.recommend(seeds, top_n=10)
        http, grpc = results["http"], results["grpc"]
        same = np.array_equal(http.item_id, grpc.item_id) and np.array_equal(http.score, grpc.score, equal_nan=True)
        print(f"\nHTTP and gRPC answers identical: {same}")
        print(format_recommendations(seeds, results["grpc"], titles))
        if not args.no_new_film:
            _demo_new_film(server, repository, titles)
    return 0 if same else 1


def _cluster(args: argparse.Namespace) -> int:
    """S shard servers + a router server on free loopback ports from one built repository."""
    from widefunnel.cli.cluster import LocalCluster
    from widefunnel.security import ensure_key
    from widefunnel.server import ServerError

    key, source = ensure_key(args.admin_key_file)
    cluster = LocalCluster(Path(args.repository), args.shards, workdir=args.workdir, allow_partial=args.allow_partial,
                           timeout_s=args.timeout, instances=args.router_instances, admin_key=key,
                           extra_args=["--metrics-config", "summary_latencies=true"])  # the dashboard's p99 panels
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        cluster.start()
    except (ServerError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        for name, urls in cluster.endpoints().items():
            print(f"{name:<8} HTTP http://{urls['http']}  gRPC {urls['grpc']}  metrics {urls['metrics']}")
        print(f"admin key: {source}")
        print(f"serving {args.shards} shard(s) + router; Ctrl-C or SIGTERM stops", flush=True)
        while not stop.wait(1.0):
            if not cluster.alive():
                print(f"error: a server exited:\n{cluster.failure_reason()}", file=sys.stderr)
                return 1
    finally:
        cluster.stop()
    print("stopped router and shards", flush=True)
    return 0


# ---- operations: perf, swap, rollback -----------------------------------------------------------------------
def _grpc_url_for(http_url: str) -> str:
    """The gRPC endpoint beside an HTTP one by Triton's convention (8000 -> 8001)."""
    host, _, port = http_url.rpartition(":")
    return f"{host}:{int(port) + 1}"


def _perf(args: argparse.Namespace) -> int:
    from widefunnel.client.perf import PerfError, SweepSettings, format_table, sweep

    settings = SweepSettings(args.concurrency, args.measurement_interval, admin_key=_admin_key(args))
    try:
        result = sweep(args.url, args.grpc_url or _grpc_url_for(args.url), args.repository, args.out,
                       args.models, tuple(args.protocols), settings, args.samples)
    except PerfError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(format_table(result.rows))
    print(f"\nCSV {result.csv_path}\nplot {result.plot_path}\n({result.seconds:.0f}s)")
    return 0


def _swap(args: argparse.Namespace) -> int:
    from widefunnel.client.swap import SwapError, rollback, swap

    try:
        if args.command == "rollback":
            report = rollback(args.url, args.repository, args.protocol, admin_key=_admin_key(args))
        else:
            report = swap(args.url, args.repository, args.to, args.protocol, admin_key=_admin_key(args))
    except SwapError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"serving version {report.to_version} (fingerprint {report.fingerprint}), was {report.from_version}; "
          f"ensembles switched: {', '.join(report.ensembles)} ({report.seconds:.1f}s)")
    return 0


def _analyze(args: argparse.Namespace) -> int:
    import tritonclient.grpc as grpc

    from widefunnel.client.analyze import analyze, serving_toml
    from widefunnel.client.perf import model_inputs, sample_seeds, served_steps, write_input_files
    from widefunnel.security import with_admin_key
    from widefunnel.server import TritonServer
    from widefunnel.server.distribution import TritonDistribution, assemble_backends, server_environment

    work = args.work.resolve()
    try:
        with TritonServer(args.repository) as server:  # each step's inputs, as the ensemble feeds it
            client = with_admin_key(grpc.InferenceServerClient(server.grpc_url), server.admin_key, "grpc")
            seeds = sample_seeds(args.repository, served_steps(client)[0].version, args.samples)
            inputs = write_input_files(model_inputs(client, seeds), work / "inputs")
            client.close()
        choices = analyze(args.repository, work, args.venv, inputs, assemble_backends(work / "backends"),
                          TritonDistribution.find().binary, server_environment(),
                          models=tuple(args.models) if args.models else None)
    except (FileNotFoundError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.out.write_text(serving_toml(choices))
    print("| step | max_queue_delay_us | instances | mean ms at 1 / 4 | infer/s at 1 / 4 |\n|---|---:|---:|---:|---:|")
    for c in choices:
        (p1, p4), (t1, t4) = c.avg_ms.values(), c.throughput.values()
        print(f"| {c.model} | {c.max_queue_delay_us} | {c.instances} | {p1:.2f} / {p4:.2f} | {t1:.0f} / {t4:.0f} |")
    print(f"\nwritten: {args.out} (build with it: widefunnel build --config {args.out}; Model Analyzer's reports: "
          f"{args.work / 'export'})")
    return 0


def _item_ids(args: argparse.Namespace) -> list[int]:
    from widefunnel.takedowns import parse_ids, read_ids_file

    ids = parse_ids(" ".join(args.ids), "IDS") if args.ids else []
    if args.file is not None:
        ids += read_ids_file(args.file)
    if not ids:
        raise SystemExit("error: no item ids given (IDS or --file)")
    return ids


def _add_items(args: argparse.Namespace) -> int:
    """New items from their content: a new version of every step, swapped in when --url is given."""
    from widefunnel.builders.new_items import NewItemsError, add_items
    from widefunnel.client.swap import SwapError, swap

    files = ([args.file] if args.file else []) + [Path(f) for f in args.ids]
    if len(files) != 1:
        print("error: items add takes one FILE (a dataset of your own: its own format, a RecBole atomic .item file "
              "or Parquet with the item table's columns; MovieLens: JSON lines or CSV: id, title, year, genres)",
              file=sys.stderr)
        return 2
    try:
        result = add_items(args.repository, files[0], args.from_version)
    except (NewItemsError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"version {result.version} (fingerprint {result.fingerprint}): {len(result.added)} item(s) added to build "
          f"{result.from_version} in {result.seconds:.0f}s ({result.bytes_written:,} bytes written; the rest of the "
          f"version is build {result.from_version}'s files, linked)")
    if not args.url:
        print(f"serve it: widefunnel swap --to {result.version} --repository {args.repository}")
        return 0
    try:
        report = swap(args.url, args.repository, result.version, args.protocol, admin_key=_admin_key(args))
    except SwapError as exc:
        print(f"error: written but not served: {exc}", file=sys.stderr)
        return 1
    print(f"serving version {report.to_version}, was {report.from_version} ({report.seconds:.1f}s)")
    return 0


def _items(args: argparse.Namespace) -> int:
    """Takedowns: applied by every serving step from the next request on; no rebuild, no reload."""
    import numpy as np

    from widefunnel import takedowns as td
    from widefunnel.arrays import load_table
    from widefunnel.layout import CATALOGUE_FILE, versions

    if args.action == "add":
        return _add_items(args)
    try:
        if args.action == "list-removed":
            for item, entry in td.read_takedowns(args.repository).items():
                print(f"{item}\t{entry.get('time', '')}\t{entry.get('reason', '')}")
            return 0
        ids = _item_ids(args)
        if args.action == "remove":
            pre = args.repository / "preprocess"
            known = np.unique(np.concatenate([load_table(pre / str(v) / CATALOGUE_FILE) for v in versions(pre)]))
            new = td.take_down(args.repository, ids, known, args.reason)
            td.publish(args.repository, args.also)
            print(f"taken down: {new or 'nothing new'} ({len(td.read_takedowns(args.repository))} in all); "
                  f"served from the next request on, across restarts, swaps and rollbacks")
        else:
            restored = td.restore(args.repository, ids)
            td.publish(args.repository, args.also)
            print(f"restored: {restored}")
    except (td.TakedownError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _key_file_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--admin-key-file", type=Path, default=None,
                   help="file holding the server's admin key (default: $WIDEFUNNEL_ADMIN_KEY, else "
                        "$WIDEFUNNEL_ADMIN_KEY_FILE, else ~/.config/widefunnel/admin-key)")


def _add_operations_commands(sub) -> None:
    from widefunnel import model_configs as mcfg

    p = sub.add_parser("perf", help="perf_analyzer concurrency sweep of the ensemble and every step (CSV + PNG)")
    p.add_argument("--url", default="127.0.0.1:8000", help="HTTP endpoint host:port")
    p.add_argument("--grpc-url", default=None, help="gRPC endpoint (default: the HTTP port + 1)")
    p.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY, help="the served repository (catalogue)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/out/perf"))
    p.add_argument("--models", nargs="+", default=None, help=f"default: {mcfg.ENSEMBLE} and each of its steps")
    p.add_argument("--protocols", nargs="+", choices=("grpc", "http"), default=["grpc", "http"])
    p.add_argument("--concurrency", default="1,2,4", help="levels (1,2,4) or a --concurrency-range start:end:step")
    p.add_argument("--measurement-interval", type=int, default=500, help="ms per measurement window")
    p.add_argument("--samples", type=int, default=32, help="distinct real seeds in the input data")
    _key_file_argument(p)
    p.set_defaults(func=_perf)

    p = sub.add_parser("items", help="add items from their content, or take items down / restore them, "
                                      "without retraining")
    p.add_argument("action", choices=("add", "remove", "restore", "list-removed"))
    p.add_argument("ids", nargs="*", help="remove / restore: item ids; add: FILE, for a build of your own dataset in "
                                          "its own format (a RecBole atomic .item file with the item table's typed "
                                          "header, or Parquet with its columns), for MovieLens JSON lines or CSV "
                                          "with a header: id, title, year, genres (CSV genres as 'Comedy|Drama')")
    p.add_argument("--file", type=Path, default=None, help="remove / restore: a file of item ids (one per line, or "
                                                          "comma-separated); add: the file of new items")
    p.add_argument("--reason", default="", help="remove: kept beside each takedown")
    p.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    p.add_argument("--also", type=Path, nargs="+", default=[], metavar="DIR",
                   help="remove / restore: also update these repositories (a sharded deployment's router and shards, "
                        "widefunnel shard-layout)")
    p.add_argument("--from-version", type=int, default=None, help="add: the build to grow (default: the newest)")
    p.add_argument("--url", default=None, help="add: swap the served ensembles to the new version on this server "
                                               "(HTTP host:port or gRPC with --protocol grpc)")
    p.add_argument("--protocol", choices=("http", "grpc"), default="http")
    _key_file_argument(p)
    p.set_defaults(func=_items)

    p = sub.add_parser("analyze", help="Triton Model Analyzer per step: batching delay and instances, latency first")
    p.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    p.add_argument("--work", type=Path, default=Path("benchmarks/out/analyze"), help="Model Analyzer's files")
    p.add_argument("--venv", type=Path, default=Path(".venv-analyzer"), help="where `make analyzer-env` put it")
    p.add_argument("--out", type=Path, default=Path("serving.toml"), help="the chosen settings, a build config")
    p.add_argument("--models", nargs="+", default=None, help="default: every step model")
    p.add_argument("--samples", type=int, default=32, help="distinct real seeds in the recorded inputs")
    p.set_defaults(func=_analyze)

    for name, text in (("swap", "serve another build on disk: stage its steps, switch the ensembles, retire"),
                       ("rollback", "go back to the previous build still on disk")):
        p = sub.add_parser(name, help=text)
        if name == "swap":
            p.add_argument("--to", type=int, required=True, help="version to serve")
        p.add_argument("--url", default="127.0.0.1:8000")
        p.add_argument("--protocol", choices=("http", "grpc"), default="http")
        p.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
        _key_file_argument(p)
        p.set_defaults(func=_swap)
# ---- end of operations commands --------------------------------------------------------------------------------


def _shard_layout(args: argparse.Namespace) -> int:
    from widefunnel.builders.shards import write_sharded

    shard_urls = args.shard_urls.split(",") if args.shard_urls else \
        [args.shard_url_template.format(shard=s) for s in range(args.shards)]
    lay = write_sharded(args.repository, args.out, args.shards, shard_urls, allow_partial=args.allow_partial,
                        timeout_s=args.timeout_s, ready_timeout_s=args.ready_timeout_s, lb_policy=args.lb_policy,
                        instances=args.instances)
    for s, repo in enumerate(lay.shard_repositories):
        print(f"shard {s}: {repo}  (served at {shard_urls[s]})")
    print(f"router:  {lay.router_repository}")
    return 0


def _add_shard_layout(sub) -> None:
    p = sub.add_parser("shard-layout", help="derive S shard repositories and a router repository from a build "
                                            "(what a Kubernetes Job runs before the shard and router Deployments)")
    p.add_argument("--repository", type=Path, required=True, help="a built repository (widefunnel build)")
    p.add_argument("--out", type=Path, required=True, help="writes <out>/shards/shard-<s>/ and <out>/router/")
    p.add_argument("--shards", type=int, required=True)
    urls = p.add_mutually_exclusive_group(required=True)
    urls.add_argument("--shard-urls", help="comma-separated gRPC host:port of shard 0..S-1")
    urls.add_argument("--shard-url-template", help="e.g. 'dns:///widefunnel-ann-shard-{shard}:8001'")
    p.add_argument("--allow-partial", action="store_true", help="serve partial results (COVERAGE < 1)")
    p.add_argument("--timeout-s", type=float, default=5.0)
    p.add_argument("--ready-timeout-s", type=float, default=60.0)
    p.add_argument("--lb-policy", choices=("pick_first", "round_robin"), default="pick_first")
    p.add_argument("--instances", type=int, default=2, help="router model instances")
    p.set_defaults(func=_shard_layout)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # the library logs (swap and perf actions, the stub supervisor, TensorRT builds); the CLI shows them
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # which SIMD build it loaded: noise to a user
    return args.func(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="widefunnel", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("build", help="train on a dataset (default MovieLens-100K) and write a repository version")
    p.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    p.add_argument("--dataset", type=Path, default=None,
                   help="a folder of RecBole atomic files or Parquet tables (sets [dataset] path)")
    p.add_argument("--config", type=Path, default=None, help="TOML overriding widefunnel/default.toml")
    p.add_argument("--target", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--version", type=int, default=None, help="version number (default: next)")
    p.add_argument("--items", type=int, default=None,
                   help="catalogue size: the real items plus synthetic ones drawn from them (default: the real ones)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_build)

    p = sub.add_parser("serve", help="run the embedded tritonserver on a repository")
    p.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--metrics-port", type=int, default=8002)
    p.add_argument("--log", type=Path, default=None, help="server log file (default: a temporary file)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address the HTTP, gRPC and metrics ports bind to (default: loopback only; 0.0.0.0 exposes)")
    _key_file_argument(p)
    p.set_defaults(func=_serve)

    p = sub.add_parser("demo", help="build (if needed), serve, query over HTTP and gRPC, print, stop")
    p.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    p.add_argument("--config", type=Path, default=None)
    p.add_argument("--rebuild", action="store_true")
    p.add_argument("--seeds", type=int, nargs="+", default=list(DEMO_SEEDS))
    p.add_argument("--no-new-film", action="store_true", help="skip adding the demo's new film (items add + swap)")
    p.set_defaults(func=_demo)

    p = sub.add_parser("query", help="recommendations for seed item ids from a running server")
    p.add_argument("seeds", type=int, nargs="+")
    p.add_argument("--url", default="127.0.0.1:8000")
    p.add_argument("--protocol", choices=("http", "grpc"), default="http")
    p.add_argument("--alpha", type=float, default=None)
    p.add_argument("--top-n", type=int, default=None)
    p.add_argument("--candidates", type=int, default=None, help="ANN candidates per head (the funnel's width)")
    p.add_argument("--keep", type=int, default=None, help="candidates each head's reranker keeps")
    p.add_argument("--exclude", type=int, nargs="+", help="item ids never to return (e.g. already seen)")
    p.add_argument("--genre", nargs="+", help="only items of one of these genres")
    p.add_argument("--not-genre", nargs="+", help="no items of these genres")
    p.add_argument("--years", type=int, nargs=2, metavar=("MIN", "MAX"), help="inclusive release-year range")
    p.add_argument("--filter", action="append", metavar="NAME=VALUE",
                   help="a filter on the build's own item fields, repeatable: include_<field>=a,b, "
                        "exclude_<field>=a, min_<field>=N, max_<field>=N (e.g. include_brand=acme, min_price=10)")
    p.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY,
                   help="the served repository, for the items' titles (the field the dataset's config names)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_query)

    p = sub.add_parser("stats", help="per-model inference statistics from a running server")
    p.add_argument("--url", default="127.0.0.1:8000")
    p.add_argument("--model", default=None)
    p.set_defaults(func=_stats)

    p = sub.add_parser("cluster", help="S shard servers + a router on free loopback ports (sharded ANN)")
    p.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    p.add_argument("--shards", type=int, required=True)
    p.add_argument("--workdir", type=Path, default=None, help="where shard/router repositories go (default: temp)")
    p.add_argument("--allow-partial", action="store_true", help="serve partial results (COVERAGE < 1)")
    p.add_argument("--timeout", type=float, default=5.0, help="per-shard call timeout, seconds")
    p.add_argument("--router-instances", type=int, default=2, help="instances of each ANN router model")
    _key_file_argument(p)
    p.set_defaults(func=_cluster)

    _add_operations_commands(sub)
    _add_shard_layout(sub)
    return parser


if __name__ == "__main__":
    sys.exit(main())
