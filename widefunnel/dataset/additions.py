"""Items added to a built catalogue of your own (`widefunnel items add`), in the dataset's own format.

The file is read by the dataset's own readers (`atomic.read_atomic_table` for a RecBole `.item` file,
`parquet.read_parquet_table` for Parquet), so a value that does not parse is refused naming the file, the line
and the field exactly as the build's reader would; then it is checked against the build's item table
(`ItemCoding`, kept in the build state): the same id field, every field of the build with the same type and no
other, ids that are neither in the catalogue nor repeated. Nothing here writes anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from widefunnel.dataset.atomic import read_atomic_table
from widefunnel.dataset.config import DatasetConfig
from widefunnel.dataset.errors import DatasetError
from widefunnel.dataset.features import FieldCoding, ItemFeatures
from widefunnel.dataset.ids import first_true
from widefunnel.dataset.parquet import read_parquet_table
from widefunnel.dataset.raw import RawTable
from widefunnel.dataset.schema import ITEM_ROLES, Kind
from widefunnel.dataset.table import Dataset, Items, encode_items, index_items, item_strings, item_text

PARQUET_MAGIC = b"PAR1"


@dataclass(frozen=True)
class ItemCoding:
    """A build's item table as items added later must match it: the id field, every other field with how the
    tower coded it (build order), and the fields the content text and the titles came from."""

    id_field: str
    fields: tuple[FieldCoding, ...]
    text_fields: tuple[str, ...]
    title_field: str

    @classmethod
    def of(cls, dataset: Dataset, features: ItemFeatures) -> ItemCoding:
        coded = {f.name for f in features.coding}
        id_field = dataset.field("item_id")
        uncoded = [f.name for f in dataset.item_schema if f.name != id_field and f.name not in coded]
        if uncoded:  # every field is a feature today; a skipped one would need its kind kept here
            raise ValueError(f"item fields {uncoded} have no tower coding")
        return cls(id_field, features.coding, dataset.text_fields, dataset.title_field)

    def kinds(self) -> dict[str, Kind]:
        return {f.name: f.kind for f in self.fields}

    def to_state(self) -> dict:
        return {"id_field": self.id_field, "fields": [f.to_state() for f in self.fields],
                "text_fields": list(self.text_fields), "title_field": self.title_field}

    @classmethod
    def from_state(cls, state: dict) -> ItemCoding:
        return cls(state["id_field"], tuple(FieldCoding.from_state(f) for f in state["fields"]),
                   tuple(state["text_fields"]), state["title_field"])


@dataclass(frozen=True)
class NewItems:
    """The checked items of one file, sorted by id (the order their internal ids follow)."""

    source: str
    items: Items
    texts: list[str]  # the content encoder's input, as `Dataset.text` made the build's
    titles: list[str]  # the title field, as the build's catalogue keeps it

    @property
    def ids(self) -> np.ndarray:
        return self.items.ids


def is_parquet(path: Path) -> bool:
    """A Parquet file by its name or its first bytes; anything else is read as a RecBole atomic file."""
    path = Path(path)
    if path.suffix == ".parquet":
        return True
    with open(path, "rb") as f:
        return f.read(len(PARQUET_MAGIC)) == PARQUET_MAGIC


def _check_schema(raw: RawTable, coding: ItemCoding) -> None:
    """The file's fields are the build's: none missing, none extra, each of the build's type."""
    build, found = coding.kinds(), {f.name: f.kind for f in raw.schema if f.name != coding.id_field}
    expected = ", ".join([coding.id_field, *build])
    for name, kind in found.items():
        if name not in build:
            raise DatasetError(raw.file, raw.schema_line, name, f"not a field of the build's item table "
                                                                f"(fields: {expected})")
        if kind is not build[name]:
            raise DatasetError(raw.file, raw.schema_line, name, f"{kind.value} here, {build[name].value} in the "
                                                                f"build's item table")
    for name in build:
        if name not in found:
            raise DatasetError(raw.file, raw.schema_line, name, f"missing: the build's item table has this field "
                                                                f"(fields: {expected}); leave a value empty instead")


def read_new_items(path: str | Path, coding: ItemCoding, config: DatasetConfig, catalogue_ids: np.ndarray,
                   max_items: int) -> NewItems:
    """A file of new items (an atomic `.item` file, or Parquet with the same columns) read and checked against
    the build; `DatasetError` names the file, the line and the field. ``catalogue_ids``: the external ids already
    in the catalogue."""
    path = Path(path)
    roles = dict(config.roles) | {"item_id": coding.id_field}
    if is_parquet(path):
        raw = read_parquet_table(path, roles, ITEM_ROLES)
    else:
        raw = read_atomic_table(path, roles, ITEM_ROLES, config.encoding)
    _check_schema(raw, coding)
    if raw.num_rows > max_items:
        raise raw.error(max_items, None, f"more than {max_items} items in one file; split it")
    index, order = index_items(raw, coding.id_field, "this file")
    ids = np.asarray(raw.table.column(coding.id_field).to_numpy(), np.int64)
    present = first_true(np.isin(ids, np.asarray(catalogue_ids, np.int64)))
    if present is not None:
        raise raw.error(present, coding.id_field, f"item id {ids[present]} is already in the catalogue")
    columns = encode_items(raw, coding.id_field, order)
    titles = [t.strip() for t in item_strings(columns[coding.title_field])]
    return NewItems(str(path), Items(index, columns), item_text(columns, coding.text_fields), titles)
