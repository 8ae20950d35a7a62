"""Hot-swap and rollback of a served build through Triton's repository API (explicit model control).

`widefunnel build` writes version N+1 of every step model beside version N and keeps two builds on disk. A swap
to version V then runs in three phases, each one a sequence of `load` calls (one at a time: concurrent loads
race, server #7018):

1. stage:  every step model (the ANN models first: they validate the build) is loaded with a config override
   `version_policy specific [current, V]`, so V is ready beside the version being served, which keeps serving;
2. switch: every loaded ensemble is loaded with a config override pinning every step to V. One load per
   ensemble is one atomic switch: a request takes handles on all its steps when it starts, so it runs wholly
   on the old pins or wholly on the new ones, never a mix. The ensembles' configs on disk are then re-pinned
   (atomically) so that a restart serves V too;
3. retire: every step model is loaded with `version_policy specific [V]`, which unloads the old version once
   its in-flight requests are done.

A failure in 1 or 2 undoes what was done (unstage, switch back) and raises SwapError with the server's reason.

Behaviour of the embedded server (2.51) checked by tests/served/test_swap.py and worth knowing: loading a step reloads
the ensembles that use it with the config they were last loaded with (not the one on disk), so staging or
retiring never moves an ensemble's pins; a step version that fails to load (e.g. an ANN index whose fingerprint
is not the one its config expects) fails the whole load call with the server's reason, and the versions already
serving keep serving.

A rollback is a swap to the newest version on disk older than the one served: nothing is trained, the previous
build is still on disk.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tritonclient.utils import InferenceServerException

from widefunnel import model_configs as mcfg
from widefunnel.client.client import protocol_module
from widefunnel.layout import CONFIG_FILE, atomic_write, build_fingerprint, complete_versions, record_served
from widefunnel.security import ADMIN_KEY_ENV, AdminKeyError, require_key, with_admin_key

logger = logging.getLogger(__name__)
# Staging order: the ANN models first, since they validate the build (index fingerprint vs the tower the config
# expects) and are the slowest to load: a bad build fails fast, before anything else was staged.
STAGE_ORDER = ("ann_engagement", "ann_relevance") + tuple(m for m in mcfg.STEP_MODELS if not m.startswith("ann_"))


class SwapError(RuntimeError):
    """A swap or rollback did not happen; the message carries the server's reason. What was served is served."""


@dataclass
class SwapReport:
    from_version: int
    to_version: int
    fingerprint: str | None
    ensembles: list[str]
    seconds: float
    actions: list[str] = field(default_factory=list)


def connect(url: str, protocol: str = "http", admin_key: str | None = None):
    """A tritonclient InferenceServerClient that sends the admin key on every call (the repository and
    model-config APIs need it); model loads can take a while: generous timeouts over HTTP."""
    try:
        key = require_key(admin_key)
    except AdminKeyError as exc:
        raise SwapError(str(exc)) from None
    module = protocol_module(protocol)
    if protocol == "http":
        client = module.InferenceServerClient(url, connection_timeout=300.0, network_timeout=300.0)
    else:
        client = module.InferenceServerClient(url)
    return with_admin_key(client, key, protocol)


def _explain(exc: InferenceServerException) -> str:
    message = exc.message() or str(exc)
    if "restricted" in message:
        return (f"{message}: the server refused this admin key; pass the server's key with "
                f"{ADMIN_KEY_ENV} or --admin-key-file")
    return message


def _config_json(client, model: str) -> dict:
    try:
        config = client.get_model_config(model)
    except InferenceServerException as exc:
        raise SwapError(f"reading {model}'s config: {_explain(exc)}") from None
    if not isinstance(config, dict):  # gRPC answers a protobuf message
        from google.protobuf import json_format

        config = json_format.MessageToDict(config, preserving_proto_field_name=True)
    return config.get("config", config)


def served_pins(client, ensemble: str = mcfg.ENSEMBLE) -> dict[str, int]:
    """The step versions an ensemble routes to now, as the server holds its config (not as the disk says)."""
    steps = _config_json(client, ensemble).get("ensemble_scheduling", {}).get("step", [])
    return {s["model_name"]: int(s.get("model_version", -1)) for s in steps}


def served_version(client, ensemble: str = mcfg.ENSEMBLE) -> int:
    pins = set(served_pins(client, ensemble).values())
    if len(pins) != 1 or -1 in pins:
        raise SwapError(f"{ensemble} does not pin one version for all its steps: {sorted(pins)}")
    return pins.pop()


def disk_versions(repository: Path) -> list[int]:
    """Versions whose folder exists for every step model (the builds a swap can go to)."""
    return complete_versions(repository, mcfg.STEP_MODELS)


def step_override(repository: Path, model: str, versions: list[int]) -> str:
    """The step's config on disk, restricted to `versions` (there is no call that loads one version, #4416)."""
    config = mcfg.from_pbtxt((Path(repository) / model / CONFIG_FILE).read_text())
    config.version_policy.Clear()
    config.version_policy.specific.versions.extend(sorted(set(versions)))
    return mcfg.to_json(config)


