"""Seeded training data for the Primitive World prior.

Geometry is rendered once per (shape, camera) and colourised for every colour on the fly
(exactly: box filtering is linear), so a dataset of ``7 shapes × n cameras × 7 colours`` images
costs ``7·n`` geometry renders and a few hundred MB of RAM.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch

from . import contract as C
from .render import contract_camera, render_geometry

log = logging.getLogger(__name__)


@dataclass
class GeometrySet:
    shape_idx: np.ndarray  # (N,) int64 index into contract.SHAPES
    angles: np.ndarray  # (N, 2) azimuth, elevation in degrees
    coverage: torch.Tensor  # (N, H, W) float32
    body_shade: torch.Tensor  # (N, H, W)
    door_shade: torch.Tensor  # (N, H, W)

    def __len__(self) -> int:
        return len(self.shape_idx)

    def images(self, idx: torch.Tensor, colour_idx: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images in [0, 1] of geometry ``idx`` coloured ``colour_idx``."""
        albedo = _ALBEDO[colour_idx][:, :, None, None]
        cov = self.coverage[idx][:, None]
        body = self.body_shade[idx][:, None]
        door = self.door_shade[idx][:, None]
        return (1.0 - cov) + body * albedo + door * _DOOR[None, :, None, None]

    def prompts(self, idx, colour_idx, u) -> list[str]:
        out = []
        for i, c, uu in zip(np.asarray(idx).tolist(), np.asarray(colour_idx).tolist(), np.asarray(u).tolist()):
            az, el = self.angles[i]
            out.append(C.training_prompt(C.COLOUR_NAMES[c], C.SHAPES[self.shape_idx[i]], az, el, uu))
        return out


_ALBEDO = torch.tensor([C.COLOURS[c] for c in C.COLOUR_NAMES], dtype=torch.float32)
_DOOR = torch.tensor(C.DOOR_RGB, dtype=torch.float32)


def make_geometry_set(cameras_per_shape: int, seed: int, chunk: int = 16) -> GeometrySet:
    """Render ``cameras_per_shape`` uniformly drawn contract cameras for each of the 7 shapes."""
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    shape_idx, angles, cov, body, door = [], [], [], [], []
    for s, shape in enumerate(C.SHAPES):
        ang = C.sample_camera_angles(rng, cameras_per_shape)
        cams = [contract_camera(az, el) for az, el in ang]
        g = render_geometry(shape, cams, chunk=chunk)
        shape_idx.append(np.full(cameras_per_shape, s, dtype=np.int64))
        angles.append(ang)
        cov.append(g.coverage)
        body.append(g.body_shade)
        door.append(g.door_shade)
        log.info("rendered %d views of %s (%.1fs so far)", cameras_per_shape, shape, time.perf_counter() - t0)
    return GeometrySet(
        np.concatenate(shape_idx), np.concatenate(angles),
        torch.from_numpy(np.concatenate(cov)), torch.from_numpy(np.concatenate(body)),
        torch.from_numpy(np.concatenate(door)),
    )
