"""Classify images (or engine renders) of Primitive World objects by colour and shape.

Colour: the nearest palette colour to the median colour of the object's pixels. Because every
surface is ``albedo × s`` with the contract's shading factor ``s`` in [0.40, 1.00], "nearest" is
measured to the shaded palette segment ``{s·albedo : s ∈ [0.4, 1]}`` (plain nearest-albedo would
call a white object in shadow, (0.46, 0.46, 0.46), purple).

Shape: silhouette IoU against analytic silhouettes of the 7 shapes rendered from the same cameras
(:func:`classify_shape`) or, when the camera is only known to lie in a view suffix's range, the
best IoU over a grid of cameras inside that range (:func:`classify_shape_in_view`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from engine.cameras import Camera

from . import contract as C
from .render import contract_camera, render_silhouettes

_PALETTE = np.array([C.COLOURS[c] for c in C.COLOUR_NAMES], dtype=np.float64)
_S_MIN, _S_MAX = C.AMBIENT, C.AMBIENT + C.DIFFUSE


def object_mask(rgb: np.ndarray, threshold: float = 0.05, largest_component: bool = True) -> np.ndarray:
    """Pixels that differ from the white background; rgb (H, W, 3) in [0, 1]."""
    mask = (1.0 - np.asarray(rgb, dtype=np.float64)).max(axis=-1) > threshold
    if largest_component and mask.any():
        labels, n = ndimage.label(mask)
        if n > 1:
            sizes = ndimage.sum(mask, labels, index=np.arange(1, n + 1))
            mask = labels == (1 + int(np.argmax(sizes)))
    return mask


def colour_distances(rgb) -> dict[str, float]:
    """Distance of a colour to each palette colour's shaded segment s·albedo, s in [0.4, 1]."""
    c = np.asarray(rgb, dtype=np.float64).reshape(3)
    s = (_PALETTE @ c) / (_PALETTE * _PALETTE).sum(-1)
    s = np.clip(s, _S_MIN, _S_MAX)
    d = np.linalg.norm(c[None] - s[:, None] * _PALETTE, axis=-1)
    return dict(zip(C.COLOUR_NAMES, d.tolist()))


def classify_colour(rgb_pixels) -> tuple[str, float]:
    """(best colour, distance) for the median of ``rgb_pixels`` ((N, 3) or (H, W, 3) object pixels)."""
    px = np.asarray(rgb_pixels, dtype=np.float64).reshape(-1, 3)
    if len(px) == 0:
        return "none", float("inf")
    d = colour_distances(np.median(px, axis=0))
    best = min(d, key=d.get)
    return best, d[best]


def classify_image_colour(rgb: np.ndarray) -> tuple[str, float]:
    mask = object_mask(rgb)
    return classify_colour(np.asarray(rgb)[mask])


def iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def _binary(mask) -> np.ndarray:
    m = np.asarray(mask)
    return m > 0.5 if m.dtype != bool else m


def classify_shape(masks: Sequence[np.ndarray], cameras: Sequence[Camera]) -> tuple[str, dict[str, float]]:
    """Best shape by mean silhouette IoU over views; masks[i] is seen from cameras[i]."""
    if len(masks) != len(cameras) or not masks:
        raise ValueError("need one mask per camera")
    size = np.asarray(masks[0]).shape[0]
    scores = {}
    for shape in C.SHAPES:
        sil = render_silhouettes(shape, cameras, size=size) > 0.5
        scores[shape] = float(np.mean([iou(_binary(m), s) for m, s in zip(masks, sil)]))
    return max(scores, key=scores.get), scores


def view_camera_grid(view: str, az_step: float = 7.5, el_step: float = 5.0) -> list[tuple[float, float]]:
    """(azimuth, elevation) grid covering a view suffix's range (for unknown-camera matching)."""
    out = []
    for (a0, a1), (e0, e1) in C.view_angle_ranges(view):
        for az in np.arange(a0, a1 + 1e-9, az_step):
            for el in np.arange(e0, e1 + 1e-9, el_step):
                el = min(el, e1 - 1e-3) if (view != "overhead" and el >= e1) else el
                out.append((float(az % 360.0), float(el)))
    return sorted(set(out))


@functools.lru_cache(maxsize=8)
def silhouette_bank(view: str, size: int = C.IMAGE_SIZE, az_step: float = 7.5,
                    el_step: float = 5.0) -> dict[str, np.ndarray]:
    """Binary analytic silhouettes (K, size, size) of every shape over the view's camera grid."""
    cams = [contract_camera(az, el) for az, el in view_camera_grid(view, az_step, el_step)]
    return {shape: render_silhouettes(shape, cams, size=size) > 0.5 for shape in C.SHAPES}


def classify_shape_in_view(mask: np.ndarray, view: str, az_step: float = 7.5,
                           el_step: float = 5.0) -> tuple[str, dict[str, float]]:
    """Best shape by max silhouette IoU over cameras consistent with ``view`` (a grid with these steps)."""
    m = _binary(mask)
    bank = silhouette_bank(view, m.shape[0], az_step, el_step)
    scores = {}
    for shape, sil in bank.items():
        inter = np.logical_and(sil, m[None]).sum(axis=(1, 2))
        union = np.logical_or(sil, m[None]).sum(axis=(1, 2))
        scores[shape] = float((inter / np.maximum(union, 1)).max())
    return max(scores, key=scores.get), scores
