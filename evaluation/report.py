"""HTML report of a ``metrics.json`` document: per-vertebra and per-region plots, per-case table.

Writes into a folder: ``per_vertebra.png`` (mean Dice with its spread and identification
rate per vertebra, in anatomical order), ``per_region.png`` (the same per region) and
``index.html`` showing both with the aggregates and one row per case. Uses matplotlib's
Agg backend (no display needed).
"""

from __future__ import annotations

import html
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt

from evaluation.aggregate import CASE_METRICS, REGIONS
from spine.image import atomic_path, write_text_atomic
from spine.labels import EVALUATED, anatomical_rank, name_of, region_of

__all__ = ["plot_per_region", "plot_per_vertebra", "write_report"]

_REGION_COLOURS = {"cervical": "#4C72B0", "thoracic": "#55A868", "lumbar": "#C44E52"}


def _save(fig: plt.Figure, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
    plt.close(fig)
    return path


def _bars(ax: plt.Axes, names: list[str], stats: list[Mapping[str, Any]], colours: list[str], ylabel: str,
          *, spread: bool) -> None:
    x = range(len(names))
    means = [s["mean"] for s in stats]
    errors = [s["std"] for s in stats] if spread else None
    ax.bar(x, means, color=colours, yerr=errors, capsize=2, error_kw={"elinewidth": 0.8, "alpha": 0.7})
    for xi, s in zip(x, stats, strict=True):
        ax.text(xi, 1.03, f"n={s['count']}", ha="center", va="bottom", fontsize=6)
    ax.set_xticks(list(x), names, fontsize=8)
    ax.set_ylim(0, 1.18)
    ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)


