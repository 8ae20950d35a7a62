"""Each item's display title (the field the dataset's config names as title), by catalogue id, kept beside the
catalogue in preprocess's version folder, so the CLI and the demo print titles for any dataset without loading
the build's training state."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from widefunnel import layout


def save_titles(folder: Path, catalogue_ids: np.ndarray, titles: Sequence[str], part: int = 0) -> Path:
    """One title per catalogue id, in the same order: part ``part`` of the version folder's titles."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(folder) / layout.ITEM_TITLES / f"{part}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({"item_id": pa.array(np.asarray(catalogue_ids, np.int64)), "title": pa.array(titles, pa.string())})
    pq.write_table(table, path)
    return path


def _parts(folder: Path) -> list[Path]:
    return sorted((Path(folder) / layout.ITEM_TITLES).glob("*.parquet"), key=lambda p: int(p.stem))


def add_titles(old: Path, new: Path, catalogue_ids: np.ndarray, titles: Sequence[str]) -> Path:
    """``new`` (a version grown from ``old``: `items add`) gets ``old``'s titles, hard-linked, and a part of its own
    with these; that part's path."""
    parts = _parts(old)
    for part in parts:
        layout.link_or_copy(part, Path(new) / layout.ITEM_TITLES / part.name)
    return save_titles(new, catalogue_ids, titles, len(parts))


def load_titles(repository: Path, version: int | None = None) -> dict[int, str]:
    """Titles by catalogue id of build ``version`` (default: the served one, else the newest); empty when the
    build has none."""
    import pyarrow.parquet as pq

    folder = Path(repository) / "preprocess"
    chosen = version or layout.served_version(repository) or max(layout.versions(folder), default=None)
    if chosen is None:
        return {}
    out: dict[int, str] = {}
    for part in _parts(folder / str(chosen)):
        table = pq.read_table(part)
        out.update(zip(table.column("item_id").to_pylist(), table.column("title").to_pylist(), strict=True))
    return out
