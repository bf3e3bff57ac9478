"""A publishable HTML report of a ``metrics.json`` document: the page an organiser hands to participants.

Writes into a folder: ``index.html`` and two plots, ``per_vertebra.png`` (mean Dice with its
spread and identification rate per vertebra, in anatomical order) and ``per_region.png``
(the same per region, regions without a ground-truth vertebra left out). The page holds:

- a header: submission, date (UTC), evaluator version and commit, ground-truth source and
  case count (:class:`ReportHeader`);
- every metric with its unit and direction, the ranked ones first, then the unranked
  diagnostics (``*_matched``, ``localisation_mask_mm``) marked as such;
- per-vertebra and per-region tables with the plots' numbers, ``n`` saying what it counts
  (cases for a vertebra, vertebrae for a region);
- one row per case; status cells name files, never the organiser's folders, and a note every
  case shares is said once above the table instead of in every row.

Uses matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import html
import os
import re
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt

from evaluation.aggregate import CASE_METRICS, DIAGNOSTICS, REGIONS
from spine.image import atomic_path, write_text_atomic
from spine.labels import EVALUATED, anatomical_rank, name_of, region_of

__all__ = ["METRICS", "MetricInfo", "ReportHeader", "plot_per_region", "plot_per_vertebra", "public_text",
           "write_report"]

_REGION_COLOURS = {"cervical": "#4C72B0", "thoracic": "#55A868", "lumbar": "#C44E52"}
COMMIT_ENV = "VERSE_GC_COMMIT"
"""Commit of the evaluator when it runs outside a git checkout (a container build may set it)."""


@dataclass(frozen=True)
class MetricInfo:
    """How the page presents one case metric."""

    title: str
    unit: str  # "" for a ratio or a count
    better: str  # "higher", "lower" or "" (a diagnostic count)
    meaning: str
    count: bool = False  # a count of vertebrae or labels: min, max and median are integers


METRICS: dict[str, MetricInfo] = {
    "dice": MetricInfo("Dice", "", "higher", "mean over the ground truth's vertebrae, 0 for a missed one"),
    "hd95": MetricInfo("HD95", "mm", "lower", "95th-percentile surface distance; a missed vertebra scores D"),
    "hd": MetricInfo("HD", "mm", "lower", "maximum surface distance; a missed vertebra scores D"),
    "id_rate": MetricInfo("identification rate", "", "higher",
                          "vertebrae whose predicted centroid is within 20 mm of, and nearest to, the annotated one"),
    "localisation_mm": MetricInfo("localisation error", "mm", "lower",
                                  "distance from predicted to annotated centroid; D without a predicted centroid"),
    "hd95_matched": MetricInfo("HD95, matched only", "mm", "lower", "over predicted vertebrae only (VerSe's)"),
    "hd_matched": MetricInfo("HD, matched only", "mm", "lower", "over predicted vertebrae only"),
    "localisation_matched_mm": MetricInfo("localisation error, matched only", "mm", "lower",
                                          "over vertebrae with a predicted centroid only (VerSe's)"),
    "localisation_mask_mm": MetricInfo("localisation, mask to mask", "mm", "lower",
                                       "predicted mask's centre of mass to the ground-truth mask's; ignores the "
                                       "annotated centroids and the points"),
    "false_positive_labels": MetricInfo("false-positive labels", "", "", "labels predicted but not in the ground truth",
                                        count=True),
    "hd_missing": MetricInfo("missed vertebrae", "", "", "ground-truth vertebrae not predicted", count=True),
}
assert set(METRICS) == set(CASE_METRICS), "every case metric is presented"


# --------------------------------------------------------------------------- header


@dataclass(frozen=True)
class ReportHeader:
    """What the page says about the run it reports."""

    submission: str
    date_utc: str
    version: str
    commit: str  # "" when unknown
    ground_truth: str
    cases: int

    @classmethod
    def now(cls, *, submission: str, ground_truth: str, cases: int) -> ReportHeader:
        """A header dated now, with this evaluator's version and commit."""
        from spine import __version__

        date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        return cls(submission, date, __version__, evaluator_commit(), ground_truth, cases)


