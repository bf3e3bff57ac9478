"""Aggregates over cases: what a leaderboard reads, always finite.

Input: the case records of :func:`evaluation.score.score_case` (plain dicts, so the
aggregates can be recomputed from a ``metrics.json``). Output keys (no dots anywhere)::

    {<metric>: {"mean", "std", "median", "min", "max", "count"}   for metric in
         dice, hd95, hd, id_rate, localisation_mm (ranked), hd95_matched, hd_matched,
         localisation_matched_mm, localisation_mask_mm, false_positive_labels, hd_missing,
     "id_rate_total": hits over all cases / ground-truth vertebrae over all cases,
     "hits_total", "vertebrae_total",
     "cases": {"total", "scored", "missing_prediction", "unreadable_prediction", "error",
               "without_points", "unusable_points", "resampled"},
     "per_label":  {"C1".."L6", "T13": {"dice": stats, "id_rate": stats, "hd95": stats}},
     "per_region": {"cervical" | "thoracic" | "lumbar": {"dice": stats, "id_rate": stats, "hd95": stats}}}

Rules:

- Ranked metrics (:data:`RANKED`) and the counts are over EVERY case whose ground truth
  has a vertebra: a missed vertebra scores the penalty D in the case's value, so no case
  drops out because a submission predicted nothing (DESIGN.md, "Ranking safety"). Missing
  and unreadable predictions count (Dice 0, id 0, distances D).
- ``localisation_mask_mm`` (never for ranking: it ignores the annotated centroids) over the
  same cases as the ranked metrics.
- ``*_matched`` (VerSe-comparable, never for ranking): over the cases where at least one
  vertebra was matched (``hd95_matched``, ``hd_matched``) or has a predicted centroid
  (``localisation_matched_mm``).
- Cases without ground-truth vertebrae (``vertebrae`` 0) enter no statistic; that depends
  on the ground truth only, so it is the same for every submission.
- ``count`` says how many values a statistic is over. With count 0 every statistic is 0.0
  (and ``id_rate_total`` is 0.0 with ``vertebrae_total`` 0): paths like
  ``aggregates.dice.mean`` always resolve to a finite number.
- ``std`` is the population standard deviation (ddof 0); ``median`` NumPy's.
- Per label: ``dice``, ``id_rate`` (the mean of 0/1 hits, so ``id_rate.mean`` is the
  label's identification rate) and ``hd95`` (D where it was missed) over the cases whose
  ground truth has that vertebra. Per region the same, pooling the region's vertebrae of
  all cases.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from evaluation.score import INVALID_POINTS, NO_POINTS, RESAMPLED, UNREADABLE_POINTS
from spine.labels import EVALUATED, Region, name_of, region_of

__all__ = ["CASE_METRICS", "DIAGNOSTICS", "GROUP_METRICS", "LEADERBOARD_PATHS", "RANKED", "REGIONS", "aggregate",
           "statistics"]

CASE_METRICS: tuple[str, ...] = ("dice", "hd95", "hd", "id_rate", "localisation_mm", "hd95_matched", "hd_matched",
                                 "localisation_matched_mm", "localisation_mask_mm", "false_positive_labels",
                                 "hd_missing")
RANKED: tuple[str, ...] = ("dice", "hd95", "hd", "id_rate", "localisation_mm")
"""Case metrics a leaderboard may rank on: every case with ground-truth vertebrae counts."""
DIAGNOSTICS: tuple[str, ...] = ("hd95_matched", "hd_matched", "localisation_matched_mm", "localisation_mask_mm")
"""Unranked diagnostics: predicting fewer vertebrae can improve a ``*_matched`` value, and
``localisation_mask_mm`` ignores the annotated centroids."""
LEADERBOARD_PATHS: dict[str, int] = {
    "aggregates.id_rate.mean": 1, "aggregates.id_rate_total": 1, "aggregates.dice.mean": 1,
    "aggregates.hd95.mean": -1, "aggregates.hd.mean": -1, "aggregates.localisation_mm.mean": -1,
}
"""The README's leaderboard paths, each with its direction (+1: higher is better, -1: lower is better)."""
GROUP_METRICS: dict[str, int] = {"dice": 1, "id_rate": 1, "hd95": -1}
"""Ranked per group: ``aggregates.per_label.<C1..L6, T13>.<metric>.mean`` and
``aggregates.per_region.<region>.<metric>.mean``, with their directions."""
REGIONS: tuple[Region, ...] = (Region.CERVICAL, Region.THORACIC, Region.LUMBAR)


