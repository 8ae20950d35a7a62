"""What the gateway knows of the served models: their names and each input's type and shape, from the
repository's `config.pbtxt` files, so a request is checked against the model it names before it is forwarded.

A step called directly is bounded like the ensemble that feeds it: a variable dimension of ids or scores
carries at most the per-request candidate budget, an exclusion list at most `max_exclude` per seed and a
string list at most `MAX_FILTER_VALUES` per seed (the build's limits, read from preprocess's parameters).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from widefunnel.layout import CONFIG_FILE
from widefunnel.model_configs import EXCLUDE_INPUT, FILTER_STEP_TENSORS, from_pbtxt
from widefunnel.validation import DEFAULT_MAX_EXCLUDE, MAX_FILTER_VALUES, MAX_REQUEST_FILTER_VALUES

log = logging.getLogger(__name__)

EXCLUSION_INPUTS = frozenset({EXCLUDE_INPUT.name, FILTER_STEP_TENSORS[0].name})
_DEFAULT_REQUEST_CANDIDATES = 200_000


@dataclass(frozen=True)
class InputSpec:
    datatype: str  # Triton's wire name: INT64, FP32, BYTES, ...
    dims: tuple[int, ...]  # without the batch dimension; -1 = variable
    row_limit: int  # elements one seed (batch row) may carry in the variable dimensions
    request_limit: int  # elements the whole request may carry in them (batch x variable dims)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    max_batch_size: int  # 0: the model takes no batch dimension
    inputs: dict[str, InputSpec] = field(default_factory=dict)


@dataclass(frozen=True)
class Bounds:
    """The build's per-request limits (preprocess's config parameters), defaults where a repository has none."""

    request_candidates: int = _DEFAULT_REQUEST_CANDIDATES
    max_exclude: int = DEFAULT_MAX_EXCLUDE

    @classmethod
    def of(cls, config: mc.ModelConfig | None) -> Bounds:
        if config is None:
            return cls()
        params = {k: v.string_value for k, v in config.parameters.items()}
        try:
            return cls(int(params.get("max_request_candidates", _DEFAULT_REQUEST_CANDIDATES)),
                       int(params.get("max_exclude", DEFAULT_MAX_EXCLUDE)))
        except ValueError:
            return cls()


def _wire_type(data_type: int) -> str:
    name = mc.DataType.Name(data_type).removeprefix("TYPE_")
    return "BYTES" if name == "STRING" else name


def model_spec(config: mc.ModelConfig, bounds: Bounds) -> ModelSpec:
    inputs = {}
    for tensor in config.input:
        datatype = _wire_type(tensor.data_type)
        if datatype == "BYTES":
            row, request = MAX_FILTER_VALUES, MAX_REQUEST_FILTER_VALUES
        elif tensor.name in EXCLUSION_INPUTS:
            row = bounds.max_exclude
            request = bounds.max_exclude * max(config.max_batch_size, 1)
        else:
            row = request = bounds.request_candidates
        inputs[tensor.name] = InputSpec(datatype, tuple(int(d) for d in tensor.dims), row, request)
    return ModelSpec(config.name, int(config.max_batch_size), inputs)


def read_specs(repository: Path) -> dict[str, ModelSpec]:
    """Every model folder with a readable config; a folder whose config does not parse is left out (tritonserver
    refuses to load it too)."""
    configs: dict[str, mc.ModelConfig] = {}
    for path in sorted(Path(repository).glob(f"*/{CONFIG_FILE}")):
        try:
            configs[path.parent.name] = from_pbtxt(path.read_text())
        except Exception as exc:  # noqa: BLE001 - a broken config only removes that model from the allowlist
            log.warning("gateway: %s does not parse (%s); its model is not served through the gateway", path, exc)
    bounds = Bounds.of(configs.get("preprocess"))
    return {name: model_spec(config, bounds) for name, config in configs.items()}


class ModelAllowlist:
    """The repository's models, read again when a config file changes (checked at most every `ttl_s`)."""

    def __init__(self, repository: Path, ttl_s: float = 2.0):
        self.repository, self.ttl_s = Path(repository), ttl_s
        self._stamp: tuple = ()
        self._checked = -float("inf")
        self._specs: dict[str, ModelSpec] = {}
        self._names: frozenset[str] = frozenset()
        self._refresh(force=True)

    def _fingerprint(self) -> tuple:
        out = []
        for path in sorted(self.repository.glob(f"*/{CONFIG_FILE}")):
            try:
                stat = path.stat()
            except OSError:
                continue
            out.append((path.parent.name, stat.st_mtime_ns, stat.st_size))
        return tuple(out)

    def _refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._checked < self.ttl_s:
            return
        self._checked = now
        stamp = self._fingerprint()
        if force or stamp != self._stamp:
            self._stamp, self._specs = stamp, read_specs(self.repository)
            self._names = frozenset(self._specs)

    def get(self, name: str) -> ModelSpec | None:
        self._refresh()
        return self._specs.get(name)

    def names(self) -> frozenset[str]:
        self._refresh()
        return self._names
