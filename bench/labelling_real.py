"""Benchmark the labelling decoder on a real detector's output: the VID dataset (1,947 CTs).

Data: ``../shared/data/vid-keypoints`` (``--data``), the Training split of the VID vertebra
identification dataset (Buergin, Prevost, Stollenga, MICCAI 2023; CC BY-SA 4.0;
ImFusionGmbH/VID-vertebra-identification-dataset): per CT, a real U-Net's vertebral-body
detections with C/T/L segment probabilities and the annotated level of every body.

Metrics (DESIGN.md): a ground-truth vertebra v is *identified* when the candidate labelled v
lies within 20 mm of it and v's centroid is the ground-truth centroid nearest to that
candidate; ``id rate`` = identified / annotated vertebrae. A scan is *whole right* when all
its annotated vertebrae are identified and no accepted candidate carries a label that is
not identified (a wrong label or a false detection kept). Reported overall, per region,
at the junctions (thoracolumbar: T11, T12, T13, L1; lumbosacral: L4, L5, L6) and on variant
spines (annotated L6, T13, 11 thoracic = T11 followed by L1, 4 lumbar = L4 annotated after T12
with no L5).

The figures are also given per source (``mapping-export-Training.txt``: CT Colonography,
Pancreas-CT, VerSe 2019/2020). ``--pedicle-profile`` prints, per source, the median change of the
log interpedicular width between consecutive annotated vertebrae (the annotators' own body and
pedicle keypoints, :func:`spine.vid.pedicle_widths`): the same anatomy gives the same profile, so a
source whose profile sits one level off the others labels its levels differently.

Error breakdown: detector misses (no candidate within 20 mm), true detections rejected,
false detections kept (accepted, no annotated centroid within 20 mm), wrong labels, and the
*runs* of wrongly labelled consecutive vertebrae with one common level offset (where each
starts, head end). Confidence: reliability table of the accepted candidates' ``confidence``
against being right, and the expected calibration error (ECE, 10 equal-width bins).

Anything fitted (the chain prior, with ``--vid-prior`` on the VID training scans too; with
``--calibrate`` a Platt map of the confidences) is fitted on the training folds only: K-fold
cross-validation by patient (``--folds``; the CT Colonography supine/prone pairs and the VerSe
2019/2020 duplicates share a patient). Figures
are the pooled held-out result and the mean +- sd over folds.

Evidence modes (``--evidence``): ``broadcast`` (the baseline a new user would try: each
candidate's 26 per-level scores set to its segment's probability, the shipped prior, no
fitting) and ``region`` (the probabilities as region evidence, :mod:`algorithm.labelling`).
``--fix-one`` (region evidence) gives the decoder one true label per scan, as ``predict --fix``
does: a detection drawn at random (``--seed``) among those within 20 mm of an annotated
vertebra is fixed to that vertebra's level (the annotation loop).

``--labeller learned`` reads the region evidence through the chain-context model
(:mod:`algorithm.labelling.context`), one trained per fold on that fold's training scans
(``export/label_context.py``, cached in ``--context-cache``), inside the same decoder; ``decoder`` (default)
is the decoder's own reading. ``--apart`` sources (default Pancreas-CT, whose annotated levels sit one
level above the anatomy) are never trained on, stay out of the totals, and are reported apart, as
annotated and with every level moved one down.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import logging
import sys
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from algorithm.labelling import ChainDecoder, Constraints, Fix  # noqa: E402
from algorithm.labelling.region_model import RegionModel, fit_region_model, training_ranks  # noqa: E402
from algorithm.labelling_prior import (  # noqa: E402
    CHAIN_LABELS,
    LabellingPrior,
    fit,
    read_landmarks,
    sacrum_room,
    vid_landmarks,
)
from evaluation.metrics import calibration  # noqa: E402
from spine.labels import LOCATE_CHANNELS, anatomical_rank, name_of, region_of  # noqa: E402
from spine.vid import (  # noqa: E402
    VidScan,
    pedicle_widths,
    read_mapping,
    read_scan,
    scan_ids,
    scan_patients,
    source_of,
)

DEFAULT_DATA = REPO.parent / "shared" / "data" / "vid-keypoints"
DEFAULT_LANDMARKS = REPO / "export" / "data" / "verse2020_landmarks.csv"
HIT_MM = 20.0
_REGION_OF_COLUMN = np.array(["CTL".index(region_of(label).value[0].upper()) for label in LOCATE_CHANNELS])
THORACOLUMBAR = frozenset({18, 19, 28, 20})
LUMBOSACRAL = frozenset({23, 24, 25})

log = logging.getLogger("bench.labelling_real")


def read_patients(folder: Path) -> dict[str, str]:
    """scan id -> patient key from ``mapping-export-Training.txt`` (scan id itself when absent)."""
    return scan_patients(folder)


def broadcast_scores(probabilities: np.ndarray) -> np.ndarray:
    """(N, 26) per-level scores: each level's column set to its segment's probability (the baseline)."""
    return probabilities[:, _REGION_OF_COLUMN]


def variants_of(labels: np.ndarray) -> list[str]:
    """Variant names of an annotated spine (see the module docstring)."""
    present = set(int(v) for v in labels)
    out = []
    if 25 in present:
        out.append("L6")
    if 28 in present:
        out.append("T13")
    if 18 in present and 20 in present and 19 not in present and 28 not in present:
        out.append("11 thoracic")
    if 23 in present and 24 not in present and (19 in present or 28 in present):
        out.append("4 lumbar")
    return out


@dataclass
class Tally:
    """Counts over scans, filled by :func:`score_scan`."""

    scans: int = 0
    whole_right: int = 0
    strict_right: int = 0
    detected: int = 0  # scans whose every annotated vertebra has a detection within 20 mm
    detected_right: int = 0
    vertebrae: Counter = field(default_factory=Counter)
    identified: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)
    run_starts: Counter = field(default_factory=Counter)
    confidence: list = field(default_factory=list)
    correct: list = field(default_factory=list)
    uncertain_right: Counter = field(default_factory=Counter)
    seconds: list = field(default_factory=list)

    def merge(self, other: Tally) -> None:
        self.scans += other.scans
        self.whole_right += other.whole_right
        self.strict_right += other.strict_right
        self.detected += other.detected
        self.detected_right += other.detected_right
        for name in ("vertebrae", "identified", "errors", "run_starts", "uncertain_right"):
            getattr(self, name).update(getattr(other, name))
        self.confidence += other.confidence
        self.correct += other.correct
        self.seconds += other.seconds

    def rate(self, group: str) -> float:
        return self.identified[group] / self.vertebrae[group] if self.vertebrae[group] else float("nan")


def score_scan(scan: VidScan, labels: np.ndarray, confidence: np.ndarray, tally: Tally,
               uncertain: bool | None = None) -> None:
    """Add one decoded scan to ``tally`` (module docstring: identification, errors, runs, confidence)."""
    truth, truth_labels = scan.truth_mm, scan.truth_labels
    candidates = scan.bodies_mm
    distance = np.linalg.norm(candidates[:, None, :] - truth[None, :, :], axis=2) if len(truth) else \
        np.full((len(candidates), 0), np.inf)
    nearest = np.argmin(distance, axis=1) if len(truth) else np.zeros(len(candidates), dtype=int)
    near_mm = distance[np.arange(len(candidates)), nearest] if len(truth) else np.full(len(candidates), np.inf)
    matched = near_mm <= HIT_MM  # candidate sits on an annotated vertebra
    hit = np.zeros(len(truth), dtype=bool)
    for c in np.flatnonzero(labels):
        if matched[c] and truth_labels[nearest[c]] == labels[c]:
            hit[nearest[c]] = True
    groups = ["all"] + [f"variant {v}" for v in variants_of(truth_labels)]
    for k, label in enumerate(truth_labels):
        label = int(label)
        names = [*groups, region_of(label).value]
        if label in THORACOLUMBAR:
            names.append("thoracolumbar junction")
        if label in LUMBOSACRAL:
            names.append("lumbosacral junction")
        for name in names:
            tally.vertebrae[name] += 1
            tally.identified[name] += int(hit[k])
    accepted = labels > 0
    wrong_accepted = accepted & ~(matched & (truth_labels[nearest] == labels) if len(truth) else accepted)
    right = bool(hit.all())
    tally.scans += 1
    tally.whole_right += int(right)
    tally.strict_right += int(right and not wrong_accepted.any())
    if uncertain is not None:
        tally.uncertain_right[(bool(uncertain), right)] += 1
    # Error breakdown.
    detected = np.zeros(len(truth), dtype=bool)
    if len(truth):
        detected = (distance <= HIT_MM).any(axis=0)
    tally.detected += int(detected.all())
    tally.detected_right += int(detected.all() and right)
    tally.errors["annotated vertebrae"] += len(truth)
    tally.errors["detector missed"] += int((~detected).sum())
    tally.errors["false detections"] += int((~matched).sum())
    tally.errors["false detections kept"] += int((accepted & ~matched).sum())
    tally.errors["true detections rejected"] += int((~accepted & matched).sum())
    tally.errors["true detections wrongly labelled"] += int((accepted & matched & wrong_accepted).sum())
    # Runs: consecutive (head to foot) accepted true detections with the same non-zero rank offset.
    chain = [c for c in np.argsort(-candidates[:, 2]) if accepted[c] and matched[c]] if len(candidates) else []
    previous = 0
    for c in chain:
        offset = anatomical_rank(int(labels[c])) - anatomical_rank(int(truth_labels[nearest[c]]))
        if offset != 0 and offset != previous:
            tally.errors["wrong runs"] += 1
            tally.run_starts[f"{name_of(int(truth_labels[nearest[c]]))} {offset:+g}"] += 1
        previous = offset
    tally.confidence += list(confidence[accepted])
    tally.correct += list((accepted & ~wrong_accepted)[accepted])


def decode_broadcast(decoder: ChainDecoder, scan: VidScan) -> tuple[np.ndarray, np.ndarray, bool | None]:
    result = decoder.label(scan.bodies_mm, broadcast_scores(scan.region_probabilities))
    return result.labels, result.confidence, None


def decode_region(decoder: ChainDecoder, scan: VidScan,
                  constraints: Constraints | None = None) -> tuple[np.ndarray, np.ndarray, bool | None]:
    result = decoder.label(scan.bodies_mm, regions=scan.region_probabilities, constraints=constraints)
    return result.labels, result.confidence, result.uncertain


def one_true_fix(scan: VidScan, seed: int) -> Constraints | None:
    """One true label, as a user would give it: a detection drawn at random among those within 20 mm of
    an annotated vertebra, fixed to that vertebra's level at the detection's own position (None when the
    scan has no such detection)."""
    if not len(scan.truth_mm) or not len(scan.bodies_mm):
        return None
    distance = np.linalg.norm(scan.bodies_mm[:, None, :] - scan.truth_mm[None, :, :], axis=2)
    true = np.flatnonzero(distance.min(axis=1) <= HIT_MM)
    if not len(true):
        return None
    rng = np.random.default_rng([seed, zlib.crc32(scan.scan.encode())])  # the same draw in every run
    k = int(rng.choice(true))
    return Constraints(fixes=(Fix(int(scan.truth_labels[int(np.argmin(distance[k]))]), tuple(scan.bodies_mm[k])),))


def fit_prior(verse: np.ndarray, verse_sacrum: np.ndarray, training: list[VidScan]) -> LabellingPrior:
    """The chain prior on the VerSe landmarks and the training scans' ground truth (VerSe alone
    when ``training`` is empty)."""
    if not training:
        return fit(verse, source="VerSe 2020 landmarks", sacrum_below=verse_sacrum)
    vid, vid_sacrum = vid_landmarks(training)
    return fit(np.concatenate([verse, vid]), source="VerSe 2020 landmarks + VID training folds",
               sacrum_below=np.concatenate([verse_sacrum, vid_sacrum]))


def fit_calibration(confidence: np.ndarray, correct: np.ndarray) -> tuple[float, float]:
    """Platt scaling ``(a, b)``: the log loss of ``sigmoid(a logit(p) + b)`` against correctness,
    minimised on a grid (a in [0.02, 2], b in [-4, 4]; a grid, not Newton: the raw posteriors
    pile up at 1, where an unbounded fit diverges)."""
    p = np.clip(confidence, 1e-6, 1 - 1e-6)
    logit = np.log(p) - np.log1p(-p)
    best, argbest = np.inf, (1.0, 0.0)
    for a in np.geomspace(0.02, 2.0, 60):
        for b in np.linspace(-4.0, 4.0, 81):
            z = a * logit + b
            loss = float(np.mean(np.logaddexp(0.0, -z) * correct + np.logaddexp(0.0, z) * (1 - correct)))
            if loss < best:
                best, argbest = loss, (float(a), float(b))
    return argbest


def fit_evidence(scans: list[VidScan], *, groups: str, l2: float) -> RegionModel:
    """The region evidence model (:mod:`algorithm.labelling.region_model`) on these scans' detections."""
    rank = {label: k for k, label in enumerate(CHAIN_LABELS)}
    regions = np.concatenate([s.region_probabilities for s in scans])
    ranks = np.concatenate([training_ranks(s.bodies_mm, s.truth_mm, np.array([rank[int(v)] for v in s.truth_labels]),
                                           HIT_MM) for s in scans])
    return fit_region_model(regions, ranks, groups=groups, l2=l2)


