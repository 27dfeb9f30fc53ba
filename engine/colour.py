"""The colour stage: the exported texture is real RGB, not latents.

Rendered latent views are decoded with the prior's VAE, then every texel of the mesh takes the
visibility- and view-angle-weighted mean of the decoded pixels it projects to. That mean is the
least-squares fit of one colour per texel to all views. Texels no view sees take the colour of
the nearest texel that was seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from scipy.spatial import cKDTree

from .cameras import Camera, project
from .field import EnvironmentBackground, VoxelField
from .prior import Prior
from .raster import rasterize, render_textured
from .renderer import render


@dataclass
class DecodedView:
    camera: Camera
    image: np.ndarray  # (H, W, 3) float in [0, 1], the VAE's decoding of the rendered latents
    opacity: np.ndarray  # (H, W), the field's accumulated alpha, upsampled to the image size


@torch.no_grad()
def decode_views(prior: Prior, field: VoxelField, background: EnvironmentBackground, cameras: list[Camera],
                 samples_per_ray: int, batch_size: int = 8,
                 on_batch: Callable[[], None] = lambda: None) -> list[DecodedView]:
    """``on_batch`` runs before each batch; it may raise to stop (cancellation)."""
    size, image_size = prior.metadata.latent_size, prior.metadata.image_size
    views = []
    for start in range(0, len(cameras), batch_size):
        on_batch()
        chunk = cameras[start:start + batch_size]
        renders = [render(field, cam, size, size, samples_per_ray, background) for cam in chunk]
        images = prior.decode(torch.stack([r.features for r in renders]))
        opacity = torch.nn.functional.interpolate(torch.stack([r.opacity for r in renders])[:, None],
                                                  size=(image_size, image_size), mode="bilinear")
        for cam, image, alpha in zip(chunk, images, opacity):
            views.append(DecodedView(cam, image.permute(1, 2, 0).cpu().numpy(), alpha[0].cpu().numpy()))
    return views


def _bilinear(image: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Sample (H, W, C) at continuous pixel coordinates (N, 2) (pixel centres at +0.5)."""
    height, width = image.shape[:2]
    x = np.clip(xy[:, 0] - 0.5, 0, width - 1)
    y = np.clip(xy[:, 1] - 0.5, 0, height - 1)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    x1, y1 = np.minimum(x0 + 1, width - 1), np.minimum(y0 + 1, height - 1)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    top = image[y0, x0] * (1 - fx) + image[y0, x1] * fx
    bottom = image[y1, x0] * (1 - fx) + image[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def backproject(points: np.ndarray, normals: np.ndarray, vertices: np.ndarray, faces: np.ndarray,
                views: list[DecodedView], depth_tolerance: float, angle_power: float = 2.0,
                on_view: Callable[[], None] = lambda: None):
    """Weighted mean colour (N, 3) over the views that see each surface point, and a seen mask.
    ``on_view`` runs before each view; it may raise to stop (cancellation)."""
    total = np.zeros((len(points), 3))
    weight_sum = np.zeros(len(points))
    for view in views:
        on_view()
        height, width = view.image.shape[:2]
        zbuffer = rasterize(vertices, faces, view.camera, width, height).depth
        xy, depth = project(points, view.camera, width, height)
        cols, rows = np.floor(xy[:, 0]).astype(int), np.floor(xy[:, 1]).astype(int)
        inside = (cols >= 0) & (cols < width) & (rows >= 0) & (rows < height) & (depth > 0)
        visible = np.zeros(len(points), dtype=bool)
        visible[inside] = np.abs(zbuffer[rows[inside], cols[inside]] - depth[inside]) < depth_tolerance
        to_camera = view.camera.position[None] - points
        to_camera /= np.linalg.norm(to_camera, axis=1, keepdims=True)
        facing = np.clip((normals * to_camera).sum(axis=1), 0, 1)
        weight = np.where(visible, facing**angle_power, 0.0)
        used = weight > 0
        total[used] += weight[used, None] * _bilinear(view.image, xy[used])
        weight_sum += weight
    seen = weight_sum > 1e-6
    colours = np.zeros((len(points), 3))
    colours[seen] = total[seen] / weight_sum[seen, None]
    if seen.any() and not seen.all():
        _, nearest = cKDTree(points[seen]).query(points[~seen])
        colours[~seen] = colours[seen][nearest]
    return np.clip(colours, 0, 1), seen


def view_fidelity(vertices: np.ndarray, faces: np.ndarray, uvs: np.ndarray, texture: np.ndarray,
                  views: list[DecodedView]) -> float:
    """Mean absolute RGB error between unshaded renders of the textured mesh and the decoded views,
    over pixels inside both silhouettes: the check that the texture says what the prior saw."""
    errors = []
    for view in views:
        height, width = view.image.shape[:2]
        rgb, alpha = render_textured(vertices, faces, uvs, texture, view.camera, width, height, shading=False)
        both = (alpha > 0.99) & (view.opacity > 0.9)
        if both.any():
            errors.append(np.abs(rgb[both] - view.image[both]).mean())
    return float(np.mean(errors)) if errors else float("nan")
