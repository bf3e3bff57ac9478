"""Region evidence from the vertebrae's own sizes, for a labelling the anatomy check says is the wrong region.

A C3-C6 vertebra holds about 14 ml of bone (C1, C2 and C7 18-21 ml), a thoracic one 23-39 ml, a lumbar one
36-56 ml (:data:`algorithm.plausibility.REFERENCE_VOLUME_ML`, real VerSe masks). The locate network's region
calls do not transfer as well: on the annotated OpenKBP necks it calls many real cervical bodies lumbar, and a
neck whose skull base the CT leaves out (a chest or neck CT that starts in mid-neck) can come out "L1-L5". The
anatomy check (:func:`algorithm.plausibility.assess`) sees it afterwards (the segmented vertebrae at 0.16-0.19
times a lumbar vertebra's volume) but changes no label.

:func:`size_likelihood` turns each segmented volume ``v`` into cervical / thoracic / lumbar likelihoods,

    ``L_R(v) = FLOOR + (1 - FLOOR) * max over levels l in R of exp(-(log v - log ref_l)**2 / (2 LOG_SD**2))``

which multiply the network's region posterior as the ribs' do (:meth:`algorithm.locate.Candidates.regions`).
A vertebra with no volume (none segmented, or cut by the field of view, whose volume is a part's) reads 1, 1,
1: nothing known. What a size tells is neck from loin (7.6-10 ml: cervical 8-15 times as likely as lumbar),
thoracic from either barely (the regions' references meet at C7-T1 and T12-L1: between 20 and 45 ml no region
is more than 1.25 times as likely as another).

The pipeline (:func:`algorithm.pipeline._relabelled_by_size`) asks for them only where the size check failed and
some level's size would pass it (:func:`fit_some_level`), decodes again without the network's calls, and keeps
the new labelling only where its labels differ and both checks then pass, its points at most
:data:`BY_SIZE_CAP` likely; every labelling the check accepts stays as it was.
"""

from __future__ import annotations

import numpy as np

from algorithm.plausibility import REFERENCE_VOLUME_ML, SIZE_TOLERANCE
from spine.labels import Region, region_of

__all__ = ["BY_SIZE_CAP", "FLOOR", "LOG_SD", "describe", "fit_some_level", "size_likelihood"]

LOG_SD = 0.4
"""Spread of a segmented volume around its level's reference, in log: spines differ in size by about 30 % (log
sd ~0.25) and a segmentation misses or adds parts of a vertebra; fixed a priori, not fitted."""
FLOOR = 0.05
"""Least likelihood of a region: a vertebra's size alone never rules a region out (a collapsed vertebra, an
outline that leaked)."""
BY_SIZE_CAP = 0.5
"""Probability ceiling of a labelling read from the sizes, the ribs and the spacing against the network's calls: at
most even odds. Without the network the decoder can be sure of a chain its geometry fits (the aortic crop with 5 mm
slices came out C6-L2 at 0.90-1.00 where it is T2-L1, which the check refused), and a size tells the region, not
the level."""

_REGIONS = (Region.CERVICAL, Region.THORACIC, Region.LUMBAR)
_LOG_REFERENCE = {region: np.log([ml for label, ml in REFERENCE_VOLUME_ML.items() if region_of(label) is region])
                  for region in _REGIONS}


def _measured(volumes_ml: np.ndarray) -> np.ndarray:
    """(N,) bool: which volumes were measured (finite and positive)."""
    volumes = np.asarray(volumes_ml, dtype=np.float64).reshape(-1)
    return np.isfinite(volumes) & (volumes > 0)


def size_likelihood(volumes_ml: np.ndarray) -> np.ndarray:
    """``(N, 3)`` cervical / thoracic / lumbar likelihoods of ``volumes_ml`` (N,) (module docstring); NaN or
    non-positive volumes (not measured) give 1, 1, 1."""
    volumes = np.asarray(volumes_ml, dtype=np.float64).reshape(-1)
    likelihood = np.ones((len(volumes), len(_REGIONS)))
    measured = _measured(volumes)
    if not measured.any():
        return likelihood
    log_volume = np.log(volumes[measured])[:, None]
    for column, region in enumerate(_REGIONS):
        nearest = np.min(np.abs(log_volume - _LOG_REFERENCE[region][None, :]), axis=1)
        likelihood[measured, column] = FLOOR + (1.0 - FLOOR) * np.exp(-nearest**2 / (2.0 * LOG_SD**2))
    return likelihood


def fit_some_level(volumes_ml: np.ndarray) -> bool:
    """Whether the median of the measured ``volumes_ml`` lies within the anatomy check's size tolerance of some
    level's reference volume (6.0-124 ml), so that some labelling could pass that check: sizes no vertebra has (a
    segmentation that failed, the test phantom's spheres) say the segmentation is wrong, not the labels."""
    volumes = np.asarray(volumes_ml, dtype=np.float64).reshape(-1)
    measured = volumes[_measured(volumes)]
    if not len(measured):
        return False
    references = list(REFERENCE_VOLUME_ML.values())
    return min(references) / SIZE_TOLERANCE <= float(np.median(measured)) <= max(references) * SIZE_TOLERANCE


def describe(volumes_ml: np.ndarray) -> str:
    """The measured volumes, for the log (``12.3, 9.8 ml``)."""
    volumes = np.asarray(volumes_ml, dtype=np.float64).reshape(-1)
    return ", ".join(f"{v:.1f}" for v in volumes[_measured(volumes)]) + " ml"