def choose_weight(scans: list[VidScan], weights: list[float], settings: dict, *, inner_folds: int, seed: int,
                  patients: dict[str, str], verse: np.ndarray, verse_sacrum: np.ndarray,
                  fix_one: bool = False) -> float:
    """The region weight of best id rate by an inner K-fold CV by patient on ``scans`` (training folds only);
    with ``fix_one`` the inner scans are decoded as the outer ones are, one true label fixed per scan, and
    the weight chosen is the decoder's ``fixed_region_weight``, the one a fix puts in force."""
    right = np.zeros(len(weights))
    for inner in folds_by_patient(scans, patients, inner_folds, seed + 1):
        train = np.setdiff1d(np.arange(len(scans)), inner)
        for k, weight in enumerate(weights):
            key = "fixed_region_weight" if fix_one else "region_weight"  # the weight the decodes use
            decoder = fold_decoder(scans, train, verse, verse_sacrum, {**settings, key: weight})
            tally = Tally()
            evaluate([scans[i] for i in inner], lambda s, d=decoder: decode_region(
                d, s, one_true_fix(s, seed) if fix_one else None), tally)
            right[k] += tally.identified["all"]
    log.info("inner CV: identified %s for region weights %s", right.astype(int).tolist(), weights)
    return float(weights[int(np.argmax(right))])


