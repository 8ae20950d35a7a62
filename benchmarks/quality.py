"""Offline quality of widefunnel on MovieLens-100K (MTMH recall vs relevance; the scoring stages).

Trains every variant, evaluates it on the held-out (future) co-engaged pairs, prints markdown tables and
writes them to benchmarks/QUALITY.md with a recall-vs-relevance plot over alpha (benchmarks/quality_alpha.png).
Metric definitions: widefunnel.evaluation.offline.

    .venv/bin/python benchmarks/quality.py                          # everything (about 20 minutes on 2 CPUs)
    .venv/bin/python benchmarks/quality.py --repository DIR         # also keep the evaluated build in DIR
    .venv/bin/widefunnel serve --repository DIR --grpc-port 8001 &  # then measure the served ensemble:
    .venv/bin/python benchmarks/quality.py --served 127.0.0.1:8001 --protocol grpc --out benchmarks/QUALITY.md

`--served` trains nothing: it computes the funnel table (each head's ANN, the merged ANN lists, the ensemble's
own merged output per alpha) through the client, and with `--out` puts it into QUALITY.md's served section,
beside the same table computed in process from the same build.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

from widefunnel.config import load_config  # noqa: E402
from widefunnel.evaluation import offline as E  # noqa: E402

HERE = Path(__file__).resolve().parent
ALPHAS = (0.0, 0.3, 0.5, 0.7, 1.0)
KS = (50, 100, 500)
SERVED_KS = (50, 100)
WR_SWEEP = (0.0, 0.25, 0.5, 1.0, 5.0)
SERVED_BEGIN, SERVED_END = "<!-- served:begin -->", "<!-- served:end -->"


# ------------------------------------------------------------------------------------------------ tables
def pct(x: float) -> str:
    return "n/a" if x is None or np.isnan(x) else f"{100 * x:.2f}"


def table(rows: list[tuple[str, dict[str, float]]], columns: list[tuple[str, str]], first: str = "system") -> str:
    """Markdown table; values are fractions printed as percentages."""
    head = f"| {first} | " + " | ".join(title for title, _ in columns) + " |"
    sep = "|---|" + "---:|" * len(columns)
    body = [f"| {name} | " + " | ".join(pct(m.get(key, float("nan"))) for _, key in columns) + " |"
            for name, m in rows]
    return "\n".join([head, sep, *body])


def retrieval_columns(ks: tuple[int, ...], metrics=("recall", "relevance", "jaccard")) -> list[tuple[str, str]]:
    short = {"recall": "R", "relevance": "Rel", "jaccard": "Jac"}
    return [(f"{short[m]}@{k}", f"{m}@{k}") for m in metrics for k in ks]


class Clock:
    """Wall and CPU seconds per stage (CPU time shows the work when other jobs share the cores)."""

    def __init__(self):
        self.start, self.cpu_start, self.stages = time.monotonic(), time.process_time(), []
        self.load_start = os.getloadavg()[0]

    def begin(self) -> tuple[float, float]:
        return time.monotonic(), time.process_time()

    def __call__(self, name: str, t0: tuple[float, float]) -> None:
        wall, cpu = time.monotonic() - t0[0], time.process_time() - t0[1]
        self.stages.append((name, wall, cpu))
        print(f"[{time.monotonic() - self.start:7.1f}s] {name}: {wall:.1f}s wall, {cpu:.1f}s CPU", file=sys.stderr,
              flush=True)

    def summary(self) -> dict:
        return {"stages": self.stages, "wall": time.monotonic() - self.start,
                "cpu": time.process_time() - self.cpu_start, "load_start": self.load_start,
                "load_end": os.getloadavg()[0]}


def times_markdown(t: dict) -> str:
    rows = "\n".join(f"| {n} | {w:.0f} | {c:.0f} |" for n, w, c in t["stages"])
    return (f"1-minute load average at the start {t['load_start']:.1f}, at the end {t['load_end']:.1f} (2 cores "
            f"shared with other jobs: CPU seconds are this process's own work, wall seconds include waiting).\n\n"
            f"| stage | wall s | CPU s |\n|---|---:|---:|\n{rows}\n"
            f"| **total** | **{t['wall']:.0f}** | **{t['cpu']:.0f}** |")


# ------------------------------------------------------------------------------------------------ offline
def tower_lists(tower, data, ev, k: int) -> list[np.ndarray]:
    from widefunnel.builders.train import item_embeddings

    tables = item_embeddings(tower, np.arange(data.catalogue.table_size, dtype=np.int64))
    indexes = E.head_indexes(tables, data.catalogue.item_ids)
    return [E.ann_lists(idx, t, ev.seeds, k) for idx, t in zip(indexes, tables)]


def build_funnel(tower, data, cfg: dict, repository: Path):
    """The rest of `train_funnel` on an already trained tower, written as a real repository and loaded
    back through widefunnel.evaluation.pipeline: the funnel measured here is the one `widefunnel serve` would serve."""
    from widefunnel.ann.index import build_index
    from widefunnel.builders.export import tower_fingerprint
    from widefunnel.builders.repository import write_repository
    from widefunnel.builders.train import TrainedFunnel, item_embeddings, train_reranker, train_scorer
    from widefunnel.evaluation.pipeline import InProcessFunnel
    from widefunnel.model_configs import Target

    ids = data.catalogue.item_ids
    tables = item_embeddings(tower, np.arange(data.catalogue.table_size, dtype=np.int64))
    fp = tower_fingerprint(tower)
    indexes = [build_index(t[ids], ids, fp, ivf_lists=cfg["ann"]["ivf_lists"], seed=cfg["seed"]) for t in tables]
    rerankers = [train_reranker(data, idx, t, cfg, progress=False) for idx, t in zip(indexes, tables)]
    scorer = train_scorer(data, tables, cfg, progress=False)
    version, fingerprint = write_repository(repository, TrainedFunnel(tower, tables, indexes, rerankers, scorer),
                                            data.catalogue, cfg, Target("cpu"))
    return InProcessFunnel(repository), fingerprint


def offline(args: argparse.Namespace) -> dict:
    from widefunnel.builders.train import TrainingData, train_towers

    clock = Clock()
    cfg = load_config(args.config, overrides(args))
    sweep_cfg = load_config(args.config, {**overrides(args), "training": {"epochs": args.sweep_epochs}})
    kmax = max(KS)
    t0 = clock.begin()
    data = TrainingData.load(cfg, progress=False)
    ev = E.build_eval_set(data.split.test, data.catalogue, data.split.fresh_items, cfg["data"]["max_eval_queries"],
                          cfg["seed"])
    ids = data.catalogue.item_ids
    clock("data + teacher embeddings", t0)
    r: dict = {"cfg": cfg, "queries": len(ev.seeds), "fresh_queries": len(ev.fresh_queries()[0]),
               "fresh_target_queries": len(ev.fresh_targets()[0]), "test_pairs": len(data.split.test),
               "train_pairs": len(data.split.train)}
    systems: dict[str, E.TopK] = {}

    rng = np.random.default_rng(cfg["seed"])
    t0 = clock.begin()
    rand = np.stack([rng.permutation(ids[ids != s])[:kmax] for s in ev.seeds])
    systems["random items"] = E.ranked(rand)
    systems["popularity"] = E.ranked(E.popularity_lists(data.split.train_popularity, ids, ev.seeds, kmax))
    systems["teacher kNN (MiniLM)"] = E.ranked(E.teacher_lists(data.teacher, ids, ev.seeds, kmax))
    clock("random / popularity / teacher lists", t0)

    t0 = clock.begin()
    (eng_only,) = tower_lists(train_towers(data, cfg, heads=1, distill_heads=(), progress=False), data, ev, kmax)
    systems["engagement-only single head"] = E.ranked(eng_only)
    clock(f"towers: engagement-only single head ({cfg['training']['epochs']} epochs)", t0)
    t0 = clock.begin()
    (multi,) = tower_lists(train_towers(data, cfg, heads=1, distill_heads=(0,), progress=False), data, ev, kmax)
    systems["multi-task single head"] = E.ranked(multi)
    clock(f"towers: multi-task single head ({cfg['training']['epochs']} epochs)", t0)

    t0 = clock.begin()
    tower = train_towers(data, cfg, progress=False)
    eng, rel = tower_lists(tower, data, ev, kmax)
    systems["MTMH engagement head"] = E.ranked(eng)
    systems["MTMH relevance head"] = E.ranked(rel)
    for a in ALPHAS:
        systems[f"MTMH merge alpha={a:g}"] = E.merged(eng, rel, a)
    clock(f"towers: MTMH two heads, wr={cfg['training']['wr']} ({cfg['training']['epochs']} epochs)", t0)

    t0 = clock.begin()
    r["retrieval"] = [(name, E.system_metrics(topk, ev, KS)) for name, topk in systems.items()]
    fresh_names = [n for n in systems if "alpha" not in n or n == "MTMH merge alpha=0.5"]
    r["fresh"] = [(n, E.sliced_metrics(systems[n], ev, (100, 500))) for n in fresh_names]
    clock("retrieval metrics", t0)

    t0 = clock.begin()
    repository = Path(args.repository) if args.repository else Path(tempfile.mkdtemp(prefix="wf-quality-")) / "repo"
    funnel, fingerprint = build_funnel(tower, data, cfg, repository)
    r["repository"], r["fingerprint"] = str(repository), fingerprint
    clock("rerankers + composite scorer + repository", t0)

    t0 = clock.begin()
    stages = E.funnel_stages(funnel, ev.seeds)
    staged, full = E.StagedSource(stages, ev.seeds), E.InProcessSource(funnel)
    for k in (10, *SERVED_KS):  # the staged lists are the pipeline's own output
        if not np.array_equal(staged.recommend_ids(ev.seeds, 0.5, k), full.recommend_ids(ev.seeds, 0.5, k)):
            raise AssertionError(f"staged evaluation differs from InProcessFunnel.recommend at K={k}")
    r.update(scoring_tables(stages, funnel, data, ev, cfg))
    clock("scoring-stage evaluation (issue 5)", t0)

    t0 = clock.begin()
    r["funnel"] = E.funnel_table(staged, ev, ALPHAS, SERVED_KS, cfg["merge"]["max_top_n"])
    clock("funnel table (pipeline stages, merged per alpha and K)", t0)

    r["sweep"] = []
    for wr in args.sweep:
        t0 = clock.begin()
        s_eng, s_rel = tower_lists(train_towers(data, sweep_cfg, wr=wr, progress=False), data, ev, kmax)
        m = {f"eng_{k}": v for k, v in E.system_metrics(E.ranked(s_eng), ev, KS).items()}
        m.update({f"rel_{k}": v for k, v in E.system_metrics(E.ranked(s_rel), ev, KS).items()})
        m.update({f"mrg_{k}": v for k, v in E.system_metrics(E.merged(s_eng, s_rel, 0.5), ev, KS).items()})
        r["sweep"].append((f"wr={wr:g}", m))
        clock(f"wr sweep: wr={wr:g} ({args.sweep_epochs} epoch(s))", t0)
    r["times"] = clock.summary()
    return r


def scoring_tables(stages: dict, funnel, data, ev, cfg: dict) -> dict:
    """Issue 5: NDCG@10 per stage, recall/relevance with and without the scoring stages, scorer AUCs."""
    names = {"ann": "ANN order (no scoring)", "rerank": "reranker order (no composite)",
             "composite": "composite on ANN top-K (no reranker)",
             "rerank+composite": "reranker top-M, then composite (served)"}
    ndcg = []
    for stage, name in names.items():
        m = {h: E.ndcg_at_k(stages[h][stage][0], ev.targets, 10) for h in E.HEADS}
        m["merged"] = E.ndcg_at_k(E.merge_stage(stages, stage, 0.5, 10), ev.targets, 10)
        ndcg.append((name, m))
    moves = []
    for stage in ("ann", "composite", "rerank+composite"):
        m: dict[str, float] = {}
        for k in SERVED_KS:
            m.update(E.retrieval_metrics(E.merge_stage(stages, stage, 0.5, k), ev, k))
        moves.append((names[stage], m))
    aucs = E.scorer_aucs(funnel, E.heldout_scorer_examples(data, cfg))
    return {"ndcg": ndcg, "moves": moves, "aucs": aucs, "ann_k": cfg["ann"]["k"], "keep": cfg["rerank"]["keep"]}


# ------------------------------------------------------------------------------------------------ report
def _get(rows, name: str) -> dict[str, float]:
    return dict(rows)[name]


def _change(a: dict, b: dict, key: str) -> float:
    return a[key] / b[key] - 1.0 if b.get(key, 0) > 0 else float("nan")


def _fmt(d: dict) -> str:
    return ", ".join(f"@{k}: {100 * v:+.1f}%" for k, v in d.items())


def _span(d: dict) -> str:
    return f"{100 * min(d.values()):+.1f}% to {100 * max(d.values()):+.1f}%"


def verdict(r: dict) -> str:
    """The two questions of issue 3, answered by fixed rules from the measured numbers (rules stated)."""
    rows = dict(r["retrieval"])
    base, relh = rows["engagement-only single head"], rows["MTMH relevance head"]
    mrg, engh = rows["MTMH merge alpha=0.5"], rows["MTMH engagement head"]
    rel_gain = {k: _change(relh, base, f"relevance@{k}") for k in KS}
    rec_change = {k: _change(mrg, base, f"recall@{k}") for k in KS}
    if min(rel_gain.values()) >= 0.10:
        q1 = f"**Yes** ({_span(rel_gain)})."
    elif max(rel_gain.values()) > 0:
        short = sum(v < 0.10 for v in rel_gain.values())
        q1 = f"**Not clearly**: {_span(rel_gain)}, below the +10% bar at {short} of {len(KS)} K (paper: +56.6%)."
    else:
        q1 = f"**No** ({_span(rel_gain)})."
    if min(rec_change.values()) >= -0.05:
        q2 = f"**Yes** ({_span(rec_change)})."
    else:
        lost = sum(v < -0.05 for v in rec_change.values())
        q2 = f"**No**: {_span(rec_change)}; it loses more than 5% at {lost} of {len(KS)} K."
    return "\n".join([
        "Relative changes against the engagement-only single head (same epochs, data, seed and metric):",
        "",
        f"- MTMH relevance head, semantic relevance: {_fmt(rel_gain)} (paper: +56.6%)",
        f"- MTMH relevance head, recall: {_fmt({k: _change(relh, base, f'recall@{k}') for k in KS})}",
        f"- MTMH engagement head, recall: {_fmt({k: _change(engh, base, f'recall@{k}') for k in KS})}",
        f"- MTMH merge alpha=0.5, recall: {_fmt(rec_change)}",
        f"- MTMH merge alpha=0.5, semantic relevance: {_fmt({k: _change(mrg, base, f'relevance@{k}') for k in KS})}",
        f"- MTMH merge alpha=0.5, recall against MTMH's own engagement head alone: "
        f"{_fmt({k: _change(mrg, engh, f'recall@{k}') for k in KS})}",
        "",
        f"1. Does the relevance head raise semantic relevance clearly (rule: at least +10% at every K) over "
        f"engagement-only? {q1}",
        f"2. Does the alpha=0.5 merge keep recall within a few percent (rule: within 5% at every K) of "
        f"engagement-only? {q2}",
    ])


def _word(cond: bool, yes: str, no: str) -> str:
    return yes if cond else no


def context(r: dict) -> str:
    """What else the same run says about those answers; every statement is computed from the tables."""
    rows, funnel, sweep = dict(r["retrieval"]), dict(r["funnel"]), dict(r["sweep"])
    base, teacher, rand = rows["engagement-only single head"], rows["teacher kNN (MiniLM)"], rows["random items"]
    pop, relh = rows["popularity"], rows["MTMH relevance head"]
    span = teacher["relevance@100"] - rand["relevance@100"]
    covered = (base["relevance@100"] - rand["relevance@100"]) / span if span > 0 else float("nan")
    lines = [
        f"- Headroom of the metric: Rel@100 is {pct(rand['relevance@100'])} for random items, "
        f"{pct(base['relevance@100'])} for engagement-only, {pct(relh['relevance@100'])} for the relevance head and "
        f"{pct(teacher['relevance@100'])} for the teacher kNN. Engagement-only already covers {100 * covered:.0f}% "
        f"of the distance from random to the teacher on this 19-genre taxonomy, which caps the relative gain "
        f"any head can show over it.",
    ]
    order = sorted(sweep, key=lambda n: float(n.split("=")[1]))
    if len(order) >= 2:
        lo, hi = sweep[order[0]], sweep[order[-1]]
        rel_up = all(sweep[a]["rel_relevance@100"] <= sweep[b]["rel_relevance@100"] for a, b in zip(order, order[1:]))
        rec_down = all(sweep[a]["rel_recall@100"] >= sweep[b]["rel_recall@100"] for a, b in zip(order, order[1:]))
        lines.append(
            f"- wr sweep ({r['sweep_epochs']} epoch(s) per point): relevance-head Rel@100 "
            + " -> ".join(f"{pct(sweep[n]['rel_relevance@100'])} ({n})" for n in order)
            + "; its R@100 " + " -> ".join(pct(sweep[n]["rel_recall@100"]) for n in order)
            + f". Relevance {_word(rel_up, 'rises monotonically', 'does not rise monotonically')} with wr and "
            f"recall {_word(rec_down, 'falls monotonically', 'does not fall monotonically')} "
            f"({order[0]} -> {order[-1]}: Rel@100 {100 * _change(hi, lo, 'rel_relevance@100'):+.1f}%, "
            f"R@100 {100 * _change(hi, lo, 'rel_recall@100'):+.1f}%).")
        if "wr=0" in sweep and "wr=0.5" in sweep:
            short = _change(sweep["wr=0.5"], sweep["wr=0"], "rel_relevance@100")
            long = _change(relh, base, "relevance@100")
            lines.append(
                f"- Relevance gain of the wr=0.5 relevance head over an undistilled one, Rel@100: "
                f"{100 * short:+.1f}% after {r['sweep_epochs']} epoch(s) (sweep; reference: the wr=0 row) and "
                f"{100 * long:+.1f}% after {r['cfg']['training']['epochs']} epochs (main table; reference: "
                f"engagement-only single head).")
    ens = funnel.get("ensemble alpha=0.5", {})
    if ens:
        lines.append(
            f"- The served funnel (rerank + composite + merge, alpha=0.5) against the engagement-only ANN: recall "
            f"{_fmt({k: _change(ens, base, f'recall@{k}') for k in SERVED_KS})}, semantic relevance "
            f"{_fmt({k: _change(ens, base, f'relevance@{k}') for k in SERVED_KS})} (the funnel has scoring stages "
            f"the baseline lacks; see issue 5 below).")
    lines.append(
        f"- Popularity: R@500 {pct(pop['recall@500'])} vs {pct(base['recall@500'])} for engagement-only, "
        f"R@50 {pct(pop['recall@50'])} vs {pct(base['recall@50'])}.")
    fresh = dict(r["fresh"])
    lines.append(
        "- Fresh targets (new-target R@500): " + ", ".join(
            f"{n} {pct(fresh[n]['ft_recall@500'])}" for n in ("engagement-only single head", "multi-task single head",
                                                              "MTMH merge alpha=0.5", "teacher kNN (MiniLM)",
                                                              "random items"))
        + ". A fresh item has no training pairs (its id embedding stays near its initialisation) and a zero "
          "popularity feature.")
    return "\n".join(lines)


def scoring_summary(r: dict) -> str:
    nd = dict(r["ndcg"])
    ann, rr = nd["ANN order (no scoring)"], nd["reranker order (no composite)"]
    comp, served = nd["composite on ANN top-K (no reranker)"], nd["reranker top-M, then composite (served)"]
    mv = dict(r["moves"])
    m_ann, m_comp, m_srv = (mv[n] for n in ("ANN order (no scoring)", "composite on ANN top-K (no reranker)",
                                           "reranker top-M, then composite (served)"))
    return "\n".join([
        f"- NDCG@10 of the merged list: ANN order {pct(ann['merged'])}, composite on the ANN's K "
        f"{pct(comp['merged'])}, served (reranker top-M, then composite) {pct(served['merged'])}. The rerankers "
        f"alone order {_word(rr['engagement'] < ann['engagement'], 'worse', 'better')} than the ANN for the "
        f"engagement head ({pct(rr['engagement'])} vs {pct(ann['engagement'])}) and "
        f"{_word(rr['relevance'] < ann['relevance'], 'worse', 'better')} for the relevance head "
        f"({pct(rr['relevance'])} vs {pct(ann['relevance'])}).",
        f"- Merged list, R@100: ANN {pct(m_ann['recall@100'])}, composite on K {pct(m_comp['recall@100'])}, "
        f"served {pct(m_srv['recall@100'])}; Rel@100: {pct(m_ann['relevance@100'])}, "
        f"{pct(m_comp['relevance@100'])}, {pct(m_srv['relevance@100'])}. (The composite value includes "
        f"E[relevance]; the rerankers are trained on engagement labels only.)",
    ])


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = dict(r["retrieval"])
    fig, axes = plt.subplots(1, len(KS), figsize=(5 * len(KS), 4.2))
    for ax, k in zip(axes, KS):
        xs = [rows[f"MTMH merge alpha={a:g}"][f"recall@{k}"] * 100 for a in ALPHAS]
        ys = [rows[f"MTMH merge alpha={a:g}"][f"relevance@{k}"] * 100 for a in ALPHAS]
        ax.plot(xs, ys, "o-", color="C0", label="MTMH merge of the ANN lists (alpha)")
        for i, (a, x, y) in enumerate(zip(ALPHAS, xs, ys)):
            ax.annotate(f"{a:g}", (x, y), textcoords="offset points", xytext=(3, 6 if i % 2 else -11), fontsize=8)
        ens = dict(r["funnel"])
        if k in SERVED_KS:
            ex = [ens[f"ensemble alpha={a:g}"][f"recall@{k}"] * 100 for a in ALPHAS]
            ey = [ens[f"ensemble alpha={a:g}"][f"relevance@{k}"] * 100 for a in ALPHAS]
            ax.plot(ex, ey, "o--", color="C9", mfc="white", label="served funnel: rerank + composite + merge")
            for i, (a, x, y) in enumerate(zip(ALPHAS, ex, ey)):
                ax.annotate(f"{a:g}", (x, y), textcoords="offset points", xytext=(3, 6 if i % 2 else -11),
                            fontsize=8, color="C9")
        for name, marker, color in (("engagement-only single head", "s", "C1"), ("multi-task single head", "^", "C2"),
                                    ("teacher kNN (MiniLM)", "D", "C3"), ("popularity", "x", "C4"),
                                    ("random items", "+", "C7")):
            ax.plot(rows[name][f"recall@{k}"] * 100, rows[name][f"relevance@{k}"] * 100, marker, color=color,
                    label=name)
        ax.set_xlabel(f"recall@{k} (%)")
        ax.set_ylabel(f"semantic relevance@{k} (%)")
        ax.set_title(f"K = {k}")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.suptitle("MovieLens-100K, held-out co-engagement: recall vs genre relevance over alpha "
                 "(labels: alpha = engagement share)")
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def served_section(rows, header: str) -> str:
    cols = retrieval_columns(SERVED_KS)
    return "\n".join([SERVED_BEGIN, header, "", table(rows, cols), SERVED_END])


def report(r: dict, command: str) -> str:
    cfg = r["cfg"]
    ep, sw = cfg["training"]["epochs"], r["sweep_epochs"]
    aucs = "\n".join(f"| {name} | {a:.4f} | {p} | {n} |" for name, (a, p, n) in r["aucs"].items())
    sweep_cols = [(f"rel R@{k}", f"rel_recall@{k}") for k in KS] + \
                 [(f"rel Rel@{k}", f"rel_relevance@{k}") for k in KS] + \
                 [("eng R@100", "eng_recall@100"), ("eng Rel@100", "eng_relevance@100"),
                  ("merge R@100", "mrg_recall@100"), ("merge Rel@100", "mrg_relevance@100"),
                  ("merge R@500", "mrg_recall@500"), ("merge Rel@500", "mrg_relevance@500")]
    fresh_cols = [("new-seed R@100", "fq_recall@100"), ("new-seed R@500", "fq_recall@500"),
                  ("new-seed Rel@100", "fq_relevance@100"), ("new-target R@100", "ft_recall@100"),
                  ("new-target R@500", "ft_recall@500")]
    return f"""# Offline quality: recall vs relevance (MTMH), and the scoring stages