def plot_per_vertebra(aggregates: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Mean Dice (error bar: std over cases) and identification rate per vertebra present in the ground truth."""
    per_label = aggregates["per_label"]
    labels = sorted((v for v in EVALUATED if per_label[name_of(v)]["dice"]["count"] > 0), key=anatomical_rank)
    names = [name_of(v) for v in labels]
    colours = [_REGION_COLOURS.get(str(region_of(v)), "grey") for v in labels]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(6.0, 0.38 * len(labels) + 2), 5.5), sharex=True)
    if labels:
        _bars(top, names, [per_label[n]["dice"] for n in names], colours, "Dice", spread=True)
        _bars(bottom, names, [per_label[n]["id_rate"] for n in names], colours, "identification rate", spread=False)
    else:
        top.text(0.5, 0.5, "no ground-truth vertebra scored", ha="center", transform=top.transAxes)
    top.set_title("Per vertebra: mean Dice (bar: \u00b1 std) and identification rate; n = cases with it", fontsize=10)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in _REGION_COLOURS.values()]
    top.legend(handles, list(_REGION_COLOURS), fontsize=7, loc="upper left", bbox_to_anchor=(1.005, 1.0),
               frameon=False)
    fig.tight_layout()
    return _save(fig, Path(path))


def plot_per_region(aggregates: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Mean Dice and identification rate per spine region (vertebrae of all cases pooled)."""
    per_region = aggregates["per_region"]
    names = [str(r) for r in REGIONS]
    fig, axes = plt.subplots(1, 2, figsize=(7.5, 3.2))
    colours = [_REGION_COLOURS[n] for n in names]
    _bars(axes[0], names, [per_region[n]["dice"] for n in names], colours, "Dice", spread=True)
    _bars(axes[1], names, [per_region[n]["id_rate"] for n in names], colours, "identification rate", spread=False)
    axes[0].set_title("Dice per region", fontsize=10)
    axes[1].set_title("Identification per region", fontsize=10)
    fig.tight_layout()
    return _save(fig, Path(path))


def _number(value: Any, digits: int = 3) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return html.escape(str(value))
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def _distance(record: Mapping[str, Any], key: str, defined: bool) -> str:
    if defined:
        return _number(record[key], 2)
    return f"<span title='nothing matched ({_number(record[key], 2)}, the penalty D, in metrics.json)'>-</span>"


def _case_rows(cases: Mapping[str, Mapping[str, Any]]) -> str:
    rows = []
    for case_id, r in cases.items():
        matched = int(r["vertebrae"]) - int(r["hd_missing"]) > 0
        status = str(r["status"])
        css = "" if status == "ok" else " class='note'"
        rows.append(
            "<tr>"
            f"<td>{html.escape(case_id)}</td><td>{r['vertebrae']}</td><td>{_number(r['dice'])}</td>"
            f"<td>{_number(r['hd95'], 2)}</td><td>{_distance(r, 'hd95_matched', matched)}</td>"
            f"<td>{_number(r['hd'], 2)}</td><td>{_number(r['id_rate'])}</td>"
            f"<td>{_number(r['localisation_mm'], 2)}</td>"
            f"<td>{_distance(r, 'localisation_matched_mm', int(r['localised']) > 0)}</td>"
            f"<td>{r['false_positive_labels']}</td><td>{r['hd_missing']}</td><td{css}>{html.escape(status)}</td>"
            "</tr>"
        )
    return "\n".join(rows)


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>verse-gc evaluation report</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 1200px; }}
table {{ border-collapse: collapse; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }}
td:first-child, td:last-child, th:first-child, th:last-child {{ text-align: left; }}
td.note {{ color: #a33; }}
img {{ max-width: 100%; }}
</style></head><body>
<h1>Evaluation report</h1>
<p>{summary}</p>
<table><tr><th>metric</th><th>mean</th><th>std</th><th>median</th><th>min</th><th>max</th><th>count</th></tr>
{aggregate_rows}
</table>
<h2>Per vertebra</h2><img src="per_vertebra.png" alt="Dice and identification rate per vertebra">
<h2>Per region</h2><img src="per_region.png" alt="Dice and identification rate per region">
<h2>Cases</h2>
<table><tr><th>case</th><th>vertebrae</th><th>Dice</th><th>HD95 mm</th><th>HD95 matched</th><th>HD mm</th>
<th>id rate</th><th>localisation mm</th><th>localisation matched</th><th>FP labels</th><th>HD missing</th>
<th>status</th></tr>
{case_rows}
</table>
{unmatched}
</body></html>
"""


def write_report(document: Mapping[str, Any], folder: str | os.PathLike[str]) -> Path:
    """Write plots and ``index.html`` for a metrics document into ``folder``; returns the page's path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    aggregates = document["aggregates"]
    plot_per_vertebra(aggregates, folder / "per_vertebra.png")
    plot_per_region(aggregates, folder / "per_region.png")
    aggregate_rows = "\n".join(
        f"<tr><td>{m}</td>" + "".join(f"<td>{_number(aggregates[m][k])}</td>"
                                      for k in ("mean", "std", "median", "min", "max", "count")) + "</tr>"
        for m in CASE_METRICS)
    cases = aggregates["cases"]
    summary = (f"{cases['total']} cases ({cases['missing_prediction']} missing predictions, "
               f"{cases['unreadable_prediction']} unreadable, {cases['error']} errors); identification rate over "
               f"all vertebrae {aggregates['id_rate_total']:.3f} ({aggregates['hits_total']} of "
               f"{aggregates['vertebrae_total']}). Distances in mm; a missed vertebra scores "
               f"the penalty D (the ground-truth image's diagonal) in the ranked values; '-' marks a matched-only "
               f"value over nothing.")
    unmatched = document.get("unmatched_predictions") or []
    unmatched_html = ""
    if unmatched:
        items = "".join(f"<li>{html.escape(', '.join(f'{k}: {v}' for k, v in u.items()))}</li>" for u in unmatched)
        unmatched_html = f"<h2>Predictions not scored</h2><ul>{items}</ul>"
    page = _PAGE.format(summary=html.escape(summary), aggregate_rows=aggregate_rows,
                        case_rows=_case_rows(document["case"]), unmatched=unmatched_html)
    return write_text_atomic(folder / "index.html", page)
