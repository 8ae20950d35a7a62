"""The loaded dataset: items by dense row (ids sorted), the interaction log pointing at those rows, typed columns.

`load_dataset` is the one entry point: it picks the reader, checks the cross-table facts (unique item ids, every
logged item in the item table, role fields filled), encodes every column and returns a `Dataset`. Nothing is
written anywhere; a malformed dataset raises `DatasetError` before any later stage starts.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from widefunnel.dataset.atomic import read_atomic
from widefunnel.dataset.columns import (
    Column,
    FloatColumn,
    FloatSeqColumn,
    TokenColumn,
    TokenSeqColumn,
    float_column,
    float_seq_column,
    token_column,
    token_seq_column,
    vocabulary_and_codes,
)
from widefunnel.dataset.config import DatasetConfig
from widefunnel.dataset.errors import DatasetError
from widefunnel.dataset.ids import IdIndex, first_true
from widefunnel.dataset.parquet import parquet_source, read_parquet
from widefunnel.dataset.raw import RawTable
from widefunnel.dataset.schema import Kind, Schema

logger = logging.getLogger(__name__)

TEXT_SEPARATOR = ". "  # between text fields in `Dataset.text`


@dataclass(frozen=True)
class Items:
    index: IdIndex  # ids (int64, sorted) <-> rows
    columns: dict[str, Column]  # every item field but the id, row-aligned with index.ids

    @property
    def ids(self) -> np.ndarray:
        return self.index.ids

    def __len__(self) -> int:
        return len(self.index)


@dataclass(frozen=True)
class Interactions:
    users: np.ndarray  # int64 [M] codes 0..U-1 into user_vocabulary
    user_vocabulary: pa.Array  # string [U], sorted
    items: np.ndarray  # int64 [M] rows of Dataset.items
    timestamps: np.ndarray  # float64 [M] (exact for integers below 2^53: seconds, milliseconds)
    columns: dict[str, Column]  # every other field of the log (rating, label, event, ...), typed as item fields

    def __len__(self) -> int:
        return len(self.items)


@dataclass(frozen=True)
class Dataset:
    source: str
    config: DatasetConfig
    item_schema: Schema
    inter_schema: Schema
    items: Items
    interactions: Interactions
    text_fields: tuple[str, ...]
    title_field: str
    dropped_interactions: int = 0  # log rows whose item is not in the item table (unknown_items = "drop")

    def field(self, role: str) -> str:
        """The field name that plays a role (`item_id`, `user_id`, `timestamp`, `rating`, `label`)."""
        return self.config.roles[role]

    def popularity(self) -> np.ndarray:
        """Log rows per item row, int64 [N]."""
        return np.bincount(self.interactions.items, minlength=len(self.items)).astype(np.int64)

    def strings(self, name: str, rows: np.ndarray | None = None) -> list[str]:
        """One token or token_seq item field as text (tokens joined by spaces), "" where empty."""
        return _strings(self.items.columns[name], rows).to_pylist()

    def text(self, rows: np.ndarray | None = None) -> list[str]:
        """The content encoder's input: the text fields of each item row, joined by ". ", empty fields skipped."""
        return item_text(self.items.columns, self.text_fields, rows)

    def titles(self, rows: np.ndarray | None = None) -> list[str]:
        return self.strings(self.title_field, rows)


def item_text(columns: dict[str, Column], text_fields: tuple[str, ...], rows: np.ndarray | None = None) -> list[str]:
    """`Dataset.text` over any item columns: items added after a build get their text exactly as its items did."""
    parts = [_strings(columns[name], rows) for name in text_fields]
    parts = [pc.if_else(pc.equal(p, ""), pa.scalar(None, pa.string()), p) for p in parts]
    joined = pc.binary_join_element_wise(*parts, TEXT_SEPARATOR, null_handling="skip")
    return pc.fill_null(joined, "").to_pylist()


def item_strings(column: Column) -> list[str]:
    """A token or token_seq column as text (`Dataset.strings`)."""
    return _strings(column, None).to_pylist()


