"""`widefunnel items add`: new items join the catalogue without retraining.

The serving tower places a new item from its content: the content encoder's embedding of its text (title, year,
genres), its genres and year, no popularity and no id embedding, which is how training saw a share of its items
("cold" dropout, `builders.models.ItemTower`). A build of a dataset of its own (`build --dataset`) takes its new
items in that dataset's format instead (a RecBole atomic `.item` file or Parquet, read and checked by
`widefunnel.dataset.additions`): they get the next internal ids, their fields coded with the build's vocabularies
and statistics (a token it never saw: the out-of-vocabulary code), their text from the build's text fields, and
their values join the field filters (a new brand becomes filterable at once).

Only the new items are computed: the trained weights (`builders.state`) run over their inputs alone, since an
item's embedding reads only its own. Their rows are appended to every per-item table of a new version that
hard-links everything else of the build it grows (`builders.grown_version`), under one new fingerprint; the items
already there do not move. New ids follow the catalogue's (every table grows at its end). `widefunnel swap` (or
`items add --url`) then serves the new version under load, and `widefunnel rollback` goes back.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from widefunnel import layout
from widefunnel import model_configs as mcfg
from widefunnel.arrays import load_table
from widefunnel.builders.models import ItemTower, TowerFeatures, set_features
from widefunnel.builders.state import BuildState, load_state
from widefunnel.builders.train import field_tables_of, item_embeddings, tower_features
from widefunnel.config import dataset_config
from widefunnel.data import Catalogue
from widefunnel.dataset.additions import read_new_items
from widefunnel.dataset.features import code_features
from widefunnel.field_filters import ItemFields, genre_year_fields, item_fields_of
from widefunnel.takedowns import TakedownError, parse_item_id
from widefunnel.validation import shown

logger = logging.getLogger(__name__)

MAX_ITEMS_PER_FILE = 100_000
MAX_TITLE = 500
MAX_LINE = 10_000  # characters in one line of the file
MAX_FILE_BYTES = 64 << 20  # a file of MAX_ITEMS_PER_FILE items is a few MiB; refuse before reading a huge one
MAX_ID_GAP = 1_000_000  # a new id at most this far past the largest one: ids index every item table
YEARS = (1870, 2100)  # or 0 / empty: unknown
FIELDS = ("id", "title", "year", "genres")


OWN_FORMAT = ("a build of a dataset of its own takes new items in that dataset's format: a RecBole atomic .item "
              "file (the item table's header, e.g. 'item_id:token<TAB>brand:token<TAB>price:float ...') or Parquet "
              "with the item table's columns; JSON lines and CSV (id, title, year, genres) are MovieLens' format")


class NewItemsError(ValueError):
    """A file of new items was refused; the message names the line and the field."""


@dataclass(frozen=True)
class NewItem:
    item_id: int
    title: str
    year: int  # 0 = unknown
    genres: tuple[str, ...]

    def text(self) -> str:
        """The content encoder's input, as for the catalogue's items (`data.Catalogue.text`)."""
        return Catalogue.describe(self.title, self.year, self.genres)


def _field(where: str, name: str, why: str) -> NewItemsError:
    return NewItemsError(f"{where}: field '{name}': {why}")


def _item(row: dict, where: str, genre_names: tuple[str, ...]) -> NewItem:
    unknown = set(row) - set(FIELDS)
    if unknown:
        raise NewItemsError(f"{where}: unknown field(s) {sorted(unknown)}; expected {', '.join(FIELDS)}")
    for name in ("id", "title"):
        if row.get(name) in (None, ""):
            raise _field(where, name, "missing")
    raw_id = row["id"]
    if isinstance(raw_id, str):
        try:
            item_id = parse_item_id(raw_id, f"{where}: field 'id'")
        except TakedownError as exc:
            raise NewItemsError(str(exc)) from None
    elif isinstance(raw_id, int) and not isinstance(raw_id, bool) and raw_id > 0:
        item_id = raw_id
    else:
        raise _field(where, "id", f"must be a positive integer, got {shown(raw_id)}")
    title = row["title"]
    if not isinstance(title, str) or not title.strip():
        raise _field(where, "title", "must be non-empty text")
    if len(title) > MAX_TITLE:
        raise _field(where, "title", f"longer than {MAX_TITLE} characters")
    year = row.get("year")
    if year in (None, "", 0, "0"):
        year = 0
    elif isinstance(year, bool) or not (isinstance(year, int) or (isinstance(year, str) and year.isascii()
                                                                  and year.isdigit())):
        raise _field(where, "year", f"must be a year or empty, got {shown(year)}")
    else:
        year = int(year)
        if not YEARS[0] <= year <= YEARS[1]:
            raise _field(where, "year", f"{year} outside {YEARS[0]}..{YEARS[1]}")
    genres = row.get("genres") or []
    if isinstance(genres, str):
        genres = [g for g in genres.split("|") if g.strip()]
    if not isinstance(genres, list) or not all(isinstance(g, str) for g in genres):
        raise _field(where, "genres", "must be a list of genre names (or 'A|B' in CSV)")
    genres = [g.strip() for g in genres]
    bad = [g for g in genres if g not in genre_names]
    if bad:
        raise _field(where, "genres", f"unknown genre(s) {bad}; known: {', '.join(genre_names)}")
    return NewItem(item_id, title.strip(), year, tuple(dict.fromkeys(genres)) or ("unknown",))


def _rows(text: str, source: str):
    """(where, row) for each record: JSON lines when the first record starts with '{', else CSV with a header."""
    lines = text.splitlines()
    for number, line in enumerate(lines, 1):
        if len(line) > MAX_LINE:
            raise NewItemsError(f"{source}:{number}: line longer than {MAX_LINE} characters")
    first = next((line for line in lines if line.strip()), "")
    if not first:
        return
    if first.lstrip().startswith("{"):
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (ValueError, RecursionError) as exc:
                raise NewItemsError(f"{source}:{number}: not a JSON object ({exc})") from None
            if not isinstance(row, dict):
                raise NewItemsError(f"{source}:{number}: not a JSON object")
            yield f"{source}:{number}", row
        return
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in reader.fieldnames or []]
    if "id" not in header or "title" not in header:
        raise NewItemsError(f"{source}:1: CSV needs a header with {', '.join(FIELDS)} (or use JSON lines)")
    reader.fieldnames = header
    for row in reader:
        if None in row:
            raise NewItemsError(f"{source}:{reader.line_num}: more values than the header's {len(header)} columns")
        yield f"{source}:{reader.line_num}", {k: v.strip() if isinstance(v, str) else v for k, v in row.items()
                                              if not (k not in FIELDS and v in (None, ""))}


def decode_items_file(data: bytes, source: str) -> str:
    """The file's bytes as UTF-8 text. NewItemsError names the line of the first byte that is not UTF-8 and the
    field that holds it (found by parsing the line with the bad bytes replaced), or its column when the line does
    not parse."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        start, bad = exc.start, data[exc.start]
    number = data.count(b"\n", 0, start) + 1
    where = f"{source}:{number}"
    column = start - (data.rfind(b"\n", 0, start) + 1) + 1
    field = None
    try:
        for at, row in _rows(data.decode("utf-8", "replace"), source):
            if at == where:
                field = next((k for k, v in row.items() if "\ufffd" in f"{k}{v}"), None)
                break
    except NewItemsError:
        pass
    place = f"field '{field}'" if field else ("the CSV header" if number == 1 and not data.lstrip().startswith(b"{")
                                              else f"column {column}")
    raise NewItemsError(f"{where}: {place}: not UTF-8 (byte 0x{bad:02x})")


