"""The learned stages export to ONNX graphs that compute what the torch modules compute."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from widefunnel.builders.export import export_reranker, export_scorer
from widefunnel.builders.models import CompositeScorer, Reranker


def _table(rows: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    codes = rng.integers(-127, 128, (rows, dim)).astype(np.int8)
    scales = rng.uniform(0.001, 0.01, rows).astype(np.float32)
    codes[0], scales[0] = 0, 0.0  # row 0: no item (the pad's row)
    return codes, scales


def _embeddings(codes, scales, ids):
    rows = np.maximum(ids, 0)
    return np.where((ids >= 0)[..., None], codes[rows].astype(np.float32) * scales[rows][..., None], 0.0)


@pytest.mark.parametrize("kind", ["mlp", "mixture_of_logits"])
def test_reranker_variants_export_and_keep_the_best_m(tmp_path, kind):
    """The graph gathers each candidate's codes from its own item table (ids in, no embeddings) and keeps the
    best min(KEEP, K) per seed, sorted."""
    torch.manual_seed(0)
    model = Reranker(8, [16, 8], kind=kind, components=3).eval()
    codes, scales = _table(40, 8)
    path = tmp_path / "rerank.onnx"
    export_reranker(model, codes, scales, fingerprint="00000000000000ff", path=path)
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    q = np.random.default_rng(1).standard_normal((2, 8), np.float32)
    for k in (3, 10):  # fewer candidates than keep, and more
        ids = np.arange(2 * k, dtype=np.int64).reshape(2, k) + 1
        kept, scores, fp = session.run(None, {"QUERY": q, "CANDIDATE_ID": ids, "KEEP": np.full((2, 1), 4, np.int32)})
        with torch.no_grad():
            expected = model(torch.from_numpy(q), torch.from_numpy(_embeddings(codes, scales, ids))).numpy()
        order = np.argsort(-expected, axis=1, kind="stable")[:, : min(4, k)]
        assert kept.shape == (2, min(4, k))
        np.testing.assert_array_equal(kept, np.take_along_axis(ids, order, 1))
        np.testing.assert_allclose(scores, np.take_along_axis(expected, order, 1), rtol=1e-5, atol=1e-6)
        assert (fp == 0xFF).all()
    # seeds of one batch asking different KEEP: each gets its own, the shorter padded (-1, -inf)
    ids = np.arange(20, dtype=np.int64).reshape(2, 10) + 1
    kept, scores, _ = session.run(None, {"QUERY": q, "CANDIDATE_ID": ids, "KEEP": np.array([[2], [5]], np.int32)})
    assert kept.shape == (2, 5) and (kept[0, 2:] == -1).all() and np.isneginf(scores[0, 2:]).all()
    assert (kept[1] > 0).all() and np.isfinite(scores[1]).all()
    full, _, _ = session.run(None, {"QUERY": q, "CANDIDATE_ID": ids, "KEEP": np.array([[5], [5]], np.int32)})
    np.testing.assert_array_equal(kept[0, :2], full[0, :2])


@pytest.mark.parametrize("kind", ["mlp", "mixture_of_logits"])
@pytest.mark.parametrize("batch,k", [(1, 1), (3, 7), (2, 300)])
def test_the_serving_form_of_the_reranker_scores_as_training_does(kind, batch, k):
    """`Reranker.serve` (first layer folded per query, the rest on [B*K, h] rows: what the graph runs) equals
    `forward` (what training optimised) to float rounding."""
    torch.manual_seed(1)
    model = Reranker(16, [24, 8], kind=kind, components=3).eval()
    q, c = torch.randn(batch, 16), torch.randn(batch, k, 16)
    with torch.no_grad():
        served, trained = model.serve(q, c), model(q, c)
    assert served.shape == trained.shape == (batch, k)
    torch.testing.assert_close(served, trained, rtol=1e-5, atol=1e-5)


def test_unknown_reranker_kind_is_refused():
    with pytest.raises(ValueError, match="rerank.kind"):
        Reranker(8, [8], kind="transformer")


def _session(path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_padding_never_outranks_a_real_candidate(tmp_path):
    """The ANN pads short lists with id -1 and a zero embedding: the reranker must rank pads last (a zero
    embedding can score above real items) and the scorer must give them -inf, not item -1's score."""
    torch.manual_seed(0)
    model = Reranker(8, [16, 8]).eval()
    codes, scales = _table(20, 8)
    q = np.random.default_rng(1).standard_normal((1, 8), np.float32)
    ids = np.array([[10, 11, 12, -1, -1, -1]], np.int64)
    with torch.no_grad():
        raw = model(torch.from_numpy(q), torch.from_numpy(_embeddings(codes, scales, ids))).numpy()[0]
    if raw[3] <= raw[:3].min():  # make sure a pad (zero embedding) would have won without the mask
        codes[10:13] = -codes[10:13]
    export_reranker(model, codes, scales, fingerprint="00000000000000ff", path=tmp_path / "r.onnx")
    keep = np.full((1, 1), 3, np.int32)
    kept, scores, _ = _session(tmp_path / "r.onnx").run(None, {"QUERY": q, "CANDIDATE_ID": ids, "KEEP": keep})
    assert sorted(kept[0].tolist()) == [10, 11, 12] and np.isfinite(scores).all()
    kept, scores, _ = _session(tmp_path / "r.onnx").run(None, {"QUERY": q, "CANDIDATE_ID": ids[:, [0, 3, 4, 5]],
                                                                "KEEP": keep})
    assert kept[0, 0] == 10 and (kept[0, 1:] == -1).all() and np.isneginf(scores[0, 1:]).all()

    features = torch.randn(20, 4)
    scorer = CompositeScorer(features, [8], tasks=3).eval()
    export_scorer(scorer, 3, "00000000000000ff", tmp_path / "s.onnx")
    probs, _, score, _ = _session(tmp_path / "s.onnx").run(None, {
        "ITEM_ID": np.array([[1]], np.int64), "CANDIDATE_ID": np.array([[5, -1, 19]], np.int64),
        "VALUE_WEIGHTS": np.ones((1, 4), np.float32)})
    assert np.isfinite(score[0, [0, 2]]).all() and np.isneginf(score[0, 1])
