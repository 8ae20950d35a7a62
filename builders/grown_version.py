"""A version grown by `items add`, written without rewriting the build's tables.

Every file of the version it grows from is hard-linked into the new version, except:
- each per-item table (the ANN's codes, scales and ids, each id's row, the external ids, the item fields, the
  scorer's own columns) takes the new items' rows appended in place (`arrays.append_rows`): the new version
  lists how many rows it reads (`layout.TABLE_ROWS`), the old one still reads the rows its headers give;
- the sorted catalogue ids grow the same way where the new ids follow every old one (else they are written
  whole), and the titles take one more Parquet part;
- what is small is written whole: the fields' vocabularies, the index manifests and the four ONNX graphs (each
  table as long as the new version reads it, the new fingerprint stamped: `export.grow_graph`).
So the old version's files never change, deleting it leaves the new one whole (hard links), and the bytes written
are about the new rows. The IVF lists stay the build's: new rows are a tail every IVF search scans.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from widefunnel import layout
from widefunnel import model_configs as mcfg
from widefunnel.ann.index import BASE_FILES, CODES_FILE, MANIFEST, ROWS_FILE, SCALES_FILE, grow_index
from widefunnel.ann.quantize import quantize_checked_rows
from widefunnel.arrays import append_rows, listed_rows, load_table, write_listed_rows
from widefunnel.builders.export import grow_graph, grown_fingerprint
from widefunnel.builders.models import TowerFeatures
from widefunnel.builders.repository import VersionWriter, next_version, publish_version
from widefunnel.field_filters import SCHEMA_FILE, appended_rows
from widefunnel.item_ids import NONE
from widefunnel.item_titles import add_titles
from widefunnel.merge import HEADS

GRAPHS = ("query_tower", *(f"rerank_{h}" for h in HEADS), "composite_scorer")
SCORER_COLUMNS = ("rest_uint8.npy", "rest_float.npy")  # the scorer's own per-item columns (`export.ScorerGraph`)


@dataclass
class _Growth:
    """What the walk over the old version's files has written so far."""

    writer: VersionWriter
    by_inode: dict[int, Path] = field(default_factory=dict)  # an old file -> its new one (links follow it)
    rows: dict[Path, dict[str, int]] = field(default_factory=dict)  # folder -> its grown tables' rows
    appended: list[tuple[Path, int]] = field(default_factory=list)  # (a grown file, its size before)
    written: int = 0

    def _listed(self, target: Path, rows: int | None) -> None:
        if rows is not None:
            self.rows.setdefault(target.parent, {})[target.name] = rows

    def place(self, source: Path, target: Path, tail: np.ndarray | None = None) -> None:
        """``target`` as ``source`` (a link), or ``source`` with ``tail``'s rows appended; a file already placed
        (another link of ``source``'s) is linked again, so one file keeps serving every step that shares it."""
        target.parent.mkdir(parents=True, exist_ok=True)
        inode = os.stat(source).st_ino
        if inode in self.by_inode:
            first = self.by_inode[inode]
            layout.link_or_copy(first, target)
            self._listed(target, self.rows.get(first.parent, {}).get(first.name))
            return
        self.by_inode[inode] = target
        if tail is None:
            layout.link_or_copy(source, target)
            self._listed(target, listed_rows(source.parent).get(source.name))
            return
        rows = len(load_table(source))
        self.appended.append((source, os.path.getsize(source)))
        self.written += append_rows(source, target, rows, tail)
        self._listed(target, rows + len(tail))

    def wrote(self, source: Path, target: Path) -> None:
        """``target`` was written new in place of ``source``: links of ``source`` follow it."""
        self.by_inode[os.stat(source).st_ino] = target
        self.written += os.path.getsize(target)

    def undo(self) -> None:
        """An interrupted add: no staged folder stays, and the files it appended to end where they did, so the
        next add appends to them again."""
        for path, size in self.appended:
            if os.path.getsize(path) > size:
                os.truncate(path, size)
        for staged in self.writer.staged.values():
            shutil.rmtree(staged, ignore_errors=True)


