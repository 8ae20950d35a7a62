"""Filters named after a catalogue's own item fields (issue 29): every `token` / `token_seq` field takes include
and exclude lists of values, every `float` field a min/max range. The table is keyed by internal id (row 0 pads),
so every shard of an index reads the same file, and it only ever becomes a row bitmap (``ann.filters``): the
scans stay exact for any selectivity.

Step tensors (one packed form, whatever the schema, so the ANN steps and the router wire fixed names):
``FIELD_TOKENS`` int64 [B, T], each entry ``(slot << 33) | (mode << 32) | code`` (slot: the token field's place
in the table; mode 0 = any of, 1 = none of; -1 pads) and ``FIELD_RANGES`` float32 [B, 2F] (inclusive (min, max)
per float field; -inf/inf = that side is open, both open = no filter; NaN items fail any range).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from widefunnel.arrays import load_table
from widefunnel.dataset.columns import FloatColumn, TokenColumn, TokenSeqColumn
from widefunnel.genres import SourcedGenres
from widefunnel.tensor_names import range_filters, token_filters

TOKEN, FLOAT = "token", "float"
ANY_OF, NONE_OF = 0, 1
_CODE_BITS = 32
MAX_BIT_VALUES = 63  # a token field of at most this many values is also kept as one int64 bitmask per item
# MovieLens' two filter fields (its genres, its release year): the same rule names their client tensors
# include_genre / exclude_genre and min_year / max_year, the names its clients have always sent.
GENRE_FIELD, YEAR_FIELD = "genre", "year"
SCHEMA_FILE = "fields.json"  # in an `ItemFields` folder: the fields' names and vocabularies


@dataclass(frozen=True)
class TokenField:
    """A token or token_seq field as a CSR over internal ids: item ``i`` has ``codes[offsets[i]:offsets[i+1]]``,
    each an index into ``vocabulary`` (entry 0 = "" = missing, never stored)."""

    name: str
    offsets: np.ndarray  # int64 [table_size + 1]
    codes: np.ndarray  # [nnz], each >= 1: int32, or stored as the narrowest unsigned type (`narrow_codes`)
    vocabulary: tuple[str, ...]

    @cached_property
    def item_of_code(self) -> np.ndarray:
        """int64 [nnz]: the internal id each stored code belongs to (computed once: every filter reads it)."""
        return np.repeat(np.arange(len(self.offsets) - 1, dtype=np.int64), np.diff(self.offsets))

    @cached_property
    def item_bits(self) -> np.ndarray | None:
        """int64 [table_size]: bit ``c - 1`` set where the item holds code ``c``, for a vocabulary of at most
        ``MAX_BIT_VALUES`` values (MovieLens' 19 genres): a filter on it is then one AND over the items, not a
        pass over every stored code. None for a larger vocabulary. Computed once, at the first filter."""
        if len(self.vocabulary) - 1 > MAX_BIT_VALUES:
            return None
        bits = np.zeros(len(self.offsets) - 1, np.int64)
        held = np.diff(self.offsets) > 0
        if held.any():  # an OR per item; empty items are skipped, so each segment is exactly one item's codes
            bits[held] = np.bitwise_or.reduceat(np.int64(1) << (self.codes.astype(np.int64) - 1),
                                                self.offsets[:-1][held])
        return bits

    def items_with(self, codes: np.ndarray) -> np.ndarray:
        """bool [table_size]: the items holding any of ``codes``: one AND per item for a small vocabulary
        (``item_bits``), else a lookup table over the vocabulary, one gather and a bincount over the stored codes
        (no sort)."""
        codes = np.asarray(codes, np.int64)
        codes = codes[(codes >= 1) & (codes < len(self.vocabulary))]
        bits = self.item_bits
        if bits is not None:
            return (bits & np.bitwise_or.reduce(np.int64(1) << (codes - 1), initial=np.int64(0))) != 0
        wanted = np.zeros(len(self.vocabulary), bool)
        wanted[codes] = True
        return np.bincount(self.item_of_code[wanted[self.codes]], minlength=len(self.offsets) - 1) > 0


def narrow_codes(codes: np.ndarray, values: int) -> np.ndarray:
    """``codes`` into a vocabulary of ``values`` entries, as the narrowest unsigned type that holds them (MovieLens'
    genres: 1 byte a code instead of 4). Every reader indexes with them as they are."""
    for dtype in (np.uint8, np.uint16):
        if values <= np.iinfo(dtype).max + 1:
            return np.asarray(codes, dtype)
    return np.asarray(codes, np.int32)


@dataclass(frozen=True)
class FloatField:
    name: str
    values: np.ndarray  # float32 [table_size], NaN = missing


Field = TokenField | FloatField


@dataclass(frozen=True)
class ItemFields:
    """The filterable fields of one build (written beside each ANN version, ``layout.ITEM_FIELDS``)."""

    fields: tuple[Field, ...]

    @property
    def tokens(self) -> tuple[TokenField, ...]:
        return tuple(f for f in self.fields if isinstance(f, TokenField))

    @property
    def floats(self) -> tuple[FloatField, ...]:
        return tuple(f for f in self.fields if isinstance(f, FloatField))

    @property
    def table_size(self) -> int:
        f = self.fields[0]
        return len(f.offsets) - 1 if isinstance(f, TokenField) else len(f.values)

    def schema(self) -> FieldSchema:
        return FieldSchema(tuple((f.name, f.vocabulary) for f in self.tokens), tuple(f.name for f in self.floats))

    def arrays(self) -> dict[str, np.ndarray]:
        """Each per-item array by its file name in the folder (`save`): what grows when items are added."""
        out: dict[str, np.ndarray] = {}
        for j, f in enumerate(self.tokens):
            out |= {f"t{j}_offsets.npy": f.offsets, f"t{j}_codes.npy": narrow_codes(f.codes, len(f.vocabulary))}
        for j, f in enumerate(self.floats):
            out[f"f{j}_values.npy"] = f.values
        return out

    def save_schema(self, folder: Path) -> None:
        """The names and vocabularies (`SCHEMA_FILE`): small, written whole by every version."""
        schema = {"tokens": [{"name": f.name, "vocabulary": list(f.vocabulary)} for f in self.tokens],
                  "floats": [f.name for f in self.floats]}
        (Path(folder) / SCHEMA_FILE).write_text(json.dumps(schema, indent=1) + "\n")

    def save(self, folder: Path) -> None:
        """A folder: the schema and one .npy per per-item array, each mapped by its readers and grown in place
        by `items add` (`arrays.append_rows`)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for name, array in self.arrays().items():
            with open(folder / name, "wb") as out:
                np.save(out, np.ascontiguousarray(array), allow_pickle=False)
        self.save_schema(folder)

    @classmethod
    def load(cls, folder: Path | str) -> ItemFields:
        """The fields of a build, their per-item arrays mapped read-only (`arrays.load_table`: the rows this
        version reads)."""
        folder = Path(folder)
        schema = json.loads((folder / SCHEMA_FILE).read_text())
        tokens = [TokenField(str(t["name"]), load_table(folder / f"t{j}_offsets.npy").astype(np.int64, copy=False),
                             load_table(folder / f"t{j}_codes.npy"), tuple(str(v) for v in t["vocabulary"]))
                  for j, t in enumerate(schema["tokens"])]
        floats = [FloatField(str(name), load_table(folder / f"f{j}_values.npy").astype(np.float32, copy=False))
                  for j, name in enumerate(schema["floats"])]
        return cls((*tokens, *floats))


@dataclass(frozen=True)
class FieldSchema:
    """What preprocess needs to validate field filters: each token field's vocabulary, the float fields' names
    (both in the table's order, which the packed step tensors index)."""

    tokens: tuple[tuple[str, tuple[str, ...]], ...]
    floats: tuple[str, ...]

    def client_inputs(self) -> list[tuple[str, str]]:
        """(tensor name, Triton dtype) of every client filter input, named after its field."""
        out = []
        for name, _ in self.tokens:
            out += [(tensor, "BYTES") for tensor in token_filters(name)]
        for name in self.floats:
            out += [(tensor, "FP32") for tensor in range_filters(name)]
        return out


def pack_token(slot: int, mode: int, codes: np.ndarray) -> np.ndarray:
    """Codes of one token field and mode -> packed FIELD_TOKENS entries (negative codes stay -1 pads)."""
    codes = np.asarray(codes, np.int64)
    return np.where(codes < 0, -1, (np.int64(slot) << 33) | (np.int64(mode) << 32) | codes)


def no_ranges(batch: int, floats: int) -> np.ndarray:
    """FIELD_RANGES with every side open: [B, 2F], at least [B, 2] (no zero-width tensor crosses the ensemble;
    pairs past the build's float fields are ignored)."""
    out = np.empty((batch, 2 * max(floats, 1)), np.float32)
    out[:, 0::2], out[:, 1::2] = -np.inf, np.inf
    return out


def id_mask(fields: ItemFields, tokens: np.ndarray, ranges: np.ndarray | None) -> np.ndarray:
    """One query's packed filters (FIELD_TOKENS row [T], FIELD_RANGES row [2F] or None) -> bool [table_size]
    over internal ids. Vectorised: a lookup over each field's stored codes and a bincount per item."""
    size = fields.table_size
    mask = np.ones(size, bool)
    tokens = np.asarray(tokens, np.int64)
    tokens = tokens[tokens >= 0]
    slots, modes, codes = tokens >> 33, (tokens >> 32) & 1, tokens & ((1 << _CODE_BITS) - 1)
    token_fields = fields.tokens
    for slot in np.unique(slots):
        if not 0 <= slot < len(token_fields):
            raise ValueError(f"FIELD_TOKENS: field slot {int(slot)} not in this build's {len(token_fields)}")
        field = token_fields[int(slot)]
        for mode in (ANY_OF, NONE_OF):
            wanted = codes[(slots == slot) & (modes == mode)]
            if wanted.size == 0:
                continue
            has = field.items_with(wanted)
            mask &= has if mode == ANY_OF else ~has
    if ranges is not None:
        for j, field in enumerate(fields.floats):
            lo, hi = float(ranges[2 * j]), float(ranges[2 * j + 1])
            if lo == -np.inf and hi == np.inf:
                continue
            with np.errstate(invalid="ignore"):
                mask &= (field.values >= lo) & (field.values <= hi)  # NaN (missing) fails both
    return mask


def filtering(tokens: np.ndarray | None, ranges: np.ndarray | None) -> np.ndarray:
    """bool [B]: which queries of a batch filter on a field at all (the rest cost nothing)."""
    given = [a for a in (tokens, ranges) if a is not None]
    if not given:
        return np.zeros(0, bool)
    out = np.zeros(len(given[0]), bool)
    if tokens is not None:
        out |= (np.asarray(tokens) >= 0).any(axis=1)
    if ranges is not None:
        r = np.asarray(ranges, np.float32)
        out |= (r[:, 0::2] != -np.inf).any(axis=1) | (r[:, 1::2] != np.inf).any(axis=1)
    return out


def field_of_column(name: str, column, table_rows: np.ndarray, table_size: int) -> Field | None:
    """A dataset column (``dataset.columns``) -> its filterable field keyed by internal id (``table_rows``: the
    internal id of each column row); None for kinds no filter reads (float_seq)."""
    rows = np.asarray(table_rows, np.int64)
    if isinstance(column, FloatColumn):
        values = np.full(table_size, np.nan, np.float32)
        values[rows] = column.values
        return FloatField(name, values)
    if isinstance(column, TokenColumn):  # one code a row (0 = missing) -> a CSR of at most one
        offsets_rows = np.zeros(len(rows) + 1, np.int64)
        np.cumsum(column.codes > 0, out=offsets_rows[1:])
        column = TokenSeqColumn(offsets_rows, column.codes[column.codes > 0], column.vocabulary)
    if not isinstance(column, TokenSeqColumn):
        return None
    order = np.argsort(rows, kind="stable")  # the CSR runs by internal id
    column, rows = column.take(order), rows[order]
    lengths_rows, codes_rows = np.diff(column.offsets), column.codes
    lengths = np.zeros(table_size, np.int64)
    lengths[rows] = lengths_rows
    offsets = np.zeros(table_size + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return TokenField(name, offsets, np.asarray(codes_rows, np.int32), tuple(column.vocabulary.to_pylist()))


def item_fields_of(columns: dict, table_rows: np.ndarray, table_size: int) -> ItemFields | None:
    """A dataset's item columns (row-aligned, ``table_rows`` their internal ids) -> every filterable field, in
    the columns' order; None when no column is filterable."""
    fields = tuple(f for f in (field_of_column(n, c, table_rows, table_size) for n, c in columns.items())
                   if f is not None)
    return ItemFields(fields) if fields else None


def genre_year_fields(genres: dict[int, tuple[str, ...]], years: np.ndarray, genre_names: tuple[str, ...],
                      table_size: int) -> ItemFields:
    """MovieLens' filterable fields from its catalogue (``data.Catalogue``'s ``genres`` by id, ``years`` by id):
    the token_seq field ``genre`` (vocabulary ``genre_names``) and the float field ``year``, where an unknown
    year (0) is missing (NaN), so that any year range leaves it out, as MovieLens' year filter always has."""
    if isinstance(genres, SourcedGenres):  # gathered from the real items' field, not built item by item
        real = genre_year_fields(genres.real, years, genre_names, genres.real_size()).tokens[0]
        return ItemFields((_gathered(real, genres.rows(table_size)), _year_field(years, table_size)))
    code = {g: j + 1 for j, g in enumerate(genre_names)}
    ids = np.array(sorted(genres), np.int64)
    lengths = np.zeros(table_size, np.int64)
    lengths[ids] = [len(genres[i]) for i in ids.tolist()]
    offsets = np.zeros(table_size + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    codes = np.array([code[g] for i in ids.tolist() for g in genres[i]], np.int32)
    return ItemFields((TokenField(GENRE_FIELD, offsets, codes, ("", *genre_names)), _year_field(years, table_size)))


def _year_field(years: np.ndarray, table_size: int) -> FloatField:
    values = np.asarray(years[:table_size], np.float32)
    values = np.where(values == 0, np.nan, values).astype(np.float32)
    if len(values) < table_size:
        values = np.concatenate([values, np.full(table_size - len(values), np.nan, np.float32)])
    return FloatField(YEAR_FIELD, values)


def _gathered(field: TokenField, rows: np.ndarray) -> TokenField:
    """``field`` with row i holding row ``rows[i]``'s values (vectorised: no loop over rows)."""
    lengths = np.diff(field.offsets)[rows]
    offsets = np.zeros(len(rows) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    take = np.repeat(field.offsets[rows] - offsets[:-1], lengths) + np.arange(offsets[-1], dtype=np.int64)
    return TokenField(field.name, offsets, field.codes[take], field.vocabulary)


def appended_rows(fields: ItemFields, added: ItemFields) -> tuple[ItemFields, dict[str, np.ndarray]]:
    """Items appended after ``fields``' table (`items add`): ``added`` holds their fields, its row 0 being the
    table's next row. -> (the fields' schema, vocabularies grown, as an `ItemFields` whose arrays are still
    ``fields``'; each array file's new rows, by `ItemFields.arrays`' names). A token value new to a field joins
    the end of its vocabulary, so the old values keep their codes and the new one is filterable by name at once."""
    new = {f.name: f for f in added.fields}
    schema: list[Field] = []
    tails: dict[str, np.ndarray] = {}
    slot = {id(f): j for group in (fields.tokens, fields.floats) for j, f in enumerate(group)}
    for field in fields.fields:
        j = slot[id(field)]
        if field.name not in new:
            raise ValueError(f"field '{field.name}' of the build's filters is not among the new items' fields")
        extra = new[field.name]
        if isinstance(field, FloatField):
            tails[f"f{j}_values.npy"] = np.asarray(extra.values, np.float32)
            schema.append(field)
            continue
        code = {v: i for i, v in enumerate(field.vocabulary)}
        vocabulary = list(field.vocabulary)
        for value in extra.vocabulary[1:]:  # entry 0 is "" (missing) in both
            if value not in code:
                code[value] = len(vocabulary)
                vocabulary.append(value)
        remap = np.array([code[v] for v in extra.vocabulary], np.int32)
        tails[f"t{j}_offsets.npy"] = (int(field.offsets[-1]) + np.asarray(extra.offsets[1:], np.int64))
        tails[f"t{j}_codes.npy"] = remap[extra.codes]
        schema.append(TokenField(field.name, field.offsets, field.codes, tuple(vocabulary)))
    return ItemFields(tuple(schema)), tails
