"""Genres by item id for catalogues too large for a dict of tuples."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


class SourcedGenres(Mapping):
    """Genres by item id where the items ``first`` .. ``first + len(source) - 1`` each take a real item's
    (``source``: the synthetic items of a catalogue-scale build, `builders.synthetic`): 10M items cost 8 bytes
    each, not a dict entry, and the tables derived from them are gathered from the real items' (`rows`). Every
    other id is in ``real``."""

    def __init__(self, real: dict[int, tuple[str, ...]], first: int, source: np.ndarray):
        """``first``: the first sourced id (every real item of the build is below it)."""
        self.real, self.first, self.source = real, first, np.asarray(source, np.int64)

    def _sourced(self, item: int) -> bool:
        return self.first <= item < self.first + len(self.source)

    def __getitem__(self, item: int) -> tuple[str, ...]:
        return self.real[int(self.source[item - self.first])] if self._sourced(item) else self.real[item]

    def __iter__(self):
        yield from self.real
        yield from range(self.first, self.first + len(self.source))

    def __len__(self) -> int:
        return len(self.real) + len(self.source)

    def real_size(self) -> int:
        """The table size the real items need (each real id below it)."""
        return max(self.first, max(self.real, default=-1) + 1)

    def rows(self, table_size: int) -> np.ndarray:
        """int64 [table_size]: the real id whose genres each id has (itself for a real id)."""
        out = np.arange(table_size, dtype=np.int64)
        out[self.first:self.first + len(self.source)] = self.source
        return out