def _role(step: str, rel: str) -> tuple[str, str]:
    """The file a step's file is a link of, in a build (`repository.write_artifacts`): the ANN step's index and row
    table, preprocess's external ids and item fields. A copy of it (a repository copied without its links) grows
    by the same rows."""
    if step.startswith("rerank_") and rel in (CODES_FILE, SCALES_FILE, ROWS_FILE):
        step = f"ann_{step.removeprefix('rerank_')}"
    elif step in ("query_tower", "composite_scorer") and any(rel.startswith(f"{h}_") for h in HEADS):
        head, _, rel = rel.partition("_")
        step = f"ann_{head}"
    elif rel == layout.ITEM_IDS or rel.startswith(f"{layout.ITEM_FIELDS}/"):
        return "preprocess", rel
    if step.startswith("ann_") and rel in (CODES_FILE, SCALES_FILE):
        rel = f"{layout.INDEX_DIR}/{rel}"
    return step, rel


def _scorer_tails(graph: Path, features: TowerFeatures, rows: int, at: np.ndarray) -> dict[str, np.ndarray]:
    """The scorer's own columns (the genre multi-hot as uint8, the rest float32, split as the build split them:
    its graph's `rest_order`) for ``rows`` new table rows, the new items at rows ``at``."""
    import onnx
    import onnx.numpy_helper

    model = onnx.load(str(graph), load_external_data=False)
    inline = {t.name: t for t in model.graph.initializer}
    if "rest_order" not in inline:
        raise ValueError(f"{graph}: a scorer without its own item columns cannot grow")
    order = np.argsort(onnx.numpy_helper.to_array(inline["rest_order"]))  # stored columns -> the table's
    shapes = {t.name: list(t.dims) for t in model.graph.initializer}
    own = ("rest_uint8", "rest_float")
    if missing := [n for n in own if n in shapes and not (graph.parent / f"{n}.npy").is_file()]:
        raise ValueError(f"{graph}: its item columns {missing} are not tables of their own (a build written before "
                         f"tables grew in place); rebuild once to add items")
    small = shapes.get("rest_uint8", [0, 0])[1]
    rest = np.concatenate([features.genres[1:].numpy(), features.dense[1:].numpy()], axis=1)[:, order]
    if small and not np.array_equal(rest[:, :small], np.clip(np.round(rest[:, :small]), 0, 255)):
        raise ValueError(f"{graph}: a new item's whole-number column holds another value")
    out = {}
    for name, part, dtype in (("rest_uint8.npy", rest[:, :small], np.uint8), ("rest_float.npy", rest[:, small:],
                                                                            np.float32)):
        if part.shape[1]:
            tail = np.zeros((rows, part.shape[1]), dtype)
            tail[at] = part.astype(dtype)
            out[name] = tail
    return out


def write_grown_version(repository: Path, source: int, cfg: dict, served, additions, features: TowerFeatures,
                        tables: list[np.ndarray], record: dict) -> tuple[int, str, int]:
    """Version ``source`` grown by ``additions`` (`new_items.Additions`; ``features`` their tower inputs,
    ``tables`` each head's embeddings of them; ``served``: ``source``'s `new_items.ServedCatalogue`), put into
    place as a build is (`repository.publish_version`). -> (version, fingerprint, bytes written)."""
    repository = Path(repository)
    old_fingerprint = layout.build_fingerprint(repository, source)
    if old_fingerprint is None:
        raise ValueError(f"{repository}: build {source} has no fingerprint in {layout.BUILDS_FILE}")
    fingerprint = grown_fingerprint(old_fingerprint, tables)
    version = next_version(repository)
    growth = _Growth(VersionWriter(repository, version))
    try:
        _write(repository, source, growth, served, additions, features, tables, fingerprint, old_fingerprint)
        target = mcfg.Target(layout.read_builds(repository).get(str(source), {}).get("target", "cpu"))
        fields = () if served.fields is None else tuple(served.fields.schema().client_inputs())
        publish_version(repository, growth.writer, cfg, target, fingerprint, tables[0].shape[1],
                        additions.table_size() - 1, fields, record)
    except BaseException:
        growth.undo()
        raise
    return version, fingerprint, growth.written