def pinned_ensemble(repository: Path, ensemble: str, version: int):
    """The ensemble's config on disk with every step pinned to `version` (a model_config_pb2 message)."""
    config = mcfg.from_pbtxt((Path(repository) / ensemble / CONFIG_FILE).read_text())
    for step in config.ensemble_scheduling.step:
        step.model_version = version
    return config


def ensemble_override(repository: Path, ensemble: str, version: int) -> str:
    return mcfg.to_json(pinned_ensemble(repository, ensemble, version))


def persist_pins(repository: Path, ensemble: str, version: int) -> None:
    """Rewrites the ensemble's config on disk (atomically) so that a restarted server serves what was swapped to."""
    config = pinned_ensemble(repository, ensemble, version)
    atomic_write(Path(repository) / ensemble / CONFIG_FILE, mcfg.to_pbtxt(config))


def loaded_ensembles(client) -> list[str]:
    index = client.get_model_repository_index()
    if not isinstance(index, list):  # gRPC
        index = [{"name": m.name, "state": m.state} for m in index.models]
    ready = {m["name"] for m in index if m.get("state") == "READY"}
    return [e for e in mcfg.ENSEMBLES if e in ready]


def _load(client, model: str, config: str, actions: list[str], what: str) -> None:
    start = time.monotonic()
    try:
        client.load_model(model, config=config)
    except InferenceServerException as exc:
        raise SwapError(f"{what}: loading {model} failed: {_explain(exc)}") from None
    actions.append(f"{what} {model} ({time.monotonic() - start:.1f}s)")


def swap(url: str, repository: Path, to_version: int, protocol: str = "http",
         log: Callable[[str], None] | None = None, persist: bool = True, admin_key: str | None = None) -> SwapReport:
    """Serve build `to_version` (already on disk) instead of the current one, without dropping a request.

    With `persist`, the ensembles' configs on disk are re-pinned too, so a restart keeps serving `to_version`
    (a read-only repository is left as it is, and the report says so).
    """
    repository, start, actions = Path(repository), time.monotonic(), []
    client = connect(url, protocol, admin_key)
    def say(action: str) -> None:
        logger.info("%s", action)
        if log is not None:
            log(action)

    try:
        current = served_version(client)
        if to_version not in disk_versions(repository):
            raise SwapError(f"version {to_version} is not on disk for every step model of {repository} "
                            f"(complete versions: {disk_versions(repository)})")
        ensembles = loaded_ensembles(client)
        if current == to_version:
            return SwapReport(current, to_version, build_fingerprint(repository, to_version), ensembles, 0.0,
                              ["already served"])
        staged: list[str] = []
        try:  # 1. stage
            for model in STAGE_ORDER:
                staged.append(model)
                _load(client, model, step_override(repository, model, [current, to_version]), actions, "stage")
                if not client.is_model_ready(model, str(to_version)):
                    raise SwapError(f"stage: {model} version {to_version} is not ready after loading")
                say(actions[-1])
        except SwapError:
            for model in staged:  # unload what was staged; the served version was never touched
                _load(client, model, step_override(repository, model, [current]), [], "unstage")
            raise
        switched: list[str] = []
        try:  # 2. switch: one load per ensemble
            for ensemble in ensembles:
                _load(client, ensemble, ensemble_override(repository, ensemble, to_version), actions, "switch")
                switched.append(ensemble)
                say(actions[-1])
        except SwapError:
            for ensemble in switched:
                _load(client, ensemble, ensemble_override(repository, ensemble, current), [], "switch back")
            for model in mcfg.STEP_MODELS:
                _load(client, model, step_override(repository, model, [current]), [], "unstage")
            raise
        if persist:
            try:
                for ensemble in mcfg.ENSEMBLES:
                    persist_pins(repository, ensemble, to_version)
                record_served(repository, to_version)  # no prune removes it (or the version a rollback needs)
                actions.append(f"persisted: ensembles on disk pin version {to_version}")
            except OSError as exc:
                actions.append(f"not persisted ({exc}): a restart serves what the ensembles on disk pin")
        for model in mcfg.STEP_MODELS:  # 3. retire the old version
            _load(client, model, step_override(repository, model, [to_version]), actions, "retire")
            say(actions[-1])
        pinned = served_version(client)
        if pinned != to_version:
            raise SwapError(f"after the swap {mcfg.ENSEMBLE} pins version {pinned}, expected {to_version}")
    finally:
        client.close()
    return SwapReport(current, to_version, build_fingerprint(repository, to_version), ensembles,
                      time.monotonic() - start, actions)


def previous_version(repository: Path, current: int) -> int:
    older = [v for v in disk_versions(repository) if v < current]
    if not older:
        raise SwapError(f"no version older than {current} is on disk in {repository}: nothing to roll back to")
    return older[-1]


def rollback(url: str, repository: Path, protocol: str = "http",
             log: Callable[[str], None] | None = None, persist: bool = True,
             admin_key: str | None = None) -> SwapReport:
    """Go back to the newest complete build on disk older than the one served."""
    client = connect(url, protocol, admin_key)
    try:
        current = served_version(client)
    finally:
        client.close()
    return swap(url, repository, previous_version(Path(repository), current), protocol, log, persist, admin_key)
