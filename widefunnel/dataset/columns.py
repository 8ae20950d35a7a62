"""Typed columns, as the towers will read them, built from Arrow arrays in a few vectorised passes.

`token` -> int32 codes into a sorted vocabulary whose entry 0 is "" (missing, or out of vocabulary for an item
added later); `token_seq` -> CSR (offsets, codes) over the same kind of vocabulary; `float` -> float32, NaN for
missing; `float_seq` -> CSR float32. Vocabularies are sorted so that the same data gives the same codes whatever
the order of its rows or part files.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

ArrowArray = pa.Array | pa.ChunkedArray


def _numpy(values: ArrowArray, dtype: type) -> np.ndarray:
    """A null-free Arrow array -> a numpy array of `dtype`."""
    return np.asarray(values.to_numpy(zero_copy_only=False) if isinstance(values, pa.Array) else values.to_numpy(),
                      dtype=dtype)


def _take_csr(offsets: np.ndarray, values: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of a CSR matrix, vectorised (no loop over rows)."""
    rows = np.asarray(rows, dtype=np.int64)
    starts, lengths = offsets[:-1][rows], np.diff(offsets)[rows]
    new = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=new[1:])
    gather = np.repeat(starts - new[:-1], lengths) + np.arange(new[-1], dtype=np.int64)
    return new, values[gather]


@dataclass(frozen=True)
class TokenColumn:
    codes: np.ndarray  # int32 [n]; 0 = missing
    vocabulary: pa.Array  # string [V + 1], sorted after entry 0 = ""

    def take(self, rows: np.ndarray) -> TokenColumn:
        return TokenColumn(self.codes[rows], self.vocabulary)

    def strings(self) -> pa.Array:
        return self.vocabulary.take(pa.array(self.codes))


@dataclass(frozen=True)
class TokenSeqColumn:
    offsets: np.ndarray  # int64 [n + 1]
    codes: np.ndarray  # int32 [nnz], each >= 1
    vocabulary: pa.Array  # string [V + 1], sorted after entry 0 = ""

    def take(self, rows: np.ndarray) -> TokenSeqColumn:
        return TokenSeqColumn(*_take_csr(self.offsets, self.codes, rows), self.vocabulary)

    def lists(self) -> pa.Array:
        """list<string>, one list of tokens a row."""
        return pa.LargeListArray.from_arrays(pa.array(self.offsets, pa.int64()),
                                             self.vocabulary.take(pa.array(self.codes)))


@dataclass(frozen=True)
class FloatColumn:
    values: np.ndarray  # float32 [n]; NaN = missing

    def take(self, rows: np.ndarray) -> FloatColumn:
        return FloatColumn(self.values[rows])


@dataclass(frozen=True)
class FloatSeqColumn:
    offsets: np.ndarray  # int64 [n + 1]
    values: np.ndarray  # float32 [nnz]

    def take(self, rows: np.ndarray) -> FloatSeqColumn:
        return FloatSeqColumn(*_take_csr(self.offsets, self.values, rows))


Column = TokenColumn | TokenSeqColumn | FloatColumn | FloatSeqColumn


def vocabulary_and_codes(values: ArrowArray) -> tuple[pa.Array, np.ndarray]:
    """Strings (null or "" = missing) -> (sorted vocabulary with "" first, int32 codes): one hash pass
    (dictionary encoding), a sort of the distinct values, and a gather."""
    encoded = pc.dictionary_encode(values)
    if isinstance(encoded, pa.ChunkedArray):
        dictionary = encoded.chunk(0).dictionary if encoded.num_chunks else pa.array([], pa.string())
        if not all(c.dictionary.equals(dictionary) for c in encoded.chunks[1:]):  # pyarrow shares one; if not:
            encoded = encoded.unify_dictionaries()
            dictionary = encoded.chunk(0).dictionary
        indices = pa.chunked_array([c.indices for c in encoded.chunks], encoded.type.index_type)
    else:
        dictionary, indices = encoded.dictionary, encoded.indices
    order = pc.array_sort_indices(dictionary).to_numpy()
    has_empty = len(order) > 0 and dictionary[int(order[0])].as_py() == ""  # "" sorts first
    rank = np.empty(len(order) + 1, dtype=np.int32)  # the extra slot: null rows
    rank[order] = np.arange(1, len(order) + 1, dtype=np.int32) - int(has_empty)
    rank[-1] = 0
    codes = rank[_numpy(pc.fill_null(indices, len(order)), np.int64)]
    kept = order[1:] if has_empty else order
    vocabulary = pa.concat_arrays([pa.array([""], dictionary.type), dictionary.take(pa.array(kept, pa.int64()))])
    return vocabulary, codes


def token_column(values: ArrowArray) -> TokenColumn:
    """string array (null = missing) -> TokenColumn."""
    vocabulary, codes = vocabulary_and_codes(values)
    return TokenColumn(codes, vocabulary)


def _list_offsets(lists: ArrowArray) -> np.ndarray:
    lengths = _numpy(pc.fill_null(pc.list_value_length(lists), 0), np.int64)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets


def token_seq_column(lists: ArrowArray) -> TokenSeqColumn:
    """list<string> (null list or "" token = nothing) -> TokenSeqColumn; empty tokens are dropped."""
    offsets = _list_offsets(lists)
    flat = pc.list_flatten(lists)  # null lists contribute nothing, as their length above
    vocabulary, codes = vocabulary_and_codes(flat)
    keep = codes > 0
    if not keep.all():  # "a  b" splits into a, "", b: drop the empties and re-point the offsets
        kept = np.zeros(len(codes) + 1, dtype=np.int64)
        np.cumsum(keep, out=kept[1:])
        offsets, codes = kept[offsets], codes[keep]
    return TokenSeqColumn(offsets, codes, vocabulary)


def float_column(values: ArrowArray) -> FloatColumn:
    """float64 array (null = missing) -> FloatColumn with NaN for missing."""
    return FloatColumn(_numpy(pc.fill_null(pc.cast(values, pa.float32()), np.nan), np.float32))


def float_seq_column(lists: ArrowArray) -> FloatSeqColumn:
    """list<float64> (null list = empty) -> FloatSeqColumn; a null inside a list reads as NaN."""
    offsets = _list_offsets(lists)
    flat = pc.fill_null(pc.cast(pc.list_flatten(lists), pa.float32()), np.nan)
    return FloatSeqColumn(offsets, _numpy(flat, np.float32))
