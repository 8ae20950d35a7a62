"""Triton's Prometheus endpoint (`/metrics` on the metrics port), read without a Prometheus client.

Per-model series carry labels `model` and `version` (failures also `reason`: REJECTED, CANCELED, BACKEND,
OTHER); durations are cumulative microseconds, so rates and means come from two scrapes (`delta`).
"""

from __future__ import annotations

import re
import urllib.request
from collections import defaultdict
from dataclasses import dataclass

_LINE = re.compile(r'^(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)(?:\s+\d+)?$')
_LABEL = re.compile(r'(?P<key>[A-Za-z_][A-Za-z0-9_]*)="(?P<value>(?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class Sample:
    name: str
    labels: tuple[tuple[str, str], ...]
    value: float

    def label(self, key: str) -> str | None:
        return dict(self.labels).get(key)


def parse(text: str) -> list[Sample]:
    """Prometheus text exposition format (the subset Triton writes: counters and gauges, no exemplars)."""
    samples = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = _LINE.match(line)
        if match is None:
            raise ValueError(f"not a Prometheus sample line: {line!r}")
        labels = tuple(sorted((m["key"], m["value"]) for m in _LABEL.finditer(match["labels"] or "")))
        samples.append(Sample(match["name"], labels, float(match["value"])))
    return samples


def scrape(url: str, timeout: float = 10.0) -> list[Sample]:
    """`url` is the full endpoint, e.g. http://127.0.0.1:8002/metrics (TritonServer.metrics_url)."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return parse(response.read().decode())


def per_model(samples: list[Sample], name: str, **match: str) -> dict[str, float]:
    """One metric summed over versions (and any label not matched), per model: {model: value}."""
    out: dict[str, float] = defaultdict(float)
    for s in samples:
        if s.name == name and s.label("model") is not None and all(s.label(k) == v for k, v in match.items()):
            out[s.label("model")] += s.value
    return dict(out)


def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {model: after.get(model, 0.0) - before.get(model, 0.0) for model in after.keys() | before.keys()}


def mean_us(samples_before: list[Sample], samples_after: list[Sample], duration: str) -> dict[str, float]:
    """Mean of a cumulative duration per request between two scrapes, per model (e.g. queue time)."""
    done = delta(per_model(samples_before, "nv_inference_request_success"),
                 per_model(samples_after, "nv_inference_request_success"))
    spent = delta(per_model(samples_before, duration), per_model(samples_after, duration))
    return {m: spent[m] / done[m] for m in done if done[m] > 0}
