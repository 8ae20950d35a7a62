"""Derive a sharded deployment from one built repository: S shard repositories and one router repository.

* Shard s (``<out>/shards/shard-<s>/``) holds, for every ANN model (backend ``widefunnel_ann``) and every
  version of the source, rows [start_s, stop_s) of that version's index with the index's global item ids,
  under the source's own config: each shard is a plain ``widefunnel_ann`` server, as today.
* The router (``<out>/router/``) is the source repository with each ANN model's config swapped to backend
  ``python`` + ``plugins/ann_router/model.py`` (same inputs and outputs, plus ``COVERAGE``), parameterised
  with the shards' gRPC URLs. Its version v fans out to version v on every shard, so the ensembles' pinned
  versions keep meaning one build everywhere.

Takedowns (`takedowns.json`) are copied to the router and every shard, so each shard excludes them inside its own
scan and the router's preprocess refuses them as seeds; `widefunnel items remove --also DIR...` updates them
in place later, without re-deriving anything.

Updates are incremental and in the builder's order: configs first, then version folders (staged under a
non-numeric name and renamed, so a server never sees half a version), the router's ensembles last;
versions gone from the source are pruned. Run again after each `widefunnel build`, then roll out
(`widefunnel.cli.cluster.roll_out`): shards load the new version beside the old, the router follows.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from widefunnel import model_configs as mcfg
from widefunnel.ann.index import load_index, save_index
from widefunnel.field_filters import ItemFields
from widefunnel.item_ids import ItemIds
from widefunnel.layout import (
    BUILDS_FILE,
    CONFIG_FILE,
    FINGERPRINTS_PARAMETER,
    INDEX_DIR,
    ITEM_FIELDS,
    atomic_write,
    commit_version,
    format_fingerprints,
    install_plugin,
    parse_fingerprints,
    prune_versions,
    stage_version,
    versions,
)
from widefunnel.sharding import IndexShard, split_index
from widefunnel.takedowns import publish as publish_takedowns
from widefunnel.tensor_names import Step

ANN_BACKEND = "widefunnel_ann"
ROUTER_PLUGIN = "ann_router"
SHARD_FILE = "shard.json"


@dataclass(frozen=True)
class ShardedLayout:
    shard_repositories: list[Path]
    router_repository: Path


def layout(out: Path, shards: int) -> ShardedLayout:
    out = Path(out)
    return ShardedLayout([out / "shards" / f"shard-{s}" for s in range(shards)], out / "router")


def read_config(model_dir: Path) -> mc.ModelConfig:
    return mcfg.from_pbtxt((model_dir / CONFIG_FILE).read_text())


def models(repository: Path) -> dict[str, mc.ModelConfig]:
    return {p.name: read_config(p) for p in sorted(Path(repository).iterdir()) if (p / CONFIG_FILE).is_file()}


def ann_models(repository: Path) -> list[str]:
    return [name for name, config in models(repository).items() if config.backend == ANN_BACKEND]


# ------------------------------------------------------------------------------------------------ the shards
def _check_existing(folder: Path, part: IndexShard) -> None:
    """Versions are immutable: an existing shard version must be the same slice of the same index."""
    described = json.loads((folder / SHARD_FILE).read_text()) if (folder / SHARD_FILE).is_file() else None
    if described != part.describe():
        raise FileExistsError(f"{folder} exists but is not {part.describe()} (found {described}); "
                              "write a sharded layout for a new shard count into a new directory")


def _fingerprints(config: mc.ModelConfig) -> dict[str, str]:
    entry = config.parameters.get(FINGERPRINTS_PARAMETER)
    return parse_fingerprints(entry.string_value if entry else "")


def _shard_config(source_dir: Path, shard_dir: Path, prune: bool) -> mc.ModelConfig:
    """The source's config; without pruning it also keeps the expected fingerprints of versions still on the
    shard (the ANN backend refuses a version its config names no fingerprint for)."""
    config = read_config(source_dir)
    if not prune and (shard_dir / CONFIG_FILE).is_file():
        entries = _fingerprints(read_config(shard_dir)) | _fingerprints(config)
        kept = set(versions(shard_dir)) | set(versions(source_dir))
        config.parameters[FINGERPRINTS_PARAMETER].string_value = format_fingerprints(entries, keep=kept)
    return config


def write_shard_repositories(source: Path, shard_repositories: list[Path], prune: bool = True
                             ) -> dict[str, list[int]]:
    """Split every version of every ANN model of ``source`` over the shard repositories -> {model: versions}.

    ``prune=False`` keeps versions the source dropped (a roll-out prunes only once the router let go of them).
    """
    source = Path(source)
    written: dict[str, list[int]] = {}
    for model in ann_models(source):
        for repo in shard_repositories:
            atomic_write(Path(repo) / model / CONFIG_FILE,
                          mcfg.to_pbtxt(_shard_config(source / model, Path(repo) / model, prune)))
        wanted = versions(source / model)
        for version in wanted:
            parts = split_index(load_index(source / model / str(version) / INDEX_DIR), len(shard_repositories))
            for repo, part in zip(shard_repositories, parts):
                target = Path(repo) / model / str(version)
                if target.exists():
                    _check_existing(target, part)
                    continue
                staged = stage_version(Path(repo) / model, version)
                save_index(part.index, staged / INDEX_DIR)
                # Written as this version reads them (its rows of tables an `items add` grew in place).
                fields = source / model / str(version) / ITEM_FIELDS
                if fields.exists():  # keyed by id: every shard reads the whole table for its own rows
                    ItemFields.load(fields).save(staged / ITEM_FIELDS)
                item_ids = ItemIds.load(source / model / str(version))
                if item_ids is not None:  # takedowns and CANDIDATE_ITEM_ID in the catalogue's ids
                    item_ids.save(staged)
                (staged / SHARD_FILE).write_text(json.dumps(part.describe(), indent=2, sort_keys=True) + "\n")
                commit_version(staged, version)
        if prune:
            for repo in shard_repositories:
                prune_versions(Path(repo) / model, set(wanted))
        written[model] = wanted
    return written


# ------------------------------------------------------------------------------------------------ the router
def router_config(ann: mc.ModelConfig, name: str, shard_urls: list[str], shard_model: str,
                  allow_partial: bool = False, timeout_s: float = 5.0, ready_timeout_s: float = 60.0,
                  lb_policy: str = "pick_first", instances: int = 2) -> mc.ModelConfig:
    """The ANN model's config with the backend swapped to the router: same tensors plus COVERAGE [1]."""
    config = mc.ModelConfig()
    config.CopyFrom(ann)
    config.name, config.backend = name, "python"
    config.ClearField("parameters")
    k = ann.parameters["k"].string_value if "k" in ann.parameters else ""
    params = {"shard_urls": ",".join(shard_urls), "shard_model": shard_model, "k": k,
              "allow_partial": str(bool(allow_partial)).lower(), "timeout_s": repr(float(timeout_s)),
              "ready_timeout_s": repr(float(ready_timeout_s)), "lb_policy": lb_policy}
    for key, value in sorted(params.items()):
        config.parameters[key].string_value = value
    if not any(o.name == Step.COVERAGE for o in config.output):
        config.output.add(name=Step.COVERAGE, data_type=mc.TYPE_FP32, dims=[1])
    config.ClearField("instance_group")  # fan-out and merge are CPU work wherever the shards run
    config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=int(instances))
    config.version_policy.Clear()
    config.version_policy.all.SetInParent()
    return config