def parse_new_items(text: str, source: str, served: ServedCatalogue, genre_names: tuple[str, ...]) -> list[NewItem]:
    """Validate a file of new items against the catalogue they join; NewItemsError names the line and field.
    New ids follow the catalogue's: every table is indexed by id and grows only at its end."""
    items: list[NewItem] = []
    seen: dict[int, str] = {}
    largest = served.table_size - 1
    limit = served.table_size + MAX_ID_GAP
    for where, row in _rows(text, source):
        item = _item(row, where, genre_names)
        if served.known(item.item_id):
            raise _field(where, "id", f"{item.item_id} is already in the catalogue")
        if item.item_id in seen:
            raise _field(where, "id", f"{item.item_id} also on {seen[item.item_id]}")
        if item.item_id <= largest:
            raise _field(where, "id", f"{item.item_id} is below the catalogue's largest id {largest}: new items take "
                                      f"ids past it (every item table grows at its end)")
        if item.item_id >= limit:
            raise _field(where, "id", f"{item.item_id} is more than {MAX_ID_GAP} past the largest id "
                                      f"{largest} (ids index every item table)")
        seen[item.item_id] = where
        items.append(item)
        if len(items) > MAX_ITEMS_PER_FILE:
            raise NewItemsError(f"{where}: more than {MAX_ITEMS_PER_FILE} items in one file")
    if not items:
        raise NewItemsError(f"{source}: no items")
    return sorted(items, key=lambda i: i.item_id)


