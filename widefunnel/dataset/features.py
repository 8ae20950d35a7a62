"""Item fields -> the item tower's feature tables, by field type.

Pure numpy over the typed columns, row = internal id (row 0 is the padding row, all zeros), so the tower keeps
them as module buffers and its ONNX graph stays a gather: a `token` field is one code per item (0 = missing or a
token too rare to learn: the out-of-vocabulary bucket), a `token_seq` field a padded [N + 1, L] code matrix (0 pads;
the tower takes a masked mean of its embeddings), `float` fields z-scored (missing -> 0, plus a missing flag),
`float_seq` fields a fixed-width dense vector (padded or truncated to the field's longest list, capped).

How each field was coded (its vocabulary by code, its bag width, its mean and scale) is kept as `FieldCoding`, so
items added after the build (`items add`) are coded with the build's vocabularies and statistics (`code_features`),
through the same functions: a token the build never saw is the out-of-vocabulary code 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from widefunnel.dataset.columns import FloatColumn, FloatSeqColumn, TokenColumn, TokenSeqColumn
from widefunnel.dataset.schema import Kind
from widefunnel.dataset.table import Items

MAX_BAG = 32  # tokens kept per item of a token_seq field (the longest lists are truncated)
MAX_FLOAT_SEQ = 16  # values kept per item of a float_seq field


@dataclass(frozen=True)
class FieldCoding:
    """How the build turned one item field into tower features: what coding a later item the same way needs."""

    name: str
    kind: Kind
    vocabulary: tuple[str, ...] = ()  # token / token_seq: the token of each tower code; entry 0 "" = OOV / missing
    width: int = 0  # token_seq: the bag's columns; float_seq: the vector's
    mean: float = 0.0  # float: z = (value - mean) / scale
    scale: float = 1.0  # the values' std, 1 where it was 0

    def to_state(self) -> dict:
        """Plain containers only (the build state is loaded with `weights_only=True`)."""
        return {"name": self.name, "kind": self.kind.value, "vocabulary": list(self.vocabulary), "width": self.width,
                "mean": self.mean, "scale": self.scale}

    @classmethod
    def from_state(cls, state: dict) -> FieldCoding:
        return cls(state["name"], Kind(state["kind"]), tuple(state["vocabulary"]), int(state["width"]),
                   float(state["mean"]), float(state["scale"]))


@dataclass(frozen=True)
class ItemFeatures:
    tokens: dict[str, np.ndarray]  # field -> int64 [N + 1] codes in 0..V (0 = OOV / missing / padding)
    bags: dict[str, np.ndarray]  # field -> int64 [N + 1, L] codes, 0 pads
    vocabulary: dict[str, int]  # field -> V + 1: the embedding table's rows (code 0 included)
    dense: np.ndarray  # float32 [N + 1, F]
    dense_names: tuple[str, ...]  # F names: `price`, `price:missing`, `dims[0]`, ...
    coding: tuple[FieldCoding, ...] = ()  # every field above, in order: how to code items added later


def _rare_to_oov(codes: np.ndarray, vocabulary: pa.Array, min_count: int) -> tuple[np.ndarray, tuple[str, ...]]:
    """Codes of tokens seen fewer than ``min_count`` times -> 0; the rest renumbered densely from 1. Also the
    token of each new code ("" first)."""
    counts = np.bincount(codes, minlength=len(vocabulary))
    kept = counts >= min_count
    kept[0] = False
    renumber = np.zeros(len(vocabulary), np.int64)
    renumber[kept] = np.arange(1, int(kept.sum()) + 1)
    return renumber[codes], ("", *vocabulary.filter(pa.array(kept)).to_pylist())


def _build_codes(vocabulary: pa.Array, coding: FieldCoding) -> np.ndarray:
    """A column's own codes -> the build's codes (int64 [len(vocabulary)]): a token the build did not keep -> 0."""
    found = pc.index_in(vocabulary, value_set=pa.array(coding.vocabulary, vocabulary.type))
    return np.asarray(pc.fill_null(found, 0).to_numpy(zero_copy_only=False), np.int64)


def _zscored(values: np.ndarray, mean: float, scale: float) -> list[np.ndarray]:
    """[N] float -> the two dense columns of a float field, row 0 padding: z-score (missing -> 0), missing flag."""
    values = values.astype(np.float64)
    missing = np.isnan(values)
    z = np.where(missing, 0.0, (values - mean) / scale)
    return [np.concatenate([[0.0], z]), np.concatenate([[0.0], missing.astype(np.float64)])]


def _padded(offsets: np.ndarray, values: np.ndarray, width_cap: int, fill: float | int, dtype,
            width: int | None = None) -> np.ndarray:
    """A CSR list column -> [N + 1, L] (row 0 padding), L = ``width`` if given, else min(longest list,
    ``width_cap``), at least 1."""
    lengths = np.diff(offsets)
    if width is None:
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
    tokens, bags, vocabulary, dense, names, coding = {}, {}, {}, [], [], []
    n = len(items)
    for name, column in items.columns.items():
        if name in skip:
            continue
        if isinstance(column, TokenColumn):
            codes, words = _rare_to_oov(column.codes.astype(np.int64), column.vocabulary, min_count)
            tokens[name], vocabulary[name] = np.concatenate([[0], codes]), len(words)
            coding.append(FieldCoding(name, Kind.TOKEN, words))
        elif isinstance(column, TokenSeqColumn):
            codes, words = _rare_to_oov(column.codes.astype(np.int64), column.vocabulary, min_count)
            bags[name], vocabulary[name] = _padded(column.offsets, codes, max_bag, 0, np.int64), len(words)
            coding.append(FieldCoding(name, Kind.TOKEN_SEQ, words, width=bags[name].shape[1]))
        elif isinstance(column, FloatColumn):
            present = column.values.astype(np.float64)
            present = present[~np.isnan(present)]
            mean = float(present.mean()) if present.size else 0.0
            std = float(present.std()) if present.size else 0.0
            scale = std if std > 0 else 1.0
            dense += _zscored(column.values, mean, scale)
            names += [name, f"{name}:missing"]
            coding.append(FieldCoding(name, Kind.FLOAT, mean=mean, scale=scale))
        elif isinstance(column, FloatSeqColumn):
            matrix = _padded(column.offsets, np.nan_to_num(column.values.astype(np.float64)), max_float_seq, 0.0,
                             np.float64)
            dense += list(matrix.T)
            names += [f"{name}[{j}]" for j in range(matrix.shape[1])]
            coding.append(FieldCoding(name, Kind.FLOAT_SEQ, width=matrix.shape[1]))
    table = np.stack(dense, axis=1).astype(np.float32) if dense else np.zeros((n + 1, 0), np.float32)
    return ItemFeatures(tokens, bags, vocabulary, table, tuple(names), tuple(coding))


def code_features(items: Items, coding: tuple[FieldCoding, ...]) -> ItemFeatures:
    """Items added after a build as its tower coded its own (``coding``: `ItemFeatures.coding`): tokens by the
    build's vocabularies (one it never kept -> 0: the out-of-vocabulary bucket, or nothing in a bag), bags and
    vectors padded or truncated to the build's widths, floats z-scored with the build's mean and scale. The
    columns must have the build's fields and kinds (`dataset.additions` checks them first)."""
    tokens, bags, vocabulary, dense, names = {}, {}, {}, [], []
    n = len(items)
    for field in coding:
        column = items.columns[field.name]
        if field.kind is Kind.TOKEN:
            codes = _build_codes(column.vocabulary, field)[column.codes]
            tokens[field.name], vocabulary[field.name] = np.concatenate([[0], codes]), len(field.vocabulary)
        elif field.kind is Kind.TOKEN_SEQ:
            codes = _build_codes(column.vocabulary, field)[column.codes]
            bags[field.name] = _padded(column.offsets, codes, field.width, 0, np.int64, width=field.width)
            vocabulary[field.name] = len(field.vocabulary)
        elif field.kind is Kind.FLOAT:
            dense += _zscored(column.values, field.mean, field.scale)
            names += [field.name, f"{field.name}:missing"]
        else:
            matrix = _padded(column.offsets, np.nan_to_num(column.values.astype(np.float64)), field.width, 0.0,
                             np.float64, width=field.width)
            dense += list(matrix.T)
            names += [f"{field.name}[{j}]" for j in range(matrix.shape[1])]
    table = np.stack(dense, axis=1).astype(np.float32) if dense else np.zeros((n + 1, 0), np.float32)
    return ItemFeatures(tokens, bags, vocabulary, table, tuple(names), coding)