def statistics(values: Iterable[float]) -> dict[str, float | int]:
    """mean, std (ddof 0), median, min, max and count of finite values; all 0.0 with count 0.

    Non-finite values are not expected (callers pass defined values only); they are
    dropped rather than poisoning the mean, and ``count`` excludes them.
    """
    v = np.asarray([float(x) for x in values if x is not None and math.isfinite(float(x))], dtype=np.float64)
    if v.size == 0:
        return {"mean": 0.0, "std": 0.0, "median": 0.0, "min": 0.0, "max": 0.0, "count": 0}
    return {"mean": float(v.mean()), "std": float(v.std()), "median": float(np.median(v)),
            "min": float(v.min()), "max": float(v.max()), "count": int(v.size)}


def _defined(record: Mapping[str, Any], metric: str) -> bool:
    """Whether ``record[metric]`` is a real value (not a sentinel) for this case."""
    vertebrae = int(record.get("vertebrae", 0))
    if vertebrae == 0:
        return False
    if metric in ("hd95_matched", "hd_matched"):
        return vertebrae - int(record.get("hd_missing", vertebrae)) > 0
    if metric == "localisation_matched_mm":
        return int(record.get("localised", 0)) > 0
    return True


def _has_note(status: str, prefix: str | tuple[str, ...]) -> bool:
    return any(note.startswith(prefix) for note in status.split("; "))


def _status_kind(status: str) -> str:
    for kind in ("missing prediction", "unreadable prediction", "error"):
        if status.startswith(kind):
            return kind.replace(" ", "_")
    return ""


def aggregate(cases: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Aggregates of case records ``{case id: record}`` (see the module docstring for keys and rules)."""
    records: Sequence[Mapping[str, Any]] = list(cases.values())
    out: dict[str, Any] = {
        metric: statistics(r[metric] for r in records if _defined(r, metric)) for metric in CASE_METRICS
    }
    hits = sum(int(r.get("hits", 0)) for r in records)
    vertebrae = sum(int(r.get("vertebrae", 0)) for r in records)
    out["id_rate_total"] = hits / vertebrae if vertebrae else 0.0
    out["hits_total"] = hits
    out["vertebrae_total"] = vertebrae
    kinds = [_status_kind(str(r.get("status", ""))) for r in records]
    out["cases"] = {
        "total": len(records),
        "scored": sum(int(r.get("vertebrae", 0)) > 0 for r in records),
        "missing_prediction": kinds.count("missing_prediction"),
        "unreadable_prediction": kinds.count("unreadable_prediction"),
        "error": kinds.count("error"),
        "without_points": sum(_has_note(str(r.get("status", "")), NO_POINTS) for r in records),
        "unusable_points": sum(_has_note(str(r.get("status", "")), (UNREADABLE_POINTS, INVALID_POINTS))
                               for r in records),
        "resampled": sum(_has_note(str(r.get("status", "")), RESAMPLED) for r in records),
    }

    per_label: dict[int, dict[str, list[float]]] = {v: {"dice": [], "id_rate": [], "hd95": []} for v in EVALUATED}
    for record in records:
        for name, vertebra in record.get("per_vertebra", {}).items():
            label = _label_of_name(name)
            if label is None:
                continue
            per_label[label]["dice"].append(float(vertebra["dice"]))
            per_label[label]["id_rate"].append(1.0 if vertebra.get("identified") else 0.0)
            if "hd95" in vertebra:
                per_label[label]["hd95"].append(float(vertebra["hd95"]))
    out["per_label"] = {name_of(v): {k: statistics(vals) for k, vals in per_label[v].items()} for v in EVALUATED}
    out["per_region"] = {
        str(region): {
            k: statistics(x for v in EVALUATED if region_of(v) == region for x in per_label[v][k])
            for k in ("dice", "id_rate", "hd95")
        }
        for region in REGIONS
    }
    return out


_NAME_TO_LABEL = {name_of(v): v for v in EVALUATED}


def _label_of_name(name: str) -> int | None:
    return _NAME_TO_LABEL.get(name)
