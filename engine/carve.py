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
from .cameras import project
from .colour import DecodedView, foreground_mask


def background_votes(points: np.ndarray, views: list[DecodedView], threshold: float) -> np.ndarray:
    """For each world point (N, 3): how many views show background where it projects."""
    votes = np.zeros(len(points), dtype=np.int32)
    for view in views:
        height, width = view.image.shape[:2]
        mask = foreground_mask(view, threshold, grow=1)  # never bite into the silhouette's edge
        xy, depth = project(points, view.camera, width, height)
        cols, rows = np.floor(xy[:, 0]).astype(int), np.floor(xy[:, 1]).astype(int)
        inside = (cols >= 0) & (cols < width) & (rows >= 0) & (rows < height) & (depth > 0)
        votes[inside] += ~mask[rows[inside], cols[inside]]
    return votes


def carve(density: np.ndarray, bound: float, views: list[DecodedView], threshold: float,
          min_votes: int) -> np.ndarray:
    """``density`` (R, R, R) on the lattice over [-bound, bound]^3 indexed [z, y, x], with every
    point that at least ``min_votes`` views show as background set to zero."""
    axis = np.linspace(-bound, bound, density.shape[0])
    z, y, x = np.meshgrid(axis, axis, axis, indexing="ij")
    points = np.stack([x, y, z], axis=-1).reshape(-1, 3)
    empty = background_votes(points, views, threshold).reshape(density.shape) >= min_votes
    return np.where(empty, 0.0, density)
