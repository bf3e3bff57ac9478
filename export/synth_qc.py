"""QC picture of the synthetic phantoms next to a real CT: mid slices and HU histograms.

``python -m export synth --qc docs/synth_qc.png`` writes it. The real CT is the
TotalSegmentator example (3 mm, T11 to sacrum, automatic labels) from the shared data
folder; the histograms pool every real labelled CT at hand (:mod:`export.real_cases`), each
resampled to 3 mm. Bone = voxels labelled as vertebrae; soft tissue = unlabelled voxels in
[-200, 200] HU. Synthetic cases for the histogram are drawn at the real CT's 3 mm spacing
(partial volume changes bone HU strongly) and also shown at a fine spacing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from export.anatomy import shared_data_dirs
from spine.case import Case
from spine.image import array_of, read_image
from spine.preprocess import to_model_grid

__all__ = ["HuSummary", "default_real_dir", "hu_summary", "write_qc"]

log = logging.getLogger(__name__)

WINDOW_HU = (-450.0, 1050.0)
SOFT_RANGE_HU = (-200.0, 200.0)


def default_real_dir() -> Path:
    """``totalsegmentator-example`` in the first shared data folder found (see :func:`shared_data_dirs`)."""
    candidates = [folder / "totalsegmentator-example" for folder in shared_data_dirs()]
    return next((path for path in candidates if path.is_dir()), candidates[0])


@dataclass(frozen=True)
class HuSummary:
    """HU samples of bone (vertebra labels) and soft tissue (unlabelled, -200..200 HU), and their medians."""

    bone: np.ndarray
    soft: np.ndarray

    @property
    def bone_median(self) -> float:
        return float(np.median(self.bone)) if self.bone.size else float("nan")

    @property
    def soft_median(self) -> float:
        return float(np.median(self.soft)) if self.soft.size else float("nan")


def hu_summary(ct: np.ndarray, mask: np.ndarray) -> HuSummary:
    """Bone = voxels with a vertebra label (1-25, 28; sacrum excluded); soft = unlabelled voxels in -200..200 HU."""
    vertebra = ((mask >= 1) & (mask <= 25)) | (mask == 28)
    soft = (mask == 0) & (ct >= SOFT_RANGE_HU[0]) & (ct <= SOFT_RANGE_HU[1])
    return HuSummary(bone=ct[vertebra].astype(np.float32), soft=ct[soft].astype(np.float32))


def _canonical(case: Case, spacing_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """CT and mask on an identity-direction (LPS) grid, ``(z, y, x)``."""
    ct, _ = to_model_grid(case.ct, (spacing_mm,) * 3)
    mask, _ = to_model_grid(case.mask, (spacing_mm,) * 3, nearest=True, default=0)
    return ct, mask


def _mid_slices(ct: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sagittal and coronal slices through the vertebrae's centre (LPS arrays: z up after flipping)."""
    where = np.argwhere((mask > 0) & (mask < 26))
    centre = where.mean(axis=0).round().astype(int) if len(where) else np.array(ct.shape) // 2
    sagittal = ct[::-1, :, centre[2]]  # (z, y): superior up, anterior left
    coronal = ct[::-1, centre[1], ::-1]  # (z, x): superior up, patient right on the left
    return sagittal, coronal


