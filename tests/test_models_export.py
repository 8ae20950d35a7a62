"""The learned stages export to ONNX graphs that compute what the torch modules compute."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from widefunnel.builders.export import export_reranker
from widefunnel.builders.models import Reranker


@pytest.mark.parametrize("kind", ["mlp", "mixture_of_logits"])
def test_reranker_variants_export_and_keep_the_best_m(tmp_path, kind):
    torch.manual_seed(0)
    model = Reranker(8, [16, 8], kind=kind, components=3).eval()
    path = tmp_path / "rerank.onnx"
    export_reranker(model, keep=4, dim=8, fingerprint="00000000000000ff", path=path)
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    q, emb = np.random.default_rng(1).standard_normal((2, 8), np.float32), None
    for k in (3, 10):  # fewer candidates than keep, and more
        emb = np.random.default_rng(k).standard_normal((2, k, 8)).astype(np.float32)
        ids = np.arange(2 * k, dtype=np.int64).reshape(2, k) + 100
        kept, scores, fp = session.run(None, {"QUERY": q, "CANDIDATE_ID": ids, "CANDIDATE_EMB": emb})
        with torch.no_grad():
            expected = model(torch.from_numpy(q), torch.from_numpy(emb)).numpy()
        order = np.argsort(-expected, axis=1, kind="stable")[:, : min(4, k)]
        assert kept.shape == (2, min(4, k))
        np.testing.assert_array_equal(kept, np.take_along_axis(ids, order, 1))
        np.testing.assert_allclose(scores, np.take_along_axis(expected, order, 1), rtol=1e-5, atol=1e-6)
        assert (fp == 0xFF).all()


def test_unknown_reranker_kind_is_refused():
    with pytest.raises(ValueError, match="rerank.kind"):
        Reranker(8, [8], kind="transformer")
