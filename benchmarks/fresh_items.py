"""Fresh items on the project's time split (issue 17): today's content-aware build against the build before it.

Builds two repositories with `widefunnel build`'s own code (`builders.repository.build`), the same seed and data:
- "before issue 17": no content input, an id embedding for every item, no cold dropout in towers or scorer (the
  former build);
- "content-aware": the default config.
Both allow top_n up to 500 (`merge.max_top_n`), a serving limit, so that recall@500 can be read off the funnel.
Then, for each, the funnel's answers for every held-out query, in process (`InProcessFunnel`) and through a real
tritonserver over gRPC (checked identical), and the teacher kNN (the content encoder alone) beside them:
- @100 lists at the build's default widths (200 candidates per head, rerankers keep 100), alpha 0.5;
- @500 lists with 1,000 candidates per head and keep 500;
- Rel@10 from top_n = 10 answers.

    .venv/bin/python benchmarks/fresh_items.py --work /tmp/wf-fresh          # about 20 min on 2 cores
    .venv/bin/python benchmarks/fresh_items.py --from-results /tmp/wf-fresh/results.json --write
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from widefunnel.config import load_config
from widefunnel.evaluation import offline as E

HERE = Path(__file__).resolve().parent
BEGIN, END = "<!-- fresh:begin -->", "<!-- fresh:end -->"
WIDE = {"candidates": 1000, "keep": 500}
SYSTEMS = {
    "before issue 17": {"towers": {"content_dim": 0, "min_id_count": 0}, "training": {"cold_dropout": 0.0},
                        "scorer": {"cold_dropout": 0.0}},
    "content-aware (default)": {},
}


def _config(overrides: dict) -> dict:
    return load_config(overrides={**overrides, "merge": {"max_top_n": 500}})


def _lists(recommend, seeds: np.ndarray) -> dict[str, np.ndarray]:
    """The funnel's answers for every seed: top 10, top 100 (default widths), top 500 (wide), alpha 0.5."""
    out: dict[str, list[np.ndarray]] = {"10": [], "100": [], "500": []}
    for start in range(0, len(seeds), 32):
        batch = seeds[start:start + 32].tolist()
        out["10"].append(recommend(batch, alpha=0.5, top_n=10).item_id)
        out["100"].append(recommend(batch, alpha=0.5, top_n=100).item_id)
        out["500"].append(recommend(batch, alpha=0.5, top_n=500, **WIDE).item_id)
    return {k: np.concatenate(v) for k, v in out.items()}


def _metrics(lists: dict[str, np.ndarray], ev: E.EvalSet) -> dict[str, float]:
    m = E.retrieval_metrics(lists["10"], ev, 10)
    m.update(E.retrieval_metrics(lists["100"], ev, 100))
    for k in (100, 500):
        m.update({key: v for key, v in E.sliced_metrics(E.ranked(lists[str(k)]), ev, (k,)).items()})
    return m


def run(work: Path, served: bool) -> dict:
    from widefunnel.builders.repository import build
    from widefunnel.builders.teacher import teacher_embeddings
    from widefunnel.client.client import WidefunnelClient
    from widefunnel.data import load_catalogue
    from widefunnel.evaluation.pipeline import InProcessFunnel
    from widefunnel.model_configs import Target
    from widefunnel.server import TritonServer

    ev = E.eval_set_for(_config({}))
    seeds = ev.seeds
    catalogue = load_catalogue()
    teacher = teacher_embeddings(catalogue, progress=False)
    t_lists = E.teacher_lists(teacher, catalogue.item_ids, seeds, 500)
    results: dict = {"queries": len(seeds), "fresh_seed_queries": len(ev.fresh_queries()[0]),
                     "fresh_target_queries": len(ev.fresh_targets()[0]), "systems": {}, "seconds": {}}
    results["systems"]["teacher kNN (MiniLM)"] = {
        "in process": _metrics({"10": t_lists[:, :10], "100": t_lists[:, :100], "500": t_lists}, ev)}
    for name, overrides in SYSTEMS.items():
        start = time.monotonic()
        repository = work / name.split()[0] / "repo"
        if not (repository / "builds.json").exists():
            build(repository, _config(overrides), Target("cpu"), progress=False)
        results["seconds"][f"build: {name}"] = time.monotonic() - start
        start = time.monotonic()
        local = _lists(InProcessFunnel(repository).recommend, seeds)
        entry = {"in process": _metrics(local, ev)}
        if served:
            with TritonServer(repository) as server, WidefunnelClient(server.grpc_url, "grpc") as client:
                remote = _lists(client.recommend, seeds)
            entry["served"] = _metrics(remote, ev)
            entry["served equals in process"] = all(np.array_equal(local[k], remote[k]) for k in local)
        results["systems"][name] = entry
        results["seconds"][f"answers: {name}"] = time.monotonic() - start
    return results