def write_router_model(repository: Path, name: str, config: mc.ModelConfig, model_versions: list[int],
                       prune: bool = True) -> None:
    """Config first, then one ``<v>/model.py`` per version (version v routes to version v of every shard)."""
    model_dir = Path(repository) / name
    atomic_write(model_dir / CONFIG_FILE, mcfg.to_pbtxt(config))
    for version in model_versions:
        if not (model_dir / str(version)).exists():
            staged = stage_version(model_dir, version)
            install_plugin(ROUTER_PLUGIN, staged)
            commit_version(staged, version)
    if prune:
        prune_versions(model_dir, set(model_versions))


def _copy_model(source_dir: Path, target_dir: Path, prune: bool = True) -> None:
    """Version folders missing in the target are copied (staged); config replaced; vanished versions pruned."""
    atomic_write(target_dir / CONFIG_FILE, (source_dir / CONFIG_FILE).read_text())
    for version in versions(source_dir):
        if not (target_dir / str(version)).exists():
            staged = stage_version(target_dir, version)
            shutil.copytree(source_dir / str(version), staged, dirs_exist_ok=True)
            commit_version(staged, version)
    if prune:
        prune_versions(target_dir, set(versions(source_dir)))


def write_router_repository(source: Path, router: Path, shard_urls: list[str], allow_partial: bool = False,
                            timeout_s: float = 5.0, ready_timeout_s: float = 60.0, lb_policy: str = "pick_first",
                            instances: int = 2, prune: bool = True) -> list[str]:
    """The source repository with every ANN model swapped to a router over ``shard_urls`` -> router models."""
    source, router = Path(source), Path(router)
    configs = models(source)
    anns = [n for n, c in configs.items() if c.backend == ANN_BACKEND]
    ensembles = [n for n, c in configs.items() if c.platform == "ensemble"]
    for name, config in configs.items():
        if name in anns:
            write_router_model(router, name, router_config(config, name, shard_urls, name, allow_partial, timeout_s,
                                                           ready_timeout_s, lb_policy, instances),
                               versions(source / name), prune)
        elif name not in ensembles:
            _copy_model(source / name, router / name, prune)
    for name in ensembles:  # last: they pin the step versions written above
        _copy_model(source / name, router / name, prune)
    if (source / BUILDS_FILE).is_file():
        atomic_write(router / BUILDS_FILE, (source / BUILDS_FILE).read_text())
    return anns


