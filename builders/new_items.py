"""`widefunnel items add`: new items join the catalogue without retraining.

The serving tower places a new item from its content: the content encoder's embedding of its text (title, year,
genres), its genres and year, no popularity and no id embedding, which is how training saw a share of its items
("cold" dropout, `builders.models.ItemTower`). A build of a dataset of its own (`build --dataset`) takes its new
items in that dataset's format instead (a RecBole atomic `.item` file or Parquet, read and checked by
`widefunnel.dataset.additions`): they get the next internal ids, their fields coded with the build's vocabularies
and statistics (a token it never saw: the out-of-vocabulary code), their text from the build's text fields, and
their values join the field filters (a new brand becomes filterable at once).

Every step that holds item data gets a new version written from the served build's state (`builders.state`):
query tower, both indexes and filter tables, both rerankers' item tables, the scorer's item table, the catalogue;
all under one new tower fingerprint. The trained weights are the
served build's, so the embeddings of the items already there do not move. `widefunnel swap` (or `items add
--url`) then serves the new version under load, and `widefunnel rollback` goes back.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from widefunnel import layout
from widefunnel import model_configs as mcfg
from widefunnel.builders.export import tower_fingerprint
from widefunnel.builders.models import ItemTower, TowerFeatures, set_features
from widefunnel.builders.state import BuildState, load_state, tower_features_of
from widefunnel.builders.train import (
    TrainedFunnel,
    field_tables_of,
    scorer_features,
    tables_and_indexes,
    tower_features,
)
from widefunnel.config import dataset_config
from widefunnel.data import Catalogue
from widefunnel.dataset.additions import NewItems, read_new_items
from widefunnel.dataset.features import ItemFeatures, code_features
from widefunnel.field_filters import ItemFields, grown_fields
from widefunnel.genres import SourcedGenres
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


def parse_new_items(text: str, source: str, catalogue: Catalogue) -> list[NewItem]:
    """Validate a file of new items against the catalogue they join; NewItemsError names the line and field."""
    if catalogue.external_ids is not None:  # new items' fields follow MovieLens' (title, year, genres)
        raise NewItemsError(f"{source}: {OWN_FORMAT}")
    items: list[NewItem] = []
    seen: dict[int, str] = {}
    known = set(catalogue.item_ids.tolist())
    limit = catalogue.table_size + MAX_ID_GAP
    for where, row in _rows(text, source):
        item = _item(row, where, catalogue.genre_names)
        if item.item_id in known:
            raise _field(where, "id", f"{item.item_id} is already in the catalogue")
        if item.item_id in seen:
            raise _field(where, "id", f"{item.item_id} also on {seen[item.item_id]}")
        if item.item_id >= limit:
            raise _field(where, "id", f"{item.item_id} is more than {MAX_ID_GAP} past the largest id "
                                      f"{catalogue.table_size - 1} (ids index every item table)")
        seen[item.item_id] = where
        items.append(item)
        if len(items) > MAX_ITEMS_PER_FILE:
            raise NewItemsError(f"{where}: more than {MAX_ITEMS_PER_FILE} items in one file")
    if not items:
        raise NewItemsError(f"{source}: no items")
    return items


def grow_catalogue(catalogue: Catalogue, items: list[NewItem]) -> Catalogue:
    ids = np.array([i.item_id for i in items], dtype=np.int64)
    size = max(catalogue.table_size, int(ids.max()) + 1)
    years = np.zeros(size, dtype=np.int64)
    years[: catalogue.table_size] = catalogue.years
    years[ids] = [i.year for i in items]
    titles = dict(catalogue.titles) | {i.item_id: i.title for i in items}
    added = {i.item_id: i.genres for i in items}
    # a catalogue-scale build's genres stay sourced: no dict entry per synthetic item
    genres = catalogue.genres.grown(added) if isinstance(catalogue.genres, SourcedGenres) else (
        dict(catalogue.genres) | added)
    return replace(catalogue, item_ids=np.sort(np.concatenate([catalogue.item_ids, ids])), titles=titles,
                   years=years, genres=genres)


@torch.no_grad()
def grow_tower(tower: ItemTower, catalogue: Catalogue, items: list[NewItem], content: np.ndarray,
               min_id_count: int) -> ItemTower:
    """The tower with rows for ``items`` (``catalogue`` already grown; ``content`` their encoder embeddings):
    content rows appended, no popularity, no id embedding (zero, and not `known`). Old rows are unchanged."""
    ids = torch.from_numpy(np.array([i.item_id for i in items], dtype=np.int64))
    old = tower_features_of(tower)
    size, before = catalogue.table_size, old.genres.shape[0]
    rows = np.zeros(size, dtype=np.int64)
    rows[ids.numpy()] = old.content.shape[0] + np.arange(len(items))
    mine = tower_features(catalogue, np.zeros(size), content, rows, min_id_count)  # rows of the new items only
    last_bucket = tower.year.num_embeddings - 1  # a year past training's last bucket takes it (scaled year says more)

    def merged(old_t: torch.Tensor, new_t: torch.Tensor) -> torch.Tensor:
        out = torch.cat([old_t, torch.zeros((size - before, *old_t.shape[1:]), dtype=old_t.dtype)])
        out[ids] = new_t[ids].to(old_t.dtype)
        return out

    set_features(tower, replace(mine, genres=merged(old.genres, mine.genres),
                                year_bucket=merged(old.year_bucket, mine.year_bucket.clamp(max=last_bucket)),
                                dense=merged(old.dense, mine.dense), known=merged(old.known, mine.known),
                                content_row=merged(old.content_row, mine.content_row),
                                content=torch.cat([old.content, torch.from_numpy(content).to(old.content.dtype)])))
    weight = tower.id_embedding.weight
    tower.id_embedding = torch.nn.Embedding.from_pretrained(
        torch.cat([weight, torch.zeros(size - before, weight.shape[1])]), freeze=True)
    return tower.eval()


def grown_funnel(state: BuildState, items: list[NewItem], content: np.ndarray) -> tuple[TrainedFunnel, Catalogue]:
    """The served build's funnel over its catalogue plus ``items``: tables, indexes and scorer table recomputed
    with the trained weights (which do not change)."""
    cfg = state.cfg
    catalogue = grow_catalogue(state.catalogue, items)
    tower = grow_tower(state.tower, catalogue, items, content, cfg["towers"]["min_id_count"])
    tables, indexes = tables_and_indexes(tower, catalogue, cfg, tower_fingerprint)
    scorer = state.scorer(scorer_features(tower_features_of(tower), tables))
    return TrainedFunnel(tower, tables, indexes, state.rerankers, scorer), catalogue


def grow_own_catalogue(catalogue: Catalogue, new: NewItems, fields: ItemFields | None) -> Catalogue:
    """``catalogue`` (a dataset of its own) with ``new`` at the next internal ids, in their id order: external
    ids, titles, texts and the filterable fields (``fields``: the build's, None when it has none) grow."""
    internal = catalogue.table_size + np.arange(len(new.ids), dtype=np.int64)
    size = catalogue.table_size + len(new.ids)
    keys = internal.tolist()
    return replace(catalogue, item_ids=np.concatenate([catalogue.item_ids, internal]),
                   titles=dict(catalogue.titles) | dict(zip(keys, new.titles)), years=np.zeros(size, np.int64),
                   texts=dict(catalogue.texts or {}) | dict(zip(keys, new.texts)),
                   external_ids=np.concatenate([catalogue.external_ids, new.ids]).astype(np.int64),
                   item_fields=None if fields is None else grown_fields(fields, new.items.columns, internal, size))


@torch.no_grad()
def grow_own_tower(tower: ItemTower, features: ItemFeatures, content: np.ndarray) -> ItemTower:
    """The tower with rows for new items appended after its table (``features``: theirs, coded with the build's
    `FieldCoding`, row 0 padding; ``content``: their encoder embeddings): their fields in the build's embedding
    rows, no popularity, no id embedding (zero, and not `known`). Old rows are unchanged."""
    old = tower_features_of(tower)
    added = len(content)
    bags, floats, rows = field_tables_of(features)
    if rows != old.field_rows or [b.shape[1] for b in bags] != [b.shape[1] for b in old.bags]:
        raise ValueError(f"new items coded into {rows} field rows {[b.shape[1] for b in bags]}, the tower has "
                         f"{old.field_rows} {[b.shape[1] for b in old.bags]}")

    def grown(table: torch.Tensor, rows_of_new: torch.Tensor | None = None) -> torch.Tensor:
        new = torch.zeros((added, *table.shape[1:]), dtype=table.dtype) if rows_of_new is None else rows_of_new
        return torch.cat([table, new.to(table.dtype)])

    set_features(tower, TowerFeatures(
        grown(old.genres), grown(old.year_bucket), grown(old.dense),
        torch.cat([old.content, torch.from_numpy(np.asarray(content, np.float32)).to(old.content.dtype)]),
        grown(old.content_row, old.content.shape[0] + torch.arange(added)), grown(old.known),
        tuple(grown(o, b[1:]) for o, b in zip(old.bags, bags)),
        None if old.floats is None else grown(old.floats, floats[1:]), old.field_rows))
    weight = tower.id_embedding.weight
    tower.id_embedding = torch.nn.Embedding.from_pretrained(
        torch.cat([weight, torch.zeros(added, weight.shape[1])]), freeze=True)
    return tower.eval()


def grown_own_funnel(state: BuildState, new: NewItems, content: np.ndarray, fields: ItemFields | None
                     ) -> tuple[TrainedFunnel, Catalogue]:
    """`grown_funnel` for a dataset of its own: ``new`` read and checked (`dataset.additions.read_new_items`),
    ``content`` their encoder embeddings, ``fields`` the build's filterable fields."""
    catalogue = grow_own_catalogue(state.catalogue, new, fields)
    tower = grow_own_tower(state.tower, code_features(new.items, state.catalogue.coding.fields), content)
    tables, indexes = tables_and_indexes(tower, catalogue, state.cfg, tower_fingerprint)
    scorer = state.scorer(scorer_features(tower_features_of(tower), tables))
    return TrainedFunnel(tower, tables, indexes, state.rerankers, scorer), catalogue


def _own_items(repository: Path, source: int, file: Path, state: BuildState
               ) -> tuple[TrainedFunnel, Catalogue, list[int]]:
    """Build ``source`` of a dataset of its own grown by the items of ``file`` (its own format)."""
    from widefunnel.builders.teacher import encode_texts

    catalogue = state.catalogue
    if file.suffix.lower() in (".jsonl", ".json", ".csv"):
        raise NewItemsError(f"{file}: {OWN_FORMAT}")
    if catalogue.coding is None:
        raise NewItemsError(f"{file}: build {source} was written before `items add` took a dataset's own items: its "
                            f"state does not keep how its item fields were coded (vocabularies, float means and "
                            f"scales); rebuild it once with `widefunnel build --dataset` to add items to it")
    known = catalogue.external_ids[catalogue.external_ids >= 0]
    new = read_new_items(file, catalogue.coding, dataset_config(state.cfg), known, MAX_ITEMS_PER_FILE)
    path = repository / "preprocess" / str(source) / layout.ITEM_FIELDS
    fields = ItemFields.load(path) if path.is_file() else None
    content = encode_texts(new.texts, state.cfg["teacher"]["batch_size"], int8=state.cfg["teacher"].get("int8", False))
    funnel, grown = grown_own_funnel(state, new, content, fields)
    return funnel, grown, sorted(new.ids.tolist())


@dataclass(frozen=True)
class AddResult:
    version: int
    from_version: int
    fingerprint: str
    added: list[int]
    seconds: float


def add_items(repository: Path, file: Path, from_version: int | None = None) -> AddResult:
    """Write a new version of every step with the items of ``file`` added to build ``from_version`` (default: the
    newest on disk). MovieLens takes JSON lines or CSV; a dataset of its own its own format (an atomic `.item`
    file or Parquet). Nothing is served until a swap; a refused file writes nothing."""
    from widefunnel.builders.repository import write_repository
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
    if state.catalogue.external_ids is not None:
        funnel, catalogue, added = _own_items(repository, source, file, state)
    else:
        items = parse_new_items(decode_items_file(file.read_bytes(), str(file)), str(file), state.catalogue)
        content = encode_texts([i.text() for i in items], state.cfg["teacher"]["batch_size"],
                               int8=state.cfg["teacher"].get("int8", False))
        funnel, catalogue = grown_funnel(state, items, content)
        added = sorted(i.item_id for i in items)
    target = mcfg.Target(layout.read_builds(repository).get(str(source), {}).get("target", "cpu"))
    record = {k: v for k, v in layout.read_builds(repository).get(str(source), {}).items()
              if k == "synthetic_items"}  # still in the catalogue, still never counted in quality metrics
    record |= {"items": len(catalogue.item_ids),
               "added_items": {"from_version": source, "count": len(added), "first_ids": added[:100]}}
    version, fingerprint = write_repository(repository, funnel, catalogue, state.cfg, target, record=record)
    logger.info("version %d: %d items added to build %d", version, len(added), source)
    return AddResult(version, source, fingerprint, added, time.monotonic() - start)
