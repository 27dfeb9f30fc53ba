"""Silhouette carving: cut away density that the decoded views show as background.

Score distillation often "removes" an unwanted part of the initial blob by painting it the
background's colour instead of emptying it: the part stays opaque, so marching cubes keeps it and
the texture inherits the background's colour.  The decoded colour views say where the prior sees an
object, so a lattice point that projects onto background in enough views is emptied before the
surface is extracted: a visual hull of the prior's own pictures, with a vote for robustness to a
view that disagrees.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from .cameras import pixel_indices, project
from .colour import DecodedView, silhouette_mask
from .field import VoxelField
from .occupancy import lattice
from .renderer import render


def background_votes(points: np.ndarray, views: list[DecodedView], threshold: float, margin_px: int = 1,
                     outline_only: bool = False) -> np.ndarray:
    """For each world point (N, 3): how many views show background where it projects, with each
    view's object mask grown by ``margin_px`` pixels (1 never bites into the silhouette's edge). With
    ``outline_only``, background the object encloses in a view does not count: only the outline's
    outside does."""
    votes = np.zeros(len(points), dtype=np.int32)
    for view in views:
        height, width = view.image.shape[:2]
        mask = silhouette_mask(view, threshold, grow=margin_px)
        if outline_only:
            mask = ndimage.binary_fill_holes(mask)
        rows, cols, inside = pixel_indices(*project(points, view.camera, width, height), width, height)
        votes[inside] += ~mask[rows[inside], cols[inside]]
    return votes


def carve(density: np.ndarray, bound: float, views: list[DecodedView], threshold: float,
          min_votes: int, outline_only: bool = False, margin_px: int = 1) -> np.ndarray:
    """``density`` (R, R, R) on the lattice over [-bound, bound]^3 indexed [z, y, x], with every
    point that at least ``min_votes`` views show as background set to zero (``background_votes``,
    the views' object masks grown by ``margin_px``)."""
    points = lattice(density.shape[0], bound).reshape(-1, 3)
    votes = background_votes(points, views, threshold, margin_px, outline_only)
    empty = votes.reshape(density.shape) >= min_votes
    return np.where(empty, 0.0, density)


def _splat_silhouette(points: np.ndarray, view: DecodedView) -> np.ndarray:
    height, width = view.image.shape[:2]
    rows, cols, inside = pixel_indices(*project(points, view.camera, width, height), width, height)
    silhouette = np.zeros((height, width), dtype=bool)
    silhouette[rows[inside], cols[inside]] = True
    return silhouette


def silhouette_iou(occupied: np.ndarray, bound: float, views: list[DecodedView], masks: list[np.ndarray]) -> float:
    """Mean IoU between the projected lattice points of ``occupied`` (R, R, R) and the masks."""
    points = lattice(occupied.shape[0], bound).reshape(-1, 3)[occupied.reshape(-1)]
    if len(points) == 0:
        return 0.0
    scores = []
    for view, mask in zip(views, masks):
        silhouette = _splat_silhouette(points, view)
        scores.append((silhouette & mask).sum() / max((silhouette | mask).sum(), 1))
    return float(np.mean(scores))


def matching_level(density: np.ndarray, bound: float, views: list[DecodedView], threshold: float,
                   candidates: list[float]) -> float:
    """The iso-level, among ``candidates``, whose solid's silhouettes best match the views' objects.

    The field's density is not calibrated: a fog that the renderer accumulates to full opacity can
    lie below any fixed level, and a level low enough for fog turns a dense field's soft skirt
    into surface. The decoded views say where the object's outline is, so they pick the level."""
    masks = [silhouette_mask(view, threshold) for view in views]
    scores = [silhouette_iou(density > level, bound, views, masks) for level in candidates]
    return candidates[int(np.argmax(scores))]


def fit_silhouettes(field: VoxelField, views: list[DecodedView], threshold: float, steps: int,
                    resolution: int, samples_per_ray: int, learning_rate: float = 0.05) -> None:
    """Fit the field's density so that its rendered opacity matches the views' object masks.

    Carving can only take density away; where the prior's refined views show more object than
    the field holds (a cone's wide base under a field that narrowed to an onion), this adds it.
    The masks come from one refinement of the final field, so this is a short reconstruction
    that settles the outline, not a second optimisation."""
    targets = []
    for view in views:
        mask = silhouette_mask(view, threshold).astype(np.float32)
        factor = mask.shape[0] // resolution
        targets.append(torch.from_numpy(mask.reshape(resolution, factor, resolution, factor).mean(axis=(1, 3))))
    optimiser = torch.optim.Adam([field.density], lr=learning_rate)
    for step in range(steps):
        index = step % len(views)
        out = render(field, views[index].camera, resolution, resolution, samples_per_ray)
        opacity = out.opacity.clamp(1e-4, 1 - 1e-4)
        loss = torch.nn.functional.binary_cross_entropy(opacity, targets[index].to(opacity.device))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
