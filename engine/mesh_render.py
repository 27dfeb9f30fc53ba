"""Rendering a fixed, UV-mapped mesh straight into a prior's latent space (Latent-Paint).

The mesh never moves, so everything geometric -- which face each pixel sees, where on the face,
and so which UV it samples -- is rasterised once per view with ``engine.raster`` (numpy, no
gradients) and kept.  What stays differentiable is only the lookup of a latent texture at those
UVs (``grid_sample``) and the composite over the environment background, which is why an SDS step
costs little more than the U-Net's forward pass.

Texture layout: ``(1, C, R, R)`` with row 0 the top of the image, i.e. the UV convention of
``engine.raster`` (origin bottom-left, v up).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .cameras import Camera, ViewSampler, camera_rays
from .field import EnvironmentBackground
from .raster import rasterize


@dataclass
class LatentFragments:
    """One view's rasterisation, ready for ``render_latent``."""

    camera: Camera
    grid: torch.Tensor  # (1, S*h, S*w, 2) grid_sample coordinates of each sample's UV (0 where empty)
    coverage: torch.Tensor  # (1, 1, S*h, S*w) 1 where a sample hits the mesh
    directions: torch.Tensor  # (h*w, 3) unit ray directions at the output resolution, for the background
    supersample: int

    @property
    def size(self) -> tuple[int, int]:
        return self.coverage.shape[2] // self.supersample, self.coverage.shape[3] // self.supersample

    def opacity(self, size: int) -> np.ndarray:
        """Fraction of each pixel of a ``size`` x ``size`` image that the mesh covers."""
        alpha = F.interpolate(self.coverage, size=(size, size), mode="area")
        return alpha[0, 0].cpu().numpy()


def rasterize_uv(vertices: np.ndarray, faces: np.ndarray, uvs: np.ndarray, camera: Camera, size: int,
                 supersample: int = 4, device: torch.device | str = "cpu") -> LatentFragments:
    """Per-sample UVs of the mesh seen from ``camera`` on a ``size*supersample`` square grid."""
    fine = size * supersample
    fragments = rasterize(vertices, faces, camera, fine, fine)
    covered = fragments.mask
    face = fragments.face_id[covered]
    corner_uvs = np.asarray(uvs, dtype=np.float64)[np.asarray(faces, dtype=np.int64)[face]]
    uv = np.einsum("nk,nkc->nc", fragments.bary[covered].astype(np.float64), corner_uvs)
    grid = np.zeros((fine, fine, 2), dtype=np.float32)
    # grid_sample: x = -1 at the left edge, y = -1 at the top edge (align_corners=False), and
    # texture row 0 is v = 1, so v maps to y = 1 - 2v.
    grid[covered] = np.stack([2.0 * uv[:, 0] - 1.0, 1.0 - 2.0 * uv[:, 1]], axis=1)
    _, directions = camera_rays(camera, size, size)
    return LatentFragments(
        camera=camera,
        grid=torch.from_numpy(grid)[None].to(device),
        coverage=torch.from_numpy(covered.astype(np.float32))[None, None].to(device),
        directions=directions.reshape(-1, 3).to(device),
        supersample=supersample,
    )


def render_latent(texture: torch.Tensor, fragments: LatentFragments,
                  background: EnvironmentBackground | None = None) -> torch.Tensor:
    """Latent image (C, h, w): the texture seen through ``fragments``, box-filtered, over the background.

    Box-filtering the supersampled lookups gives antialiased silhouettes and spreads each latent
    pixel's gradient over several texels instead of the one its centre happens to hit.
    """
    s = fragments.supersample
    samples = F.grid_sample(texture, fragments.grid, mode="bilinear", padding_mode="border", align_corners=False)
    covered = fragments.coverage
    surface = F.avg_pool2d(samples * covered, s)[0]
    alpha = F.avg_pool2d(covered, s)[0]
    if background is None:
        return surface
    h, w = fragments.size
    behind = background(fragments.directions).T.reshape(-1, h, w)
    return surface + (1.0 - alpha) * behind


class ViewPool:
    """A ``ViewSampler`` whose views are rasterised once: the rig's views and ``pool_size`` random
    views drawn around the rig up front, then reused.  ``index(step)`` follows the sampler's rule
    (a rig view every ``rig_every`` steps, a random one otherwise), drawing from the pool."""

    def __init__(self, sampler: ViewSampler, vertices: np.ndarray, faces: np.ndarray, uvs: np.ndarray,
                 size: int, supersample: int, pool_size: int, generator: torch.Generator,
                 device: torch.device | str = "cpu"):
        self.sampler = sampler
        self.rig_count = len(sampler.rig)
        cameras = list(sampler.rig) + [sampler.convention.sample(generator) for _ in range(pool_size)]
        self.fragments = [rasterize_uv(vertices, faces, uvs, camera, size, supersample, device)
                          for camera in cameras]

    @property
    def rig(self) -> list[Camera]:
        """The rig as the sampler uses it (fitted to the prior's camera distance)."""
        return self.sampler.rig

    def index(self, step: int, generator: torch.Generator) -> int:
        if self.rig_count and step % self.sampler.rig_every == 0:
            return (step // self.sampler.rig_every) % self.rig_count
        random_views = len(self.fragments) - self.rig_count
        return self.rig_count + int(torch.randint(random_views, (1,), generator=generator))

    def __len__(self) -> int:
        return len(self.fragments)

    def __getitem__(self, index: int) -> LatentFragments:
        return self.fragments[index]


def fragments_for(vertices: np.ndarray, faces: np.ndarray, uvs: np.ndarray, cameras: Sequence[Camera],
                  size: int, supersample: int, device: torch.device | str = "cpu") -> list[LatentFragments]:
    return [rasterize_uv(vertices, faces, uvs, camera, size, supersample, device) for camera in cameras]