def _strings(column: Column, rows: np.ndarray | None) -> pa.Array:
    if rows is not None:
        column = column.take(np.asarray(rows, dtype=np.int64))
    if isinstance(column, TokenColumn):
        return column.strings()
    if isinstance(column, TokenSeqColumn):
        return pc.binary_join(column.lists(), " ")
    raise TypeError("only token and token_seq fields have text")


def _encode(kind: Kind, values: pa.ChunkedArray) -> Column:
    return {Kind.TOKEN: token_column, Kind.TOKEN_SEQ: token_seq_column, Kind.FLOAT: float_column,
            Kind.FLOAT_SEQ: float_seq_column}[kind](values)


def _no_nulls(raw: RawTable, name: str) -> None:
    nulls = np.flatnonzero(np.asarray(raw.table.column(name).is_null().to_numpy(zero_copy_only=False)))
    if len(nulls):
        raise raw.error(nulls[0], name, "empty value (this field has a role, so every row needs one)")


def _text_fields(config: DatasetConfig, raw: RawTable) -> tuple[tuple[str, ...], str]:
    schema, id_field, line = raw.schema, config.roles["item_id"], raw.schema_line
    text = config.text_fields or tuple(f.name for f in schema if f.kind is Kind.TOKEN_SEQ)
    for key, names in (("text_fields", text), ("title_field", (config.title_field,) if config.title_field else ())):
        for name in names:
            if name not in schema or name == id_field:
                raise DatasetError(raw.file, line, name, f"[dataset] {key} names '{name}', which is not a field "
                                                         f"of the item table; fields: {', '.join(schema.names)}")
            if schema.kind(name) not in (Kind.TOKEN, Kind.TOKEN_SEQ):
                raise DatasetError(raw.file, line, name, f"[dataset] {key} names '{name}', a "
                                                         f"{schema.kind(name).value} field; text is token or token_seq")
    if not text:
        raise DatasetError(raw.file, line, None, "no text field for the content encoder: the item table has no "
                                                 "token_seq field; name token fields in [dataset] text_fields")
    titled = [n for n in text if n.endswith(("title", "headline")) or n == "name"]
    return text, config.title_field or (titled or text)[0]


def index_items(raw: RawTable, id_field: str, what: str = "the item table") -> tuple[IdIndex, np.ndarray]:
    """An item table's ids -> (index, the order that sorts its rows); a repeated id is refused by its line."""
    index, order, duplicate = IdIndex.build(raw.table.column(id_field).to_numpy())
    if duplicate is not None:
        raise raw.error(duplicate, id_field, f"item id {raw.table.column(id_field)[duplicate].as_py()} "
                                             f"appears twice in {what}")
    return index, order


def encode_items(raw: RawTable, id_field: str, order: np.ndarray) -> dict[str, Column]:
    """Every field of an item table but the id as a typed column, rows in ``order`` (`index_items`)."""
    return {f.name: _encode(f.kind, raw.table.column(f.name)).take(order) for f in raw.schema if f.name != id_field}


def dataset_format(folder: Path, config: DatasetConfig) -> str:
    """`atomic` or `parquet`, from the config or from what the folder holds."""
    if config.format != "auto":
        return config.format
    atomic = any(p.suffix in (".inter", ".item") for p in folder.iterdir())
    parquet = parquet_source(folder, "inter") is not None or parquet_source(folder, "item") is not None
    if atomic == parquet:
        what = "both atomic (.inter/.item) and Parquet (inter, item) tables" if atomic else "neither atomic " \
            "files (<name>.inter, <name>.item) nor Parquet tables (inter.parquet or inter/, item.parquet or item/)"
        raise DatasetError(str(folder), None, None, f"holds {what}; set [dataset] format")
    return "atomic" if atomic else "parquet"


