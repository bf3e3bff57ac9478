"""Benchmark the anatomical labelling decoder against per-candidate argmax on simulated detections.

Detections are simulated from the annotated real spines of VerSe 2020
(``landmarks.csv``), cross-validated by patient: the chain prior is fitted on the
training folds, the decoder labels simulated cases of the held-out spines.

What the simulation models (a locate network's output, not the decoder's model):

* field of view: the scan's own (the whole annotated spine) in half the cases, else a random window of
  3 or more consecutive vertebrae;
* pose: a random tilt of up to ``--max-tilt`` degrees and any rotation about z;
* position error: isotropic Gaussian, ``--position-sd`` mm per axis;
* missed vertebrae (``--miss``) and false detections (Poisson, ``--false`` per vertebra in
  view): half near a disc between two vertebrae, half 25-60 mm off the spine (ribs, pelvis);
* evidence: per candidate, a Gaussian bump over the 26 channels in anatomical order
  (C1..T12, T13, L1..L6) with random width (0.5-1.2 labels) and height (0.3-1.0) plus
  uniform noise. The bump sits on the label the network "believes": the true label
  moved along the spine's own sequence by a per-case shift (+-1 with ``--shift``, the
  network losing count) plus a per-vertebra confusion (+-1 with ``--confuse``, +-2 with
  ``--confuse2``). Anchors the network recognises (C1, C2, and the last lumbar vertebra
  when the sacrum is in view) get a narrow, tall bump, no per-case shift and a quarter
  of the confusion rate. False
  detections get a lower bump (0.1-0.6) near the label of the closest vertebra.
  Variant spines (T13, L6, 11 thoracic, 4 lumbar) follow their own sequence.

Accuracy counts every true detected vertebra (label correct or not); false detections
are reported separately (the decoder may reject them, argmax cannot). Run
``python bench/labelling.py --help`` for the options.

The decoder's one tuned parameter, ``anchor_weight`` (the reliability of a recognised
anchor's evidence, see :mod:`algorithm.labelling`), is chosen by nested cross-validation:
in each outer fold, by an inner patient-wise CV over ``--anchor-grid`` on the training
spines only; the held-out spines never influence it (``--anchor-weight`` fixes it instead).
``--diagnose`` splits the decoder's errors into whole-chain offsets (the vertebra is off by
the case's most common offset, which is not 0), local errors (off by anything else),
rejected vertebrae (labelled 0) and accepted false detections.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from algorithm.labelling import ChainDecoder  # noqa: E402
from algorithm.labelling_prior import CHAIN_LABELS, fit, read_landmarks  # noqa: E402
from spine.labels import LOCATE_CHANNELS, name_of  # noqa: E402

DEFAULT_LANDMARKS = REPO.parent / "shared" / "data" / "verse2020-landmarks" / "landmarks.csv"
_COLUMN = {label: k for k, label in enumerate(LOCATE_CHANNELS)}
_RANK = {label: k for k, label in enumerate(CHAIN_LABELS)}
_NORMAL = (*range(1, 20), *range(20, 25))  # C1..T12, L1..L5
_SACRUM_ROOM_MM = 40.0


@dataclass(frozen=True)
class Spine:
    """One annotated spine: its id, patient, the labels present head to foot and their positions (mm)."""

    scan: str
    patient: str
    labels: tuple[int, ...]
    positions_mm: np.ndarray
    sequence: tuple[int, ...]  # the spine's full anatomical sequence, variants applied
    sacrum_below: bool  # the last annotated vertebra is the last lumbar, sacrum in view
    variant: str  # "normal", "T13", "L6", "11 thoracic", "4 lumbar" (joined with "+")


@dataclass(frozen=True)
class SimulationConfig:
    """Parameters of the detection simulation (see the module docstring)."""

    position_sd_mm: float = 3.0
    max_tilt_deg: float = 30.0
    miss: float = 0.05
    false_rate: float = 0.1
    shift: float = 0.1
    confuse: float = 0.3
    confuse2: float = 0.05
    full_fov: float = 0.5


def patient_of(scan: str) -> str:
    """Patient key of a VerSe scan id: ``verse403_verse255_CT-sag`` -> ``verse403``."""
    match = re.match(r"(verse\d+|GL\d+)", scan)
    return match.group(1) if match else scan


def load_spines(landmarks_mm: np.ndarray, scans: tuple[str, ...]) -> list[Spine]:
    """Spines with their variant sequence (T13 inserted, T12/L5 removed, L6 appended as annotated)."""
    spines = []
    for scan, spine in zip(scans, landmarks_mm, strict=True):
        labels = tuple(label for label in CHAIN_LABELS if np.all(np.isfinite(spine[_COLUMN[label]])))
        if len(labels) < 2:
            continue
        positions = np.array([spine[_COLUMN[label]] for label in labels])
        sequence = list(_NORMAL)
        variants = []
        if 28 in labels:
            sequence.insert(sequence.index(19) + 1, 28)
            variants.append("T13")
        if 18 in labels and 20 in labels and 19 not in labels:
            sequence.remove(19)
            variants.append("11 thoracic")
        sacrum_below = labels[-1] in (23, 24, 25) and positions[-1, 2] >= _SACRUM_ROOM_MM
        if 25 in labels:
            sequence.append(25)
            variants.append("L6")
        if labels[-1] == 23 and sacrum_below:
            sequence.remove(24)
            variants.append("4 lumbar")
        spines.append(Spine(scan, patient_of(scan), labels, positions, tuple(sequence), sacrum_below,
                            "+".join(variants) or "normal"))
    return spines


def _rotation(rng: np.random.Generator, max_tilt_deg: float) -> np.ndarray:
    """A random tilt (about a random horizontal axis) after a random spin about z."""
    spin = rng.uniform(0, 2 * np.pi)
    c, s = np.cos(spin), np.sin(spin)
    about_z = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    tilt = np.deg2rad(rng.uniform(0, max_tilt_deg))
    axis = np.array([np.cos(rng.uniform(0, 2 * np.pi)), np.sin(rng.uniform(0, 2 * np.pi)), 0.0])
    axis /= np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    tilt_matrix = np.eye(3) + np.sin(tilt) * k + (1 - np.cos(tilt)) * k @ k
    return tilt_matrix @ about_z


def _bump(rng: np.random.Generator, centre_label: int, *, height: tuple[float, float],
          width: tuple[float, float]) -> np.ndarray:
    """Evidence (26,) in LOCATE_CHANNELS order: a Gaussian bump over the anatomical channel order plus noise."""
    ranks = np.arange(len(CHAIN_LABELS))
    bump = rng.uniform(*height) * np.exp(-0.5 * ((ranks - _RANK[centre_label]) / rng.uniform(*width)) ** 2)
    bump = np.clip(bump + rng.uniform(0, 0.05, len(ranks)), 0, 1)
    scores = np.zeros(len(LOCATE_CHANNELS))
    scores[[_COLUMN[label] for label in CHAIN_LABELS]] = bump
    return scores


@dataclass(frozen=True)
class Case:
    """A simulated locate output: positions (N, 3) mm, scores (N, 26), true labels (0 = false detection)."""

    positions_mm: np.ndarray
    scores: np.ndarray
    truth: np.ndarray
    shifted: bool = False  # the evidence of non-anchor vertebrae was shifted by one for the whole case
    anchored: bool = False  # an anchor (C1, C2, last lumbar above the sacrum) is in the field of view


def simulate(rng: np.random.Generator, spine: Spine, config: SimulationConfig, *,
             full: bool | None = None, false_count: int | None = None) -> Case:
    """Simulate one locate output for a spine (see the module docstring)."""
    n = len(spine.labels)
    if full if full is not None else rng.random() < config.full_fov:
        lo, hi = 0, n
    else:
        length = int(rng.integers(min(3, n), n + 1))
        lo = int(rng.integers(0, n - length + 1))
        hi = lo + length
    labels = spine.labels[lo:hi]
    positions = spine.positions_mm[lo:hi]
    anchors = {1, 2}
    if hi == n and spine.sacrum_below:
        anchors.add(labels[-1])
    shift = int(rng.choice([-1, 1])) if rng.random() < config.shift else 0
    sequence = spine.sequence

    rows, truth, points = [], [], []
    for label, point in zip(labels, positions, strict=True):
        if rng.random() < config.miss:
            continue
        index = sequence.index(label)
        u = rng.random()
        local = 0 if u >= config.confuse + config.confuse2 else (
            int(rng.choice([-1, 1])) if u < config.confuse else int(rng.choice([-2, 2])))
        if label in anchors:
            believed = sequence[int(np.clip(index + (local if rng.random() < 0.25 else 0), 0, len(sequence) - 1))]
            rows.append(_bump(rng, believed, height=(0.7, 1.0), width=(0.3, 0.5)))
        else:
            believed = sequence[int(np.clip(index + shift + local, 0, len(sequence) - 1))]
            rows.append(_bump(rng, believed, height=(0.3, 1.0), width=(0.5, 1.2)))
        truth.append(label)
        points.append(point)

    n_false = int(rng.poisson(config.false_rate * len(labels))) if false_count is None else false_count
    for _ in range(n_false):
        k = int(rng.integers(0, len(labels)))
        if rng.random() < 0.5 and len(labels) > 1:
            k = min(k, len(labels) - 2)
            point = 0.5 * (positions[k] + positions[k + 1]) + rng.normal(0, 5.0, 3)
        else:
            direction = rng.normal(size=3)
            direction[2] *= 0.3
            point = positions[k] + direction / np.linalg.norm(direction) * rng.uniform(25, 60)
        near = sequence.index(labels[k]) + int(rng.integers(-1, 2)) + shift
        believed = sequence[int(np.clip(near, 0, len(sequence) - 1))]
        rows.append(_bump(rng, believed, height=(0.1, 0.6), width=(0.5, 1.5)))
        truth.append(0)
        points.append(point)

    points_arr = np.array(points).reshape(-1, 3)
    rotation = _rotation(rng, config.max_tilt_deg)
    centred = (points_arr - positions.mean(axis=0)) @ rotation.T
    noisy = centred + rng.normal(0, config.position_sd_mm, centred.shape) + rng.uniform(-200, 200, 3)
    permutation = rng.permutation(len(truth))
    return Case(noisy[permutation], np.array(rows).reshape(-1, len(LOCATE_CHANNELS))[permutation],
                np.array(truth, dtype=np.int64)[permutation], shift != 0, bool(anchors & set(labels)))


def argmax_labels(scores: np.ndarray) -> np.ndarray:
    """Per-candidate argmax of the evidence, as VerSe labels."""
    return np.asarray(LOCATE_CHANNELS)[np.argmax(scores, axis=1)] if len(scores) else np.zeros(0, dtype=int)


@dataclass
class Tally:
    """Running counts of one group of cases."""

    vertebrae: int = 0
    decoder_correct: int = 0
    argmax_correct: int = 0
    false_detections: int = 0
    false_rejected: int = 0
    cases: int = 0
    cases_all_correct: int = 0
    variant_vertebrae: int = 0
    variant_decoder: int = 0
    variant_argmax: int = 0
    invented_decoder: int = 0
    invented_argmax: int = 0
    errors_offset: int = 0
    errors_local: int = 0
    errors_rejected: int = 0

    def add(self, case: Case, decoded: np.ndarray, argmax: np.ndarray, variant_labels: set[int],
            absent_variants: set[int], sequence: tuple[int, ...]) -> None:
        real = case.truth > 0
        offset, common = _offsets(decoded[real], case.truth[real], sequence)
        wrong = decoded[real] != case.truth[real]
        rejected = decoded[real] == 0
        self.errors_rejected += int((wrong & rejected).sum())
        self.errors_offset += int((wrong & ~rejected & (offset == common) & (common != 0)).sum())
        self.errors_local += int((wrong & ~rejected & ((offset != common) | (common == 0))).sum())
        self.vertebrae += int(real.sum())
        self.decoder_correct += int((decoded[real] == case.truth[real]).sum())
        self.argmax_correct += int((argmax[real] == case.truth[real]).sum())
        self.false_detections += int((~real).sum())
        self.false_rejected += int((decoded[~real] == 0).sum())
        self.cases += 1
        self.cases_all_correct += int(np.array_equal(decoded, case.truth))
        special = np.isin(case.truth, list(variant_labels))
        self.variant_vertebrae += int(special.sum())
        self.variant_decoder += int((decoded[special] == case.truth[special]).sum())
        self.variant_argmax += int((argmax[special] == case.truth[special]).sum())
        self.invented_decoder += int(np.isin(decoded, list(absent_variants)).sum())
        self.invented_argmax += int(np.isin(argmax, list(absent_variants)).sum())


def _offsets(decoded: np.ndarray, truth: np.ndarray, sequence: tuple[int, ...]) -> tuple[np.ndarray, float]:
    """Offset of each decoded label from the truth along the spine's sequence (nan where rejected),
    and the most common offset of the case (0 if none). A label outside the sequence (an invented
    variant) counts half a place past its predecessor in the anatomical order."""
    def place(label: int) -> float:
        return float(sequence.index(label)) if label in sequence else \
            float(sum(_RANK[x] < _RANK[label] for x in sequence)) - 0.5
    offset = np.array([place(d) - place(t) if d else np.nan for d, t in zip(decoded, truth, strict=True)])
    found = offset[np.isfinite(offset)]
    if not found.size:
        return offset, 0.0
    values, counts = np.unique(found, return_counts=True)
    return offset, float(values[np.argmax(counts)])


def _variant_labels(spine: Spine) -> set[int]:
    """The vertebrae that make a spine a variant: T13, L6, L1 after T11, L4 above the sacrum."""
    out = {label for label in (28, 25) if label in spine.labels}
    if "11 thoracic" in spine.variant:
        out.add(20)
    if "4 lumbar" in spine.variant:
        out.add(23)
    return out


def folds_by_patient(spines: list[Spine], k: int, rng: np.random.Generator) -> list[list[int]]:
    """Spine indices split into k folds, every patient's scans in one fold."""
    patients = sorted({s.patient for s in spines})
    rng.shuffle(patients)
    fold_of = {p: i % k for i, p in enumerate(patients)}
    return [[i for i, s in enumerate(spines) if fold_of[s.patient] == f] for f in range(k)]


