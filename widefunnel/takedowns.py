"""Takedowns: items never to recommend again, from now on, without a rebuild.

One file per repository, `<repository>/takedowns.json` (beside `builds.json`, outside every version), so a
takedown holds across restarts, swaps and rollbacks until it is undone. Preprocess refuses taken-down seeds
and candidates by name; each ANN step excludes them inside its scan (a row bitmap, like any filter), so the
rerankers, scorer and merge never see them and `top_n` stays full. Readers stat the file on every request and
re-read it only when it changed, so a takedown applies from the next request on.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from widefunnel.layout import TAKEDOWNS_FILE, atomic_write
from widefunnel.validation import shown


class TakedownError(ValueError):
    """A takedown file or request that cannot be applied; the message names the id, line or field."""


def takedowns_path(repository: Path) -> Path:
    return Path(repository) / TAKEDOWNS_FILE


def read_takedowns(repository: Path) -> dict[int, dict]:
    """id -> {"time": unix seconds, "reason": str}; {} when nothing was ever taken down."""
    path = takedowns_path(repository)
    if not path.exists():
        return {}
    try:
        raw = json.loads(path.read_text())
        return {int(k): dict(v) for k, v in raw["items"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise TakedownError(f"{path}: not a takedown file ({exc})") from None


def write_takedowns(repository: Path, entries: dict[int, dict]) -> None:
    body = {"items": {str(k): entries[k] for k in sorted(entries)}}
    atomic_write(takedowns_path(repository), json.dumps(body, indent=1, sort_keys=True))


def take_down(repository: Path, ids: list[int], catalogue: np.ndarray, reason: str = "") -> list[int]:
    """Adds ``ids`` (each must be in ``catalogue``); returns those not already down."""
    unknown = sorted(set(ids) - set(np.asarray(catalogue).tolist()))
    if unknown:
        raise TakedownError(f"item ids {unknown[:10]} are not in the catalogue")
    entries = read_takedowns(repository)
    new = sorted(set(ids) - set(entries))
    now = int(time.time())
    entries.update({i: {"time": now, "reason": reason} for i in new})
    write_takedowns(repository, entries)
    return new


def restore(repository: Path, ids: list[int]) -> list[int]:
    """Undoes takedowns; returns the ids that were down. Ids that were not down are refused by name."""
    entries = read_takedowns(repository)
    missing = sorted(set(ids) - set(entries))
    if missing:
        raise TakedownError(f"item ids {missing[:10]} are not taken down")
    for i in ids:
        entries.pop(i, None)
    write_takedowns(repository, entries)
    return sorted(set(ids))


def publish(source: Path, repositories: list[Path]) -> None:
    """Copy ``source``'s takedowns to other repositories serving the same catalogue (a sharded deployment's
    router and shards, `widefunnel shard-layout`), each in one rename; none at the source removes theirs."""
    path = takedowns_path(source)
    text = path.read_text() if path.exists() else None
    for repository in repositories:
        target = takedowns_path(repository)
        if text is None:
            target.unlink(missing_ok=True)
        else:
            atomic_write(target, text)


MAX_ID_DIGITS = 18  # every id of that many digits fits an int64


def parse_item_id(text: str, where: str) -> int:
    """An item id as a database column reads it: ASCII digits only (no sign, no '_', no full-width or superscript
    digits, which `int` and `str.isdigit` accept), at least 1. TakedownError names ``where`` and the text."""
    if not (text and text.isascii() and text.isdigit() and len(text) <= MAX_ID_DIGITS):
        raise TakedownError(f"{where}: {shown(text)} is not an item id (a positive integer in ASCII digits)")
    value = int(text)
    if value < 1:
        raise TakedownError(f"{where}: item ids are >= 1, got {value}")
    return value


def decode_utf8(data: bytes, source: str) -> str:
    """``data`` as UTF-8 text; TakedownError naming the line (and the column) of the first byte that is not."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise TakedownError(f"{source}, line {line}: not UTF-8 (byte 0x{data[exc.start]:02x} at column "
                            f"{column})") from None


def parse_ids(text: str, source: str) -> list[int]:
    """Ids from a file: one per line or separated by commas / spaces; '#' starts a comment. TakedownError names
    the line."""
    ids = []
    for number, line in enumerate(text.splitlines(), 1):
        for token in line.split("#", 1)[0].replace(",", " ").split():
            ids.append(parse_item_id(token, f"{source}, line {number}"))
    return ids


def read_ids_file(path: Path) -> list[int]:
    """``parse_ids`` of a file, whose bytes must be UTF-8 (an error names the line)."""
    return parse_ids(decode_utf8(Path(path).read_bytes(), str(path)), str(path))


class TakedownWatch:
    """The taken-down ids of one repository for a serving process: a stat per call, a read only on change. A
    file that cannot be read keeps the last good list (and says so once in ``error``)."""

    def __init__(self, repository: Path):
        self.path = takedowns_path(repository)
        self._stamp: tuple[int, int, int] | None = None
        self._ids = np.zeros(0, np.int64)
        self.error: str | None = None

    def ids(self) -> np.ndarray:
        """Sorted int64 ids currently taken down."""
        try:
            st = os.stat(self.path)
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            stamp = None
        if stamp != self._stamp:
            try:
                entries = read_takedowns(self.path.parent) if stamp is not None else {}
                self._ids, self.error = np.array(sorted(entries), np.int64), None
                self._stamp = stamp
            except TakedownError as exc:
                self.error = str(exc)
        return self._ids