All numbers below were measured by one run of

```bash
{command}
```

on this machine (2 shared CPU cores, no GPU); stage times are at the end.
Every value is a percentage, except AUCs and counts.

## Setup

- Data: MovieLens-100K, co-engaged pairs (positives: `[dataset] positive = "{cfg['dataset']['positive']}"`,
  window {cfg['data']['window']}), split by time at the {cfg['data']['split_quantile']:g} quantile:
  {r['train_pairs']} training pairs, {r['test_pairs']} held-out pairs.
- Query set: the {r['queries']} distinct query items of the held-out pairs (cap `data.max_eval_queries` =
  {cfg['data']['max_eval_queries']}); T(q) = every item co-engaged with q after the split; the seed is excluded
  from its own results.
- **recall@K** = mean over queries of |top-K ∩ T(q)| / |T(q)|. **Rel@K** (semantic relevance) = mean over
  queries of the share of the K items that share at least one MovieLens genre with the seed. **Jac@K** = mean
  genre Jaccard(seed, item) over the K items. **NDCG@10**: binary gain (item in T(q)), ideal = min(|T(q)|, 10)
  hits first. **AUC**: Mann-Whitney, ties counted half. (Exact code: `evaluation/offline.py`.)
- Towers: {ep} epochs (`training.epochs`), Adagrad lr {cfg['training']['lr']}, batch {cfg['training']['batch_size']},
  wr = {cfg['training']['wr']}; every tower variant uses the same seed, data and epochs. Retrieval is exact
  int8 search on each head's index, as served. Merged lists: `widefunnel.merge.quota_merge` of the two heads'
  ANN lists with top_n = K (engagement head gets round(alpha K) slots).
