"""The on-disk / in-memory int8 item index and its strict loader.

Layout: one directory with ``manifest.json`` plus one ``.npy`` per array. The manifest carries a sha256 and a
byte size per array file, so a truncated or bit-flipped file is refused at load time instead of silently
serving wrong neighbours; the tower fingerprint ties the index to the query tower that produced it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from widefunnel.ann.coarse import assign_lists, train_coarse
from widefunnel.ann.quantize import QMAX, quantize_checked_rows
from widefunnel.arrays import append_rows, load_table, table_bytes

if TYPE_CHECKING:
    from widefunnel.ann.prepared import PreparedIndex

FORMAT = "widefunnel-int8-index"
FORMAT_VERSION = 1
QUANTIZATION = "int8-symmetric-per-row"
METRICS = ("ip",)
MAX_DIM = 1024  # int8*int8 dot products stay below 2**24, so float32 arithmetic on them is exact
MAX_COUNT = 2**31 - 1  # rows must fit the 32-bit row field of the search's sort keys
MANIFEST = "manifest.json"
CODES_FILE, SCALES_FILE = "codes.npy", "scales.npy"  # the rerankers map these same files (hard links)
ROWS_FILE = "item_rows.npy"  # `item_rows`, beside the index in the ANN step's version folder (int32 [table])
BASE_FILES = (CODES_FILE, SCALES_FILE, "ids.npy")
IVF_FILES = ("ivf_centroids.npy", "ivf_offsets.npy")
_MANIFEST_TYPES: dict[str, type | tuple[type, ...]] = {
    "format": str,
    "format_version": int,
    "dim": int,
    "count": int,
    "quantization": str,
    "metric": str,
    "tower_fingerprint": str,
    "ivf_lists": int,
    "files": dict,
}
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class IndexLoadError(ValueError):
    """The index directory is unusable; the message names the file and field at fault."""


@dataclass
class IvfLists:
    """Coarse quantiser. Rows are grouped by list at build time, so list ``l`` is the contiguous row range
    ``offsets[l]:offsets[l+1]`` (its member row indices) and scanning a list is a slice, not a gather.
    Rows appended after the build (``tail_start``..N) belong to no list: every IVF search scans them too,
    until a rebuild folds them into lists."""

    centroids: np.ndarray  # float32 [L, d]
    offsets: np.ndarray  # int64 [L+1], offsets[0] = 0, offsets[-1] <= N (the tail follows), non-decreasing

    @property
    def n_lists(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def tail_start(self) -> int:
        """First row of the always-scanned tail (rows added after the build); = N when there is none."""
        return int(self.offsets[-1])

    def members(self, list_id: int) -> np.ndarray:
        """Row indices of list ``list_id`` (int64)."""
        return np.arange(self.offsets[list_id], self.offsets[list_id + 1], dtype=np.int64)


@dataclass
class Int8Index:
    codes: np.ndarray  # int8 [N, d]
    scales: np.ndarray  # float32 [N]
    ids: np.ndarray  # int64 [N], external item ids, unique, >= 0 (-1 is the "no result" pad)
    manifest: dict
    ivf: IvfLists | None = None
    # the search-time form (``prepared.PreparedIndex``), built once by ``search.prepare_index``
    prepared: PreparedIndex | None = field(default=None, repr=False, compare=False)
    # each id's row, mapped from the build's `ROWS_FILE` (`load_row_map`); None: prepare_index builds its own
    row_map: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def dim(self) -> int:
        return int(self.codes.shape[1])

    @property
    def count(self) -> int:
        return int(self.codes.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays a search touches (codes, scales, ids, IVF)."""
        extra = 0 if self.ivf is None else self.ivf.centroids.nbytes + self.ivf.offsets.nbytes
        return int(self.codes.nbytes + self.scales.nbytes + self.ids.nbytes + extra)