def shifted_down(scan: VidScan) -> VidScan:
    """The scan with every annotated level moved one level towards the feet (C7 -> T1, T12 -> L1, L5 -> L6):
    Pancreas-CT's levels sit one level above the anatomy (issue 22)."""
    order = sorted((label for label in CHAIN_LABELS if label != 28), key=anatomical_rank)
    down = {a: b for a, b in itertools.pairwise(order)} | {28: 20, order[-1]: order[-1]}
    labels = np.array([down[int(v)] for v in scan.truth_labels], dtype=scan.truth_labels.dtype)
    return dataclasses.replace(scan, truth_labels=labels)


class AveragedContext:
    """Several chain-context models as one: the mean of their log ratios (the geometric mean of their class
    probabilities, what an exported ensemble computes)."""

    def __init__(self, models: list) -> None:
        self.models = models

    def log_ratio(self, positions_mm: np.ndarray, regions: np.ndarray) -> np.ndarray:
        return np.mean([m.log_ratio(positions_mm, regions) for m in self.models], axis=0)


def fold_context_model(scans: list[VidScan], training: np.ndarray, fold: int, args: argparse.Namespace):
    """The chain-context model of one fold, trained on ``training`` scans only (cached in ``--context-cache`` by
    fold, seed and settings, so weights and calibrations can be compared without retraining); several seeds
    (``--context-seeds``) make an ensemble."""
    from algorithm.labelling.context import ContextModel
    from export.label_context import ContextSettings, export_onnx, train_context

    models = []
    for seed in (int(v) for v in args.context_seeds.split(",")):
        settings = ContextSettings(hidden=args.context_hidden, epochs=args.context_epochs, seed=seed,
                                   drop=args.context_drop, false_rate=args.context_false_rate, crop=args.context_crop)
        key = zlib.crc32(repr((sorted(scans[k].scan for k in training), settings)).encode())
        path = args.context_cache / f"fold{fold}-{key:08x}.onnx"
        if not path.is_file():
            log.info("fold %d: training the chain-context model on %d scans (%s)", fold, len(training), settings)
            state = train_context([scans[k] for k in training], settings,
                                  args.context_cache / f"fold{fold}-{key:08x}.pt")
            export_onnx(state, path, [scans[k] for k in training[:10]], trained_on=f"VID fold {fold} training scans")
        models.append(ContextModel(path))
    return models[0] if len(models) == 1 else AveragedContext(models)


