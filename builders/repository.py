"""Writes a Triton model repository: one folder per model, `config.pbtxt` beside numbered versions.

Crash safety: each version folder is written under a non-numeric temporary name (Triton ignores those) and
renamed into place; the ensembles' configs, which pin the step versions, are replaced last, atomically.
So an interrupted build leaves no version that the server would route to. Step models load every version
on disk (`version_policy: all`), which keeps the previous build resident for an instant rollback; the
builder keeps the last `keep_versions` builds.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from widefunnel import layout
from widefunnel import model_configs as mcfg
from widefunnel.ann.index import CODES_FILE, ROWS_FILE, SCALES_FILE, item_rows, save_index
from widefunnel.builders import gpu
from widefunnel.builders.export import (
    Int8Table,
    export_query_tower,
    export_reranker,
    export_scorer,
    tower_fingerprint,
)
from widefunnel.builders.stages import stage
from widefunnel.builders.state import save_state
from widefunnel.builders.train import TrainedFunnel, TrainingData, train_funnel, value_weights
from widefunnel.config import task_names
from widefunnel.data import Catalogue
from widefunnel.item_ids import ItemIds
from widefunnel.item_titles import save_titles
from widefunnel.layout import (
    CONFIG_FILE,
    FINGERPRINTS_PARAMETER,
    atomic_write,
    commit_version,
    format_fingerprints,
    install_plugin,
    parse_fingerprints,
    record_build,
    stage_version,
    versions,
)
from widefunnel.merge import HEADS


@dataclass(frozen=True)
class BuildResult:
    repository: Path
    version: int
    fingerprint: str
    seconds: float


def existing_versions(repository: Path, model: str) -> list[int]:
    return versions(Path(repository) / model)


def next_version(repository: Path) -> int:
    return layout.next_version(repository, mcfg.STEP_MODELS)


class VersionWriter:
    """Stages `<model>/.<version>.partial/` and renames it to `<model>/<version>/` when complete."""

    def __init__(self, repository: Path, version: int):
        self.repository, self.version = repository, version
        self.staged: dict[str, Path] = {}

    def folder(self, model: str) -> Path:
        if model not in self.staged:
            self.staged[model] = stage_version(self.repository / model, self.version)
        return self.staged[model]

    def commit(self) -> None:
        for path in self.staged.values():
            commit_version(path, self.version)


def _step_config(config):
    config.version_policy.Clear()
    config.version_policy.all.SetInParent()
    return config


logger = logging.getLogger(__name__)
ONNX_STAGES = ("query_tower", "rerank_engagement", "rerank_relevance", "composite_scorer")


def for_target(name: str, config, target: mcfg.Target, engines: bool):
    """CPU configs as they are; on GPU, ONNX stages become TensorRT plans (or ORT+TensorRT fallback)."""
    if target.kind != "gpu":
        return config
    if name in ONNX_STAGES:
        return gpu.tensorrt_plan(config) if engines else gpu.onnx_on_gpu(config)
    if name.startswith("ann_"):
        return gpu.ann_on_gpu(config)
    return config


def _ann_parameters(repository: Path, head: str, version: int, fingerprint: str, cfg: dict) -> dict[str, str]:
    """Keeps the expected fingerprint of every version still on disk, adds this one's."""
    previous = repository / f"ann_{head}" / CONFIG_FILE
    entries: dict[str, str] = {}
    if previous.exists():
        old = mcfg.from_pbtxt(previous.read_text()).parameters.get(FINGERPRINTS_PARAMETER)
        entries = parse_fingerprints(old.string_value if old else "")
    entries[str(version)] = fingerprint
    on_disk = set(existing_versions(repository, f"ann_{head}")) | {version}
    acfg = cfg["ann"]
    return {
        "k": str(acfg["k"]), "max_k": str(acfg["max_k"]), "search": acfg["search"], "nprobe": str(acfg["nprobe"]),
        "emit_embeddings": "true", "max_request_candidates": str(cfg["serving"]["max_request_candidates"]),
        "max_exclude": str(cfg["serving"]["max_exclude"]),  # EXCLUDE_IDS per query, as preprocess bounds them
        FINGERPRINTS_PARAMETER: format_fingerprints(entries, keep=on_disk),
    }