- Baselines: engagement-only single head (`heads=1, distill_heads=()`), multi-task single head (`heads=1,
  distill_heads=(0,)`, InfoNCE + wr KL on one head), teacher kNN (cosine on all-MiniLM-L6-v2 embeddings of
  "title (year). Genres: ..." — note the teacher's text names the genres, so it is close to an upper bound of
  genre relevance), popularity (most frequent training targets), random items (the relevance floor).

## Retrieval: heads, merge over alpha, baselines (all {r['queries']} queries)

{table(r['retrieval'], retrieval_columns(KS, ('recall',)) + retrieval_columns(KS, ('relevance',))
       + retrieval_columns(KS, ('jaccard',)))}

![recall vs relevance over alpha](quality_alpha.png)

## Verdict (issue 3)

{verdict(r)}

What else this run shows:

{context(r)}

## Relevance-head weight wr (towers retrained for each wr, {sw} epoch(s) each to keep the run affordable)

`rel` = the MTMH relevance head alone, `eng` = the engagement head of the same model, `merge` = alpha 0.5.
Fewer epochs than the main table ({ep}), so compare rows with each other, not with the tables above.

{table(r['sweep'], sweep_cols, 'wr')}

## Fresh items (first interaction after the split time)

`new-seed`: the {r['fresh_queries']} queries whose seed is a fresh item (recall over all their targets).
`new-target`: the {r['fresh_target_queries']} queries with at least one fresh target; recall of the fresh targets only.
Small slices: read differences of a few points as noise.

