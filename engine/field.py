"""The 3D field: a voxel grid of density plus latent features (SJC / Latent-NeRF), and a background.

Grid layout: one parameter of shape (1, 1 + C, R, R, R) indexed [channel, z, y, x] over the cube
[-bound, bound]^3 (voxel centres on the corners, ``align_corners=True``), so ``grid_sample``
takes world points divided by ``bound`` in (x, y, z) order. Channel 0 is the density logit,
channels 1..C are the prior's latent features.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class VoxelField(nn.Module):
    def __init__(self, resolution: int, feature_channels: int, bound: float,
                 blob_strength: float = 5.0, blob_radius: float = 0.5, density_shift: float = -1.0):
        super().__init__()
        self.resolution = resolution
        self.feature_channels = feature_channels
        self.bound = bound
        # A density "blob" at the origin (DreamFusion, Magic3D): a fixed bias on the density logit
        # that gives the optimisation an object to sculpt instead of empty space or fog.
        self.blob_strength = blob_strength
        self.blob_radius = blob_radius * bound
        self.density_shift = density_shift
        self.grid = nn.Parameter(torch.zeros(1, 1 + feature_channels, resolution, resolution, resolution))

    @property
    def voxel_size(self) -> float:
        return 2 * self.bound / (self.resolution - 1)

    def blob_bias(self, points: torch.Tensor) -> torch.Tensor:
        return self.blob_strength * (1 - points.norm(dim=-1) / self.blob_radius) + self.density_shift

    def activate_density(self, logits: torch.Tensor) -> torch.Tensor:
        # Scaled by 1/voxel so a logit near 0 makes one voxel's length about half opaque, whatever R.
        return F.softplus(logits) / self.voxel_size

    def query(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Trilinear density (P,) and latent features (P, C) at world points (P, 3)."""
        normalised = (points / self.bound).view(1, 1, 1, -1, 3)
        samples = F.grid_sample(self.grid, normalised, mode="bilinear", align_corners=True,
                                padding_mode="border").view(1 + self.feature_channels, -1)
        density = self.activate_density(samples[0] + self.blob_bias(points))
        return density, samples[1:].T

    def grid_points(self, resolution: int | None = None) -> torch.Tensor:
        """World coordinates (R, R, R, 3) of a lattice over the box, indexed [z, y, x]."""
        axis = torch.linspace(-self.bound, self.bound, resolution or self.resolution,
                              device=self.grid.device)
        z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
        return torch.stack([x, y, z], dim=-1)

    @torch.no_grad()
    def density_grid(self, resolution: int | None = None) -> torch.Tensor:
        """Density on a lattice (R, R, R) indexed [z, y, x]; upsampled trilinearly if R is larger."""
        points = self.grid_points(resolution)
        density, _ = self.query(points.view(-1, 3))
        return density.view(points.shape[:3])


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
