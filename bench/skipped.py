"""Benchmark placing the levels a labelled chain passes over (``algorithm.labelling.skipped``) on a real detector.

Data: ``../shared/data/vid-keypoints`` (``--data``): the VID dataset's real U-Net detections of 1,947 spine CTs
with the annotated level of every body (Buergin, Prevost, Stollenga, MICCAI 2023; CC BY-SA 4.0). Pancreas-CT is
left out (its annotated levels sit one level above the anatomy; ``bench/labelling_real.py``).

The detector finds nearly every body of these scans, so a miss is made: in every scan with five or more
detections, one detection lying within 10 mm of an annotated body, not the highest or the lowest, is removed
(drawn with ``--seed``), as when the locate stage finds no candidate on a vertebra. The decoder (shipped prior,
region evidence, nothing fitted on VID) labels what is left; the chain's skipped levels are then placed between
their neighbours. Reported:

- the identification rate (DESIGN.md: the point labelled v lies within 20 mm of v's annotated centre, which is
  the annotated centre nearest to it) of all annotated bodies, and the scans with every annotated body identified,
  without and with the placed levels;
- the placed points: how many, how many identified (the rest are wrong: a level the chain misnamed, or no
  vertebra there), and, where the removed body's level was placed, the distance to its annotated centre;
- per region of the removed body, how often it comes back identified.

    python bench/skipped.py [--data DIR] [--seed N]
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from algorithm.labelling import ChainDecoder  # noqa: E402
from algorithm.labelling.skipped import skipped_levels  # noqa: E402
from algorithm.labelling_prior import load_default  # noqa: E402
from evaluation.metrics import identify  # noqa: E402
from spine.labels import region_of  # noqa: E402
from spine.vid import VidScan, read_scan, scan_ids, scan_sources  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "vid-keypoints"
HIT_MM = 20.0
ON_BODY_MM = 10.0
LEFT_OUT = ("Pancreas-CT",)

log = logging.getLogger("bench.skipped")


def identified(points_mm: np.ndarray, labels: list[int], truth_mm: np.ndarray, truth_labels: np.ndarray) -> set[int]:
    """Indices of the annotated bodies that the labelled points identify (DESIGN.md's rule, the evaluator's
    :func:`evaluation.metrics.identify`; a chain's labels and a VID scan's annotated levels are unique)."""
    index = {int(label): k for k, label in enumerate(truth_labels)}
    outcomes = identify({int(label): point for label, point in zip(labels, np.asarray(points_mm).reshape(-1, 3),
                                                                   strict=True)},
                        {label: truth_mm[k] for label, k in index.items()}, HIT_MM)
    return {index[label] for label, outcome in outcomes.items() if outcome.identified}


def one_removed(scan: VidScan, rng: np.random.Generator) -> tuple[np.ndarray, int] | None:
    """The indices of the detections kept and the annotated body whose detection was removed, or None where no
    interior detection lies on an annotated body (module docstring)."""
    if len(scan.bodies_mm) < 5 or not len(scan.truth_mm):
        return None
    order = np.argsort(-scan.bodies_mm[:, 2])
    inner = []
    for i in order[1:-1]:
        distance = np.linalg.norm(scan.truth_mm - scan.bodies_mm[i], axis=1)
        if distance.min() <= ON_BODY_MM:
            inner.append((int(i), int(np.argmin(distance))))
    if not inner:
        return None
    removed, body = inner[int(rng.integers(len(inner)))]
    return np.array([i for i in range(len(scan.bodies_mm)) if i != removed]), body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the VID dataset's folder")
    parser.add_argument("--seed", type=int, default=0, help="which detection each scan loses")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not args.data.is_dir():
        log.error("%s: no VID dataset there (--data)", args.data)
        return 2
    prior, decoder, rng = load_default(), ChainDecoder(), np.random.default_rng(args.seed)
    sources = scan_sources(args.data)
    tally: Counter = Counter()
    regions: Counter = Counter()
    distances = []
    for scan_id in scan_ids(args.data):
        if sources.get(scan_id) in LEFT_OUT:
            continue
        scan = read_scan(args.data, scan_id)
        drawn = one_removed(scan, rng)
        if drawn is None:
            continue
        keep, body = drawn
        result = decoder.label(scan.bodies_mm[keep], regions=scan.region_probabilities[keep])
        chain = [int(i) for i in result.order if result.labels[i] > 0]
        labels = [int(result.labels[i]) for i in chain]
        points = scan.bodies_mm[keep][chain]
        placed = skipped_levels(labels, points, prior)
        before = identified(points, labels, scan.truth_mm, scan.truth_labels)
        added = identified(np.array([p.position_mm for p in placed]).reshape(-1, 3), [p.label for p in placed],
                           scan.truth_mm, scan.truth_labels) - before
        annotated = len(scan.truth_mm)
        tally.update({"scans": 1, "annotated": annotated, "before": len(before), "after": len(before | added),
                      "whole before": int(len(before) == annotated),
                      "whole after": int(len(before | added) == annotated),
                      "placed": len(placed), "placed identified": len(added)})
        region = region_of(int(scan.truth_labels[body])).value
        regions.update({(region, "removed"): 1, (region, "back"): int(body in added)})
        for p in placed:
            if p.label == int(scan.truth_labels[body]):
                distances.append(float(np.linalg.norm(scan.truth_mm[body] - p.position_mm)))
    if not tally["scans"]:
        log.error("%s: no scan to measure", args.data)
        return 2
    d = np.array(distances)
    print(f"VID scans, one interior detection removed from each (seed {args.seed}; Pancreas-CT left out): "
          f"{tally['scans']} scans, {tally['annotated']} annotated bodies")
    print("| | skipped levels not placed | placed |")
    print("|---|---|---|")
    print(f"| identification rate | {tally['before'] / tally['annotated']:.3f} | "
          f"{tally['after'] / tally['annotated']:.3f} |")
    print(f"| scans with every body identified | {tally['whole before']} | {tally['whole after']} |")
    print(f"\nplaced points: {tally['placed']}, identified {tally['placed identified']} "
          f"({tally['placed identified'] / max(tally['placed'], 1):.3f})")
    if len(d):
        print(f"placed at the removed body's level: {len(d)} of {tally['scans']}; distance to its annotated centre "
              f"median {np.median(d):.1f} mm, 90th percentile {np.percentile(d, 90):.1f} mm, "
              f"within 10 mm {np.mean(d <= 10.0):.3f}")
    print("removed body identified again, per region: " + ", ".join(
        f"{region} {regions[(region, 'back')]} of {regions[(region, 'removed')]}"
        for region in ("cervical", "thoracic", "lumbar") if regions[(region, "removed")]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
