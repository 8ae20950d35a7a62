"""Conditions on the log's fields (`[dataset] positive`, `[dataset.tasks]`): `FIELD OP LITERAL`, or "" for every
interaction. A tiny parser, never `eval`: a field name, one of == != >= > <= <, and a number or a bare token;
evaluated over a whole column at once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from widefunnel.dataset.columns import FloatColumn, TokenColumn
from widefunnel.dataset.errors import DatasetConfigError
from widefunnel.dataset.table import Interactions

OPERATORS = ("==", "!=", ">=", "<=", ">", "<")  # two-character ones first: the pattern tries them in order
_PATTERN = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(==|!=|>=|<=|>|<)\s*(\S+)\s*$")


@dataclass(frozen=True)
class Condition:
    field: str | None  # None: every interaction
    operator: str = ""
    literal: str = ""

    @classmethod
    def parse(cls, text: str, key: str) -> Condition:
        """``key`` (e.g. `dataset.tasks.liked`) names the config entry in every refusal."""
        if not isinstance(text, str):
            raise DatasetConfigError(f"config key '{key}' must be a string condition, got {text!r}")
        if not text.strip():
            return cls(None)
        match = _PATTERN.match(text)
        if not match:
            raise DatasetConfigError(f"config key '{key}': {text!r} is not a condition 'FIELD OP VALUE' "
                                     f"(OP one of {' '.join(OPERATORS)}), nor \"\" (every interaction)")
        return cls(*match.groups())

    def evaluate(self, log: Interactions, key: str) -> np.ndarray:
        """bool [M]: the log rows that meet the condition."""
        if self.field is None:
            return np.ones(len(log), dtype=bool)
        column = log.columns.get(self.field)
        if column is None:
            raise DatasetConfigError(f"config key '{key}' names field '{self.field}', which the log does not "
                                     f"have; fields: {', '.join(sorted(log.columns)) or '(none)'}")
        if isinstance(column, FloatColumn):
            try:
                value = float(self.literal)
            except ValueError:
                raise DatasetConfigError(f"config key '{key}': field '{self.field}' is a float, "
                                         f"{self.literal!r} is not a number") from None
            values = np.asarray(column.values, np.float64)
            return _compare(values, self.operator, value) & ~np.isnan(values)
        if isinstance(column, TokenColumn):
            if self.operator not in ("==", "!="):
                raise DatasetConfigError(f"config key '{key}': field '{self.field}' is a token; only == and != "
                                         f"apply, got {self.operator}")
            vocabulary = column.vocabulary.to_pylist()
            code = vocabulary.index(self.literal) if self.literal in vocabulary else -1
            return _compare(np.asarray(column.codes), self.operator, code)
        raise DatasetConfigError(f"config key '{key}': field '{self.field}' is a list; conditions apply to "
                                 f"token and float fields")


def _compare(values: np.ndarray, operator: str, literal: float) -> np.ndarray:
    return {"==": np.equal, "!=": np.not_equal, ">=": np.greater_equal, ">": np.greater, "<=": np.less_equal,
            "<": np.less}[operator](values, literal)


def parse_tasks(tasks: dict[str, str], key: str = "dataset.tasks") -> dict[str, Condition]:
    if not isinstance(tasks, dict) or not tasks:
        raise DatasetConfigError(f"config key '{key}' must be a table of at least one task = \"condition\"")
    return {name: Condition.parse(text, f"{key}.{name}") for name, text in tasks.items()}


def implicit_feedback_labels(table: dict, user_table: dict, log_fields: set[str]) -> tuple[dict, list[str]]:
    """`[dataset]` for a log the default conditions do not fit: RecBole's implicit-feedback datasets (views,
    clicks) carry no `rating`, so where the user's config leaves `positive` or `tasks` to the defaults and those
    name a field the log lacks, every interaction is a positive and the scorer has one task, `engaged`. What the
    user set is never changed (a wrong field there is refused by name). Returns (the table, what was changed)."""
    out, notes = dict(table), []

    def missing(text: str) -> bool:
        field = Condition.parse(text, "dataset").field
        return field is not None and field not in log_fields

    if "positive" not in user_table and missing(out.get("positive", "")):
        out["positive"] = ""
        notes.append(f"the log has no field for the default positive ({table['positive']!r}): every interaction "
                     "is a positive")
    if "tasks" not in user_table and any(missing(c) for c in out.get("tasks", {}).values()):
        out["tasks"] = {"engaged": ""}
        notes.append("the log has no field for the default tasks (liked, loved from a rating): one task, engaged")
    return out, notes
