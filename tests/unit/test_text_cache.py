"""The content encoder's cache by text: only texts never seen are encoded, each distinct text once, and what comes
back equals a fresh encoding, whatever order or repetition the texts come in."""

from __future__ import annotations

import numpy as np

from widefunnel.builders.text_cache import TextEmbeddingCache, cached_encode, text_keys


class CountingEncoder:
    """A deterministic stand-in for the encoder (a pure function of the text), counting what it is asked for."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        return np.stack([np.random.default_rng(int.from_bytes(t.encode()[:8].ljust(8, b"\0"), "little") + len(t))
                         .standard_normal(8).astype(np.float32) for t in texts])


def test_each_distinct_text_is_encoded_once_and_a_rebuild_encodes_nothing(tmp_path):
    cache, encoder = TextEmbeddingCache(tmp_path / "cache"), CountingEncoder()
    texts = ["red shoe", "blue hat", "red shoe", "ünïcode ✓", "blue hat"]
    first, encoded = cached_encode(texts, encoder, cache)
    assert encoded == 3 and sorted(encoder.calls[0]) == sorted({*texts})
    np.testing.assert_array_equal(first, encoder(texts))  # equal to a fresh encoding, in order
    encoder.calls.clear()
    again, encoded = cached_encode(list(reversed(texts)), encoder, cache)
    assert encoded == 0 and not encoder.calls
    np.testing.assert_array_equal(again, first[::-1])


def test_a_grown_catalogue_encodes_only_its_new_texts(tmp_path):
    cache, encoder = TextEmbeddingCache(tmp_path / "cache"), CountingEncoder()
    cached_encode([f"item {i}" for i in range(100)], encoder, cache)
    encoder.calls.clear()
    grown = [f"item {i}" for i in range(103)]
    vectors, encoded = cached_encode(grown, encoder, cache)
    assert encoded == 3 and sorted(encoder.calls[0]) == ["item 100", "item 101", "item 102"]
    np.testing.assert_array_equal(vectors, encoder(grown))
    assert len(list((tmp_path / "cache").glob("shard-*.npz"))) == 2


def test_a_damaged_shard_is_skipped_and_its_texts_encoded_again(tmp_path):
    cache, encoder = TextEmbeddingCache(tmp_path / "cache"), CountingEncoder()
    cached_encode(["a", "b"], encoder, cache)
    next((tmp_path / "cache").glob("shard-*.npz")).write_bytes(b"not a shard")
    vectors, encoded = cached_encode(["a", "b"], encoder, cache)
    assert encoded == 2
    np.testing.assert_array_equal(vectors, encoder(["a", "b"]))


def test_keys_are_per_text():
    keys = text_keys(["x", "y", "x"])
    assert keys[0] == keys[2] and keys[0] != keys[1] and keys.dtype.itemsize == 16
    assert cached_encode([], CountingEncoder(), TextEmbeddingCache("/nonexistent"))[1] == 0
