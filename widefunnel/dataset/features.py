"""Item fields -> the item tower's feature tables, by field type.

Pure numpy over the typed columns, row = internal id (row 0 is the padding row, all zeros), so the tower keeps
them as module buffers and its ONNX graph stays a gather: a `token` field is one code per item (0 = missing or a
token too rare to learn: the out-of-vocabulary bucket), a `token_seq` field a padded [N + 1, L] code matrix (0 pads;
the tower takes a masked mean of its embeddings), `float` fields z-scored (missing -> 0, plus a missing flag),
`float_seq` fields a fixed-width dense vector (padded or truncated to the field's longest list, capped).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from widefunnel.dataset.columns import FloatColumn, FloatSeqColumn, TokenColumn, TokenSeqColumn
from widefunnel.dataset.table import Items

MAX_BAG = 32  # tokens kept per item of a token_seq field (the longest lists are truncated)
MAX_FLOAT_SEQ = 16  # values kept per item of a float_seq field


@dataclass(frozen=True)
class ItemFeatures:
    tokens: dict[str, np.ndarray]  # field -> int64 [N + 1] codes in 0..V (0 = OOV / missing / padding)
    bags: dict[str, np.ndarray]  # field -> int64 [N + 1, L] codes, 0 pads
    vocabulary: dict[str, int]  # field -> V + 1: the embedding table's rows (code 0 included)
    dense: np.ndarray  # float32 [N + 1, F]
    dense_names: tuple[str, ...]  # F names: `price`, `price:missing`, `dims[0]`, ...


def _rare_to_oov(codes: np.ndarray, vocabulary: int, min_count: int) -> tuple[np.ndarray, int]:
    """Codes of tokens seen fewer than ``min_count`` times -> 0; the rest renumbered densely from 1."""
    counts = np.bincount(codes, minlength=vocabulary)
    kept = counts >= min_count
    kept[0] = False
    renumber = np.zeros(vocabulary, np.int64)
    renumber[kept] = np.arange(1, int(kept.sum()) + 1)
    return renumber[codes], int(kept.sum()) + 1


def _padded(offsets: np.ndarray, values: np.ndarray, width_cap: int, fill: float | int, dtype) -> np.ndarray:
    """A CSR list column -> [N + 1, L] (row 0 padding), L = min(longest list, ``width_cap``), at least 1."""
    lengths = np.diff(offsets)
    width = int(min(max(int(lengths.max(initial=0)), 1), width_cap))
    out = np.full((len(lengths) + 1, width), fill, dtype)
    rows = np.repeat(np.arange(len(lengths)), lengths)
    positions = np.arange(len(values)) - np.repeat(offsets[:-1], lengths)
    keep = positions < width
    out[rows[keep] + 1, positions[keep]] = values[keep]
    return out


def item_features(items: Items, skip: tuple[str, ...] = (), min_count: int = 1, max_bag: int = MAX_BAG,
                  max_float_seq: int = MAX_FLOAT_SEQ) -> ItemFeatures:
    """Every item field but ``skip`` (the id, fields used only as text) as tower features."""
    tokens, bags, vocabulary, dense, names = {}, {}, {}, [], []
    n = len(items)
    for name, column in items.columns.items():
        if name in skip:
            continue
        if isinstance(column, TokenColumn):
            codes, size = _rare_to_oov(column.codes.astype(np.int64), len(column.vocabulary), min_count)
            tokens[name], vocabulary[name] = np.concatenate([[0], codes]), size
        elif isinstance(column, TokenSeqColumn):
            codes, size = _rare_to_oov(column.codes.astype(np.int64), len(column.vocabulary), min_count)
            bags[name], vocabulary[name] = _padded(column.offsets, codes, max_bag, 0, np.int64), size
        elif isinstance(column, FloatColumn):
            values = column.values.astype(np.float64)
            missing = np.isnan(values)
            present = values[~missing]
            mean = float(present.mean()) if present.size else 0.0
            std = float(present.std()) if present.size else 0.0
            z = np.where(missing, 0.0, (values - mean) / (std if std > 0 else 1.0))
            dense += [np.concatenate([[0.0], z]), np.concatenate([[0.0], missing.astype(np.float64)])]
            names += [name, f"{name}:missing"]
        elif isinstance(column, FloatSeqColumn):
            matrix = _padded(column.offsets, np.nan_to_num(column.values.astype(np.float64)), max_float_seq, 0.0,
                             np.float64)
            dense += list(matrix.T)
            names += [f"{name}[{j}]" for j in range(matrix.shape[1])]
    table = np.stack(dense, axis=1).astype(np.float32) if dense else np.zeros((n + 1, 0), np.float32)
    return ItemFeatures(tokens, bags, vocabulary, table, tuple(names))
