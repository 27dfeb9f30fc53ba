"""Bars over the runs of a task's cases, defined once: each run's own check and the verdict over all.

A ``Target`` names the case groups it covers, the record field it reads (dotted for nested dicts,
e.g. ``fidelity.albedo_error``), and how the runs combine: ``median`` of the field, ``max`` of it, or
``share`` of runs whose (boolean) field is true.  A run is within the target when its own value is
(for ``share``: when its flag is true).
"""

from __future__ import annotations

import statistics
from typing import NamedTuple


class Target(NamedTuple):
    key: str
    label: str
    groups: tuple[str, ...]  # the case groups (a record's ``group``) it is judged over
    field: str  # dotted path into a run record
    statistic: str  # "median", "max" or "share"
    op: str  # ">=" or "<="
    goal: float
    unit: str  # as bench/report formats it: "score", "fraction", "percent", "degrees", "seconds"


def target_row(key, label, op, goal, unit, value, basis: str) -> dict:
    """A verdict row: the value against the goal, met or not and the margin (positive: headroom);
    ``met`` and ``margin`` are None when nothing was measured (``value`` None)."""
    row = {"key": key, "label": label, "op": op, "goal": goal, "unit": unit, "value": value, "basis": basis,
           "met": None, "margin": None}
    if value is not None:
        margin = value - goal if op == ">=" else goal - value
        row.update(met=margin >= 0, margin=margin)
    return row


def field_value(record: dict, field: str):
    """The record's value at a dotted path, or None where a part is missing."""
    value = record
    for part in field.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def within(value, target: Target) -> bool:
    """Whether one run's value meets ``target`` (a ``share`` target: whether its flag is true)."""
    if target.statistic == "share":
        return bool(value)
    return value is not None and (value >= target.goal if target.op == ">=" else value <= target.goal)


def run_checks(record: dict, targets: list[Target]) -> dict[str, bool]:
    """{target key: whether this run meets it} for the targets that cover the record's group.

    Args:
        record: one run's record, with ``group`` and the fields the targets read.
        targets: the task's targets.
    """
    return {t.key: within(field_value(record, t.field), t) for t in targets if record.get("group") in t.groups}


def evaluate(records: list[dict], targets: list[Target]) -> list[dict]:
    """One verdict row (``target_row``) per target over the runs of its groups; failed runs are left out.

    Args:
        records: run records (a record with ``error`` failed and is not counted).
        targets: the task's targets.
    """
    rows = []
    for t in targets:
        runs = [r for r in records if "error" not in r and r.get("group") in t.groups]
        values = [field_value(r, t.field) for r in runs]
        values = [v for v in values if v is not None]
        inside = sum(within(v, t) for v in values)
        if not values:
            rows.append(target_row(t.key, t.label, t.op, t.goal, t.unit, None, "no run measured it"))
            continue
        if t.statistic == "share":
            value, basis = inside / len(values), f"{inside}/{len(values)} runs"
        else:
            value = statistics.median(values) if t.statistic == "median" else max(values)
            basis = f"{t.statistic} of {len(values)} run(s); {inside}/{len(values)} within"
        rows.append(target_row(t.key, t.label, t.op, t.goal, t.unit, value, basis))
    return rows
