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


def test_the_int8_encoder_stays_within_its_bound_and_caches_apart(tmp_path, monkeypatch):
    """`[teacher] int8`: every embedding within cosine 0.97 of the float encoder's (about 0.99 on average), and
    its embeddings cached apart from the float ones."""
    monkeypatch.setenv("WIDEFUNNEL_CACHE", str(tmp_path))
    from widefunnel.builders import teacher
    from widefunnel.dataset.synthetic_shop import generate_shop

    titles = [" ".join(t) for t in generate_shop(n_items=300, seed=4).items.column("title").to_pylist()]
    texts = titles + ["Toy Story (1995). Genres: Animation, Children's, Comedy.", "long " * 600]
    float_ = teacher.encode_texts(texts, batch_size=32)
    int8 = teacher.encode_texts(texts, batch_size=32, int8=True)
    cosine = (float_ * int8).sum(axis=1)
    assert cosine.min() > 0.97 and cosine.mean() > 0.985, (cosine.min(), cosine.mean())
    assert not np.array_equal(float_, int8)  # a different encoder, not the float cache read back
    assert (tmp_path / f"texts-{teacher.ENCODER}-int8").is_dir() and (tmp_path / f"texts-{teacher.ENCODER}").is_dir()
    np.testing.assert_array_equal(teacher.encode_texts(texts[:7], batch_size=32, int8=True), int8[:7])  # cached
