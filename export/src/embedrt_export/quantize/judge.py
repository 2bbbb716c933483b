"""What a task brings to ``embedrt quantize``: what its graphs are calibrated on, and how they are judged.

The pipeline (``pipeline.py``) plans, quantizes, validates, searches and commits graphs without knowing
the task. Two things differ by task, and each task supplies both (``for_task``):

- embed (``quality.py``): texts; a candidate graph is judged on held-out texts by the cosine of its
  embeddings with the FP32 graph's (gate: mean cosine, default 0.99);
- rerank (``ranking.py``): (query, document) pairs; judged on held-out query lists by how each list's
  ranking agrees with the FP32 graph's (gate: mean Spearman ρ, default 0.95).

A judge names its gated figure with a ``Metric``, so that the exclusion search, the per-tensor search,
the log lines and the manifest's records speak of it by its own name (``mean_cosine``,
``mean_spearman``). Every metric is at most 1, which the FP32 graph scores against itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from embedrt.manifest import Manifest

from .calibration import Feed

if TYPE_CHECKING:
    from .pipeline import QuantizeOptions

Log = Callable[[str], None]


@dataclass(frozen=True)
class Metric:
    """The figure a task's gate is on, as reports, records and messages name it."""

    key: str  # the gated figure in a report: "mean_cosine"
    floor: str  # its worst case over the held-out set: "min_cosine"
    words: str  # as log lines and messages say it: "mean cosine"
    default_gate: float  # --gate when none is given

    @property
    def gate_key(self) -> str:
        return f"gate_{self.key}"

    def brief(self, report: dict[str, Any], suffix: str = "") -> dict[str, float]:
        """The gated figure and its floor from ``report``, keys suffixed (``mean_cosine_after``)."""
        tail = f"_{suffix}" if suffix else ""
        return {f"{self.key}{tail}": report[self.key], f"{self.floor}{tail}": report[self.floor]}


class Judge(Protocol):
    """Measures a candidate graph against the FP32 graph on the task's held-out set."""

    metric: ClassVar[Metric]

    @property
    def batches(self) -> Sequence[Feed]:
        """The held-out set as graph feeds: for the speed hint and the largest-error hint too."""

    def measure(self, graph: Path, gate: float) -> dict[str, Any]:
        """The quality report of ``graph``: ``metric.key``, ``metric.floor``, ``metric.gate_key``,
        ``passed`` and whatever else the task reports."""

    def summary(self, report: dict[str, Any]) -> str:
        """``report`` in one line for the log: "on 64 held-out texts: mean cosine ... (gate: ...)"."""


@dataclass(frozen=True)
class Calibration:
    """What the quantizer calibrates on, and how the manifest and the log describe it."""

    batches: list[Feed]
    record: dict[str, Any]  # the manifest's quantization.calibration: source, counts, batch size
    described: str  # "40 texts", "80 pairs of 20 query lists"


Prepare = Callable[[Path, Manifest, Path, "QuantizeOptions", Log], tuple[Calibration, Judge]]


@dataclass(frozen=True)
class Task:
    metric: Metric
    prepare: Prepare  # (artefact, manifest, fp32 graph, options, log) -> calibration, judge


def for_task(task: str) -> Task:
    """The calibration and judge of ``task`` (a manifest's ``task``)."""
    from . import quality, ranking  # they import Metric from here

    tasks = {"embed": Task(quality.COSINE, quality.prepare), "rerank": Task(ranking.SPEARMAN, ranking.prepare)}
    return tasks[task]  # Manifest refuses tasks it does not know
