"""/metrics over several worker processes: each publishes, the scraped one adds up.

A scrape reaches whichever worker the kernel gave the connection to.  So
every worker writes its own rendered metrics to ``<folder>/worker-<i>.prom``
every second (atomically: a temporary file, then a rename), and the worker
that answers ``GET /metrics`` renders itself afresh, reads its siblings'
files and returns the sum: counters, histograms and gauges are added (open
connections, pushes in flight: per-process amounts), ``*_created`` takes the
earliest, ``pushsidecar_info`` the largest (it is a constant 1).  A sibling's
figures are at most a second old; a restarted worker starts again from zero,
which Prometheus reads as a counter reset.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from pathlib import Path
from collections.abc import Iterable

import trio
from prometheus_client.parser import text_string_to_metric_families

from .metrics import Metrics

logger = logging.getLogger("sidecar.metrics")

PUBLISH_SECONDS = 1.0
_LARGEST = ("pushsidecar_info",)


class WorkerMetrics:
    """The metrics of worker ``index`` of ``count``, shared through ``folder``."""

    def __init__(self, metrics: Metrics, folder: Path, index: int, count: int):
        self.metrics = metrics
        self.folder = folder
        self.index = index
        self.count = count
        self._own_render = metrics.render

    def path(self, index: int) -> Path:
        return self.folder / f"worker-{index}.prom"

    def publish(self) -> None:
        body, _ = self._own_render()
        try:
            descriptor, temporary = tempfile.mkstemp(prefix=".worker-", dir=self.folder)
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(body)
            os.replace(temporary, self.path(self.index))
        except OSError as exc:
            logger.warning("cannot publish this worker's metrics in %s: %s", self.folder, exc)

    async def publish_loop(self) -> None:
        while True:
            self.publish()
            await trio.sleep(PUBLISH_SECONDS)

    def render(self) -> tuple[bytes, str]:
        """The body and content type for ``GET /metrics``: all workers added up."""
        own, content_type = self._own_render()
        texts = [own.decode()]
        for index in range(self.count):
            if index == self.index:
                continue
            try:
                texts.append(self.path(index).read_text())
            except OSError:
                continue  # not started yet
        return add_up(texts).encode(), content_type


def add_up(texts: Iterable[str]) -> str:
    """The sum of several Prometheus text expositions of the same metrics."""
    families: dict[str, tuple[str, str]] = {}  # name -> (type, help)
    samples: dict[tuple[str, str, tuple[tuple[str, str], ...]], float] = {}
    order: list[tuple[str, str, tuple[tuple[str, str], ...]]] = []
    for text in texts:
        for family in text_string_to_metric_families(text):
            families.setdefault(family.name, (family.type, family.documentation))
            for sample in family.samples:
                key = (family.name, sample.name, tuple(sorted(sample.labels.items())))
                if key not in samples:
                    samples[key] = sample.value
                    order.append(key)
                elif sample.name.endswith("_created"):
                    samples[key] = min(samples[key], sample.value)
                elif sample.name in _LARGEST:
                    samples[key] = max(samples[key], sample.value)
                else:
                    samples[key] = samples[key] + sample.value
    lines: list[str] = []
    written: set[str] = set()
    for family_name, sample_name, labels in order:
        if family_name not in written:
            written.add(family_name)
            kind, documentation = families[family_name]
            exposed = family_name + ("_total" if kind == "counter" else "")
            escaped = documentation.replace("\\", r"\\").replace("\n", r"\n")
            lines.append(f"# HELP {exposed} {escaped}")
            lines.append(f"# TYPE {exposed} {kind}")
        label_text = ",".join(f'{name}="{_escape(value)}"' for name, value in labels)
        value = samples[(family_name, sample_name, labels)]
        lines.append(f"{sample_name}{{{label_text}}} {_number(value)}" if label_text
                     else f"{sample_name} {_number(value)}")
    return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return f"{value:.1f}"
    return repr(value)