def step_configs(repository: Path, cfg: dict, target: mcfg.Target, version: int, fingerprint: str,
                 dim: int, max_item_id: int, engines: bool = False, fields: mcfg.FieldInputs = ()
                 ) -> dict[str, object]:
    tasks = len(task_names(cfg))
    mcf = cfg["merge"]
    per_request = cfg["serving"]["max_request_candidates"]
    preprocess_params = {
        "default_alpha": str(mcf["alpha"]), "default_top_n": str(mcf["top_n"]), "max_top_n": str(mcf["max_top_n"]),
        "default_value_weights": json.dumps(value_weights(cfg).tolist()),
        "max_candidates": str(cfg["ann"]["max_k"]),
        "max_request_candidates": str(cfg["serving"]["max_request_candidates"]),
        "max_exclude": str(cfg["serving"]["max_exclude"]),
        "default_candidates": str(cfg["ann"]["k"]), "default_keep": str(cfg["rerank"]["keep"]),
        "max_keep": str(cfg["rerank"]["max_keep"]),
    }
    configs = {
        "preprocess": mcfg.preprocess_config(target, tasks, preprocess_params, fields),
        "query_tower": mcfg.add_input_checks(mcfg.query_tower_config(target, dim), "query_tower", max_item_id,
                                             per_request),
        "composite_scorer": mcfg.add_input_checks(mcfg.scorer_config(target, tasks), "composite_scorer",
                                                  max_item_id, per_request),
        "quota_merge": mcfg.merge_config(target, tasks, {"sort_by_score": "true", "max_top_n": str(mcf["max_top_n"]),
                                                         "max_item_id": str(max_item_id)}),
    }
    for head in HEADS:
        configs[f"ann_{head}"] = mcfg.ann_config(head, target, dim,
                                                 _ann_parameters(repository, head, version, fingerprint, cfg))
        configs[f"rerank_{head}"] = mcfg.add_input_checks(mcfg.rerank_config(head, target, dim), "rerank",
                                                          max_item_id, per_request)
    for name, config in configs.items():
        serving_settings(config, cfg["serving"], name)
    return {name: _step_config(for_target(name, c, target, engines)) for name, c in configs.items()}


def serving_target(target: mcfg.Target, serving: dict) -> mcfg.Target:
    """``target`` with `serving.max_batch_size`: every step's and ensemble's max_batch_size, and the GPU
    engines' profiles."""
    value = serving["max_batch_size"]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"serving.max_batch_size: an integer >= 1 expected, got {value!r}")
    return replace(target, max_batch_size=value)


def serving_settings(config, serving: dict, name: str):
    """Dynamic-batching delay and instance count: `serving.max_queue_delay_us`, then `serving.steps.<model>`
    (what `widefunnel analyze` chose with Triton Model Analyzer)."""
    step = serving.get("steps", {}).get(name, {})
    unknown = set(step) - {"max_queue_delay_us", "instances"}
    if unknown:
        raise ValueError(f"serving.steps.{name}: unknown keys {sorted(unknown)}; known: instances, max_queue_delay_us")
    if config.HasField("dynamic_batching"):
        config.dynamic_batching.max_queue_delay_microseconds = int(step.get("max_queue_delay_us",
                                                                            serving["max_queue_delay_us"]))
    if "instances" in step:
        for group in config.instance_group:
            group.count = int(step["instances"])
    return config


def build_engines(writer: VersionWriter, cfg: dict, target: mcfg.Target, dim: int, log=None) -> bool:
    """TensorRT plans beside each ONNX file when this machine can build them; says why not otherwise."""
    if target.kind != "gpu":
        return False
    log = log or logger.info
    reason = gpu.tensorrt_unavailable_reason()
    if reason:
        log(f"TensorRT engines skipped: {reason}. GPU configs use the ONNX fallback (native onnxruntime "
            f"backend with the TensorRT accelerator, FP16); rebuild on a GPU host for model.plan files.")
        return False
    profiles = gpu.stage_profiles(target.max_batch_size, dim, cfg["ann"]["k"], 4096, cfg["rerank"]["keep"],
                                  len(task_names(cfg)))
    for name in ONNX_STAGES:
        folder = writer.folder(name)
        stage = "rerank" if name.startswith("rerank") else name
        gpu.build_engine(folder / layout.ONNX_FILE, folder / "model.plan", profiles[stage])
        log(f"TensorRT engine built: {name}/model.plan (FP16)")
    return True


