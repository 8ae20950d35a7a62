"""One config for a build: the packaged defaults (`default.toml`) overlaid by a user's TOML file."""

from __future__ import annotations

import copy
import json
from importlib import resources
from pathlib import Path
from typing import Any

import tomllib

Config = dict[str, Any]
# Tables a user's config replaces whole (their keys are the user's names: tasks, fields), not key by key.
REPLACED_TABLES = ("weights", "tasks", "roles")
DEFAULT_TASK_WEIGHT = 1.0
# Keys that had another owner once: a config still setting one is refused naming what replaced it, so a file
# written for an older build fails loudly rather than being half-applied.
REMOVED_KEYS = {
    "data.min_rating": '[dataset] positive, a condition on the log\'s fields (e.g. positive = "rating >= 4")',
}


class ConfigError(KeyError):
    """A user's config names a key the defaults lack (a KeyError, as before; printed without KeyError's quotes)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def task_names(config: Config) -> list[str]:
    """The composite scorer's tasks, in tensor order: `[dataset.tasks]` (a build state from before it existed
    kept them in `scorer.tasks`)."""
    if "tasks" in config.get("scorer", {}):
        return list(config["scorer"]["tasks"])
    return list(config["dataset"]["tasks"])


def dataset_config(config: Config):  # -> DatasetConfig (imported lazily: config is read before the data layer)
    """The reader's part of `[dataset]` (`widefunnel.dataset.DatasetConfig`); `positive` and `tasks` label the log."""
    from widefunnel.dataset import DatasetConfig

    table = {k: v for k, v in config["dataset"].items() if k not in ("positive", "tasks")}
    return DatasetConfig.from_table(table)


def default_config() -> Config:
    return tomllib.loads(resources.files("widefunnel").joinpath("default.toml").read_text())


def _overlay(base: Config, override: Config, path: str = "") -> Config:
    out = copy.deepcopy(base)
    for key, value in override.items():
        where = f"{path}{key}"
        if where in REMOVED_KEYS:
            raise ConfigError(f"config key '{where}' is no longer read: set {REMOVED_KEYS[where]}")
        if key not in base:
            raise ConfigError(f"unknown config key '{where}'")
        if isinstance(base[key], bool) and not isinstance(value, bool):
            raise ConfigError(f"config key '{where}' must be true or false, got {value!r}")
        if isinstance(base[key], dict) and key not in REPLACED_TABLES:
            if not isinstance(value, dict):
                raise TypeError(f"config key '{where}' must be a table")
            out[key] = _overlay(base[key], value, where + ".")
        else:
            out[key] = value
    return out


def load_config_file(path: Path) -> Config:
    """What a config file itself sets, before the defaults."""
    return tomllib.loads(Path(path).read_text())


def load_config(path: Path | None = None, overrides: Config | None = None) -> Config:
    config = default_config()
    if path is not None:
        config = _overlay(config, load_config_file(path))
    if overrides:
        config = _overlay(config, overrides)
    return config


def config_digest(config: Config) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
