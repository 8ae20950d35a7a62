"""The content encoder as run by the build (ONNX Runtime, length-sorted batches) gives sentence-transformers' own
embeddings, texts longer than the encoder's window included."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def test_onnx_runtime_embeddings_equal_sentence_transformers(tmp_path, monkeypatch):
    monkeypatch.setenv("WIDEFUNNEL_CACHE", str(tmp_path))
    from widefunnel.builders import teacher

    rng = np.random.default_rng(0)
    words = ["red", "shoe", "kitchen", "Ölkanne", "水", "drill", "4k", "", "a" * 40]
    texts = [" ".join(rng.choice(words, rng.integers(0, 12))) for _ in range(37)]
    texts += ["long " * 600, "", "Toy Story (1995). Genres: Animation, Children's, Comedy."]
    got = teacher._encode(texts, batch_size=8, progress=False)
    want = teacher._sentence_transformer().encode(texts, batch_size=8, normalize_embeddings=True)
    assert got.shape == (len(texts), teacher.EMBEDDING_DIM)
    np.testing.assert_allclose(got, want, atol=2e-5)
    assert (tmp_path / f"encoder-{teacher.ENCODER}" / "model.onnx").is_file()  # exported once, then reused
    np.testing.assert_allclose(teacher._encode(texts[:5], batch_size=2, progress=False), want[:5], atol=2e-5)