def item_table(index: Int8Index, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The index's int8 codes and scales by item id (row = id, zeros where no item): the table a step that
    scores candidates gathers from, so candidates cross step boundaries as ids, not embeddings."""
    if index.count and int(index.ids.max()) >= size:
        raise ValueError(f"item_table: id {int(index.ids.max())} does not fit a table of {size} rows")
    codes = np.zeros((size, index.dim), np.int8)
    scales = np.zeros(size, np.float32)
    codes[index.ids], scales[index.ids] = index.codes, index.scales
    return codes, scales


def item_rows(index: Int8Index, size: int) -> np.ndarray:
    """int32 [size]: each item id's row in the index (0 where no item): with the index's own codes and scales,
    the same table as `item_table` at 4 bytes an item instead of d + 4."""
    if index.count and int(index.ids.max()) >= size:
        raise ValueError(f"item_rows: id {int(index.ids.max())} does not fit a table of {size} rows")
    rows = np.zeros(size, np.int32)
    rows[index.ids] = np.arange(index.count, dtype=np.int32)
    return rows


def _row_order(scales: np.ndarray, lists: np.ndarray | None) -> np.ndarray:
    """Rows grouped by IVF list, then by descending scale (stable), so a 64-row block has near-equal scales
    and its score upper bound (block max dot * block max scale) is tight enough to skip most blocks. One stable
    sort of an int64 key: the list above, the scale's float32 bits (monotonic for positive floats) inverted
    below, equal to a lexsort by (list, -scale, row)."""
    bits = np.ascontiguousarray(scales, np.float32).view(np.uint32).astype(np.int64)
    key = np.int64(0xFFFFFFFF) - bits
    if lists is not None:
        key |= np.asarray(lists, np.int64) << 32
    return np.argsort(key, kind="stable")


def build_index(embeddings: np.ndarray, ids: np.ndarray, tower_fingerprint: str, metric: str = "ip",
                ivf_lists: int = 0, seed: int = 0) -> Int8Index:
    """Quantise item embeddings into an ``Int8Index``; with ``ivf_lists > 0`` also train a coarse quantiser.

    Rows are reordered (by IVF list, then by descending scale); ``ids`` travel with their rows.
    """
    x = np.asarray(embeddings)
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"embeddings must be a non-empty 2-D [N, d] array, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"embeddings must be floating point, got {x.dtype}")
    x = x.astype(np.float32, copy=False)
    n, d = x.shape
    if d > MAX_DIM:
        raise ValueError(f"embeddings dim {d} > {MAX_DIM}: int8 dot products would not be exact in float32")
    if n > MAX_COUNT:
        raise ValueError(f"embeddings count {n} > {MAX_COUNT}")
    if not np.isfinite(x).all():
        raise ValueError("embeddings contain NaN or inf")
    ids_arr = np.asarray(ids)
    if ids_arr.shape != (n,) or not np.issubdtype(ids_arr.dtype, np.integer):
        raise ValueError(f"ids must be an integer array of shape ({n},), got {ids_arr.dtype} {ids_arr.shape}")
    ids_arr = ids_arr.astype(np.int64)
    _check_ids(ids_arr, ValueError, "ids")
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if not isinstance(tower_fingerprint, str) or not tower_fingerprint:
        raise ValueError("tower_fingerprint must be a non-empty string")
    if isinstance(ivf_lists, bool) or not isinstance(ivf_lists, (int, np.integer)) or not 0 <= ivf_lists <= n:
        raise ValueError(f"ivf_lists must be an integer in [0, {n}], got {ivf_lists!r}")

    codes, scales, _ = quantize_checked_rows(x)  # one compiled pass, equal to quantize_rows (x is finite)
    ivf = None
    lists = None
    if ivf_lists:
        centroids = train_coarse(x, int(ivf_lists), seed=seed)
        lists = assign_lists(x, centroids)
        counts = np.bincount(lists, minlength=len(centroids))
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        ivf = IvfLists(centroids=centroids.astype(np.float32), offsets=offsets)
    order = _row_order(scales, lists)
    codes, scales, ids_arr = codes[order], scales[order], ids_arr[order]
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "dim": int(d),
        "count": int(n),
        "quantization": QUANTIZATION,
        "metric": metric,
        "tower_fingerprint": tower_fingerprint,
        "ivf_lists": int(ivf_lists),
        "files": {},  # filled by save_index
    }
    codes = np.ascontiguousarray(codes)
    return Int8Index(codes=codes, scales=scales, ids=ids_arr, manifest=manifest, ivf=ivf)


def _arrays(index: Int8Index) -> dict[str, np.ndarray]:
    out = {"codes.npy": index.codes, "scales.npy": index.scales, "ids.npy": index.ids}
    if index.ivf is not None:
        out["ivf_centroids.npy"] = index.ivf.centroids
        out["ivf_offsets.npy"] = index.ivf.offsets
    return out


def _sha256(path: Path, length: int | None = None) -> str:
    """Of the file's first ``length`` bytes (all by default): what one version reads of a table that later
    versions grew by appending (`arrays.append_rows`)."""
    h = hashlib.sha256()
    left = os.path.getsize(path) if length is None else length
    with open(path, "rb") as f:
        while left > 0:
            chunk = f.read(min(1 << 22, left))
            if not chunk:
                break
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


def save_index(index: Int8Index, directory: Path) -> None:
    """Write the arrays, then ``manifest.json`` last (atomically), so a half-written index has no manifest."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, arr in _arrays(index).items():
        path = directory / name
        with open(path, "wb") as f:
            np.save(f, np.ascontiguousarray(arr), allow_pickle=False)
        files[name] = {"sha256": _sha256(path), "bytes": path.stat().st_size}
    manifest = dict(index.manifest)
    manifest.update(dim=index.dim, count=index.count, ivf_lists=0 if index.ivf is None else index.ivf.n_lists,
                    files=files)
    index.manifest = manifest
    tmp = directory / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, directory / MANIFEST)