def report(r: dict) -> str:
    cols = [("R@10", "recall@10"), ("Rel@10", "relevance@10"), ("R@100", "recall@100"),
            ("fresh-seed R@100", "fq_recall@100"), ("fresh-seed R@500", "fq_recall@500"),
            ("fresh-target R@100", "ft_recall@100"), ("fresh-target R@500", "ft_recall@500")]
    lines = ["| system | path | " + " | ".join(c for c, _ in cols) + " |", "|---|---|" + "---:|" * len(cols)]
    for name, entry in r["systems"].items():
        for path in ("in process", "served"):
            if path in entry:
                values = " | ".join(f"{100 * entry[path][k]:.2f}" for _, k in cols)
                lines.append(f"| {name} | {path} | {values} |")
    before, now = r["systems"]["before issue 17"], r["systems"]["content-aware (default)"]
    teacher = r["systems"]["teacher kNN (MiniLM)"]["in process"]
    path = "served" if "served" in now else "in process"
    n, b = now[path], before[path]
    checks = [
        ("fresh-target R@100 >= teacher kNN's", n["ft_recall@100"] >= teacher["ft_recall@100"],
         f"{100 * n['ft_recall@100']:.2f} vs {100 * teacher['ft_recall@100']:.2f}"),
        ("fresh-target R@500 >= teacher kNN's", n["ft_recall@500"] >= teacher["ft_recall@500"],
         f"{100 * n['ft_recall@500']:.2f} vs {100 * teacher['ft_recall@500']:.2f}"),
        ("overall R@100 >= 0.97x the build before", n["recall@100"] >= 0.97 * b["recall@100"],
         f"{n['recall@100'] / b['recall@100']:.3f}x"),
        ("Rel@10 not below the build before", n["relevance@10"] >= b["relevance@10"],
         f"{100 * n['relevance@10']:.2f} vs {100 * b['relevance@10']:.2f}"),
    ]
    same = [f"{name}: {entry['served equals in process']}" for name, entry in r["systems"].items()
            if "served equals in process" in entry]
    times = ", ".join(f"{k} {v:.0f} s" for k, v in r["seconds"].items())
    return "\n".join([
        f"{r['queries']} held-out queries; {r['fresh_seed_queries']} with a fresh seed, "
        f"{r['fresh_target_queries']} with a fresh target (recall of the fresh targets only). Served lists "
        f"identical to in process ({'; '.join(same)}).", "", *lines, "",
        "| goal (served funnel) | met | measured |", "|---|---|---|",
        *(f"| {goal} | {'yes' if ok else 'no'} | {text} |" for goal, ok, text in checks), "", f"Times: {times}."])


def write(text: str, path: Path = HERE / "QUALITY.md") -> None:
    doc = path.read_text()
    block = f"{BEGIN}\n{text}\n{END}"
    if BEGIN in doc:
        doc = doc[:doc.index(BEGIN)] + block + doc[doc.index(END) + len(END):]
    else:
        doc += f"\n## Fresh items: content-aware towers (issue 17)\n\n{block}\n"
    path.write_text(doc)


def main() -> int:
    logging.basicConfig(level=logging.WARNING)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("benchmarks/out/fresh"))
    p.add_argument("--from-results", type=Path, default=None, help="report a saved run")
    p.add_argument("--no-served", action="store_true", help="in process only")
    p.add_argument("--write", action="store_true", help="put the report into benchmarks/QUALITY.md")
    args = p.parse_args()
    if args.from_results:
        results = json.loads(args.from_results.read_text())
    else:
        args.work.mkdir(parents=True, exist_ok=True)
        results = run(args.work, not args.no_served)
        (args.work / "results.json").write_text(json.dumps(results, indent=2))
    text = report(results)
    print(text)
    if args.write:
        write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
