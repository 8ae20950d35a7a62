"""The model repository's layout on disk: one owner for every fact about folders, versions and build records.

A model is `<repository>/<model>/config.pbtxt` beside numbered version folders. A version is written under a
non-numeric staging name (`.<version>.partial`, which Triton ignores) and renamed into place, so a server never
sees half a version. `builds.json` records each build's tower fingerprint; an ANN model's config parameter
`tower_fingerprints` (`"1=abc;2=def"`) names the fingerprint each version's index must carry. Plugin files
(`plugins/<name>/model.py`) ship as package data of `widefunnel.plugins`.
"""

from __future__ import annotations

import importlib.resources
import json
import os
import shutil
import time
from collections.abc import Iterable
from pathlib import Path

BUILDS_FILE = "builds.json"
TAKEDOWNS_FILE = "takedowns.json"  # items taken down, for every version (widefunnel.takedowns)
CONFIG_FILE = "config.pbtxt"
# A build's training state (builders.state), in its query tower's version folder: `items add` grows it.
BUILD_STATE_FILE = "build_state.pt"
FINGERPRINTS_PARAMETER = "tower_fingerprints"
INDEX_DIR = "index"  # an ANN version's int8 index (ann.index.save_index), in `<model>/<version>/`
_FINGERPRINT_MASK = 0x7FFF_FFFF_FFFF_FFFF


def fingerprint_hex(value: int) -> str:
    """A build's fingerprint in its text form (16 hex digits, top bit clear): what configs, builds.json and the
    `fingerprint` output carry."""
    return f"{int(value) & _FINGERPRINT_MASK:016x}"


def fingerprint_int(fingerprint: str) -> int:
    """The text fingerprint as the non-negative int64 that steps emit as FINGERPRINT."""
    return int(fingerprint, 16) & _FINGERPRINT_MASK


def plugin_file(name: str, filename: str = "model.py") -> Path:
    """`plugins/<name>/<filename>`, wherever the package is installed."""
    return Path(str(importlib.resources.files("widefunnel.plugins").joinpath(name, filename)))


# A version's item ids: the external id (the catalogue's, what clients send and get) of each internal id (the dense
# 1..N every table of the funnel is indexed by), in the folders of the steps at the client edges: preprocess,
# quota_merge and the ANN steps (takedowns, CANDIDATE_ITEM_ID). Absent: internal == external (no table).
ITEM_IDS = "item_ids.npy"
ONNX_FILE = "model.onnx"  # an ONNX step's graph in its version folder (Triton's default_model_filename)
ONNX_DATA_FILE = "model.onnx.data"  # its tables (ONNX external data), mapped read-only by ONNX Runtime
CATALOGUE_FILE = "catalogue.npy"  # preprocess's sorted external ids: what a request may name
ITEM_TITLES = "item_titles"  # preprocess's display title per catalogue id, Parquet parts (widefunnel.item_titles)
ITEM_FIELDS = "item_fields"  # a build's filterable item fields, a folder of .npy (field_filters.ItemFields)
# A version folder's rows of each table it grew by appending (`arrays.append_rows`): those tables' files are shared
# with the version they grew from, whose .npy headers still give the rows it was written with.
TABLE_ROWS = "table_rows.json"
SITE_BOOTSTRAP = "widefunnel_site.py"  # imported first by every Python model (plugins/widefunnel_site.py)


def head_file(head: str, name: str) -> str:
    """A head's index file (``name``: the ANN index's codes, scales or row map) as linked into the folder of a
    step that reads both heads' tables (the query tower, the scorer)."""
    return f"{head}_{name}"


def repository_of(model_dir: str | Path) -> Path:
    """The repository a model folder belongs to (Triton hands a model its folder as `model_repository`)."""
    return Path(os.path.normpath(model_dir)).parent


def install_plugin(name: str, folder: Path) -> None:
    """Put `plugins/<name>/model.py` into `folder` (a backend folder or a model version), with the bootstrap
    it imports first."""
    folder = Path(folder)
    shutil.copy2(plugin_file(name), folder / "model.py")
    shutil.copy2(Path(str(importlib.resources.files("widefunnel.plugins").joinpath(SITE_BOOTSTRAP))),
                 folder / SITE_BOOTSTRAP)


