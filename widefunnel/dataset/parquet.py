"""The same two tables as Parquet: `inter` and `item`, each one file (`inter.parquet`) or a folder of part files
(`inter/part-*.parquet`, as Spark, Ray or a warehouse export writes them).

Field types come from the Arrow schema: integer or string -> token, list of strings or integers -> token_seq,
floating point (or boolean) -> float, list of floats -> float_seq. The rating, label and timestamp roles are
numbers whatever their integer or timestamp type. A message's line is the row within its part file, from 1.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from widefunnel.dataset.errors import DatasetError
from widefunnel.dataset.ids import ID_RULE, check_id_ints
from widefunnel.dataset.raw import RawTable
from widefunnel.dataset.schema import INTER_ROLES, ITEM_ROLES, Field, Kind, Schema, require_roles

logger = logging.getLogger(__name__)

NUMERIC_ROLES = ("timestamp", "rating", "label")


def parquet_source(folder: Path, name: str) -> Path | None:
    """`<folder>/<name>.parquet`, or `<folder>/<name>/` holding part files; None if neither is there."""
    file, parts = Path(folder) / f"{name}.parquet", Path(folder) / name
    if file.is_file() and parts.is_dir():
        raise DatasetError(str(folder), None, None, f"both {file.name} and {parts.name}/ are there; keep one")
    return file if file.is_file() else parts if parts.is_dir() else None


def _kind(t: pa.DataType) -> Kind | None:
    if pa.types.is_integer(t) or pa.types.is_string(t) or pa.types.is_large_string(t):
        return Kind.TOKEN
    if pa.types.is_dictionary(t):
        return _kind(t.value_type)
    if pa.types.is_floating(t) or pa.types.is_boolean(t):
        return Kind.FLOAT
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        inner = _kind(t.value_type)
        if inner is Kind.TOKEN:
            return Kind.TOKEN_SEQ
        if inner is Kind.FLOAT:
            return Kind.FLOAT_SEQ
    return None


def _schema(arrow: pa.Schema, roles: dict[str, str], file: str, log: bool) -> Schema:
    numeric = {roles[r]: r for r in NUMERIC_ROLES} if log else {}
    fields = []
    for f in arrow:
        t = f.type.value_type if pa.types.is_dictionary(f.type) else f.type
        if f.name in numeric and (pa.types.is_integer(t) or pa.types.is_timestamp(t)):
            fields.append(Field(f.name, Kind.FLOAT))  # a number whatever its Arrow type
            continue
        kind = _kind(f.type)
        if kind is None:
            raise DatasetError(file, None, f.name, f"unsupported Arrow type {f.type}; use integers or strings "
                                                   f"(token), lists of them (token_seq), floats (float) or lists "
                                                   f"of floats (float_seq)")
        fields.append(Field(f.name, kind))
    return Schema(tuple(fields))


def _numbers(values: pa.ChunkedArray) -> pa.ChunkedArray:
    t = values.type
    if pa.types.is_timestamp(t):  # -> seconds since the epoch
        scale = {"s": 1, "ms": 1e3, "us": 1e6, "ns": 1e9}[t.unit]
        return pc.divide(pc.cast(pc.cast(values, pa.timestamp(t.unit)), pa.int64()).cast(pa.float64()), scale)
    return pc.cast(values, pa.float64())


def _normalise(table: pa.Table, schema: Schema, roles: dict[str, str], raw: RawTable) -> pa.Table:
    """Arrow columns -> the shared types (raw.py); item ids must be integers in range."""
    out = {}
    for field in schema:
        values = table.column(field.name)
        if pa.types.is_dictionary(values.type):
            values = values.cast(values.type.value_type)
        if field.name == roles["item_id"]:
            if not pa.types.is_integer(values.type):
                raise DatasetError(raw.file, None, field.name, f"item ids are {values.type}, not integers: {ID_RULE}")
            nulls = np.flatnonzero(np.asarray(values.is_null().to_numpy(zero_copy_only=False)))
            if len(nulls):
                raise raw.error(nulls[0], field.name, "empty item id")
            ids = np.asarray(values.to_numpy(), dtype=np.int64) if values.type != pa.uint64() else \
                np.minimum(values.to_numpy(), np.uint64(2**63 - 1)).astype(np.int64)
            bad, why = check_id_ints(ids)
            if bad is not None:
                raise raw.error(bad, field.name, f"item id {values[bad].as_py()} is {why}: {ID_RULE}")
            out[field.name] = pa.array(ids)
        elif field.kind is Kind.FLOAT:
            out[field.name] = _numbers(values)
        elif field.kind is Kind.TOKEN:
            out[field.name] = values.cast(pa.string()) if not pa.types.is_string(values.type) else values
        elif field.kind is Kind.TOKEN_SEQ:
            out[field.name] = values.cast(pa.large_list(pa.string()))
        else:
            out[field.name] = values.cast(pa.large_list(pa.float64()))
    return pa.table(out)


def read_parquet_table(source: Path, roles: dict[str, str], needed: tuple[str, ...]) -> RawTable:
    """One table (a file or a folder of part files) -> RawTable, part files in name order."""
    name = str(source)
    try:
        dataset = pads.dataset(source, format="parquet")
    except (pa.ArrowInvalid, OSError) as e:
        raise DatasetError(name, None, None, f"not readable as Parquet: {e}") from None
    files = sorted(dataset.files)
    if not files:
        raise DatasetError(name, None, None, "no Parquet part files (names starting with _ or . are skipped)")
    tables, starts = [], [0]
    for file in files:
        try:
            part = pads.dataset(file, format="parquet", schema=dataset.schema).to_table()
        except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as e:
            raise DatasetError(file, None, None, f"not readable as part of {name}: {e}") from None
        tables.append(part)
        starts.append(starts[-1] + part.num_rows)
    bounds = np.asarray(starts, dtype=np.int64)

    def locate(row: int) -> tuple[str, int]:
        part = int(np.searchsorted(bounds, row, side="right")) - 1
        return files[part], row - int(bounds[part]) + 1

    schema = _schema(dataset.schema, roles, name, log="timestamp" in needed)
    require_roles(schema, roles, needed, name, line=None)
    table = pa.concat_tables(tables) if tables else dataset.schema.empty_table()
    raw = RawTable(name, schema, table, locate)
    if table.num_rows == 0:
        raise DatasetError(name, None, None, "empty table: no rows")
    table = _normalise(table, schema, roles, raw)
    logger.info("read %s: %d rows in %d part file(s), fields %s", name, table.num_rows, len(files),
                ", ".join(schema.names))
    return RawTable(name, schema, table, locate)


def read_parquet(folder: Path, roles: dict[str, str]) -> tuple[RawTable, RawTable]:
    """A folder with `item` and `inter` tables as Parquet -> (item table, interaction table)."""
    sources = {}
    for table in ("item", "inter"):
        source = parquet_source(Path(folder), table)
        if source is None:
            raise DatasetError(str(folder), None, None, f"no {table}.parquet file or {table}/ folder of part files")
        sources[table] = source
    return (read_parquet_table(sources["item"], roles, ITEM_ROLES),
            read_parquet_table(sources["inter"], roles, INTER_ROLES))