def write_sharded(source: Path, out: Path, shards: int, shard_urls: list[str], prune: bool = True,
                  **router_options) -> ShardedLayout:
    """Shards first (a router version needs its shards), then the router."""
    if len(shard_urls) != shards:
        raise ValueError(f"{shards} shards need {shards} shard URLs, got {len(shard_urls)}")
    lay = layout(out, shards)
    publish_takedowns(source, [*lay.shard_repositories, lay.router_repository])
    write_shard_repositories(source, lay.shard_repositories, prune)
    write_router_repository(source, lay.router_repository, shard_urls, prune=prune, **router_options)
    return lay


# ------------------------------------------------------------------------------------- prebuilt-index serving
def write_index_repository(repository: Path, indexes: dict[int, object], head: str = "engagement", k: int = 100,
                           max_k: int = 100_000, emit_embeddings: bool = True,
                           target: mcfg.Target | None = None, fields=None) -> str:
    """A repository serving given ``{version: Int8Index}`` as ``ann_<head>`` (widefunnel_ann, all versions):
    the single server for an index that did not come from `widefunnel build` (tests, benchmarks);
    ``fields`` (a ``field_filters.ItemFields`` keyed by the index's ids) makes its field filters usable."""
    repository, target = Path(repository), target or mcfg.Target("cpu")
    first = next(iter(indexes.values()))
    fingerprints = format_fingerprints({str(v): index.manifest["tower_fingerprint"] for v, index in indexes.items()})
    params = {"k": str(k), "max_k": str(max_k), "search": "exact", "nprobe": "1",
              FINGERPRINTS_PARAMETER: fingerprints, "emit_embeddings": str(emit_embeddings).lower()}
    config = mcfg.ann_config(head, target, first.dim, params)
    config.version_policy.Clear()
    config.version_policy.all.SetInParent()
    model_dir = repository / config.name
    atomic_write(model_dir / CONFIG_FILE, mcfg.to_pbtxt(config))
    for version, index in sorted(indexes.items()):
        if not (model_dir / str(version)).exists():
            staged = stage_version(model_dir, version)
            save_index(index, staged / INDEX_DIR)
            if fields is not None:
                fields.save(staged / ITEM_FIELDS)
            commit_version(staged, version)
    return config.name