def _write(repository: Path, source: int, growth: _Growth, served, additions, features: TowerFeatures,
           tables: list[np.ndarray], fingerprint: str, old_fingerprint: str) -> None:
    old = {step: repository / step / str(source) for step in mcfg.STEP_MODELS}
    new = {step: growth.writer.folder(step) for step in mcfg.STEP_MODELS}
    before, size = served.table_size, additions.table_size()
    at = additions.internal - before  # the new items' rows among the appended ones (gaps: no item)

    # first what may refuse the build, before anything is written
    scorer = _scorer_tails(old["composite_scorer"] / layout.ONNX_FILE, features, size - before, at)
    # preprocess: the external ids, the item fields, the catalogue ids and the titles grow
    pre_old, pre_new = old["preprocess"], new["preprocess"]
    external = np.full(size - before, NONE, np.int64)
    external[at] = additions.external
    tails = {("preprocess", layout.ITEM_IDS): external} | {("composite_scorer", n): t for n, t in scorer.items()}
    if (pre_old / layout.ITEM_IDS).exists():  # absent: MovieLens, whose ids are the internal ids, new ones too
        growth.place(pre_old / layout.ITEM_IDS, pre_new / layout.ITEM_IDS, external)
    ids = np.sort(additions.external)
    if not len(served.catalogue) or ids[0] > served.catalogue[-1]:  # past every id: still sorted when appended
        growth.place(pre_old / layout.CATALOGUE_FILE, pre_new / layout.CATALOGUE_FILE, ids)
    else:
        np.save(pre_new / layout.CATALOGUE_FILE, np.sort(np.concatenate([served.catalogue, ids])))
        growth.wrote(pre_old / layout.CATALOGUE_FILE, pre_new / layout.CATALOGUE_FILE)
    growth.written += os.path.getsize(add_titles(pre_old, pre_new, additions.external, additions.titles))
    if served.fields is not None:
        schema, field_tails = appended_rows(served.fields, additions.fields)
        folder = pre_new / layout.ITEM_FIELDS
        for name, tail in field_tails.items():
            tails["preprocess", f"{layout.ITEM_FIELDS}/{name}"] = tail
            growth.place(pre_old / layout.ITEM_FIELDS / name, folder / name, tail)
        schema.save_schema(folder)
        growth.wrote(pre_old / layout.ITEM_FIELDS / SCHEMA_FILE, folder / SCHEMA_FILE)

    # each head's index: its rows appended (the tail of its IVF lists), each id's row in it
    for head, table in zip(HEADS, tables):
        ann_old, ann_new = old[f"ann_{head}"], new[f"ann_{head}"]
        count = json.loads((ann_old / layout.INDEX_DIR / MANIFEST).read_text())["count"]
        codes, scales, _ = quantize_checked_rows(np.asarray(table, np.float32))
        for name in BASE_FILES:  # links of these files elsewhere follow the new ones
            path = ann_old / layout.INDEX_DIR / name
            growth.by_inode[os.stat(path).st_ino] = ann_new / layout.INDEX_DIR / name
            growth.appended.append((path, os.path.getsize(path)))
        growth.written += grow_index(ann_old / layout.INDEX_DIR, ann_new / layout.INDEX_DIR, codes, scales,
                                     additions.internal, fingerprint)
        growth.written += os.path.getsize(ann_new / layout.INDEX_DIR / MANIFEST)
        for name in BASE_FILES:
            growth.rows.setdefault(ann_new / layout.INDEX_DIR, {})[name] = count + len(additions.internal)
        rows = np.zeros(size - before, np.int32)
        rows[at] = count + np.arange(len(at), dtype=np.int32)
        growth.place(ann_old / ROWS_FILE, ann_new / ROWS_FILE, rows)
        tails |= {(f"ann_{head}", f"{layout.INDEX_DIR}/{CODES_FILE}"): codes,
                  (f"ann_{head}", f"{layout.INDEX_DIR}/{SCALES_FILE}"): scales, (f"ann_{head}", ROWS_FILE): rows}

    for step in mcfg.STEP_MODELS:  # the rest: a link of the grown file it is a link of, else a link or grown alone
        for path in sorted(old[step].rglob("*")):
            rel = str(path.relative_to(old[step]))
            target = new[step] / rel
            if path.is_dir() or target.exists() or path.name in (layout.TABLE_ROWS, MANIFEST):
                continue
            if step in GRAPHS and rel == layout.ONNX_FILE:
                continue
            growth.place(path, target, tails.get(_role(step, rel)))
    for folder, rows in growth.rows.items():
        if folder.name != layout.INDEX_DIR:  # an index's manifest gives its rows
            write_listed_rows(folder, rows)
            growth.written += os.path.getsize(folder / layout.TABLE_ROWS)
    for step in GRAPHS:
        grow_graph(old[step] / layout.ONNX_FILE, new[step] / layout.ONNX_FILE, fingerprint, old_fingerprint)
        growth.written += os.path.getsize(new[step] / layout.ONNX_FILE)
