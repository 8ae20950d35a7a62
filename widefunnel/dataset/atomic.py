"""RecBole atomic files (`<name>.inter`, `<name>.item`): tab-separated, one `name:type` header line.

Read with pyarrow's multithreaded CSV reader, every column as a string first, then converted in vectorised
passes. A fault found in a pass (a bad value, a wrong column count, bad bytes) is located afterwards, in a
pass that only runs on a bad file, so a good file pays nothing for the precise message.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from widefunnel.dataset.errors import DatasetError
from widefunnel.dataset.ids import ID_RULE, first_true, parse_id_strings
from widefunnel.dataset.raw import RawTable
from widefunnel.dataset.schema import INTER_ROLES, ITEM_ROLES, Kind, Schema, parse_header, require_roles

logger = logging.getLogger(__name__)

FIRST_DATA_LINE = 2  # the header is line 1


def atomic_files(folder: Path) -> tuple[Path, Path]:
    """The folder's one `.item` and one `.inter` file (a `.user` file, or any other, is ignored)."""
    found = {}
    for suffix in (".item", ".inter"):
        paths = sorted(p for p in Path(folder).iterdir() if p.suffix == suffix and p.is_file())
        if len(paths) != 1:
            what = "no" if not paths else f"{len(paths)} ({', '.join(p.name for p in paths)})"
            raise DatasetError(str(folder), None, None, f"expected exactly one '{suffix}' file, found {what}")
        found[suffix] = paths[0]
    return found[".item"], found[".inter"]


def _encoding_fault(path: Path, encoding: str) -> DatasetError | None:
    """Where the bytes stop being `encoding` (line, and field by its tab count); only called on a bad file."""
    data = path.read_bytes()
    try:
        data.decode(encoding)
    except UnicodeDecodeError as e:
        line_start = data.rfind(b"\n", 0, e.start) + 1
        line = data.count(b"\n", 0, e.start) + 1
        column = data.count(b"\t", line_start, e.start)
        header = data[: data.find(b"\n")].decode(encoding, errors="replace").rstrip("\r").split("\t")
        field = header[column].rpartition(":")[0] if line > 1 and column < len(header) else None
        return DatasetError(str(path), line, field, f"invalid {encoding} bytes ({e.reason}) at byte {e.start}; "
                                                    f"set [dataset] encoding if the file is not {encoding}")
    return None


def _header(path: Path, encoding: str) -> Schema:
    with open(path, "rb") as f:
        first = f.readline()
    if not first.strip():
        raise DatasetError(str(path), 1, None, "empty file: no header line")
    try:
        text = first.decode(encoding)
    except UnicodeDecodeError:
        raise _encoding_fault(path, encoding) from None
    return parse_header(text.lstrip("\ufeff").rstrip("\r\n"), str(path))


def _column_count_fault(path: Path, schema: Schema, encoding: str) -> DatasetError:
    """Re-read serially, where pyarrow knows row numbers, to name the first row with too few or many columns."""
    seen: list = []

    def handler(row: pacsv.InvalidRow) -> str:
        seen.append(row)
        return "error"

    with contextlib.suppress(pa.ArrowInvalid):
        _read_strings(path, schema, encoding, handler)
    if not seen:  # pragma: no cover - the threaded pass failed, so the serial one does
        return DatasetError(str(path), None, None, "rows with a wrong number of columns")
    row = seen[0]
    few = row.actual_columns < row.expected_columns
    names = schema.names
    field = names[row.actual_columns] if few else None
    return DatasetError(str(path), row.number, field,
                        f"{row.actual_columns} column(s), expected {row.expected_columns} "
                        f"({'too few' if few else 'too many'}; fields: {', '.join(names)})")


def _read_strings(path: Path, schema: Schema, encoding: str,
                  handler: Callable[[pacsv.InvalidRow], str] | None = None) -> pa.Table:
    """Every column as a string (null where empty); multithreaded unless a handler needs row numbers."""
    names = list(schema.names)
    return pacsv.read_csv(
        path,
        read_options=pacsv.ReadOptions(encoding=encoding, skip_rows=1, column_names=names,
                                       use_threads=handler is None, block_size=16 << 20),
        parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False, double_quote=False, escape_char=False,
                                         newlines_in_values=False, ignore_empty_lines=False,
                                         invalid_row_handler=handler),
        convert_options=pacsv.ConvertOptions(column_types={n: pa.string() for n in names}, strings_can_be_null=True,
                                             null_values=[""], quoted_strings_can_be_null=False),
    )


