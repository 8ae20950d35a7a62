"""Arrays read in place from .npy files: mapped read-only, so every process of a version
(instances, steps, two versions during a swap) shares one copy of a per-item table in the page cache.

A per-item table also grows in place (`append_rows`): a version that adds items hard-links the table of the
version it grew from and appends its new rows to that one file. Every version reads only its own rows: the
older one the rows its .npy header gives, the newer one those its folder's `layout.TABLE_ROWS` lists
(`load_table`). So the old version's bytes never change under it, and adding items writes only their rows.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

import numpy as np

from widefunnel.layout import TABLE_ROWS


def _npy_header(f) -> tuple[tuple[int, ...], bool, np.dtype]:
    fmt = np.lib.format
    version = fmt.read_magic(f)
    return (fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0)(f)


def npy_region(path: Path) -> tuple[int, int]:
    """(offset, length) of the array's bytes in a .npy file."""
    with open(path, "rb") as f:
        shape, _, dtype = _npy_header(f)
        return f.tell(), int(np.prod(shape, dtype=np.int64)) * dtype.itemsize


def listed_rows(folder: Path | str) -> dict[str, int]:
    """The rows a version folder reads of each table it grew by appending (`layout.TABLE_ROWS`; empty: none)."""
    path = Path(folder) / TABLE_ROWS
    if not path.is_file():
        return {}
    listed = json.loads(path.read_text())
    if not isinstance(listed, dict) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                               for v in listed.values()):
        raise ValueError(f"{path}: an object of table file -> row count expected")
    return listed


def write_listed_rows(folder: Path, rows: dict[str, int]) -> None:
    """Records ``rows`` (a table file's name, relative to ``folder`` -> the rows this version reads of it)."""
    if rows:
        (Path(folder) / TABLE_ROWS).write_text(json.dumps(dict(sorted(rows.items())), indent=1) + "\n")


def table_layout(path: Path | str) -> tuple[int, tuple[int, ...], np.dtype]:
    """(offset of the data, shape by the header, dtype) of a C-ordered .npy file; ValueError otherwise."""
    with open(path, "rb") as f:
        shape, fortran, dtype = _npy_header(f)
        if fortran or not shape or dtype.hasobject:
            raise ValueError(f"{path}: a C-ordered array of at least one dimension expected")
        return f.tell(), shape, dtype


def load_table(path: Path | str, rows: int | None = None, mmap_mode: str = "r") -> np.ndarray:
    """A .npy table mapped as its version reads it: ``rows`` rows, by default those the folder's
    `layout.TABLE_ROWS` lists for it, else its header's. ValueError when the file holds fewer."""
    path = Path(path)
    offset, shape, dtype = table_layout(path)
    if rows is None:
        rows = listed_rows(path.parent).get(path.name, shape[0])
    row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
    need = offset + rows * row_bytes
    if path.stat().st_size < need:
        raise ValueError(f"{path}: {rows} rows need {need} bytes, the file has {path.stat().st_size} (truncated?)")
    if rows == 0 or row_bytes == 0:
        return np.zeros((rows, *shape[1:]), dtype)
    return np.memmap(path, dtype=dtype, mode=mmap_mode, offset=offset, shape=(rows, *shape[1:]))


def table_bytes(path: Path | str, rows: int) -> int:
    """The bytes of ``path`` a version reading ``rows`` rows reads: its header and those rows."""
    offset, shape, dtype = table_layout(path)
    return offset + rows * int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize


def append_rows(source: Path, target: Path, rows: int, tail: np.ndarray) -> int:
    """Writes ``target`` as ``source``'s first ``rows`` rows followed by ``tail``; the bytes written. Where
    ``source`` ends right after those rows, ``target`` is a hard link of it and only ``tail`` is written (past
    every byte a version reading ``source`` reads). Where it does not (another version grew it first, or an
    interrupted add left rows no version lists), where the new rows do not fit its integer type, or where the
    filesystem cannot link, ``target`` is a new file (a wider type in the second case)."""
    source, target = Path(source), Path(target)
    offset, shape, dtype = table_layout(source)
    tail = np.asarray(tail)
    if tail.shape[1:] != shape[1:]:
        raise ValueError(f"{source}: rows of shape {list(shape[1:])}, new rows {list(tail.shape[1:])}")
    wide = dtype
    if _fits(tail, dtype):
        tail = np.ascontiguousarray(tail, dtype)
        end = table_bytes(source, rows)
        with open(source, "rb") as guard:
            fcntl.flock(guard, fcntl.LOCK_EX)  # two adds from one version: one appends, the other copies
            try:
                if os.fstat(guard.fileno()).st_size == end:
                    os.link(source, target)
                    with open(target, "ab") as out:
                        out.write(memoryview(tail).cast("B"))
                    return tail.nbytes
            except OSError:
                target.unlink(missing_ok=True)
            finally:
                fcntl.flock(guard, fcntl.LOCK_UN)
    else:  # e.g. codes of a vocabulary that outgrew the table's narrow type
        wide = np.result_type(dtype, np.min_scalar_type(int(tail.min())), np.min_scalar_type(int(tail.max())))
    whole = np.concatenate([load_table(source, rows).astype(wide, copy=False), tail.astype(wide, copy=False)])
    with open(target, "wb") as out:
        np.save(out, whole, allow_pickle=False)
    return int(whole.nbytes)


def _fits(tail: np.ndarray, dtype: np.dtype) -> bool:
    """Whether ``tail``'s values are ``dtype``'s exactly (an integer table keeps its type only where they fit)."""
    if not (np.issubdtype(dtype, np.integer) and np.issubdtype(tail.dtype, np.integer)) or not tail.size:
        return True
    info = np.iinfo(dtype)
    return info.min <= int(tail.min()) and int(tail.max()) <= info.max