def time_decoder(decoder: ChainDecoder, spines: list[Spine], rng: np.random.Generator, *,
                 candidates: int, repeats: int) -> dict[str, tuple[float, float, float]]:
    """Median wall-clock, median and least thread CPU seconds per call on ``candidates`` candidates.

    For ``decode`` (the Viterbi labelling) and ``label`` (labelling plus posterior confidences).
    The CPU time is what the call itself costs on a machine shared with other work.
    """
    long_spines = [s for s in spines if len(s.labels) >= 20] or spines
    config = SimulationConfig(miss=0.0)
    times: dict[str, list[tuple[float, float]]] = {"decode": [], "label": []}
    for r in range(repeats):
        spine = long_spines[r % len(long_spines)]
        case = simulate(rng, spine, config, full=True, false_count=max(candidates - len(spine.labels), 0))
        positions, scores = case.positions_mm[:candidates], case.scores[:candidates]
        for name, call in (("decode", decoder.decode), ("label", decoder.label)):
            start, cpu_start = time.perf_counter(), time.thread_time()
            call(positions, scores)
            times[name].append((time.perf_counter() - start, time.thread_time() - cpu_start))
    return {name: (float(np.median([w for w, _ in t])), float(np.median([c for _, c in t])),
                   float(np.min([c for _, c in t]))) for name, t in times.items()}


