"""The served ensemble reproducing the offline merged metrics exactly (and `benchmarks/quality.py --served` writing
the same table); the metric functions themselves: tests/unit/test_quality.py."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from widefunnel.evaluation import offline as E
from widefunnel.evaluation.pipeline import InProcessFunnel

K = 50
SEEDS = 30


# ------------------------------------------------------------------------------- served == offline
@pytest.fixture(scope="module")
def eval_subset(test_config) -> E.EvalSet:
    ev = E.eval_set_for(test_config)
    rows = np.sort(np.random.default_rng(0).choice(len(ev.seeds), SEEDS, replace=False))
    return ev.rows(rows)


@pytest.fixture(scope="module")
def in_process(built_repository) -> InProcessFunnel:
    return InProcessFunnel(built_repository)


def test_served_merged_metrics_equal_offline(client, in_process, eval_subset):
    ev = eval_subset
    offline = E.InProcessSource(in_process).recommend_ids(ev.seeds, 0.5, K)
    served = np.concatenate([client.recommend(ev.seeds[i:i + 16], alpha=0.5, top_n=K).item_id
                             for i in range(0, len(ev.seeds), 16)])
    assert served.shape == (SEEDS, K) and (served >= 0).all()
    assert np.array_equal(served, offline)
    m_off, m_srv = E.retrieval_metrics(offline, ev, K), E.retrieval_metrics(served, ev, K)
    assert m_srv == m_off
    assert m_off[f"recall@{K}"] > 0 and 0 < m_off[f"relevance@{K}"] <= 1


def test_staged_evaluation_equals_the_pipeline(in_process, eval_subset):
    """The benchmark merges stages computed once; that must be the pipeline's own output."""
    ev = eval_subset
    staged = E.StagedSource(E.funnel_stages(in_process, ev.seeds), ev.seeds)
    full = E.InProcessSource(in_process)
    for alpha, k in ((0.0, 10), (0.5, K), (1.0, 100)):
        assert np.array_equal(staged.recommend_ids(ev.seeds, alpha, k), full.recommend_ids(ev.seeds, alpha, k))
    for head, ids in full.retrieve_ids(ev.seeds).items():
        assert np.array_equal(staged.retrieve_ids(ev.seeds)[head], ids)


def _quality_module():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "quality.py"
    spec = importlib.util.spec_from_file_location("widefunnel_quality_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quality_served_mode_writes_the_in_process_table(server, in_process, test_config, tmp_path, capsys):
    q = _quality_module()
    out = tmp_path / "QUALITY.md"
    out.write_text(f"# report\n\nbefore\n\n{q.SERVED_BEGIN}\nold\n{q.SERVED_END}\n\nafter\n")
    assert q.main(["--served", server.grpc_url, "--protocol", "grpc", "--max-queries", str(SEEDS),
                   "--out", str(out)]) == 0
    capsys.readouterr()
    ev = E.eval_set_for({**test_config, "data": {**test_config["data"], "max_eval_queries": SEEDS}})
    rows = E.funnel_table(E.InProcessSource(in_process), ev, q.ALPHAS, q.SERVED_KS,
                          test_config["merge"]["max_top_n"])
    expected = q.table(rows, q.retrieval_columns(q.SERVED_KS))
    text = out.read_text()
    assert expected in text
    assert "old" not in text and text.startswith("# report") and text.rstrip().endswith("after")
    assert text.count(q.SERVED_BEGIN) == 1 and len(ev.seeds) == SEEDS