def ensemble_configs(cfg: dict, target: mcfg.Target, version: int, fields: mcfg.FieldInputs = ()
                     ) -> dict[str, object]:
    """``fields``: the build's field filters (``FieldSchema.client_inputs``), the client tensors they add."""
    tasks = len(task_names(cfg))
    versions = dict.fromkeys(mcfg.STEP_MODELS, version)
    return {mcfg.ENSEMBLE: mcfg.ensemble_config(target, tasks, versions, fields),
            mcfg.RETRIEVE_ENSEMBLE: mcfg.retrieve_config(target, tasks, versions, fields),
            mcfg.SCORE_ENSEMBLE: mcfg.score_config(target, tasks, versions)}


def item_ids_of(catalogue: Catalogue) -> ItemIds:
    """The external id of each internal id (identity where the catalogue has no map: MovieLens)."""
    if catalogue.external_ids is not None:
        return ItemIds(catalogue.external_ids)
    return ItemIds.of_items(catalogue.item_ids, catalogue.item_ids, catalogue.table_size)


def write_artifacts(writer: VersionWriter, funnel: TrainedFunnel, catalogue: Catalogue, cfg: dict,
                    fingerprint: str) -> None:
    ids = item_ids_of(catalogue)
    np.save(writer.folder("preprocess") / layout.CATALOGUE_FILE, np.sort(ids.to_external(catalogue.item_ids)))
    save_titles(writer.folder("preprocess"), ids.to_external(catalogue.item_ids),
                [catalogue.titles.get(int(i), "") for i in catalogue.item_ids])
    if catalogue.external_ids is not None:  # MovieLens' ids are its internal ids: no table (absent = identity)
        ids.save(writer.folder("preprocess"))
        for step in ("quota_merge", *(f"ann_{head}" for head in HEADS)):  # the same table: linked, stored once
            layout.link_or_copy(writer.folder("preprocess") / layout.ITEM_IDS, writer.folder(step) / layout.ITEM_IDS)
    install_plugin("preprocess", writer.folder("preprocess"))
    install_plugin("quota_merge", writer.folder("quota_merge"))
    save_state(writer.folder("query_tower") / layout.BUILD_STATE_FILE, funnel, catalogue, cfg)
    fields = catalogue.filter_fields  # MovieLens' genre and year, or a dataset's own fields
    if fields is not None:  # preprocess validates by its vocabularies, the ANN steps filter by it
        source = writer.folder("preprocess") / layout.ITEM_FIELDS
        fields.save(source)
        for step in (f"ann_{head}" for head in HEADS):  # the same files: linked, stored once
            for path in source.iterdir():
                layout.link_or_copy(path, writer.folder(step) / layout.ITEM_FIELDS / path.name)
    # Each head's table, once: the ANN index's int8 codes and scales and each id's row in them. The reranker, the
    # query tower and the scorer read those files (hard links in their own folders), so disk and page cache hold
    # one copy for all four steps (a copy where the filesystem has no links).
    tower_dir, scorer_dir = writer.folder("query_tower"), writer.folder("composite_scorer")
    heads: list[Int8Table] = []
    linked: dict[Path, list[Path]] = {tower_dir: [], scorer_dir: []}
    for head, index, reranker in zip(HEADS, funnel.indexes, funnel.rerankers):
        ann_dir, rerank_dir = writer.folder(f"ann_{head}"), writer.folder(f"rerank_{head}")
        index_dir = ann_dir / layout.INDEX_DIR
        save_index(index, index_dir)
        rows = item_rows(index, catalogue.table_size)
        np.save(ann_dir / ROWS_FILE, rows)
        files = {CODES_FILE: index_dir / CODES_FILE, SCALES_FILE: index_dir / SCALES_FILE,
                 ROWS_FILE: ann_dir / ROWS_FILE}
        shared = tuple(layout.link_or_copy(path, rerank_dir / name) for name, path in files.items())
        export_reranker(reranker, index.codes, index.scales, fingerprint, rerank_dir / layout.ONNX_FILE, rows=rows,
                        shared=shared)
        for folder, paths in linked.items():
            paths += [layout.link_or_copy(path, folder / layout.head_file(head, name)) for name, path in files.items()]
        heads.append(Int8Table(index.codes, index.scales, rows))
    export_query_tower(heads, fingerprint, tower_dir / layout.ONNX_FILE, shared=tuple(linked[tower_dir]))
    export_scorer(funnel.scorer, len(task_names(cfg)), fingerprint, scorer_dir / layout.ONNX_FILE, heads=heads,
                  shared=tuple(linked[scorer_dir]))