def evaluator_commit() -> str:
    """The evaluator's git commit: ``VERSE_GC_COMMIT`` when set, else ``git rev-parse HEAD`` of its
    checkout; '' when neither is known (a commit is never made up)."""
    if os.environ.get(COMMIT_ENV):
        return os.environ[COMMIT_ENV].strip()
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                              text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


# --------------------------------------------------------------------------- plots


def _save(fig: plt.Figure, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches="tight", format="png")
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


def _scored_labels(aggregates: Mapping[str, Any]) -> list[int]:
    per_label = aggregates["per_label"]
    return sorted((v for v in EVALUATED if per_label[name_of(v)]["dice"]["count"] > 0), key=anatomical_rank)


def _scored_regions(aggregates: Mapping[str, Any]) -> list[str]:
    return [str(r) for r in REGIONS if aggregates["per_region"][str(r)]["dice"]["count"] > 0]


def plot_per_vertebra(aggregates: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Mean Dice (error bar: std over cases) and identification rate per vertebra present in the ground truth."""
    per_label = aggregates["per_label"]
    labels = _scored_labels(aggregates)
    names = [name_of(v) for v in labels]
    colours = [_REGION_COLOURS.get(str(region_of(v)), "grey") for v in labels]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(6.0, 0.38 * len(labels) + 2), 5.5), sharex=True)
    if labels:
        _bars(top, names, [per_label[n]["dice"] for n in names], colours, "Dice", spread=True)
        _bars(bottom, names, [per_label[n]["id_rate"] for n in names], colours, "identification rate", spread=False)
    else:
        top.text(0.5, 0.5, "no ground-truth vertebra scored", ha="center", transform=top.transAxes)
    top.set_title("Per vertebra: mean Dice (bar: \u00b1 std) and identification rate; n = cases with it", fontsize=10)
    shown = sorted({str(region_of(v)) for v in labels}, key=list(_REGION_COLOURS).index)
    handles = [plt.Rectangle((0, 0), 1, 1, color=_REGION_COLOURS[r]) for r in shown]
    top.legend(handles, shown, fontsize=7, loc="upper left", bbox_to_anchor=(1.005, 1.0), frameon=False)
    fig.tight_layout()
    return _save(fig, Path(path))


def plot_per_region(aggregates: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Mean Dice and identification rate per spine region (vertebrae of all cases pooled); a region
    without a ground-truth vertebra is left out, not drawn as a zero bar."""
    per_region = aggregates["per_region"]
    names = _scored_regions(aggregates)
    fig, axes = plt.subplots(1, 2, figsize=(max(4.0, 1.6 * len(names) + 2.5), 3.2))
    colours = [_REGION_COLOURS[n] for n in names]
    if names:
        _bars(axes[0], names, [per_region[n]["dice"] for n in names], colours, "Dice", spread=True)
        _bars(axes[1], names, [per_region[n]["id_rate"] for n in names], colours, "identification rate",
              spread=False)
    axes[0].set_title("Dice per region (n = vertebrae)", fontsize=10)
    axes[1].set_title("Identification per region", fontsize=10)
    fig.tight_layout()
    return _save(fig, Path(path))


# --------------------------------------------------------------------------- text


_ABSOLUTE_PATH = re.compile(r"(?<![\w.])/(?:[^\s/:;,()'\"]+/)+([^\s/:;,()'\"]+)")


def public_text(text: str) -> str:
    """``text`` with every absolute path shortened to its last name: the organiser's folders stay private."""
    return _ABSOLUTE_PATH.sub(r"\1", text)


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """``1 case``, ``2 cases``; ``nouns`` for an irregular plural (``vertebrae``)."""
    return f"{count} {noun}" if count == 1 else f"{count} {nouns or noun + 's'}"


def _esc(value: Any) -> str:
    return html.escape(str(value))


def _fixed(value: float, digits: int) -> str:
    return f"{value:.{digits}f}"


def _digits(metric: str) -> int:
    return 2 if METRICS[metric].unit == "mm" else 3


def _stat(metric: str, key: str, value: Any) -> str:
    """One statistic: counts as integers where the value is one, other values at the metric's precision."""
    if key == "count" or (METRICS[metric].count and key in ("min", "max", "median") and float(value).is_integer()):
        return str(int(value))
    return _fixed(float(value), 2 if METRICS[metric].count else _digits(metric))


DASH = "\u2013"


def _direction(info: MetricInfo) -> str:
    return {"higher": "higher is better \u2191", "lower": "lower is better \u2193"}.get(info.better, DASH)


def _metric_rows(aggregates: Mapping[str, Any], metrics: Sequence[str]) -> str:
    rows = []
    for m in metrics:
        info = METRICS[m]
        stats = aggregates[m]
        rows.append(
            f"<tr><td class='text'><b>{_esc(info.title)}</b><br><code>{m}</code></td><td>{_esc(info.unit or DASH)}</td>"
            f"<td class='dir'>{_direction(info)}</td>"
            + "".join(f"<td>{_stat(m, k, stats[k])}</td>" for k in ("mean", "std", "median", "min", "max"))
            + f"<td>{int(stats['count'])}</td><td class='text'>{_esc(info.meaning)}</td></tr>")
    return "\n".join(rows)


def _group_table(groups: Mapping[str, Mapping[str, Any]], names: Sequence[str], counted: str) -> str:
    head = ("<tr><th>" + ("vertebra" if counted == "cases" else "region") + f"</th><th>n ({counted})</th>"
            "<th>Dice mean</th><th>Dice std</th><th>id rate</th><th>HD95 mean (mm)</th></tr>")
    rows = []
    for name in names:
        g = groups[name]
        rows.append(f"<tr><td>{_esc(name)}</td><td>{int(g['dice']['count'])}</td>"
                    f"<td>{_fixed(g['dice']['mean'], 3)}</td><td>{_fixed(g['dice']['std'], 3)}</td>"
                    f"<td>{_fixed(g['id_rate']['mean'], 3)}</td><td>{_fixed(g['hd95']['mean'], 2)}</td></tr>")
    return f"<table>{head}\n" + "\n".join(rows) + "</table>"


def _notes(status: str) -> list[str]:
    return [] if status == "ok" else list(dict.fromkeys(public_text(n) for n in status.split("; ")))


def _shared_notes(cases: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Notes every case has (said once on the page, not in every row); none with a single case."""
    if len(cases) < 2:
        return []
    lists = [_notes(str(r["status"])) for r in cases.values()]
    return [n for n in lists[0] if all(n in other for other in lists[1:])]


def _distance(record: Mapping[str, Any], key: str, defined: bool) -> str:
    if defined:
        return _fixed(float(record[key]), 2)
    return f"<span title='nothing matched ({_fixed(float(record[key]), 2)}, the penalty D, in metrics.json)'>-</span>"


def _case_rows(cases: Mapping[str, Mapping[str, Any]], shared: Sequence[str]) -> str:
    rows = []
    for case_id, r in cases.items():
        matched = int(r["vertebrae"]) - int(r["hd_missing"]) > 0
        notes = [n for n in _notes(str(r["status"])) if n not in shared]
        status = "; ".join(notes) or "ok"
        css = "text status" if status == "ok" else "text status note"
        rows.append(
            "<tr>"
            f"<td class='text case'>{_esc(case_id)}</td><td>{int(r['vertebrae'])}</td><td>{_fixed(r['dice'], 3)}</td>"
            f"<td>{_fixed(r['hd95'], 2)}</td><td>{_fixed(r['hd'], 2)}</td><td>{_fixed(r['id_rate'], 3)}</td>"
            f"<td>{_fixed(r['localisation_mm'], 2)}</td>"
            f"<td class='diag'>{_distance(r, 'hd95_matched', matched)}</td>"
            f"<td class='diag'>{_distance(r, 'localisation_matched_mm', int(r['localised']) > 0)}</td>"
            f"<td class='diag'>{_fixed(r['localisation_mask_mm'], 2)}</td>"
            f"<td>{int(r['false_positive_labels'])}</td><td>{int(r['hd_missing'])}</td>"
            f"<td class='{css}'>{_esc(status)}</td></tr>"
        )
    return "\n".join(rows)


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: "DejaVu Sans", Arial, sans-serif; margin: 1.5em 2em; max-width: 1250px; color: #222; }}
h1 {{ margin-bottom: 0.2em; }}
dl.header {{ display: grid; grid-template-columns: max-content auto; gap: 0.2em 1.2em; margin: 0.8em 0 1.2em; }}
dl.header dt {{ font-weight: bold; }} dl.header dd {{ margin: 0; }}
table {{ border-collapse: collapse; font-size: 0.88em; margin: 0.4em 0 1em; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.55em; text-align: right; vertical-align: top; }}
th {{ background: #f1f3f6; }}
td.text, th.text {{ text-align: left; }}
td.note {{ color: #a33; }}
td.diag, th.diag {{ color: #667; background: #fafafa; }}
tr.section td {{ text-align: left; background: #eef1f5; font-weight: bold; }}
.groups {{ display: grid; grid-template-columns: max-content minmax(0, 1fr); gap: 2em; align-items: start; }}
.groups img {{ max-width: 100%; height: auto; }}
td.dir, td.case {{ white-space: nowrap; }}
table.cases {{ width: 100%; font-size: 0.84em; }}
td.status {{ min-width: 11em; overflow-wrap: anywhere; }}
p.small {{ font-size: 0.85em; color: #555; }}
</style></head><body>
<h1>{title}</h1>
<dl class="header">
<dt>Submission</dt><dd>{submission}</dd>
<dt>Evaluated</dt><dd>{date}</dd>
<dt>Evaluator</dt><dd>verse-gc {version}{commit}</dd>
<dt>Ground truth</dt><dd>{ground_truth}, {case_count}</dd>
<dt>Cases</dt><dd>{summary}</dd>
</dl>
<h2>Results</h2>
<p>Mean over {scored_cases} with a ground-truth vertebra; n counts cases. Identification rate over all
vertebrae: <b>{id_total}</b> ({hits} of {vertebrae}). A missed vertebra scores the penalty D (the
ground-truth image's diagonal, in mm) in the ranked values. Centroids are compared with the ground
truth's annotated centroids: the prediction's points when valid, else its mask's centres of mass.</p>
<table>
<tr><th class="text">metric</th><th>unit</th><th>direction</th><th>mean</th><th>std</th><th>median</th><th>min</th>
<th>max</th><th>n (cases)</th><th class="text">definition</th></tr>
<tr class="section"><td colspan="10">Ranked</td></tr>
{ranked_rows}
<tr class="section"><td colspan="10">Unranked diagnostics (never rank on them: predicting fewer vertebrae can
improve a matched-only value; mask to mask ignores the annotated centroids)</td></tr>
{diagnostic_rows}
</table>
<h2>Per vertebra</h2>
<div class="groups"><div>{vertebra_table}</div><div><img src="per_vertebra.png"
alt="Dice and identification rate per vertebra" width="{vertebra_width}"></div></div>
<p class="small">n = cases whose ground truth has the vertebra; HD95 scores D where it was missed.</p>
<h2>Per region</h2>
<div class="groups"><div>{region_table}</div><div><img src="per_region.png"
alt="Dice and identification rate per region" width="520"></div></div>
<p class="small">n = vertebrae of the region, all cases pooled; regions without a ground-truth vertebra are left
out.</p>
<h2>Cases</h2>
{shared_notes}
<table class="cases"><tr><th class="text">case</th><th>vertebrae</th><th>Dice</th><th>HD95 mm</th><th>HD mm</th>
<th>id rate</th><th>localisation mm</th><th class="diag">HD95 matched</th><th class="diag">localisation matched</th>
<th class="diag">localisation mask to mask</th><th>FP labels</th><th>missed</th><th class="text">status</th></tr>
{case_rows}
</table>
<p class="small">Grey columns are unranked diagnostics; '-' marks a matched-only value over nothing.</p>
{unmatched}
</body></html>
"""


def _summary(cases: Mapping[str, int]) -> str:
    parts = [f"{plural(int(cases['total']), 'case')} scored"]
    for key, what in (("missing_prediction", "without a prediction"), ("unreadable_prediction",
                                                                        "with an unreadable prediction"),
                      ("error", "failed"), ("without_points", "without points"),
                      ("unusable_points", "with unusable points"), ("resampled", "resampled")):
        count = int(cases.get(key, 0))
        if count:
            parts.append(f"{count} {what}")
    return ", ".join(parts)


def write_report(document: Mapping[str, Any], folder: str | os.PathLike[str],
                 header: ReportHeader | None = None) -> Path:
    """Write the plots and ``index.html`` for a metrics document into ``folder``; returns the page's path.

    ``header`` None: a header with an unnamed submission, dated now, for the document's cases.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    aggregates = document["aggregates"]
    cases = document["case"]
    if header is None:
        header = ReportHeader.now(submission="(unnamed)", ground_truth="(not given)", cases=len(cases))
    plot_per_vertebra(aggregates, folder / "per_vertebra.png")
    plot_per_region(aggregates, folder / "per_region.png")
    labels = _scored_labels(aggregates)
    ranked = [m for m in CASE_METRICS if m not in DIAGNOSTICS and METRICS[m].better]
    diagnostics = [m for m in CASE_METRICS if m not in ranked]
    shared = _shared_notes(cases)
    shared_html = ("<p>Every case: " + "; ".join(_esc(n) for n in shared) + ".</p>") if shared else ""
    unmatched = document.get("unmatched_predictions") or []
    unmatched_html = ""
    if unmatched:
        items = "".join(f"<li>{_esc(public_text(', '.join(f'{k}: {v}' for k, v in u.items())))}</li>"
                        for u in unmatched)
        unmatched_html = f"<h2>Predictions not scored ({plural(len(unmatched), 'prediction')})</h2><ul>{items}</ul>"
    scored = int(aggregates["cases"]["scored"])
    page = _PAGE.format(
        title=f"Evaluation report: {_esc(header.submission)}",
        submission=_esc(header.submission), date=_esc(header.date_utc), version=_esc(header.version),
        commit=f", commit <code>{_esc(header.commit[:12])}</code>" if header.commit else ", commit unknown",
        ground_truth=_esc(public_text(header.ground_truth)), case_count=plural(header.cases, "case"),
        summary=_esc(_summary(aggregates["cases"])), scored_cases=plural(scored, "case"),
        id_total=_fixed(aggregates["id_rate_total"], 3), hits=int(aggregates["hits_total"]),
        vertebrae=plural(int(aggregates["vertebrae_total"]), "vertebra", "vertebrae"),
        ranked_rows=_metric_rows(aggregates, ranked), diagnostic_rows=_metric_rows(aggregates, diagnostics),
        vertebra_table=_group_table(aggregates["per_label"], [name_of(v) for v in labels], "cases"),
        vertebra_width=min(640, int(38 * len(labels) + 200)),
        region_table=_group_table(aggregates["per_region"], _scored_regions(aggregates), "vertebrae"),
        shared_notes=shared_html, case_rows=_case_rows(cases, shared), unmatched=unmatched_html,
    )
    return write_text_atomic(folder / "index.html", page)