@dataclass(frozen=True)
class ServedCatalogue:
    """The catalogue of the build that grows, as its files give it (no pass over its items)."""

    table_size: int  # rows of every table by internal id (row 0 pads)
    catalogue: np.ndarray  # sorted external ids (`layout.CATALOGUE_FILE`)
    fields: ItemFields | None  # the filterable fields (`layout.ITEM_FIELDS`), mapped

    @classmethod
    def load(cls, folder: Path) -> ServedCatalogue:
        """``folder``: preprocess's version folder."""
        fields = folder / layout.ITEM_FIELDS
        if fields.is_file():
            raise NewItemsError(f"{fields}: a build written before tables grew in place; rebuild once to add items")
        catalogue = np.asarray(load_table(folder / layout.CATALOGUE_FILE))
        ids = folder / layout.ITEM_IDS  # absent: the ids are the internal ids (MovieLens), the largest ends the table
        size = len(load_table(ids)) if ids.is_file() else int(catalogue[-1]) + 1 if len(catalogue) else 1
        return cls(size, catalogue, ItemFields.load(fields) if fields.is_dir() else None)

    def known(self, external: int) -> bool:
        pos = int(np.searchsorted(self.catalogue, external))
        return pos < len(self.catalogue) and int(self.catalogue[pos]) == external


@dataclass(frozen=True)
class Additions:
    """New items, checked and placed: internal ids past the served table (ascending), their catalogue ids,
    titles and encoder texts, their filterable fields (row 0 = the table's next row) and a function from their
    content embeddings to the tower's inputs for them (row 0 pads, row j + 1 is item j)."""

    internal: np.ndarray  # int64 [k]
    external: np.ndarray  # int64 [k]
    titles: list[str]
    texts: list[str]
    fields: ItemFields | None
    features: Callable[[np.ndarray], TowerFeatures]

    def table_size(self) -> int:
        return int(self.internal[-1]) + 1


def _content_rows(items: int) -> np.ndarray:
    """Each tower row's content row: item j (row j + 1) has content row j; row 0, the pad, takes item 0's (it is
    never read)."""
    return np.concatenate([[0], np.arange(items)]).astype(np.int64)


def movielens_additions(items: list[NewItem], served: ServedCatalogue, state: BuildState) -> Additions:
    """MovieLens' new items (``items``, ascending ids past the table): their tower inputs from their title, year
    and genres, no popularity and no id embedding (zero, and not `known`), as training's cold items."""
    ids = np.array([i.item_id for i in items], np.int64)
    local = ids - served.table_size  # row 0 of the fields is the table's next row
    size = int(local[-1]) + 1
    years = np.zeros(size, np.int64)
    years[local] = [i.year for i in items]
    fields = genre_year_fields(dict(zip(local.tolist(), (i.genres for i in items))), years, state.genre_names, size)
    mini = Catalogue(np.arange(1, len(items) + 1), {}, np.array([0, *(i.year for i in items)], np.int64),
                     {j + 1: i.genres for j, i in enumerate(items)}, state.genre_names)
    last_bucket = state.tower.year.num_embeddings - 1  # a year past training's last bucket takes it

    def features(content: np.ndarray) -> TowerFeatures:
        f = tower_features(mini, np.zeros(len(items) + 1), content, _content_rows(len(items)),
                           state.cfg["towers"]["min_id_count"])
        return replace(f, year_bucket=f.year_bucket.clamp(max=last_bucket))

    return Additions(ids, ids, [i.title for i in items], [i.text() for i in items], fields, features)