def write_qc(path: str | Path, synth_case: Callable[..., Case], *, seed: int = 0, real_dir: str | Path | None = None,
             n_cases: int = 8) -> dict:
    """Write the QC PNG; return the medians ``{"real": {...}, "synthetic": {...}}`` (HU).

    ``synth_case`` is the generator (``export.synth.synth_case``), passed in so that this
    module sits below ``export.synth``, which calls it, and imports nothing of it.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    real_dir = Path(real_dir) if real_dir is not None else default_real_dir()
    real_ct = read_image(real_dir / "ct.nii.gz")
    real_mask = read_image(real_dir / "seg-vert_msk.nii.gz")
    real = Case("real", sitk.Cast(real_ct, sitk.sitkInt16), sitk.Cast(real_mask, sitk.sitkUInt8), {})
    # Real statistics pooled over every real labelled CT at hand (each resampled to 3 mm, like the phantoms).
    from export.real_cases import find_real_cases

    per_case = {}
    for other in find_real_cases():
        loaded = other.load()
        ct, mask = _canonical(Case(other.name, sitk.Cast(loaded.ct, sitk.sitkInt16), loaded.mask, {}), 3.0)
        per_case[other.name] = hu_summary(ct, mask)
    if not per_case:
        per_case["real"] = hu_summary(array_of(real.ct), array_of(real.mask))
    real_summary = HuSummary(bone=np.concatenate([h.bone for h in per_case.values()]),
                             soft=np.concatenate([h.soft for h in per_case.values()]))

    coarse = [synth_case(seed + i, region="lumbar", spacing_mm=(3.0, 3.0, 3.0), orientation="RAS")
              for i in range(n_cases)]
    synth_summary = HuSummary(
        bone=np.concatenate([hu_summary(array_of(c.ct), array_of(c.mask)).bone for c in coarse]),
        soft=np.concatenate([hu_summary(array_of(c.ct), array_of(c.mask)).soft for c in coarse]),
    )
    fine = synth_case(seed, region="lumbar", spacing_mm=(0.8, 0.8, 1.5), orientation="LPS", metal_rate=0.0)
    wide = synth_case(seed + 1, region="whole", spacing_mm=(1.5, 1.5, 1.5), orientation="PIR", metal_rate=0.0)

    rows = [("real (TotalSegmentator example, 3 mm)", real, 3.0),
            (f"synthetic seed {seed}, lumbar, 3 mm", coarse[0], 3.0),
            (f"synthetic seed {seed}, lumbar, 0.8x0.8x1.5 mm", fine, 1.0),
            (f"synthetic seed {seed + 1}, whole spine", wide, 1.5)]
    fig, axes = plt.subplots(len(rows) + 1, 2, figsize=(11, 5.0 * (len(rows) + 1)))
    for row, (title, case, spacing) in enumerate(rows):
        ct, mask = _canonical(case, spacing)
        for column, (view, image) in enumerate(zip(("sagittal", "coronal"), _mid_slices(ct, mask), strict=True)):
            ax = axes[row, column]
            ax.imshow(image, cmap="gray", vmin=WINDOW_HU[0], vmax=WINDOW_HU[1], aspect="equal",
                      interpolation="bilinear")
            ax.set_title(f"{title}: {view}", fontsize=9)
            ax.axis("off")
    medians = {
        "real": {"bone": real_summary.bone_median, "soft": real_summary.soft_median,
                 "cases": {name: {"bone": h.bone_median, "soft": h.soft_median} for name, h in per_case.items()}},
        "synthetic": {"bone": synth_summary.bone_median, "soft": synth_summary.soft_median},
    }
    for column, (name, lo, hi) in enumerate((("bone", -200, 1400), ("soft", -200, 200))):
        ax = axes[-1, column]
        bins = np.linspace(lo, hi, 81)
        for label, summary, colour in ((f"real ({len(per_case)} CTs)", real_summary, "tab:blue"),
                                       ("synthetic", synth_summary, "tab:orange")):
            values = getattr(summary, name)
            ax.hist(values, bins=bins, density=True, histtype="step", color=colour, linewidth=1.5,
                    label=f"{label}: median {float(np.median(values)):.0f} HU, n={values.size}")
        ax.set_title(f"{name} HU at 3 mm ({'vertebra labels' if name == 'bone' else 'unlabelled, -200..200'})")
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=70)
    plt.close(fig)
    log.info("HU medians: real bone %.0f soft %.0f; synthetic bone %.0f soft %.0f", medians["real"]["bone"],
             medians["real"]["soft"], medians["synthetic"]["bone"], medians["synthetic"]["soft"])
    return medians