def evaluate(decoder: ChainDecoder, spines: list[Spine], config: SimulationConfig, rng: np.random.Generator,
             cases: int, tallies: dict[str, Tally] | None = None,
             decode_seconds: list[float] | None = None) -> dict[str, Tally]:
    """Decode ``cases`` simulated cases of every spine and tally them by group (``all``, shift and
    anchor condition, normal / variant)."""
    tallies = defaultdict(Tally) if tallies is None else tallies
    for spine in spines:
        for _ in range(cases):
            case = simulate(rng, spine, config)
            start = time.perf_counter()
            decoded = decoder.decode(case.positions_mm, case.scores)
            if decode_seconds is not None:
                decode_seconds.append(time.perf_counter() - start)
            argmax = argmax_labels(case.scores)
            condition = ("shifted, " if case.shifted else "unshifted, ") + (
                "anchor in view" if case.anchored else "no anchor")
            for group in ("all", condition, spine.variant if spine.variant == "normal" else "variant",
                          *(f"variant: {v}" for v in spine.variant.split("+") if spine.variant != "normal")):
                tallies[group].add(case, decoded, argmax, _variant_labels(spine),
                                   {label for label in (25, 28) if label not in spine.labels}, spine.sequence)
    return tallies


def tune_anchor_weight(landmarks: np.ndarray, scans: tuple[str, ...], spines: list[Spine],
                       config: SimulationConfig, rng: np.random.Generator, *, grid: tuple[float, ...],
                       folds: int, cases: int) -> float:
    """The ``anchor_weight`` in ``grid`` with the best vertebra accuracy in a patient-wise CV over ``spines``
    (the outer fold's training spines only); ties go to the smaller weight."""
    index_of = {scan: i for i, scan in enumerate(scans)}
    correct = np.zeros(len(grid))
    for test in folds_by_patient(spines, folds, rng):
        held_out = {spines[i].scan for i in test}
        prior = fit(landmarks[[index_of[s.scan] for s in spines if s.scan not in held_out]])
        state = rng.bit_generator.state
        for k, weight in enumerate(grid):
            rng.bit_generator.state = state  # every weight decodes the same simulated cases
            tally = evaluate(ChainDecoder(prior, anchor_weight=weight), [spines[i] for i in test], config,
                             rng, cases)["all"]
            correct[k] += tally.decoder_correct
    return float(grid[int(np.argmax(correct))])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--landmarks", type=Path, default=DEFAULT_LANDMARKS, help="VerSe 2020 landmarks.csv")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds (by patient)")
    parser.add_argument("--cases", type=int, default=10, help="simulated cases per held-out spine")
    parser.add_argument("--timing", type=int, default=60, help="decodes timed on 30-candidate cases")
    parser.add_argument("--position-sd", type=float, default=SimulationConfig.position_sd_mm,
                        help="simulated position error per axis, mm")
    parser.add_argument("--max-tilt", type=float, default=SimulationConfig.max_tilt_deg,
                        help="largest random tilt of the spine, degrees")
    parser.add_argument("--full-fov", type=float, default=SimulationConfig.full_fov,
                        help="share of cases keeping the scan's own field of view (others are cropped)")
    parser.add_argument("--miss", type=float, default=SimulationConfig.miss, help="missed vertebra rate")
    parser.add_argument("--false", type=float, default=SimulationConfig.false_rate,
                        help="mean false detections per vertebra in view")
    parser.add_argument("--shift", type=float, default=SimulationConfig.shift,
                        help="probability of a per-case +-1 shift of the evidence")
    parser.add_argument("--confuse", type=float, default=SimulationConfig.confuse,
                        help="probability of a per-vertebra +-1 confusion")
    parser.add_argument("--confuse2", type=float, default=SimulationConfig.confuse2,
                        help="probability of a per-vertebra +-2 confusion")
    parser.add_argument("--anchor-weight", type=float, default=None,
                        help="fix the decoder's anchor_weight (default: nested CV over --anchor-grid)")
    parser.add_argument("--anchor-grid", default="1,2,3,5,8", help="anchor weights tried by the nested CV")
    parser.add_argument("--inner-folds", type=int, default=3, help="folds of the nested CV")
    parser.add_argument("--inner-cases", type=int, default=3, help="cases per training spine in the nested CV")
    parser.add_argument("--diagnose", action="store_true",
                        help="print the breakdown of the decoder's errors per group")
    args = parser.parse_args(argv)
    if args.folds < 2 or args.cases < 1:
        parser.error("--folds must be >= 2 and --cases >= 1")
    if not args.landmarks.is_file():
        parser.error(f"no landmarks file: {args.landmarks}")
    config = SimulationConfig(args.position_sd, args.max_tilt, args.miss, args.false, args.shift,
                              args.confuse, args.confuse2, args.full_fov)
    rng = np.random.default_rng(args.seed)
    scans, landmarks = read_landmarks(args.landmarks)
    spines = load_spines(landmarks, scans)
    index_of = {scan: i for i, scan in enumerate(scans)}

    tallies: dict[str, Tally] = defaultdict(Tally)
    decode_seconds: list[float] = []
    chosen: list[float] = []
    grid = tuple(float(w) for w in args.anchor_grid.split(","))
    decoder = None
    for fold, test in enumerate(folds_by_patient(spines, args.folds, rng)):
        held_out = {spines[i].scan for i in test}
        train = np.array([index_of[s] for s in scans if s not in held_out])
        weight = args.anchor_weight
        if weight is None:  # nested CV on the training spines of this fold only
            weight = tune_anchor_weight(landmarks, scans, [s for s in spines if s.scan not in held_out], config,
                                        np.random.default_rng([args.seed, fold]), grid=grid,
                                        folds=args.inner_folds, cases=args.inner_cases)
        chosen.append(weight)
        decoder = ChainDecoder(fit(landmarks[train], source=f"fold {fold}"), anchor_weight=weight)
        evaluate(decoder, [spines[i] for i in test], config, rng, args.cases, tallies, decode_seconds)

    if decoder is None:
        raise SystemExit("no folds were run")
    timing = time_decoder(decoder, spines, rng, candidates=30, repeats=args.timing)

    print(f"labelling benchmark: {len(spines)} spines, {len({s.patient for s in spines})} patients, "
          f"{args.folds}-fold CV by patient, {args.cases} cases per spine, seed {args.seed}")
    print(f"simulation: {config}")
    print("anchor_weight per fold: " + ", ".join(f"{w:g}" for w in chosen)
          + (" (fixed)" if args.anchor_weight is not None else f" (nested {args.inner_folds}-fold CV over {grid})"))
    header = f"{'group':<26}{'cases':>6}{'vertebrae':>10}{'argmax':>8}{'decoder':>9}{'FP':>6}{'FP rej':>8}" \
             f"{'case ok':>9}{'invented':>9}{'argmax':>7}{'variant v.':>11}{'argmax':>7}{'decoder':>8}"
    print(header)
    print("-" * len(header))
    conditions = [f"{a}, {b}" for a in ("unshifted", "shifted") for b in ("anchor in view", "no anchor")]
    for group in ("all", *conditions, "normal", "variant", *sorted(g for g in tallies if g.startswith("variant: "))):
        t = tallies.get(group)
        if t is None or t.cases == 0:
            continue
        fp_rate = f"{t.false_rejected / t.false_detections:.3f}" if t.false_detections else "-"
        variant = (f"{t.variant_vertebrae:>11}{t.variant_argmax / t.variant_vertebrae:>7.3f}"
                   f"{t.variant_decoder / t.variant_vertebrae:>8.3f}") if t.variant_vertebrae else ""
        print(f"{group:<26}{t.cases:>6}{t.vertebrae:>10}{t.argmax_correct / t.vertebrae:>8.3f}"
              f"{t.decoder_correct / t.vertebrae:>9.3f}{t.false_detections:>6}{fp_rate:>8}"
              f"{t.cases_all_correct / t.cases:>9.3f}{t.invented_decoder:>9}{t.invented_argmax:>7}{variant}")
    if args.diagnose:
        print("decoder errors (share of the group's vertebrae): chain offset / local / rejected vertebra; "
              "false detections accepted as vertebrae")
        for group in ("all", *conditions, "normal", "variant"):
            t = tallies.get(group)
            if t is None or t.cases == 0:
                continue
            errors = t.errors_offset + t.errors_local + t.errors_rejected
            print(f"  {group:<26}{errors:>5} errors: offset {t.errors_offset / t.vertebrae:.3f}  "
                  f"local {t.errors_local / t.vertebrae:.3f}  rejected {t.errors_rejected / t.vertebrae:.3f};  "
                  f"FP accepted {t.false_detections - t.false_rejected} of {t.false_detections}")
    print(f"decode time over all cases: median {np.median(decode_seconds) * 1e3:.2f} ms")
    for name, (wall, cpu, least) in timing.items():
        print(f"{name} time, 30 candidates ({args.timing} runs): median {wall * 1e3:.2f} ms wall-clock, "
              f"median {cpu * 1e3:.2f} ms CPU, least {least * 1e3:.2f} ms CPU")
    print("variant spines: " + ", ".join(f"{v} {sum(s.variant == v for s in spines)}"
                                         for v in sorted({s.variant for s in spines})))
    print("labels: " + " ".join(name_of(label) for label in CHAIN_LABELS))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