{table(r['fresh'], fresh_cols)}

## Scoring stages (issue 5)

{scoring_summary(r)}

Build fingerprint `{r['fingerprint']}`; ANN k = {r['ann_k']} per head, reranker keeps M = {r['keep']}.
Stages computed with the build's own ONNX sessions (`widefunnel.evaluation.pipeline.InProcessFunnel`); the merged
"served" lists were checked to equal `InProcessFunnel.recommend(alpha=0.5, top_n=K)` exactly (K = 10, 50, 100).
ANN and reranker scores of the two heads are on different scales, so those merged rows keep quota order;
composite-scored rows are sorted by the composite value, as served.

### NDCG@10 against held-out engagement (label: candidate in T(q))

{table(r['ndcg'], [('engagement head', 'engagement'), ('relevance head', 'relevance'),
                   ('merged alpha=0.5', 'merged')], 'ranking')}

### Recall / relevance of the merged alpha=0.5 list with and without the scoring stages

{table(r['moves'], retrieval_columns(SERVED_KS, ('recall', 'relevance')), 'pipeline')}

### Composite scorer, per-task AUC on held-out pairs

Held-out co-engaged pairs after the split time (all ratings), one random negative per positive; liked =
rating >= 4, loved = rating 5 (negatives count as neither), relevance levels from the teacher with the
training thresholds.