def fold_decoder(scans: list[VidScan], training: np.ndarray, verse: np.ndarray, verse_sacrum: np.ndarray,
                 settings: dict) -> ChainDecoder:
    """A decoder fitted on the training scans only: the prior, the region evidence model, then the
    confidence calibration."""
    settings = dict(settings)
    train = [scans[k] for k in training]
    prior_scans = train if settings.pop("vid_prior", True) else []
    calibrate = settings.pop("calibrate", False)
    if settings.get("context_model") is not None:
        for name in ("evidence_model", "region_l2"):
            settings.pop(name, None)
    evidence_model = settings.pop("evidence_model", "none")
    l2 = settings.pop("region_l2", 1.0)
    if evidence_model != "none":
        settings["region_model"] = fit_evidence(train, groups=evidence_model, l2=l2)
    decoder = ChainDecoder(fit_prior(verse, verse_sacrum, prior_scans), **settings)
    if not calibrate:
        return decoder
    tally = Tally()
    evaluate(train, lambda s: decode_region(decoder, s), tally)
    a, b = fit_calibration(np.array(tally.confidence), np.array(tally.correct, dtype=float))
    return ChainDecoder(decoder.prior, **settings, region_calibration=(a, b))


def evaluate(scans: list[VidScan], decode_fn, tally: Tally, by_source: dict[str, Tally] | None = None,
             sources: dict[str, str] | None = None) -> None:
    """Decode and score ``scans`` into ``tally`` and, with ``by_source``, into the tally of each scan's
    source (``sources``: scan id -> source; "unknown" when absent)."""
    for scan in scans:
        start = time.perf_counter()
        labels, confidence, uncertain = decode_fn(scan)
        tally.seconds.append(time.perf_counter() - start)
        score_scan(scan, np.asarray(labels), np.asarray(confidence), tally, uncertain)
        if by_source is not None:
            source = (sources or {}).get(scan.scan, "unknown")
            score_scan(scan, np.asarray(labels), np.asarray(confidence), by_source.setdefault(source, Tally()))


