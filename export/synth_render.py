"""Painting primitives for the synthetic phantoms, each on its own bounded box.

The canvas is an axis-aligned LPS grid: arrays in ``(z, y, x)`` order, voxel ``(k, j, i)``
at ``origin + (i, j, k) * spacing`` (mm). Bone is painted into a *depth* field (mm inside
the nearest bone surface, the union of primitives is their maximum), which later gives
cortical shell and trabecular core from one threshold; soft materials are painted straight
into the HU array. Every primitive touches only the voxels of its bounding box.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

__all__ = ["Canvas"]


@dataclass
class Canvas:
    """Arrays of one phantom on an axis-aligned LPS grid (``(z, y, x)`` order).

    - ``hu``: float32 Hounsfield units of soft tissue (bone is added from ``depth``);
    - ``depth``: float32 mm inside bone (negative or -inf outside);
    - ``label``: uint8 VerSe id of the bone primitive owning each voxel (0: unlabelled);
    - ``density``: uint8 bone class index into the cortical/trabecular HU tables.
    """

    origin_mm: np.ndarray  # world (x, y, z) of voxel (0, 0, 0)
    spacing_mm: np.ndarray  # (x, y, z)
    hu: np.ndarray
    depth: np.ndarray
    label: np.ndarray
    density: np.ndarray
    margin_mm: float = 0.0  # boxes reach this far outside each shape (depth is kept there for partial volume)

    @classmethod
    def empty(cls, origin_mm: np.ndarray, spacing_mm: np.ndarray, shape_zyx: tuple[int, int, int]) -> Canvas:
        return cls(
            origin_mm=np.asarray(origin_mm, dtype=np.float64),
            spacing_mm=np.asarray(spacing_mm, dtype=np.float64),
            hu=np.full(shape_zyx, -1000.0, dtype=np.float32),
            depth=np.full(shape_zyx, -1.0e3, dtype=np.float32),
            label=np.zeros(shape_zyx, dtype=np.uint8),
            density=np.zeros(shape_zyx, dtype=np.uint8),
            margin_mm=0.5 * float(np.max(spacing_mm)) + 0.5,
        )

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        return self.hu.shape  # type: ignore[return-value]

    def box(self, low_mm: np.ndarray, high_mm: np.ndarray) -> tuple[tuple[slice, slice, slice], np.ndarray] | None:
        """Slices of the voxels whose centres lie in the world box, and their centres (z, y, x, 3) in mm.

        None when the box misses the canvas.
        """
        low = np.ceil((np.asarray(low_mm) - self.origin_mm) / self.spacing_mm).astype(int)
        high = np.floor((np.asarray(high_mm) - self.origin_mm) / self.spacing_mm).astype(int) + 1
        size_xyz = np.array(self.shape_zyx[::-1])
        low = np.clip(low, 0, size_xyz)
        high = np.clip(high, 0, size_xyz)
        if np.any(high <= low):
            return None
        axes = [self.origin_mm[a] + self.spacing_mm[a] * np.arange(low[a], high[a]) for a in range(3)]
        slices = (slice(low[2], high[2]), slice(low[1], high[1]), slice(low[0], high[0]))
        return slices, axes  # type: ignore[return-value]

    def local_coordinates(
        self, low_mm: np.ndarray, high_mm: np.ndarray, centre_mm: np.ndarray, frame: np.ndarray,
    ) -> tuple[tuple[slice, slice, slice], np.ndarray, np.ndarray, np.ndarray] | None:
        """Voxel centres of a world box in a local frame: ``(slices, u, v, w)``, arrays (z, y, x) in mm."""
        found = self.box(low_mm, high_mm)
        if found is None:
            return None
        slices, (xs, ys, zs) = found
        dx = (xs - centre_mm[0]).astype(np.float32)[None, None, :]
        dy = (ys - centre_mm[1]).astype(np.float32)[None, :, None]
        dz = (zs - centre_mm[2]).astype(np.float32)[:, None, None]
        f = frame.astype(np.float32)
        u = dx * f[0, 0] + dy * f[1, 0] + dz * f[2, 0]
        v = dx * f[0, 1] + dy * f[1, 1] + dz * f[2, 1]
        w = dx * f[0, 2] + dy * f[1, 2] + dz * f[2, 2]
        return slices, u, v, w

    def paint_bone(self, slices: tuple[slice, slice, slice], depth: np.ndarray, label: int, density: int) -> None:
        """Union ``depth`` (mm inside) into the bone field; the deeper primitive owns the voxel."""
        current = self.depth[slices]
        wins = depth > current
        if not np.any(wins):
            return
        current[wins] = depth[wins]
        self.label[slices][wins] = label
        self.density[slices][wins] = density

    def slab(
        self,
        origin_mm: np.ndarray,
        edge1_mm: np.ndarray,
        edge2_mm: np.ndarray,
        radius_mm: float,
        *,
        label: int = 0,
        density: int = 0,
        soft_hu: float | None = None,
    ) -> None:
        """A rounded parallelogram: points within ``radius_mm`` of ``origin + s*edge1 + t*edge2``, s, t in [0, 1].

        ``edge2`` may be zero (a capsule) and both zero (a sphere). With ``soft_hu`` the
        shape is painted into the HU array (soft material) instead of the bone field. For
        points whose projection falls outside the parallelogram, (s, t) are clamped in the
        edges' own coordinates: exact for rectangles, slightly conservative otherwise.
        """
        p0 = np.asarray(origin_mm, dtype=np.float64)
        e1 = np.asarray(edge1_mm, dtype=np.float64)
        e2 = np.asarray(edge2_mm, dtype=np.float64)
        n1 = float(np.linalg.norm(e1))
        n2 = float(np.linalg.norm(e2))
        if n1 <= 0 and n2 > 0:
            e1, e2, n1, n2 = e2, e1, n2, n1
        if n2 > 0 and float(np.linalg.norm(np.cross(e1, e2))) < 1e-6 * n1 * n2:
            e2, n2 = np.zeros(3), 0.0  # parallel edges: a capsule along the first
        corners = np.array([p0, p0 + e1, p0 + e2, p0 + e1 + e2])
        low = corners.min(axis=0) - radius_mm - self.margin_mm
        high = corners.max(axis=0) + radius_mm + self.margin_mm
        found = self.box(low, high)
        if found is None:
            return
        slices, (xs, ys, zs) = found
        dx = (xs - p0[0]).astype(np.float32)[None, None, :]
        dy = (ys - p0[1]).astype(np.float32)[None, :, None]
        dz = (zs - p0[2]).astype(np.float32)[:, None, None]
        if n1 <= 0:  # a sphere
            dist2 = dx * dx + dy * dy + dz * dz
        elif n2 <= 0:  # a capsule
            unit = (e1 / n1).astype(np.float32)
            along = dx * unit[0] + dy * unit[1] + dz * unit[2]
            dist2 = dx * dx + dy * dy + dz * dz - along * along + (along - np.clip(along, 0.0, n1)) ** 2
        else:
            inverse = np.linalg.inv(np.array([[e1 @ e1, e1 @ e2], [e1 @ e2, e2 @ e2]])).astype(np.float32)
            f1, f2 = e1.astype(np.float32), e2.astype(np.float32)
            b1 = dx * f1[0] + dy * f1[1] + dz * f1[2]
            b2 = dx * f2[0] + dy * f2[1] + dz * f2[2]
            s_ = np.clip(inverse[0, 0] * b1 + inverse[0, 1] * b2, 0.0, 1.0)
            t_ = np.clip(inverse[1, 0] * b1 + inverse[1, 1] * b2, 0.0, 1.0)
            rx = dx - s_ * f1[0] - t_ * f2[0]
            ry = dy - s_ * f1[1] - t_ * f2[1]
            rz = dz - s_ * f1[2] - t_ * f2[2]
            dist2 = rx * rx + ry * ry + rz * rz
        depth = np.float32(radius_mm) - np.sqrt(np.maximum(dist2, 0.0))
        if soft_hu is not None:
            self.hu[slices][depth > 0] = soft_hu
        else:
            self.paint_bone(slices, depth, label, density)

    def polyline(self, points_mm: np.ndarray, radius_mm: float | np.ndarray, **kwargs: object) -> None:
        """A tube through ``points_mm`` (n, 3): one capsule per segment (radius per segment allowed)."""
        radii = np.broadcast_to(np.asarray(radius_mm, dtype=np.float64), (len(points_mm) - 1,))
        for a, b, r in zip(points_mm[:-1], points_mm[1:], radii, strict=True):
            self.slab(a, b - a, np.zeros(3), float(r), **kwargs)  # type: ignore[arg-type]

    def elliptic_cylinder(
        self,
        centre_mm: np.ndarray,
        frame: np.ndarray,
        half_width_mm: float,
        half_depth_mm: float,
        half_height_mm: float,
        *,
        waist: float = 0.0,
        posterior_flat: float = 1.0,
        rounding_mm: float = 0.0,
        endplate_dip_mm: float = 0.0,
        label: int = 0,
        density: int = 0,
        soft_hu: float | None = None,
    ) -> None:
        """An elliptic cylinder along the frame's third axis (a vertebral body, a disc).

        ``waist`` narrows the middle height by that fraction (concave body sides);
        ``posterior_flat`` cuts the ellipse at that fraction of the half depth posteriorly;
        ``rounding_mm`` rounds the rim where side meets end plate; ``endplate_dip_mm`` makes
        both end plates concave by that much at the centre.
        """
        reach = np.abs(frame) @ np.array([half_width_mm, half_depth_mm, half_height_mm]) + 1.0 + self.margin_mm
        found = self.local_coordinates(centre_mm - reach, centre_mm + reach, centre_mm, frame)
        if found is None:
            return
        slices, u, v, w = found
        along = np.clip(w / np.float32(half_height_mm), -1.0, 1.0)
        shrink = 1.0 - np.float32(waist) * (1.0 - along * along)
        a = np.float32(half_width_mm) * shrink
        b = np.float32(half_depth_mm) * shrink
        radial = np.sqrt((u / a) ** 2 + (v / b) ** 2)
        side = (radial - 1.0) * np.minimum(a, b)  # > 0 outside the side wall, mm
        if posterior_flat < 1.0:
            side = np.maximum(side, v - np.float32(posterior_flat * half_depth_mm))
        dip = np.float32(endplate_dip_mm) * (1.0 - np.minimum(radial, 1.0) ** 2)
        end = np.abs(w) - (np.float32(half_height_mm) - dip)  # > 0 beyond the end plates
        rho = np.float32(rounding_mm)
        qx, qy = side + rho, end + rho
        outside = np.sqrt(np.maximum(qx, 0.0) ** 2 + np.maximum(qy, 0.0) ** 2)
        depth = rho - outside - np.minimum(np.maximum(qx, qy), 0.0)
        if soft_hu is not None:
            self.hu[slices][depth > 0] = soft_hu
        else:
            self.paint_bone(slices, depth.astype(np.float32), label, density)

    def loft(
        self,
        points_mm: np.ndarray,
        lateral: np.ndarray,
        half_widths_mm: np.ndarray,
        half_depths_mm: np.ndarray,
        *,
        label: int = 0,
        density: int = 0,
        joint_slack_mm: float = 6.0,
    ) -> None:
        """A solid with elliptic sections swept along a polyline (the sacrum): one surface, no inner shells.

        Section ``i`` at ``points_mm[i]`` has half width (along ``lateral``) and half depth
        (along the curve's normal); sizes vary linearly between points. The ends are flat
        caps; inner joints may bulge by ``joint_slack_mm`` so bends leave no gaps.
        """
        points = np.asarray(points_mm, dtype=np.float64)
        widths = np.asarray(half_widths_mm, dtype=np.float64)
        depths = np.asarray(half_depths_mm, dtype=np.float64)
        reach = float(max(widths.max(), depths.max())) + self.margin_mm + 1.0
        found = self.box(points.min(axis=0) - reach, points.max(axis=0) + reach)
        if found is None:
            return
        slices, (xs, ys, zs) = found
        best = np.full((len(zs), len(ys), len(xs)), -1.0e3, dtype=np.float32)
        lateral = lateral / np.linalg.norm(lateral)
        last = len(points) - 2
        for i in range(len(points) - 1):
            a, b = points[i], points[i + 1]
            length = float(np.linalg.norm(b - a))
            axis = (b - a) / length
            normal = np.cross(axis, lateral)
            normal /= np.linalg.norm(normal)
            side = np.cross(normal, axis)
            dx = (xs - a[0]).astype(np.float32)[None, None, :]
            dy = (ys - a[1]).astype(np.float32)[None, :, None]
            dz = (zs - a[2]).astype(np.float32)[:, None, None]
            along = dx * np.float32(axis[0]) + dy * np.float32(axis[1]) + dz * np.float32(axis[2])
            u = dx * np.float32(side[0]) + dy * np.float32(side[1]) + dz * np.float32(side[2])
            v = dx * np.float32(normal[0]) + dy * np.float32(normal[1]) + dz * np.float32(normal[2])
            t = np.clip(along / np.float32(length), 0.0, 1.0)
            w = np.float32(widths[i]) + t * np.float32(widths[i + 1] - widths[i])
            d = np.float32(depths[i]) + t * np.float32(depths[i + 1] - depths[i])
            depth = (1.0 - np.sqrt((u / w) ** 2 + (v / d) ** 2)) * np.minimum(w, d)
            start_slack = 0.0 if i == 0 else joint_slack_mm
            end_slack = 0.0 if i == last else joint_slack_mm
            depth = np.minimum(depth, along + np.float32(start_slack))
            depth = np.minimum(depth, np.float32(length + end_slack) - along)
            np.maximum(best, depth, out=best)
        self.paint_bone(slices, best, label, density)

    def carve(self, points_mm: np.ndarray, radius_mm: float, hu: float) -> None:
        """Remove bone along a tube (the spinal canal) and fill it with soft material ``hu``."""
        for a, b in itertools.pairwise(points_mm):
            e1 = b - a
            low = np.minimum(a, b) - radius_mm
            high = np.maximum(a, b) + radius_mm
            found = self.box(low, high)
            if found is None:
                continue
            slices, (xs, ys, zs) = found
            dx = (xs - a[0]).astype(np.float32)[None, None, :]
            dy = (ys - a[1]).astype(np.float32)[None, :, None]
            dz = (zs - a[2]).astype(np.float32)[:, None, None]
            norm = float(np.linalg.norm(e1))
            unit = (e1 / norm).astype(np.float32)
            along = dx * unit[0] + dy * unit[1] + dz * unit[2]
            dist2 = dx * dx + dy * dy + dz * dz - along * along + (along - np.clip(along, 0.0, norm)) ** 2
            inside = dist2 < radius_mm**2
            self.depth[slices][inside] = -1.0e3
            self.label[slices][inside] = 0
            self.hu[slices][inside] = hu