def _all_null(table: pa.Table) -> np.ndarray:
    mask = np.ones(table.num_rows, dtype=bool)
    for column in table.columns:
        mask &= np.asarray(column.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    return mask


def _first_bad_cast(values: pa.ChunkedArray, to: pa.DataType) -> int:
    """The first row that does not cast, by bisection: about two casts' work, only on a bad column."""
    lo, hi = 0, len(values)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        try:
            pc.cast(values.slice(lo, mid - lo), to)
            lo = mid
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            hi = mid
    return lo


def _floats(values: pa.ChunkedArray) -> tuple[pa.ChunkedArray | None, int | None]:
    try:
        return pc.cast(values, pa.float64()), None
    except pa.ArrowInvalid:
        return None, _first_bad_cast(values, pa.float64())


def _split(values: pa.ChunkedArray) -> tuple[np.ndarray, pa.ChunkedArray]:
    """Space-separated sequences -> (int64 offsets, flat non-empty tokens): RecBole's separator, empties dropped."""
    lists = pc.split_pattern(values, " ")
    lengths = np.asarray(pc.fill_null(pc.list_value_length(lists), 0).to_numpy(), dtype=np.int64)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = pc.list_flatten(lists)
    keep = np.asarray(pc.not_equal(flat, "").to_numpy(zero_copy_only=False), dtype=bool)
    if not keep.all():
        kept = np.zeros(len(keep) + 1, dtype=np.int64)
        np.cumsum(keep, out=kept[1:])
        offsets, flat = kept[offsets], flat.filter(pa.array(keep))
    return offsets, flat


def _lists(offsets: np.ndarray, flat: pa.ChunkedArray | pa.Array) -> pa.LargeListArray:
    if isinstance(flat, pa.ChunkedArray):
        if pa.types.is_string(flat.type) and flat.nbytes > 1 << 30:  # string offsets are int32
            flat = flat.cast(pa.large_string())
        flat = flat.combine_chunks()
    return pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), flat)


def _normalise(raw: pa.Table, schema: Schema, roles: dict[str, str], path: Path, log: bool) -> pa.Table:
    """String columns -> the shared Arrow types (raw.py), refusing the first value that does not parse.
    The timestamp role is the log's (`log`); an item table's field of that name is an ordinary field."""
    timestamp = roles["timestamp"] if log else None

    def fault(row: int, field: str, message: str) -> DatasetError:
        return DatasetError(str(path), row + FIRST_DATA_LINE, field, message)

    out = {}
    for field in schema:
        values = raw.column(field.name)
        if field.name == roles["item_id"]:
            ids, bad, why = parse_id_strings(values)
            if bad is not None:
                shown = values[bad].as_py()
                raise fault(bad, field.name, f"item id {shown!r} is {why}: {ID_RULE}" if shown is not None
                            else "empty item id")
            out[field.name] = pa.array(ids)
        elif field.name == timestamp or field.kind is Kind.FLOAT:
            floats, bad = _floats(values)
            if bad is not None:
                raise fault(bad, field.name, f"{values[bad].as_py()!r} is not a number (type {field.kind.value})")
            out[field.name] = floats
        elif field.kind is Kind.TOKEN:
            out[field.name] = values
        elif field.kind is Kind.TOKEN_SEQ:
            out[field.name] = _lists(*_split(values))
        else:  # FLOAT_SEQ
            offsets, flat = _split(values)
            floats, bad = _floats(flat)
            if bad is not None:
                row = int(np.searchsorted(offsets, bad, side="right")) - 1
                raise fault(row, field.name, f"{flat[bad].as_py()!r} is not a number (type float_seq, "
                                             f"space-separated)")
            out[field.name] = _lists(offsets, floats)
    return pa.table(out)


def read_atomic_table(path: Path, roles: dict[str, str], needed: tuple[str, ...], encoding: str) -> RawTable:
    """One atomic file -> RawTable; refused with file, line and field on the first fault."""
    path = Path(path)
    schema = _header(path, encoding)
    require_roles(schema, roles, needed, str(path))
    try:
        strings = _read_strings(path, schema, encoding)
    except pa.ArrowInvalid as e:
        if "columns" in str(e):
            raise _column_count_fault(path, schema, encoding) from None
        raise (_encoding_fault(path, encoding) or DatasetError(str(path), None, None, str(e))) from None
    except UnicodeDecodeError:
        raise _encoding_fault(path, encoding) from None
    if strings.num_rows == 0:
        raise DatasetError(str(path), FIRST_DATA_LINE, None, "empty table: no rows after the header")
    blank = first_true(_all_null(strings))
    if blank is not None:  # pyarrow reads a blank line as a row of empty fields; say what it is
        raise DatasetError(str(path), blank + FIRST_DATA_LINE, None,
                           f"blank line (a row has {len(schema)} tab-separated fields: {', '.join(schema.names)})")
    table = _normalise(strings, schema, roles, path, log="timestamp" in needed)
    logger.info("read %s: %d rows, fields %s", path, table.num_rows, ", ".join(schema.names))
    return RawTable(str(path), schema, table, lambda row: (str(path), row + FIRST_DATA_LINE), schema_line=1)


def read_atomic(folder: Path, roles: dict[str, str], encoding: str) -> tuple[RawTable, RawTable]:
    """A folder of atomic files -> (item table, interaction table)."""
    item_path, inter_path = atomic_files(Path(folder))
    return (read_atomic_table(item_path, roles, ITEM_ROLES, encoding),
            read_atomic_table(inter_path, roles, INTER_ROLES, encoding))