def width_profile(scans: list[VidScan], sources: dict[str, str]) -> dict[tuple[str, str], list[float]]:
    """(source, "A->B") -> changes of the log interpedicular width from A to B over consecutive annotated
    vertebrae (head to foot) whose pedicles are both annotated (module docstring)."""
    out: dict[tuple[str, str], list[float]] = {}
    for scan in scans:
        width = pedicle_widths(scan.truth_mm, scan.truth_pedicles_mm, scan.truth_pedicle_sides)
        order = np.argsort(-scan.truth_mm[:, 2])
        for a, b in itertools.pairwise(order):
            if np.isfinite(width[a]) and np.isfinite(width[b]):
                step = f"{name_of(int(scan.truth_labels[a]))}->{name_of(int(scan.truth_labels[b]))}"
                out.setdefault((sources.get(scan.scan, "unknown"), step), []).append(
                    float(np.log(width[b]) - np.log(width[a])))
    return out


PROFILE_STEPS = ("C6->C7", "C7->T1", "T1->T2", "T9->T10", "T10->T11", "T11->T12", "T12->L1", "L1->L2", "L2->L3",
                 "L3->L4", "L4->L5")


def report_profile(profile: dict[tuple[str, str], list[float]]) -> None:
    names = sorted({source for source, _ in profile})
    print("median change of log interpedicular width between consecutive annotated vertebrae (n):")
    print(f"{'step':<10}" + "".join(f"{name:>20}" for name in names))
    for step in PROFILE_STEPS:
        cells = [profile.get((name, step), []) for name in names]
        print(f"{step:<10}" + "".join(f"{np.median(c):>+13.3f} ({len(c):>4})" if c else f"{'-':>20}" for c in cells))


