"""Content-encoder embeddings cached by text, so a rebuild, a catalogue that grew by a few items, or `items add`
encodes only texts it has never seen (the encoder is the slowest stage of a large build on a CPU).

A cache folder holds append-only shard files, each a set of (text key, embedding) rows; the key is the first
16 bytes of the SHA-256 of the UTF-8 text, so equal texts share one row whoever wrote it. A shard is written to a
temporary name and renamed, so concurrent builds never see half a shard; two builds that encode the same text
both append it, and either copy serves (the encoder is deterministic on one machine).
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

KEY = np.dtype("V16")
SHARD_GLOB = "shard-*.npz"


def text_keys(texts: Sequence[str]) -> np.ndarray:
    """[len(texts)] V16: the first 16 bytes of each text's SHA-256."""
    return np.frombuffer(b"".join(hashlib.sha256(t.encode()).digest()[:16] for t in texts), KEY)


class TextEmbeddingCache:
    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def _shards(self) -> list[Path]:
        return sorted(self.folder.glob(SHARD_GLOB)) if self.folder.is_dir() else []

    def lookup(self, keys: np.ndarray, dim: int | None = None) -> tuple[np.ndarray | None, np.ndarray]:
        """(embeddings [len(keys), dim] with found rows filled, found bool [len(keys)]); embeddings is None when
        nothing was found and ``dim`` is not given."""
        found = np.zeros(len(keys), bool)
        out = None if dim is None else np.zeros((len(keys), dim), np.float32)
        for shard in self._shards():
            try:
                with np.load(shard) as data:
                    shard_keys, vectors = data["keys"].view(KEY).ravel(), data["vectors"]
            except (OSError, ValueError, KeyError) as exc:  # a damaged shard is skipped, its texts re-encoded
                logger.warning("text cache: skipping %s (%s)", shard, exc)
                continue
            order = np.argsort(shard_keys)
            sorted_keys = shard_keys[order]
            pos = np.searchsorted(sorted_keys, keys)
            hit = (pos < len(sorted_keys)) & ~found
            hit[hit] = sorted_keys[pos[hit]] == keys[hit]
            if not hit.any():
                continue
            if out is None:
                out = np.zeros((len(keys), vectors.shape[1]), np.float32)
            out[hit] = vectors[order[pos[hit]]]
            found |= hit
        return out, found

    def add(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        if not len(keys):
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"shard-{uuid.uuid4().hex}"
        tmp = self.folder / f".{name}.tmp.npz"
        np.savez(tmp, keys=np.asarray(keys).view(np.uint8).reshape(len(keys), KEY.itemsize),
                 vectors=np.asarray(vectors, np.float32))
        os.replace(tmp, self.folder / f"{name}.npz")


def cached_encode(texts: Sequence[str], encode: Callable[[list[str]], np.ndarray], cache: TextEmbeddingCache,
                  chunk: int = 50_000) -> tuple[np.ndarray, int]:
    """Embeddings of ``texts`` in order, encoding each distinct text the cache lacks once; (embeddings, how many
    texts were encoded)."""
    if not texts:
        return np.zeros((0, 0), np.float32), 0
    keys = text_keys(texts)
    unique, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    vectors, found = cache.lookup(unique)
    missing = np.flatnonzero(~found)
    for start in range(0, len(missing), chunk):  # a shard per chunk: an interrupted build resumes from there
        part = missing[start:start + chunk]
        fresh = np.asarray(encode([texts[int(first[m])] for m in part]), np.float32)
        if vectors is None:
            vectors = np.zeros((len(unique), fresh.shape[1]), np.float32)
        vectors[part] = fresh
        cache.add(unique[part], fresh)
    assert vectors is not None
    return vectors[inverse.ravel()], len(missing)