def disk_pinned_version(repository: Path) -> int | None:
    """The version the main ensemble's config on disk pins: what a server started on ``repository`` serves."""
    path = Path(repository) / mcfg.ENSEMBLE / CONFIG_FILE
    return mcfg.pinned_version(mcfg.from_pbtxt(path.read_text())) if path.is_file() else None


def prune_versions(repository: Path, keep: int) -> None:
    """Each step keeps its newest ``keep`` versions, the served one and the one a rollback from it needs
    (``layout.versions_to_keep``)."""
    served = layout.served_version(repository)
    for model in mcfg.STEP_MODELS:
        on_disk = existing_versions(repository, model)
        kept = layout.versions_to_keep(on_disk, keep, served)
        for v in on_disk:
            if v not in kept:
                shutil.rmtree(repository / model / str(v))


def write_repository(repository: Path, funnel: TrainedFunnel, catalogue: Catalogue, cfg: dict,
                     target: mcfg.Target, version: int | None = None, keep_versions: int = 2,
                     record: dict | None = None) -> tuple[int, str]:
    repository.mkdir(parents=True, exist_ok=True)
    version = version or next_version(repository)
    fingerprint = tower_fingerprint(funnel.tower)
    writer = VersionWriter(repository, version)
    write_artifacts(writer, funnel, catalogue, cfg, fingerprint)
    filterable = catalogue.filter_fields
    fields = tuple(filterable.schema().client_inputs()) if filterable is not None else ()
    publish_version(repository, writer, cfg, target, fingerprint, funnel.tables[0].shape[1],
                    int(catalogue.item_ids.max()), fields, record, keep_versions)
    return version, fingerprint


def publish_version(repository: Path, writer: VersionWriter, cfg: dict, target: mcfg.Target, fingerprint: str,
                    dim: int, max_item_id: int, fields: mcfg.FieldInputs, record: dict | None,
                    keep_versions: int = 2) -> None:
    """Puts a staged version (``writer``'s folders, complete) into place: 1. step configs (the ANN steps now also
    expect this version's fingerprint), 2. the version folders, 3. the ensembles, then the build record and the
    prune. ``fields``: the client tensors of the build's field filters."""
    target = serving_target(target, cfg["serving"])
    version = writer.version
    if layout.served_version(repository) is None:  # no swap or serve recorded one: a server started earlier
        pinned = disk_pinned_version(repository)  # serves what the ensembles pin before this build re-pins them
        if pinned is not None:
            layout.record_served(repository, pinned)
    engines = build_engines(writer, cfg, target, dim)
    for name, config in step_configs(repository, cfg, target, version, fingerprint, dim, max_item_id,
                                     engines, fields).items():
        atomic_write(repository / name / CONFIG_FILE, mcfg.to_pbtxt(config))
    writer.commit()
    for name, config in ensemble_configs(cfg, target, version, fields).items():
        (repository / name / "1").mkdir(parents=True, exist_ok=True)  # ensembles need a version folder
        atomic_write(repository / name / CONFIG_FILE, mcfg.to_pbtxt(config))
    record_build(repository, version, fingerprint, target.kind, record)
    prune_versions(repository, keep_versions)


def build(repository: Path, cfg: dict, target: mcfg.Target, version: int | None = None,
          progress: bool = True, items: int | None = None, dataset=None) -> BuildResult:
    """``items``: the catalogue's size, the real items plus synthetic ones (``builders.synthetic``).
    ``dataset``: the config's dataset, already loaded and checked (`builders.train.load_configured_dataset`)."""
    start = time.monotonic()
    data = TrainingData.load(cfg, progress, dataset, held_out=False)  # a build never evaluates
    funnel = train_funnel(data, cfg, tower_fingerprint, progress)
    record = None
    if items is not None and items != len(data.catalogue.item_ids):
        if data.catalogue.external_ids is not None:
            raise ValueError("--items widens MovieLens builds only (synthetic items copy MovieLens' fields)")
        from widefunnel.builders.synthetic import widen

        with stage("synthetic items"):
            funnel, data, synthetic = widen(funnel, data, cfg, items, tower_fingerprint)
        record = {"items": items, "synthetic_items": synthetic.record()}
    with stage("repository"):
        version, fingerprint = write_repository(Path(repository), funnel, data.catalogue, cfg, target, version,
                                                record=record)
    return BuildResult(Path(repository), version, fingerprint, time.monotonic() - start)
