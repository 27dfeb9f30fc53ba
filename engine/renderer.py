"""Volume rendering of a field straight to the prior's latent resolution (Latent-NeRF, SJC).

No VAE encode in the loop: the field holds latent features, and the composited feature image is
what the U-Net scores. Quadrature as in SJC eq. 25: alpha_i = 1 - exp(-density_i * delta_i),
w_i = alpha_i * prod_{j<i} (1 - alpha_j).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .cameras import Camera, camera_rays
from .field import EnvironmentBackground, VoxelField


@dataclass
class RenderOutput:
    features: torch.Tensor  # (C, H, W), composited over the background
    opacity: torch.Tensor  # (H, W), accumulated alpha
    depth: torch.Tensor  # (H, W), expected termination distance of rays that terminate
    weights: torch.Tensor  # (H*W, N), per-sample compositing weights (for the emptiness loss)


def ray_box_interval(origins: torch.Tensor, directions: torch.Tensor, bound: float):
    """Entry and exit distances of rays through the cube [-bound, bound]^3; equal where they miss."""
    safe = torch.where(directions.abs() < 1e-9, torch.full_like(directions, 1e-9), directions)
    t0 = (-bound - origins) / safe
    t1 = (bound - origins) / safe
    near = torch.minimum(t0, t1).amax(dim=-1).clamp(min=0.0)
    far = torch.maximum(t0, t1).amin(dim=-1)
    far = torch.maximum(far, near)
    return near, far


# A sample whose compositing weight, rescaled to one voxel's length of ray, is below this adds
# nothing visible, so its features are not read (its density still shapes the transmittance of
# everything behind it). Rescaling keeps the cut independent of the number of samples per ray.
FEATURE_WEIGHT_PER_VOXEL = 1e-3


def render(field: VoxelField, camera: Camera, width: int, height: int, samples_per_ray: int,
           background: EnvironmentBackground | None = None,
           generator: torch.Generator | None = None) -> RenderOutput:
    """Render ``field`` from ``camera`` at (height, width). With a generator, sample positions are
    jittered within their segments (stratified sampling); without, segment midpoints are used."""
    device = field.density.device
    origins, directions = camera_rays(camera, width, height, device=device)
    origins, directions = origins.reshape(-1, 3), directions.reshape(-1, 3)
    near, far = ray_box_interval(origins, directions, field.bound)

    steps = torch.arange(samples_per_ray, device=device, dtype=torch.float32)
    if generator is not None:
        offsets = torch.rand(origins.shape[0], samples_per_ray, generator=generator).to(device)
    else:
        offsets = torch.full((origins.shape[0], samples_per_ray), 0.5, device=device)
    segment = ((far - near) / samples_per_ray).unsqueeze(-1)  # (R, 1)
    distances = near.unsqueeze(-1) + (steps + offsets) * segment  # (R, N)
    points = origins.unsqueeze(1) + distances.unsqueeze(-1) * directions.unsqueeze(1)

    density = field.query_density(points.reshape(-1, 3)).view(-1, samples_per_ray)
    alpha = 1 - torch.exp(-density * segment)
    transmittance = torch.cumprod(
        torch.cat([torch.ones_like(alpha[:, :1]), 1 - alpha[:, :-1] + 1e-10], dim=-1), dim=-1)
    weights = alpha * transmittance

    opacity = weights.sum(dim=-1)
    visible = (weights * (field.voxel_size / segment.clamp(min=1e-12)) > FEATURE_WEIGHT_PER_VOXEL).nonzero(
        as_tuple=True)
    features = field.query_features(points[visible])
    composited = torch.zeros(origins.shape[0], field.feature_channels, device=device).index_add(
        0, visible[0], weights[visible].unsqueeze(-1) * features)
    behind = background(directions) if background is not None else None
    if behind is not None:
        composited = composited + (1 - opacity).unsqueeze(-1) * behind
    depth = (weights * distances).sum(dim=-1) / opacity.clamp(min=1e-6)
    return RenderOutput(
        features=composited.T.reshape(-1, height, width),
        opacity=opacity.view(height, width),
        depth=depth.view(height, width),
        weights=weights,
    )
