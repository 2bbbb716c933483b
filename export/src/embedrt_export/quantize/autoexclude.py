"""Automatic exclusion search: when the Q/DQ graph misses the gate, keep the worst layer groups float.

Static per-tensor INT8 fails on a few layers with activation outliers (MiniLM's FFN), not across
the board, so the cheapest fix that keeps most of the INT8 graph is to leave those layers float.
The search measures each group's harm alone (one group INT8, the rest float: the sensitivity probe
that ``--per-layer-sensitivity`` reports, with the calibration cache reused, so no recalibration),
then keeps groups float greedily, worst first, re-quantizing and re-gating after each one, until
the gate passes or ``cap`` groups are float. Roles (one sub-module across all layers, e.g.
``encoder.layer.*.output.dense``) come first: few probes, and outliers usually follow the module
kind; transformer layers (``model.layers.3``) next, for models whose damage sits in a few blocks.

The search only chooses; the caller quantizes, validates and gates (``attempt``), so a search that
gives up leaves nothing behind that the caller's staging directory does not already clean up. It
compares graphs by the task's gated figure (``judge.Metric``: mean cosine, mean Spearman).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .judge import Metric
from .plan import Plan

GRANULARITIES = ("role", "layer")  # cheapest first: a model has fewer roles than layers, usually
Row = dict[str, Any]  # {"group", "nodes", "mean_cosine_alone"} (the metric's key) as the sensitivity probe gives it
Probe = Callable[[Plan, str], list[Row]]  # (plan, granularity) -> rows, worst first
Attempt = Callable[[Plan], dict[str, Any]]  # quantize + validate + gate a plan -> quality report
Log = Callable[[str], None]


@dataclass
class Outcome:
    """What the search ends with: the plan and report of the last attempt, and the manifest record."""

    passed: bool
    plan: Plan
    report: dict[str, Any]
    record: dict[str, Any] = field(default_factory=dict)


def search(plan: Plan, first: dict[str, Any], probe: Probe, attempt: Attempt, cap: int, log: Log,
           metric: Metric) -> Outcome:
    """Try each granularity in turn, from the full plan each time; stop at the first that passes."""
    started = time.perf_counter()
    best = Outcome(False, plan, first)
    tries: list[dict[str, Any]] = []
    for key in GRANULARITIES:
        rows = probe(plan, key)
        outcome = _greedy(plan, first, key, rows, attempt, cap, log, metric)
        tries.append({"granularity": key, "sensitivity": rows, "excluded": outcome.record["excluded"]})
        if outcome.passed or outcome.report[metric.key] > best.report[metric.key]:
            best = outcome
        if outcome.passed:
            break
    best.record = {
        "passed": best.passed, "max_exclusions": cap, "seconds": round(time.perf_counter() - started, 1),
        "first_try": metric.brief(first), "granularity": best.record.get("granularity"),
        "excluded": best.record.get("excluded", []), "tries": tries,
    }
    return best


def _greedy(plan: Plan, first: dict[str, Any], key: str, rows: list[Row], attempt: Attempt, cap: int,
            log: Log, metric: Metric) -> Outcome:
    """Keep groups float one at a time, worst first; each step is re-quantized and re-gated."""
    groups = plan.groups(key)
    alone = f"{metric.key}_alone"
    excluded: list[dict[str, Any]] = []
    current, report = plan, first
    for row in rows[:cap]:
        nodes = groups[row["group"]]
        if len(nodes) == len(current.quantize):
            break  # it would leave nothing in INT8: a float graph is not what was asked for
        current = current.without(nodes, f"auto-exclude {row['group']} "
                                         f"(alone in INT8: {metric.words} {row[alone]:.5f})")
        report = attempt(current)
        excluded.append({"group": row["group"], "module_class": plan.owners.get(nodes[0]), "nodes": len(nodes),
                         alone: row[alone], **metric.brief(report, "after")})
        log(f"  auto-exclude ({key}): {row['group']} float -> {metric.words} {report[metric.key]:.5f}, "
            f"min {report[metric.floor]:.5f}{' (passes)' if report['passed'] else ''}")
        if report["passed"]:
            break
    return Outcome(bool(report["passed"]), current, report, {"granularity": key, "excluded": excluded})