def load_dataset(path: str | Path, config: DatasetConfig | None = None,
                 timings: dict[str, float] | None = None) -> Dataset:
    """Read, check and encode a dataset folder. `timings`, if given, gets seconds per stage (read, index, encode)."""
    config = config or DatasetConfig()
    folder = Path(path)
    if not folder.is_dir():
        raise DatasetError(str(folder), None, None, "not a folder (a dataset is a folder of atomic or Parquet files)")
    timings = {} if timings is None else timings
    start = time.perf_counter()
    if dataset_format(folder, config) == "atomic":
        item_raw, inter_raw = read_atomic(folder, config.roles, config.encoding)
    else:
        item_raw, inter_raw = read_parquet(folder, config.roles)
    timings["read"] = time.perf_counter() - start
    return assemble(str(folder), config, item_raw, inter_raw, timings)


def assemble(source: str, config: DatasetConfig, item_raw: RawTable, inter_raw: RawTable,
             timings: dict[str, float] | None = None) -> Dataset:
    """Two normalised tables -> Dataset: the checks that need both, then the encoding."""
    timings = {} if timings is None else timings
    roles = config.roles
    start = time.perf_counter()
    text_fields, title_field = _text_fields(config, item_raw)
    item_id, user_id, ts = roles["item_id"], roles["user_id"], roles["timestamp"]
    if inter_raw.schema.kind(user_id) is not Kind.TOKEN:
        raise DatasetError(inter_raw.file, inter_raw.schema_line, user_id,
                           f"the user_id field must be a token, not {inter_raw.schema.kind(user_id).value}")
    for name in (user_id, ts):
        _no_nulls(inter_raw, name)

    index, order = index_items(item_raw, item_id)
    rows, missing = index.rows(inter_raw.table.column(item_id).to_numpy())
    dropped = int(missing.sum())
    if dropped:
        first = int(np.flatnonzero(missing)[0])
        what = (f"{dropped} log row(s) name items not in the item table (first: item "
                f"{inter_raw.table.column(item_id)[first].as_py()})")
        if config.unknown_items == "refuse":
            raise inter_raw.error(first, item_id, f"{what}; set [dataset] unknown_items = \"drop\" to drop them")
        logger.warning("%s: %s; dropped (unknown_items = drop)", inter_raw.file, what)
        inter_raw, rows = inter_raw.filter(~missing), rows[~missing]
        if inter_raw.num_rows == 0:
            raise DatasetError(inter_raw.file, None, item_id, "empty table: no log row names a known item")
    timings["index"] = time.perf_counter() - start

    start = time.perf_counter()
    item_columns = encode_items(item_raw, item_id, order)
    user_vocabulary, user_codes = vocabulary_and_codes(inter_raw.table.column(user_id))
    empty = first_true(user_codes == 0)  # "" from Parquet (an atomic file's "" is null, refused above)
    if empty is not None:
        raise inter_raw.error(empty, user_id, "empty value (this field has a role, so every row needs one)")
    timestamps = np.asarray(inter_raw.table.column(ts).to_numpy(), dtype=np.float64)
    bad = first_true(~np.isfinite(timestamps))
    if bad is not None:
        raise inter_raw.error(bad, ts, f"timestamp {timestamps[bad]} is not a finite number")
    interactions = Interactions(
        users=user_codes.astype(np.int64) - 1,  # codes 1..U -> 0..U-1: every row has a user
        user_vocabulary=user_vocabulary[1:],
        items=rows,
        timestamps=timestamps,
        columns={f.name: _encode(f.kind, inter_raw.table.column(f.name))
                 for f in inter_raw.schema if f.name not in (item_id, user_id, ts)},
    )
    timings["encode"] = time.perf_counter() - start
    logger.info("dataset %s: %d items, %d log rows, %d users", source, len(index), len(rows),
                len(interactions.user_vocabulary))
    return Dataset(source, config, item_raw.schema, inter_raw.schema, Items(index, item_columns), interactions,
                   text_fields, title_field, dropped)


__all__ = ["Dataset", "FloatColumn", "FloatSeqColumn", "Interactions", "Items", "TokenColumn", "TokenSeqColumn",
           "assemble", "dataset_format", "encode_items", "index_items", "item_strings", "item_text", "load_dataset"]
