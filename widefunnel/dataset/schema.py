"""Field types and the schema of a table, as RecBole's atomic headers declare them (`name:type`).

The four types are what the towers can use: `token` (one category: an embedding with an out-of-vocabulary
bucket), `token_seq` (a bag of categories, or words of text), `float` (a dense input) and `float_seq` (a vector).
Roles name the fields the funnel needs whatever a dataset calls them; RecBole's default names unless mapped.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum

from widefunnel.dataset.errors import DatasetError


class Kind(str, Enum):
    TOKEN = "token"
    TOKEN_SEQ = "token_seq"
    FLOAT = "float"
    FLOAT_SEQ = "float_seq"


KINDS = tuple(k.value for k in Kind)

# role -> RecBole's default field name; a dataset config maps other names (`roles = {item_id = "sku"}`)
ROLES = {"user_id": "user_id", "item_id": "item_id", "timestamp": "timestamp", "rating": "rating", "label": "label"}
# roles each table must have; rating and label are optional (tasks are conditions on whatever fields exist)
INTER_ROLES = ("user_id", "item_id", "timestamp")
ITEM_ROLES = ("item_id",)


@dataclass(frozen=True)
class Field:
    name: str
    kind: Kind


@dataclass(frozen=True)
class Schema:
    """The fields of one table, in file order."""

    fields: tuple[Field, ...]

    def __iter__(self) -> Iterator[Field]:
        return iter(self.fields)

    def __contains__(self, name: object) -> bool:
        return any(f.name == name for f in self.fields)

    def __len__(self) -> int:
        return len(self.fields)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    def kind(self, name: str) -> Kind:
        for f in self.fields:
            if f.name == name:
                return f.kind
        raise KeyError(name)


def parse_header(header: str, file: str) -> Schema:
    """An atomic header (`name:type` separated by tabs) -> Schema; an unknown type or a duplicate is refused."""
    fields = []
    for token in header.split("\t"):
        name, sep, kind = token.rpartition(":")
        if not sep or not name:
            raise DatasetError(file, 1, token, f"header field must be 'name:type' (type one of {', '.join(KINDS)})")
        if kind not in KINDS:
            raise DatasetError(file, 1, name, f"unknown type '{kind}'; known: {', '.join(KINDS)}")
        if any(f.name == name for f in fields):
            raise DatasetError(file, 1, name, "field declared twice in the header")
        fields.append(Field(name, Kind(kind)))
    return Schema(tuple(fields))


def require_roles(schema: Schema, roles: dict[str, str], needed: tuple[str, ...], file: str,
                  line: int | None = 1) -> None:
    """Each role the table needs is a field of it; the error names the field looked for and its role."""
    for role in needed:
        name = roles[role]
        if name not in schema:
            mapped = "" if name == role else f" (role {role})"
            raise DatasetError(file, line, name, f"missing: no field '{name}'{mapped} in the table; fields: "
                                              f"{', '.join(schema.names)}; map another with [dataset] roles")