def folds_by_patient(scans: list[VidScan], patients: dict[str, str], k: int, seed: int) -> list[np.ndarray]:
    """K index arrays over ``scans``, a patient's scans always in one fold."""
    keys = sorted({patients.get(s.scan, s.scan) for s in scans})
    rng = np.random.default_rng(seed)
    fold_of = dict(zip(rng.permutation(keys), np.arange(len(keys)) % k, strict=True))
    which = np.array([fold_of[patients.get(s.scan, s.scan)] for s in scans])
    return [np.flatnonzero(which == f) for f in range(k)]


def time_thirty(decoder_fn, scans: list[VidScan], runs: int) -> float:
    """Median seconds of one decode on 30 candidates: the largest scans' detections, 30 taken head first."""
    big = sorted(scans, key=lambda s: -len(s.bodies_mm))[:runs]
    seconds = []
    for scan in big:
        top = np.argsort(-scan.bodies_mm[:, 2])[:30]
        start = time.perf_counter()
        decoder_fn(scan.bodies_mm[top], scan.region_probabilities[top])
        seconds.append(time.perf_counter() - start)
    return float(np.median(seconds))


def report_sources(by_source: dict[str, Tally]) -> None:
    print(f"{'source':<14}{'scans':>6}{'vertebrae':>10}{'id rate':>9}{'whole':>7}{'of fully detected':>19}"
          f"{'wrong labels':>14}  wrong runs start at")
    for name, t in sorted(by_source.items()):
        detected = f"{t.detected_right / t.detected:.3f} of {t.detected}" if t.detected else "-"
        print(f"{name:<14}{t.scans:>6}{t.vertebrae['all']:>10}{t.rate('all'):>9.3f}{t.whole_right / t.scans:>7.3f}"
              f"{detected:>19}{t.errors['true detections wrongly labelled']:>14}  "
              + ", ".join(f"{k} {v}" for k, v in t.run_starts.most_common(3)))