def link_or_copy(source: Path, target: Path) -> Path:
    """``target`` as a hard link of ``source`` (one copy on disk and in the page cache), or a copy where the
    filesystem cannot link; ``target``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
    return target


def versions(model_dir: Path) -> list[int]:
    """The numbered version folders of one model, ascending (staging folders are not versions)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def complete_versions(repository: Path, models: Iterable[str]) -> list[int]:
    """Versions that exist for every one of ``models`` (the builds a swap can go to)."""
    per_model = [set(versions(Path(repository) / m)) for m in models]
    return sorted(set.intersection(*per_model)) if per_model else []


def next_version(repository: Path, models: Iterable[str]) -> int:
    return 1 + max([0] + [v for m in models for v in versions(Path(repository) / m)])


def atomic_write(path: Path, text: str) -> None:
    """Replace a file in one rename; an unchanged file is left alone (Triton reloads every version of a model
    whose folder changed)."""
    path = Path(path)
    if path.is_file() and path.read_text() == text:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def stage_version(model_dir: Path, version: int) -> Path:
    """An empty staging folder for ``version``; `commit_version` renames it into place."""
    staged = Path(model_dir) / f".{version}.partial"
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir(parents=True)
    return staged


def commit_version(staged: Path, version: int) -> Path:
    final = staged.parent / str(version)
    if final.exists():
        raise FileExistsError(f"{final} already exists; versions are immutable")
    os.rename(staged, final)
    return final


def prune_versions(model_dir: Path, keep: set[int]) -> None:
    for v in versions(model_dir):
        if v not in keep:
            shutil.rmtree(Path(model_dir) / str(v))


def versions_to_keep(on_disk: Iterable[int], keep: int, served: int | None) -> set[int]:
    """Of one model's versions on disk, those a prune keeps: the newest ``keep``, the served version and the one a
    rollback from it goes to (the newest older one). A server restarts a dead stub from its version folder, so
    the served version is never pruned, however many builds were written since without a swap."""
    on_disk = sorted(on_disk)
    kept = set(on_disk[-keep:]) if keep > 0 else set()
    if served is not None:
        kept.add(served)
        older = [v for v in on_disk if v < served]
        if older:
            kept.add(older[-1])
    return kept & set(on_disk)


def read_builds(repository: Path) -> dict[str, dict]:
    path = Path(repository) / BUILDS_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def record_build(repository: Path, version: int, fingerprint: str, target: str, extra: dict | None = None) -> None:
    """``extra``: more facts about the build (e.g. its synthetic items), kept beside the fingerprint."""
    builds = read_builds(repository)
    builds[str(version)] = {"fingerprint": fingerprint, "target": target, "time": int(time.time())} | (extra or {})
    atomic_write(Path(repository) / BUILDS_FILE, json.dumps(builds, indent=2, sort_keys=True))


# In a build's record: when it became the served build (ns). The newest stamp is the served build.
SERVED_AT = "served_at"


def record_served(repository: Path, version: int) -> None:
    """``version`` is served from now on: written by `swap` / `rollback` and `serve` (and by a build that finds no
    record, for the version a server started earlier serves), read by every prune."""
    builds = read_builds(repository)
    builds.setdefault(str(version), {})[SERVED_AT] = time.time_ns()
    atomic_write(Path(repository) / BUILDS_FILE, json.dumps(builds, indent=2, sort_keys=True))


def served_version(repository: Path) -> int | None:
    """The version last recorded as served (``record_served``); None when none ever was."""
    stamped = [(int(r[SERVED_AT]), int(v)) for v, r in read_builds(repository).items() if SERVED_AT in r]
    return max(stamped)[1] if stamped else None


def build_fingerprint(repository: Path, version: int) -> str | None:
    return read_builds(repository).get(str(version), {}).get("fingerprint")


def parse_fingerprints(text: str) -> dict[str, str]:
    """'1=abc;2=def' -> {'1': 'abc', '2': 'def'}: the expected tower fingerprint of each version."""
    out = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        version, sep, fp = part.partition("=")
        if not sep or not version.strip().isdigit() or not fp.strip():
            raise ValueError(f"{FINGERPRINTS_PARAMETER}: malformed entry {part!r}; expected 'VERSION=FINGERPRINT'")
        out[version.strip()] = fp.strip()
    return out


def format_fingerprints(entries: dict[str, str], keep: Iterable[int | str] | None = None) -> str:
    """{'2': 'def', '1': 'abc'} -> '1=abc;2=def' (by version; only versions in ``keep`` when given)."""
    kept = None if keep is None else {str(v) for v in keep}
    return ";".join(f"{v}={fp}" for v, fp in sorted(entries.items(), key=lambda e: int(e[0]))
                    if kept is None or v in kept)