def own_additions(file: Path, served: ServedCatalogue, state: BuildState) -> Additions:
    """A dataset's own new items, read and checked in its own format (`dataset.additions.read_new_items`): the
    next internal ids, fields coded with the build's vocabularies and statistics (a token it never saw: the
    out-of-vocabulary code), texts from the build's text fields."""
    if file.suffix.lower() in (".jsonl", ".json", ".csv"):
        raise NewItemsError(f"{file}: {OWN_FORMAT}")
    if state.coding is None:
        raise NewItemsError(f"{file}: this build was written before `items add` took a dataset's own items: its "
                            f"state does not keep how its item fields were coded (vocabularies, float means and "
                            f"scales); rebuild it once with `widefunnel build --dataset` to add items to it")
    new = read_new_items(file, state.coding, dataset_config(state.cfg), served.catalogue, MAX_ITEMS_PER_FILE)
    k = len(new.ids)
    internal = served.table_size + np.arange(k, dtype=np.int64)
    fields = item_fields_of(new.items.columns, np.arange(k), k) if served.fields is not None else None
    coded = code_features(new.items, state.coding.fields)
    tower = state.tower

    def features(content: np.ndarray) -> TowerFeatures:
        bags, floats, rows = field_tables_of(coded)
        if rows != tower.field_embedding.num_embeddings or len(bags) != tower.fields:
            raise ValueError(f"new items coded into {rows} field rows, the tower has "
                             f"{tower.field_embedding.num_embeddings}")
        return TowerFeatures(torch.zeros(k + 1, tower.genre.in_features), torch.zeros(k + 1, dtype=torch.int64),
                             torch.zeros(k + 1, tower.dense.shape[1]),
                             torch.from_numpy(np.asarray(content, np.float32)), torch.from_numpy(_content_rows(k)),
                             torch.zeros(k + 1), bags, floats, rows)

    return Additions(internal, np.asarray(new.ids, np.int64), new.titles, new.texts, fields, features)


@torch.no_grad()
def embed_new(tower: ItemTower, features: TowerFeatures) -> list[np.ndarray]:
    """Each head's embeddings of the new items (``features``: theirs alone, row 0 padding), by the trained
    weights: the rows a full pass over the grown catalogue would give them, since an item's embedding reads
    only its own inputs. ``tower`` is changed (its per-item tables become the new items')."""
    set_features(tower, features)
    rows = features.genres.shape[0]
    tower.id_embedding = torch.nn.Embedding.from_pretrained(torch.zeros(rows, tower.id_embedding.embedding_dim),
                                                            freeze=True)
    return item_embeddings(tower.eval(), np.arange(1, rows, dtype=np.int64))


@dataclass(frozen=True)
class AddResult:
    version: int
    from_version: int
    fingerprint: str
    added: list[int]
    seconds: float
    bytes_written: int


def add_items(repository: Path, file: Path, from_version: int | None = None) -> AddResult:
    """Write a new version of every step with the items of ``file`` added to build ``from_version`` (default: the
    newest on disk). MovieLens takes JSON lines or CSV; a dataset of its own its own format (an atomic `.item`
    file or Parquet). Only the new items' rows are computed and written: each per-item table of the new version
    is the old one's file with rows appended (`builders.grown_version`). Nothing is served until a swap; a
    refused file writes nothing."""
    from widefunnel.builders.grown_version import write_grown_version
    from widefunnel.builders.teacher import encode_texts

    start = time.monotonic()
    file = Path(file)
    size = file.stat().st_size
    if size > MAX_FILE_BYTES:
        raise NewItemsError(f"{file}: {size} bytes, more than {MAX_FILE_BYTES} (split it; at most "
                            f"{MAX_ITEMS_PER_FILE} items per file)")
    repository = Path(repository)
    builds = layout.complete_versions(repository, mcfg.STEP_MODELS)
    source = from_version or max(builds, default=0)
    if source not in builds:
        raise FileNotFoundError(f"{repository}: no complete build {source or ''} to add items to (on disk: {builds})")
    state = load_state(repository / "query_tower" / str(source) / layout.BUILD_STATE_FILE)
    served = ServedCatalogue.load(repository / "preprocess" / str(source))
    if state.own:
        additions = own_additions(file, served, state)
    else:
        text = decode_items_file(file.read_bytes(), str(file))
        additions = movielens_additions(parse_new_items(text, str(file), served, state.genre_names), served, state)
    content = encode_texts(additions.texts, state.cfg["teacher"]["batch_size"],
                           int8=state.cfg["teacher"].get("int8", False))
    features = additions.features(content)
    tables = embed_new(state.tower, features)
    record = {k: v for k, v in layout.read_builds(repository).get(str(source), {}).items()
              if k == "synthetic_items"}  # still in the catalogue, still never counted in quality metrics
    added = sorted(additions.external.tolist())
    record |= {"items": len(served.catalogue) + len(added),
               "added_items": {"from_version": source, "count": len(added), "first_ids": added[:100]}}
    version, fingerprint, written = write_grown_version(repository, source, state.cfg, served, additions, features,
                                                        tables, record)
    logger.info("version %d: %d items added to build %d (%d bytes written)", version, len(added), source, written)
    return AddResult(version, source, fingerprint, added, time.monotonic() - start, written)