def report(tally: Tally, per_fold: list[Tally], seconds_30: float) -> None:
    def spread(values: list[float]) -> str:
        return f"{np.mean(values):.3f} +- {np.std(values):.3f}" if len(values) > 1 else ""

    print(f"scans {tally.scans}, annotated vertebrae {tally.vertebrae['all']}")
    print(f"{'group':<28}{'vertebrae':>10}{'id rate':>9}  folds mean +- sd")
    groups = ["all", "cervical", "thoracic", "lumbar", "thoracolumbar junction", "lumbosacral junction"]
    groups += sorted(g for g in tally.vertebrae if g.startswith("variant"))
    for group in groups:
        print(f"{group:<28}{tally.vertebrae[group]:>10}{tally.rate(group):>9.3f}  "
              f"{spread([t.rate(group) for t in per_fold])}")
    print(f"{'whole scan right':<28}{tally.scans:>10}{tally.whole_right / tally.scans:>9.3f}  "
          f"{spread([t.whole_right / t.scans for t in per_fold])}")
    print(f"{'  and no false label kept':<28}{tally.scans:>10}{tally.strict_right / tally.scans:>9.3f}  "
          f"{spread([t.strict_right / t.scans for t in per_fold])}")
    if tally.detected:
        print(f"{'  of scans fully detected':<28}{tally.detected:>10}{tally.detected_right / tally.detected:>9.3f}  "
              f"(the detector missed a vertebra in {tally.scans - tally.detected} scans: never whole right)")
    print("errors: " + ", ".join(f"{k} {v}" for k, v in tally.errors.items()))
    print("wrong runs start at (true level, offset): "
          + ", ".join(f"{k} {v}" for k, v in tally.run_starts.most_common(12)))
    rows, ece = calibration(tally.confidence, tally.correct)
    fold_ece = [calibration(t.confidence, t.correct)[1] for t in per_fold]
    print(f"reliability of accepted candidates' confidence (ECE {ece:.3f}; folds {spread(fold_ece)}):")
    for row in rows:
        print(f"  [{row.low:.1f}, {row.high:.1f})  n {row.count:>6}  confidence {row.confidence:.3f}  "
              f"accuracy {row.accuracy:.3f}")
    if tally.uncertain_right:
        u = tally.uncertain_right
        print(f"uncertain flag: raised on {u[(True, True)] + u[(True, False)]} scans "
              f"({u[(True, False)]} of them wrong); not raised on {u[(False, True)] + u[(False, False)]} "
              f"({u[(False, False)]} wrong)")
    print(f"decode per scan: median {np.median(tally.seconds) * 1e3:.2f} ms; "
          f"30 candidates: median {seconds_30 * 1e3:.2f} ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the vid-keypoints folder")
    parser.add_argument("--evidence", choices=("broadcast", "region"), default="region")
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds (by patient)")
    parser.add_argument("--seed", type=int, default=0, help="fold assignment seed")
    parser.add_argument("--limit", type=int, default=0, help="use only the first N scans (0: all)")
    parser.add_argument("--timing", type=int, default=40, help="decodes timed on 30 candidates")
    parser.add_argument("--landmarks", type=Path, default=DEFAULT_LANDMARKS,
                        help="VerSe 2020 landmarks.csv: its spines join every fold's prior")
    parser.add_argument("--region-weight", type=float, default=ChainDecoder.region_weight)
    parser.add_argument("--fixed-region-weight", type=float, default=ChainDecoder.fixed_region_weight,
                        help="the region weight when a label is fixed (--fix-one)")
    parser.add_argument("--end-weight", type=float, default=ChainDecoder.end_weight)
    parser.add_argument("--scale-steps", type=int, default=ChainDecoder.scale_steps,
                        help="spine-size grid of the decoder (1: the size spread joins every step's variance)")
    parser.add_argument("--evidence-model", choices=("none", "region", "junction", "level"), default="none",
                        help="read region probabilities through a model fitted per fold on the training scans' "
                             "detections (C/T/L/false, or the 26 levels/false); none: the fixed ratio")
    parser.add_argument("--region-l2", type=float, default=1.0, help="L2 penalty of the evidence model")
    parser.add_argument("--region-weights", default="",
                        help="comma-separated region weights: choose one per fold by an inner CV on its training "
                             "scans (nested; overrides --region-weight, or --fixed-region-weight with --fix-one)")
    parser.add_argument("--inner-folds", type=int, default=3, help="folds of the inner CV")
    parser.add_argument("--calibrate", action="store_true",
                        help="fit a Platt map of the confidences on each fold's training scans")
    parser.add_argument("--fix-one", action="store_true",
                        help="region evidence with one true label per scan given as a fix on a randomly chosen "
                             "true detection (the annotation loop's --fix); --seed draws it")
    parser.add_argument("--pedicle-profile", action="store_true",
                        help="print the annotated interpedicular width profile per source (no decoding)")
    parser.add_argument("--labeller", choices=("decoder", "learned"), default="decoder",
                        help="region evidence read per candidate (decoder) or by a chain-context model trained per "
                             "fold on the training scans (learned, algorithm.labelling.context)")
    parser.add_argument("--apart", action="append", default=None, metavar="SOURCE",
                        help="a source never trained on and reported apart, also with its levels moved one down "
                             "(default: Pancreas-CT; 'none' for no source apart)")
    parser.add_argument("--context-cache", type=Path, default=REPO / ".cache" / "label-context",
                        help="where the learned labeller's fold models are kept")
    parser.add_argument("--context-weight", type=float, default=1.0, help="weight of the learned evidence")
    parser.add_argument("--context-fixed-weight", type=float, default=1.0,
                        help="weight of the learned evidence with a fixed label (--fix-one)")
    parser.add_argument("--context-seeds", default="0", help="comma-separated training seeds: several = an ensemble")
    parser.add_argument("--context-hidden", type=int, default=48)
    parser.add_argument("--context-epochs", type=int, default=40)
    parser.add_argument("--context-drop", type=float, default=0.15)
    parser.add_argument("--context-false-rate", type=float, default=0.5)
    parser.add_argument("--context-crop", type=float, default=0.5)
    parser.add_argument("--vid-prior", action="store_true",
                        help="fit each fold's prior on VerSe and the VID training scans (default: VerSe alone)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if not (args.data / "GroundTruth").is_dir():
        print(f"skipped: no VID data at {args.data} (GroundTruth/ and Predictions/ expected)")
        return 0
    ids = scan_ids(args.data)
    if args.limit:
        ids = ids[:args.limit]
    scans = [read_scan(args.data, scan) for scan in ids]
    patients = read_patients(args.data)
    sources = {scan: source_of(path) for scan, path in read_mapping(args.data).items()}
    if args.pedicle_profile:
        report_profile(width_profile(scans, sources))
        return 0
    folds = folds_by_patient(scans, patients, args.folds, args.seed)
    apart_sources = set(args.apart if args.apart is not None else ["Pancreas-CT"]) - {"none"}
    is_apart = np.array([sources.get(s.scan, "unknown") in apart_sources for s in scans])
    print(f"VID: {len(scans)} scans, {len(set(patients.get(s.scan, s.scan) for s in scans))} patients, "
          f"{args.folds} folds; evidence {args.evidence}, labeller {args.labeller}"
          f"{' + one true label fixed per scan' if args.fix_one else ''}; "
          f"apart (never trained on, not in the totals): {', '.join(sorted(apart_sources)) or 'none'} "
          f"({int(is_apart.sum())} scans)")
    total, per_fold, by_source = Tally(), [], {}
    apart, apart_down = Tally(), Tally()
    if args.evidence == "broadcast":
        decoder = ChainDecoder()
        for held_out in folds:
            tally = Tally()
            evaluate([scans[k] for k in held_out if not is_apart[k]], lambda s: decode_broadcast(decoder, s), tally,
                     by_source, sources)
            per_fold.append(tally)
            total.merge(tally)
        seconds_30 = time_thirty(lambda p, r: decoder.decode(p, broadcast_scores(r)), scans, args.timing)
    else:
        _, verse = read_landmarks(args.landmarks)
        verse_sacrum = sacrum_room(verse) >= 40.0
        settings = {"region_weight": args.region_weight, "fixed_region_weight": args.fixed_region_weight,
                    "end_weight": args.end_weight, "scale_steps": args.scale_steps, "vid_prior": args.vid_prior,
                    "calibrate": args.calibrate, "evidence_model": args.evidence_model, "region_l2": args.region_l2}
        everything = np.flatnonzero(~is_apart)
        for f, held_out in enumerate(folds):
            training = np.setdiff1d(everything, held_out)
            if args.labeller == "learned":
                settings.update(context_model=fold_context_model(scans, training, f, args),
                                region_weight=args.context_weight, fixed_region_weight=args.context_fixed_weight)
            elif args.region_weights:
                settings["fixed_region_weight" if args.fix_one else "region_weight"] = choose_weight(
                    [scans[k] for k in training], [float(w) for w in args.region_weights.split(",")], settings,
                    inner_folds=args.inner_folds, seed=args.seed, patients=patients, verse=verse,
                    verse_sacrum=verse_sacrum, fix_one=args.fix_one)
            decoder = fold_decoder(scans, training, verse, verse_sacrum, settings)
            log.info("fold %d: region weight %g (with a fix %g), calibration a=%.3f b=%.3f", f,
                     decoder.region_weight, decoder.fixed_region_weight,
                     *decoder.region_calibration)

            def decode(s: VidScan, d: ChainDecoder = decoder) -> tuple[np.ndarray, np.ndarray, bool | None]:
                return decode_region(d, s, one_true_fix(s, args.seed) if args.fix_one else None)

            tally = Tally()
            evaluate([scans[k] for k in held_out if not is_apart[k]], decode, tally, by_source, sources)
            evaluate([scans[k] for k in held_out if is_apart[k]], decode, apart)
            evaluate([shifted_down(scans[k]) for k in held_out if is_apart[k]], decode, apart_down)
            per_fold.append(tally)
            total.merge(tally)
        seconds_30 = time_thirty(lambda p, r, d=decoder: d.decode(p, regions=r), scans, args.timing)
        if apart.scans:
            by_source[f"{'+'.join(sorted(apart_sources))} (apart)"] = apart
            by_source[f"{'+'.join(sorted(apart_sources))} one down"] = apart_down
    report(total, per_fold, seconds_30)
    report_sources(by_source)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
