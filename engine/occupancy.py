"""Sketch-Shape guidance (Latent-NeRF, section 3.2): a coarse mesh as a soft constraint on the field.

The sketch is measured ONCE, on the lattice where the field keeps its density logits: whether each
lattice point is inside (generalised winding number > 1/2, which stays meaningful for meshes with
small holes or flipped patches, where ray parity tests break) and how far it is from the sketch's
surface. The loss compares the field's per-voxel opacity with that occupancy by binary
cross-entropy, weighted by 1 - exp(-d^2 / 2 sigma^2): zero on the sketch's surface, so the prior is
free to add detail there, and full weight deep inside and far outside, where the sketch is trusted.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch

from .field import VoxelField

log = logging.getLogger(__name__)

INSIDE_WINDING = 0.5


def _igl():
    # Imported on use, so that ``import engine`` (and everything but Sketch-Shape) works on an
    # install that predates the libigl dependency.
    try:
        import igl
    except ImportError as error:
        raise ImportError("Sketch-Shape needs libigl: pip install 'libigl>=2.6'") from error
    return igl


def lattice(resolution: int, bound: float) -> np.ndarray:
    """World points (R, R, R, 3) indexed [z, y, x]: the points of ``VoxelField.grid_points``.

    Built here rather than from a field because the occupancy is needed before the field exists
    (to start the field from the sketch); a test keeps the two identical."""
    axis = torch.linspace(-bound, bound, resolution).double()
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    return torch.stack([x, y, z], dim=-1).numpy()


def winding_numbers(vertices: np.ndarray, faces: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Generalised winding number of the mesh at each point (..., 3): ~1 inside, ~0 outside."""
    points = np.asarray(points, dtype=np.float64)
    flat = np.ascontiguousarray(points.reshape(-1, 3))
    # The fast (Barnes-Hut) variant: exact near the surface, where the inside test matters, and
    # O(log F) per point far from it, so a dense sketch on a 64^3 grid stays well under a second.
    numbers = _igl().fast_winding_number(np.ascontiguousarray(vertices, dtype=np.float64),
                                      np.ascontiguousarray(faces, dtype=np.int64), flat)
    return numbers.reshape(points.shape[:-1])


def surface_distance(vertices: np.ndarray, faces: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Unsigned distance from each point (..., 3) to the nearest triangle of the mesh (AABB tree)."""
    points = np.asarray(points, dtype=np.float64)
    squared, _, _ = _igl().point_mesh_squared_distance(
        np.ascontiguousarray(points.reshape(-1, 3)), np.ascontiguousarray(vertices, dtype=np.float64),
        np.ascontiguousarray(faces, dtype=np.int64))
    return np.sqrt(squared).reshape(points.shape[:-1])


@dataclass
class SketchOccupancy:
    """The sketch measured on a lattice (arrays shaped like the lattice, indexed [z, y, x])."""

    inside: np.ndarray  # bool
    winding: np.ndarray  # float64 generalised winding numbers
    distance: np.ndarray  # float64 unsigned distance to the sketch's surface

    @classmethod
    def measure(cls, vertices: np.ndarray, faces: np.ndarray, points: np.ndarray) -> "SketchOccupancy":
        winding = winding_numbers(vertices, faces, points)
        distance = surface_distance(vertices, faces, points)
        return cls(winding > INSIDE_WINDING, winding, distance)

    @classmethod
    def on_grid(cls, vertices: np.ndarray, faces: np.ndarray, resolution: int, bound: float) -> "SketchOccupancy":
        occupancy = cls.measure(vertices, faces, lattice(resolution, bound))
        log.info("sketch occupancy on a %d^3 grid: %d of %d points inside", resolution,
                 int(occupancy.inside.sum()), occupancy.inside.size)
        return occupancy

    @property
    def signed_distance(self) -> np.ndarray:
        """Negative inside, positive outside."""
        return np.where(self.inside, -self.distance, self.distance)

    def surface_weight(self, sigma: float) -> np.ndarray:
        """1 - exp(-d^2 / 2 sigma^2): 0 on the surface, towards 1 a few sigma away from it."""
        return -np.expm1(-self.distance ** 2 / (2.0 * sigma ** 2))

    def density_logits(self, slope: float) -> np.ndarray:
        """Density logits that start the field as the sketch: ``-slope * signed distance``.

        A logit of 0 makes a voxel half opaque, which is the level the mesh is extracted at, so the
        starting surface is the sketch's; the slope sets how soft the start is, like the blob's."""
        return -slope * self.signed_distance


def voxel_opacity(field: VoxelField, logits: torch.Tensor | None = None) -> torch.Tensor:
    """Opacity a ray gains crossing one voxel, 1 - exp(-density * voxel), as the renderer's quadrature."""
    logits = field.density[0, 0] if logits is None else logits
    return -torch.expm1(-field.activate_density(logits) * field.voxel_size)


class SketchLoss:
    """Latent-NeRF's Sketch-Shape term as a ``FieldLoss``: ``loss(field, progress)`` -> scalar.

    ``weight`` * mean over the grid of w(d) * BCE(field voxel opacity, sketch occupancy), with
    w(d) = 1 - exp(-d^2 / 2 sigma^2); everything the loss needs is precomputed as tensors."""

    def __init__(self, occupancy: SketchOccupancy, weight: float, sigma: float, device=None):
        if not (math.isfinite(weight) and weight >= 0):
            raise ValueError(f"the sketch weight must be a non-negative number, got {weight}")
        if not (math.isfinite(sigma) and sigma > 0):
            raise ValueError(f"the sketch sigma must be a positive number, got {sigma}")
        self.weight, self.sigma = float(weight), float(sigma)
        self.target = torch.as_tensor(occupancy.inside, dtype=torch.float32, device=device)
        self.voxel_weights = torch.as_tensor(occupancy.surface_weight(sigma), dtype=torch.float32,
                                             device=device)

    def voxel_losses(self, field: VoxelField) -> torch.Tensor:
        """Weighted BCE per grid point (R, R, R), before the mean and the overall weight."""
        logits = field.density[0, 0]
        if logits.shape != self.target.shape:
            raise ValueError(f"the sketch was measured on a {tuple(self.target.shape)} grid, "
                             f"the field has {tuple(logits.shape)}")
        # With optical depth s = density * voxel, log(alpha) = log(-expm1(-s)) and log(1 - alpha) = -s
        # exactly, so the cross-entropy is written in s: no clamping of alpha near 0 or 1 needed, and
        # an outside voxel's penalty stays linear in s instead of saturating once it is opaque.
        depth = field.activate_density(logits) * field.voxel_size
        log_alpha = torch.log(-torch.expm1(-depth.clamp(min=1e-6)))
        cross_entropy = -self.target * log_alpha + (1 - self.target) * depth
        return self.voxel_weights * cross_entropy

    def __call__(self, field: VoxelField, progress: float) -> torch.Tensor:
        return self.weight * self.voxel_losses(field).mean()
