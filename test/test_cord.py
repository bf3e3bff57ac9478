"""export.cord: the clinical cord contour read as a line (the pseudo-labels' check, the skull model's target)."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from export.cord import CordLine

CORD_XY = np.array([40.0, 50.0])


def _cord(*, flipped: bool = False) -> sitk.Image:
    """A straight cord, 6 mm thick, centred at x 40, y 50 mm, over 200 mm of z (2 mm voxels); ``flipped``: the
    slice index runs towards the feet (direction z -1), as some exports store it."""
    array = np.zeros((100, 50, 40), np.uint8)
    array[:, 24:27, 19:22] = 1  # index centre (20, 25) -> (40, 50) mm at 2 mm spacing
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((2.0, 2.0, 2.0))
    if flipped:
        image.SetDirection((1, 0, 0, 0, 1, 0, 0, 0, -1))
    return image


def test_the_line_is_the_contour_centre_per_slice() -> None:
    cord = CordLine.of(_cord())
    np.testing.assert_allclose(cord.at(100.0, 3.0), CORD_XY)
    assert cord.at(250.0, 3.0) is None  # no slice within reach: not checked
    np.testing.assert_allclose(cord.at(201.0, 3.0), CORD_XY)  # the top slice, 3 mm away


def test_the_top_is_the_highest_slice_whatever_the_slice_order() -> None:
    """The skull model's target is where the cord meets the foramen magnum: its highest slice in world z. Read by
    index (the code this replaced), a cord stored feet-first gave its lowest slice, 198 mm too low."""
    np.testing.assert_allclose(CordLine.of(_cord()).top_mm(), [*CORD_XY, 198.0])
    np.testing.assert_allclose(CordLine.of(_cord(flipped=True)).top_mm(), [*CORD_XY, 0.0])


def test_an_empty_contour_has_no_line_and_no_top() -> None:
    empty = sitk.Image(10, 10, 10, sitk.sitkUInt8)
    cord = CordLine.of(empty)
    assert cord.top_mm() is None and cord.at(0.0, 3.0) is None
