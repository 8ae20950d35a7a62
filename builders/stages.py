"""Where a build spends its time and memory: each stage logs its seconds and the process's peak resident memory
so far, so a user with a large log sees which stage to size for (benchmarks/bench_build_scale.py reads them)."""

from __future__ import annotations

import logging
import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager

logger = logging.getLogger(__name__)


def peak_rss_mib() -> float:
    """The process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextmanager
def stage(name: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    logger.info("build stage %-16s %8.1f s  peak RSS %7.0f MiB", name, time.perf_counter() - start, peak_rss_mib())
