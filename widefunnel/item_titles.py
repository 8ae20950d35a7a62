"""Each item's display title (the field the dataset's config names as title), by catalogue id, kept beside the
catalogue in preprocess's version folder, so the CLI and the demo print titles for any dataset without loading
the build's training state."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from widefunnel import layout


def save_titles(folder: Path, catalogue_ids: np.ndarray, titles: Sequence[str]) -> None:
    """One title per catalogue id, in the same order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"item_id": pa.array(np.asarray(catalogue_ids, np.int64)), "title": pa.array(titles, pa.string())})
    pq.write_table(table, Path(folder) / layout.ITEM_TITLES)


def append_titles(old: Path, new: Path, catalogue_ids: np.ndarray, titles: Sequence[str]) -> None:
    """``old``'s titles followed by these (``new``: another version's folder), without a Python object per old
    title."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(Path(old) / layout.ITEM_TITLES)
    added = pa.table({"item_id": pa.array(np.asarray(catalogue_ids, np.int64)), "title": pa.array(titles, pa.string())})
    pq.write_table(pa.concat_tables([table, added.cast(table.schema)]), Path(new) / layout.ITEM_TITLES)


def load_titles(repository: Path, version: int | None = None) -> dict[int, str]:
    """Titles by catalogue id of build ``version`` (default: the served one, else the newest); empty when the
    build has none."""
    import pyarrow.parquet as pq

    folder = Path(repository) / "preprocess"
    chosen = version or layout.served_version(repository) or max(layout.versions(folder), default=None)
    path = folder / str(chosen) / layout.ITEM_TITLES
    if chosen is None or not path.exists():
        return {}
    table = pq.read_table(path)
    return dict(zip(table.column("item_id").to_pylist(), table.column("title").to_pylist(), strict=True))
