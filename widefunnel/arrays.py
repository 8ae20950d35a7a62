"""Arrays read in place from .npy and uncompressed .npz files: mapped read-only, so every process of a version
(instances, steps, two versions during a swap) shares one copy of a per-item table in the page cache."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

_LOCAL_HEADER = 30  # a zip local file header's fixed part; the name and the extra field follow


def _npy_header(f) -> tuple[tuple[int, ...], bool, np.dtype]:
    fmt = np.lib.format
    version = fmt.read_magic(f)
    return (fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0)(f)


def npy_region(path: Path) -> tuple[int, int]:
    """(offset, length) of the array's bytes in a .npy file."""
    with open(path, "rb") as f:
        shape, _, dtype = _npy_header(f)
        return f.tell(), int(np.prod(shape, dtype=np.int64)) * dtype.itemsize


def map_npz(path: Path | str) -> dict[str, np.ndarray]:
    """Every member of an .npz (`np.savez`: members stored, not compressed) as a read-only map of the file;
    a compressed member, an object or string array is read into memory instead (small tables: vocabularies)."""
    path = Path(path)
    out: dict[str, np.ndarray] = {}
    with zipfile.ZipFile(path) as z, open(path, "rb") as raw:
        for info in z.infolist():
            name = info.filename.removesuffix(".npy")
            if info.compress_type != zipfile.ZIP_STORED:
                out[name] = np.load(z.open(info), allow_pickle=False)
                continue
            raw.seek(info.header_offset + 26)
            name_len, extra_len = np.frombuffer(raw.read(4), "<u2")
            start = info.header_offset + _LOCAL_HEADER + int(name_len) + int(extra_len)
            raw.seek(start)
            shape, fortran, dtype = _npy_header(raw)
            if dtype.hasobject or dtype.kind in "US" or fortran or 0 in shape:
                out[name] = np.load(z.open(info), allow_pickle=False)
                continue
            out[name] = np.memmap(path, dtype=dtype, mode="r", offset=raw.tell(), shape=shape)
    return out