| task | AUC | positives | negatives |
|---|---:|---:|---:|
{aucs}

## The deployed funnel, in process and served

Each head's ANN alone (k = {r['ann_k']}), the merge of those ANN lists, and the ensemble's own output
(rerank + composite + quota merge, `top_n` = K <= {cfg['merge']['max_top_n']}) per alpha. In process (the
build's ONNX models via `widefunnel.evaluation.pipeline`; embeddings from onnxruntime rather than torch, so the last
digit of a head's row can differ from the retrieval table above):

{table(r['funnel'], retrieval_columns(SERVED_KS))}

The same table through a running server (`--served`, section below; it is filled in by that command):

{SERVED_BEGIN}
Not measured yet: serve the build (`--repository DIR`, then `widefunnel serve --repository DIR`) and run
`benchmarks/quality.py --served URL --out benchmarks/QUALITY.md`.
{SERVED_END}

## Stage times

{times_markdown(r['times'])}
"""


def served(args: argparse.Namespace) -> None:
    from widefunnel.client.client import WidefunnelClient

    cfg = load_config(args.config, overrides(args))
    ev = E.eval_set_for(cfg)
    t0 = time.monotonic()
    with WidefunnelClient(args.served, args.protocol) as client:
        fingerprint = client.recommend(ev.seeds[:1]).fingerprint[0]
        rows = E.funnel_table(E.ServedSource(client), ev, ALPHAS, SERVED_KS, cfg["merge"]["max_top_n"])
    header = (f"Served over {args.protocol} by build `{fingerprint}`, {len(ev.seeds)} queries, "
              f"{time.monotonic() - t0:.0f} s, command: `{command_line()}`")
    print(header + "\n\n" + table(rows, retrieval_columns(SERVED_KS)))
    if args.out:
        path = Path(args.out)
        text = path.read_text() if path.exists() else ""
        served_table = table(rows, retrieval_columns(SERVED_KS))
        before_section = text.split(SERVED_BEGIN, 1)[0]
        if f"`{fingerprint}`" in before_section:  # the in-process report of this same build
            same = served_table in before_section
            header += ("\n\n" + ("**Identical, digit for digit, to the in-process table above.**" if same else
                                  "**Differs from the in-process table above.**"))
        section = served_section(rows, header)
        if SERVED_BEGIN in text and SERVED_END in text:
            before, rest = text.split(SERVED_BEGIN, 1)
            text = before + section + rest.split(SERVED_END, 1)[1]
        else:
            text += "\n" + section + "\n"
        path.write_text(text)


def overrides(args: argparse.Namespace) -> dict:
    out: dict = {}
    if args.epochs:
        out["training"] = {"epochs": args.epochs}
    if args.max_queries:
        out["data"] = {"max_eval_queries": args.max_queries}
    return out


def command_line() -> str:
    return ".venv/bin/python " + " ".join(shlex.quote(a) for a in
                                           [os.path.relpath(sys.argv[0], HERE.parent), *sys.argv[1:]])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path, default=None, help="TOML overriding widefunnel/default.toml")
    p.add_argument("--epochs", type=int, default=0, help="tower epochs for the main variants (0 = config's)")
    p.add_argument("--max-queries", type=int, default=0, help="cap on eval queries (0 = data.max_eval_queries)")
    p.add_argument("--sweep-epochs", type=int, default=1, help="tower epochs for each point of the wr sweep")
    p.add_argument("--sweep", type=float, nargs="*", default=list(WR_SWEEP), help="wr values of the sweep")
    p.add_argument("--repository", default=None, help="write the evaluated build here (default: a temp dir)")
    p.add_argument("--out", default=None, help="markdown output (default: benchmarks/QUALITY.md offline; "
                                               "with --served: update that file's served section)")
    p.add_argument("--plot", default=str(HERE / "quality_alpha.png"))
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads; 1 is ~4x faster than 2 when other jobs share the 2 cores (measured)")
    p.add_argument("--save-results", default=None, metavar="JSON", help="also keep every measured number here")
    p.add_argument("--from-results", default=None, metavar="JSON",
                   help="rewrite the report and plot from saved results, training nothing")
    p.add_argument("--served", default=None, metavar="URL", help="host:port of a running server: measure it")
    p.add_argument("--protocol", default="grpc", choices=("http", "grpc"))
    args = p.parse_args(argv)
    if args.served:
        served(args)
        return 0
    if args.from_results:
        r = json.loads(Path(args.from_results).read_text())
    else:
        import torch

        torch.set_num_threads(args.threads)
        r = offline(args)
        r["sweep_epochs"], r["command"] = args.sweep_epochs, command_line()
        if args.save_results:
            Path(args.save_results).write_text(json.dumps(r, indent=1, default=str))
    out = Path(args.out or HERE / "QUALITY.md")
    served_text = out.read_text() if args.from_results and out.exists() else ""
    plot(r, Path(args.plot))
    text = report(r, r["command"])
    if args.from_results:
        text = text.replace("\n\non this machine", f"\n\n(report and plot rewritten from that run's saved results by "
                            f"`{command_line()}`)\non this machine", 1)
    if SERVED_BEGIN in served_text and SERVED_END in served_text:  # keep a served section measured on this build
        kept = served_text.split(SERVED_BEGIN, 1)[1].split(SERVED_END, 1)[0]
        if r["fingerprint"] in kept:
            text = text.split(SERVED_BEGIN, 1)[0] + SERVED_BEGIN + kept + SERVED_END + text.split(SERVED_END, 1)[1]
    print(text)
    out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
