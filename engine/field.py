"""The 3D field: a voxel grid of density plus latent features (SJC / Latent-NeRF), and a background.

Grid layout: a density-logit grid (1, 1, R, R, R) and a feature grid (1, C, R, R, R), indexed
[channel, z, y, x] over the cube [-bound, bound]^3 (voxel centres on the corners,
``align_corners=True``), so ``grid_sample`` takes world points divided by ``bound`` in (x, y, z)
order. They are separate so the renderer can read features only where a ray's weight is not
negligible, which is most of the saving on a CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import GRID_RESOLUTION_RANGE, check_int, check_number


@dataclass(frozen=True)
class FieldConfig:
    """The voxel field and its optimiser."""

    grid_resolution: int = 32  # coarse grids move shape faster under noisy score distillation
    samples_per_ray: int = 64
    learning_rate: float = 0.05  # density logits and background
    # Features ramp up from a tenth of their rate over the first ``feature_warmup`` of the run: colours
    # that learn as fast as density let the prior paint unwanted blob the background's colour.
    feature_learning_rate: float = 0.03
    feature_warmup: float = 0.5
    blob_strength: float = 10.0
    blob_radius: float = 0.42  # as a fraction of the scene bound

    def __post_init__(self) -> None:
        check_int("field.grid_resolution", self.grid_resolution, *GRID_RESOLUTION_RANGE)
        check_int("field.samples_per_ray", self.samples_per_ray, 4, 1024)
        check_number("field.learning_rate", self.learning_rate, 0, 10, low_open=True)
        check_number("field.feature_learning_rate", self.feature_learning_rate, 0, 10)
        check_number("field.feature_warmup", self.feature_warmup, 0, 1)
        check_number("field.blob_strength", self.blob_strength, 0, 1e3)
        check_number("field.blob_radius", self.blob_radius, 0, 1, low_open=True)


class VoxelField(nn.Module):
    def __init__(self, resolution: int, feature_channels: int, bound: float,
                 blob_strength: float = 10.0, blob_radius: float = 0.5, density_shift: float = 0.0):
        super().__init__()
        self.resolution = resolution
        self.feature_channels = feature_channels
        self.bound = bound
        # A density "blob" at the origin (DreamFusion, Magic3D) gives the optimisation an object to
        # sculpt instead of empty space or fog. It is where the density logits start, not a fixed
        # bias: a fixed bias on a voxel grid cannot be carved away, and the prior then "removes"
        # the unwanted parts of the blob by painting them the background's colour.
        self.density = nn.Parameter(torch.zeros(1, 1, resolution, resolution, resolution))
        self.features = nn.Parameter(torch.zeros(1, feature_channels, resolution, resolution, resolution))
        with torch.no_grad():
            radius = self.grid_points().norm(dim=-1)
            self.density[0, 0] = blob_strength * (1 - radius / (blob_radius * bound)) + density_shift

    @property
    def voxel_size(self) -> float:
        return 2 * self.bound / (self.resolution - 1)

    def activate_density(self, logits: torch.Tensor) -> torch.Tensor:
        # Scaled by 1/voxel so a logit near 0 makes one voxel's length about half opaque, whatever R.
        return F.softplus(logits) / self.voxel_size

    def _sample(self, grid: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        count = points.shape[0]
        normalised = points / self.bound
        # PyTorch's CPU grid_sample (3-D, forward and backward) spreads work over threads only by
        # batch, so many points go in as one batch per thread against the same (expanded) grid:
        # the same values in about half the time on two cores. The backward then fills one grid
        # gradient per batch, which costs more than it saves below about one point per 16 voxels
        # (measured at 32^3 and 64^3).
        if points.device.type == "cpu" and count * 16 >= grid[0, 0].numel():
            chunks = max(1, min(torch.get_num_threads(), count))
        else:
            chunks = 1
        padded = -(-count // chunks) * chunks
        normalised = F.pad(normalised, (0, 0, 0, padded - count)).view(chunks, 1, 1, -1, 3)
        samples = F.grid_sample(grid.expand(chunks, -1, -1, -1, -1), normalised, mode="bilinear",
                                align_corners=True, padding_mode="border")
        return samples.permute(1, 0, 2, 3, 4).reshape(grid.shape[1], -1)[:, :count]

    def query_density(self, points: torch.Tensor) -> torch.Tensor:
        """Trilinear density (P,) at world points (P, 3)."""
        return self.activate_density(self._sample(self.density, points)[0])

    def query_features(self, points: torch.Tensor) -> torch.Tensor:
        """Trilinear latent features (P, C) at world points (P, 3)."""
        return self._sample(self.features, points).T

    def grid_points(self, resolution: int | None = None) -> torch.Tensor:
        """World coordinates (R, R, R, 3) of a lattice over the box, indexed [z, y, x]."""
        axis = torch.linspace(-self.bound, self.bound, resolution or self.resolution,
                              device=self.density.device)
        z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
        return torch.stack([x, y, z], dim=-1)

    @torch.no_grad()
    def density_grid(self, resolution: int | None = None) -> torch.Tensor:
        """Density on a lattice (R, R, R) indexed [z, y, x]; upsampled trilinearly if R is larger."""
        points = self.grid_points(resolution)
        return self.query_density(points.view(-1, 3)).view(points.shape[:3])


class EnvironmentBackground(nn.Module):
    """SJC's background: a tiny learnable image environment-mapped by ray azimuth and elevation.

    Its low resolution keeps it from absorbing the object.
    """

    def __init__(self, channels: int, height: int = 4, width: int = 4, init: torch.Tensor | None = None):
        super().__init__()
        start = torch.zeros(1, channels, height, width)
        if init is not None:
            start[:] = init.view(1, channels, 1, 1)
        self.image = nn.Parameter(start)

    def forward(self, directions: torch.Tensor) -> torch.Tensor:
        """Background features (P, C) for unit ray directions (P, 3)."""
        azimuth = torch.atan2(directions[:, 0], -directions[:, 1]) / math.pi  # [-1, 1], 0 = towards +Y
        elevation = torch.asin(directions[:, 2].clamp(-1, 1)) / (math.pi / 2)
        coords = torch.stack([azimuth, -elevation], dim=-1).view(1, 1, -1, 2)
        return F.grid_sample(self.image, coords, mode="bilinear", align_corners=True,
                             padding_mode="border").view(self.image.shape[1], -1).T