def grow_index(source: Path, target: Path, codes: np.ndarray, scales: np.ndarray, ids: np.ndarray,
               fingerprint: str) -> int:
    """Writes ``target``: the index in ``source`` with rows appended (``codes``, ``scales`` and ``ids`` of new items,
    quantised as `build_index` does), under ``fingerprint``; the bytes written. The IVF lists stay the build's:
    the new rows follow the last list, as a tail every IVF search scans (`IvfLists`). Row tables are appended
    in place where they can be (`arrays.append_rows`), so this writes about the new rows only."""
    source, target = Path(source), Path(target)
    manifest = _read_manifest(source)
    validate_manifest(manifest)
    target.mkdir(parents=True, exist_ok=True)
    count = manifest["count"]
    written = 0
    files = dict(manifest["files"])
    for name, tail in zip(BASE_FILES, (codes, scales, ids)):
        written += append_rows(source / name, target / name, count, tail)
        length = table_bytes(target / name, count + len(tail))
        files[name] = {"sha256": _sha256(target / name, length), "bytes": length}
    for name in IVF_FILES if manifest["ivf_lists"] else ():
        os.link(source / name, target / name)
    manifest |= {"count": count + len(ids), "tower_fingerprint": fingerprint, "files": files}
    (target / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return written


def _fail(where: str, why: str) -> IndexLoadError:
    return IndexLoadError(f"{where}: {why}")


def _check_ids(ids: np.ndarray, err: type[Exception], where: str) -> None:
    if ids.size and int(ids.min()) < 0:
        raise err(f"{where}: ids must be >= 0 (-1 marks 'no result'), found {int(ids.min())}")
    if len(np.unique(ids)) != len(ids):
        srt = np.sort(ids)
        dup = srt[1:][srt[1:] == srt[:-1]][:5]
        raise err(f"{where}: duplicate ids, e.g. {dup.tolist()}")


def _read_manifest(directory: Path) -> dict:
    path = directory / MANIFEST
    if not path.is_file():
        raise _fail(str(path), "missing")
    try:
        manifest = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(str(path), f"not valid JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise _fail(MANIFEST, "top level must be a JSON object")
    return manifest


def validate_manifest(manifest: dict) -> None:
    """Strict schema check: exact key set, exact types, known constants, sane numbers."""
    keys = set(manifest)
    missing, unknown = sorted(set(_MANIFEST_TYPES) - keys), sorted(keys - set(_MANIFEST_TYPES))
    if missing:
        raise _fail(MANIFEST, f"missing key(s) {missing}")
    if unknown:
        raise _fail(MANIFEST, f"unknown key(s) {unknown}")
    for key, typ in _MANIFEST_TYPES.items():
        val = manifest[key]
        if isinstance(val, bool) or not isinstance(val, typ):
            raise _fail(f"{MANIFEST} field '{key}'", f"expected {typ.__name__}, got {type(val).__name__}")
    consts = {"format": FORMAT, "format_version": FORMAT_VERSION, "quantization": QUANTIZATION}
    for key, want in consts.items():
        if manifest[key] != want:
            raise _fail(f"{MANIFEST} field '{key}'", f"expected {want!r}, got {manifest[key]!r}")
    if manifest["metric"] not in METRICS:
        raise _fail(f"{MANIFEST} field 'metric'", f"expected one of {METRICS}, got {manifest['metric']!r}")
    if not 1 <= manifest["dim"] <= MAX_DIM:
        raise _fail(f"{MANIFEST} field 'dim'", f"must be in [1, {MAX_DIM}], got {manifest['dim']}")
    if not 1 <= manifest["count"] <= MAX_COUNT:
        raise _fail(f"{MANIFEST} field 'count'", f"must be in [1, {MAX_COUNT}], got {manifest['count']}")
    if manifest["ivf_lists"] < 0:  # may exceed count: a shard keeps every centroid, some lists empty
        raise _fail(f"{MANIFEST} field 'ivf_lists'", f"must be >= 0, got {manifest['ivf_lists']}")
    if not manifest["tower_fingerprint"]:
        raise _fail(f"{MANIFEST} field 'tower_fingerprint'", "must be non-empty")
    want_files = set(BASE_FILES) | (set(IVF_FILES) if manifest["ivf_lists"] else set())
    files = manifest["files"]
    if set(files) != want_files:
        raise _fail(f"{MANIFEST} field 'files'",
                    f"expected entries {sorted(want_files)}, got {sorted(files)}")
    for name, entry in files.items():
        where = f"{MANIFEST} field 'files.{name}'"
        if not isinstance(entry, dict) or set(entry) != {"sha256", "bytes"}:
            raise _fail(where, "must be an object with exactly 'sha256' and 'bytes'")
        if not isinstance(entry["sha256"], str) or not _SHA256.match(entry["sha256"]):
            raise _fail(where + ".sha256", "must be 64 lowercase hex characters")
        if isinstance(entry["bytes"], bool) or not isinstance(entry["bytes"], int) or entry["bytes"] < 0:
            raise _fail(where + ".bytes", "must be a non-negative integer")


def _load_array(directory: Path, name: str, entry: dict, dtype: np.dtype, shape: tuple[int, ...],
                mmap: bool = False) -> np.ndarray:
    """Size and sha256 check first (catches truncation / bit flips), then dtype and shape."""
    path = directory / name
    if not path.is_file():
        raise _fail(str(path), "missing")
    size = path.stat().st_size
    # A later version may have appended rows to this file (a hard link of it): this version reads its first bytes.
    if size < entry["bytes"]:
        raise _fail(name, f"size {size} bytes but manifest says {entry['bytes']} (truncated?)")
    digest = _sha256(path, entry["bytes"])
    if digest != entry["sha256"]:
        raise _fail(name, f"sha256 mismatch (corrupt file): manifest {entry['sha256']}, file {digest}")
    if mmap:  # a table later versions may grow: its manifest's bytes must be the header and exactly its rows
        try:
            length = table_bytes(path, shape[0])
        except ValueError as exc:
            raise _fail(name, f"not a plain .npy array ({exc})") from None
        if length != entry["bytes"]:
            raise _fail(name, f"shape disagrees with manifest: {shape[0]} rows are not its {entry['bytes']} bytes")
    try:  # mapped copy-on-write: pages stay shared with the page cache, and torch gets a writable view
        arr = load_table(path, shape[0], mmap_mode="c") if mmap else np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise _fail(name, f"not a plain .npy array ({exc})") from None
    if arr.dtype != dtype:
        raise _fail(name, f"dtype {arr.dtype}, expected {np.dtype(dtype)}")
    if arr.shape != shape:
        raise _fail(name, f"shape {arr.shape} disagrees with manifest (expected {shape})")
    return arr


def load_row_map(index: Int8Index, path: Path) -> None:
    """Maps ``path`` (`ROWS_FILE`, beside the index in an ANN step's folder: int32 by id) as the index's id -> row
    table, once it gives every index id its row; IndexLoadError naming the file otherwise. Call before
    ``prepare_index``: an ANN step maps the build's table instead of building its own copy (`id_lookup`), so the
    page cache holds one for every process."""
    try:
        row_map = load_table(path)  # the rows this version lists, where it grew the build's table
    except ValueError as exc:
        raise _fail(str(path), f"not a plain .npy array ({exc})") from None
    ids = index.ids
    if row_map.dtype != np.int32 or row_map.ndim != 1:
        raise _fail(str(path), f"item rows: int32 [ids] expected, got {row_map.dtype} {row_map.shape}")
    if len(ids) and (int(ids.max()) >= len(row_map) or int(ids.min()) < 0):
        raise _fail(str(path), f"item rows: {len(row_map)} entries do not cover the index's ids")
    if not np.array_equal(row_map[ids], np.arange(len(ids), dtype=np.int32)):
        raise _fail(str(path), "item rows: an id's entry is not its row in the index")
    index.row_map = row_map


def load_index(directory: Path, expected_fingerprint: str | None = None) -> Int8Index:
    """Load and fully validate an index directory; any problem -> ``IndexLoadError`` naming file and field.

    A server prepares the search-time caches next (``search.prepare_index``), so no request pays for them.
    """
    directory = Path(directory)
    manifest = _read_manifest(directory)
    validate_manifest(manifest)
    if expected_fingerprint is not None and manifest["tower_fingerprint"] != expected_fingerprint:
        raise _fail(f"{MANIFEST} field 'tower_fingerprint'",
                    f"{manifest['tower_fingerprint']!r} does not match the serving tower "
                    f"{expected_fingerprint!r}")
    n, d, n_lists = manifest["count"], manifest["dim"], manifest["ivf_lists"]
    files = manifest["files"]
    codes = _load_array(directory, "codes.npy", files["codes.npy"], np.dtype(np.int8), (n, d), mmap=True)
    # mapped too: every process serving this version (instances, two versions in a swap) shares their pages
    scales = _load_array(directory, "scales.npy", files["scales.npy"], np.dtype(np.float32), (n,), mmap=True)
    ids = _load_array(directory, "ids.npy", files["ids.npy"], np.dtype(np.int64), (n,), mmap=True)
    if int(codes.min()) < -QMAX:
        raise _fail("codes.npy", f"contains -128; codes must lie in [-{QMAX}, {QMAX}]")
    if not (np.isfinite(scales).all() and (scales > 0).all()):
        raise _fail("scales.npy", "scales must be finite and > 0")
    _check_ids(ids, IndexLoadError, "ids.npy")
    ivf = None
    if n_lists:
        cents = _load_array(directory, "ivf_centroids.npy", files["ivf_centroids.npy"], np.dtype(np.float32),
                            (n_lists, d))
        offs = _load_array(directory, "ivf_offsets.npy", files["ivf_offsets.npy"], np.dtype(np.int64),
                           (n_lists + 1,))
        if not np.isfinite(cents).all():
            raise _fail("ivf_centroids.npy", "contains NaN or inf")
        if offs[0] != 0 or offs[-1] > n or (np.diff(offs) < 0).any():  # rows past offs[-1]: the tail
            raise _fail("ivf_offsets.npy", f"must start at 0, end at or below count={n} and be non-decreasing")
        ivf = IvfLists(centroids=cents, offsets=offs)
    return Int8Index(codes=codes, scales=scales, ids=ids, manifest=manifest, ivf=ivf)
