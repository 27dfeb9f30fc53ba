"""The contract's orbit cameras, self-contained.

Same math and conventions as ``engine.cameras`` (Blender axes: +Z up, front faces -Y; camera
looks down its local -Z, +Y up), duplicated here so that data generation and evaluation of the
prior do not depend on the rest of the engine package. Any object with ``c2w`` (4×4),
``fov_y_deg`` and ``position`` (an ``engine.cameras.Camera`` included) is accepted wherever a
camera is expected.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def look_at(eye, target=(0.0, 0.0, 0.0), up=(0.0, 0.0, 1.0)) -> np.ndarray:
    eye = np.asarray(eye, dtype=np.float64)
    forward = np.asarray(target, dtype=np.float64) - eye
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, np.asarray(up, dtype=np.float64))
    if np.linalg.norm(right) < 1e-8:
        right = np.cross(forward, np.array([0.0, 1.0, 0.0]))
    right /= np.linalg.norm(right)
    cam_up = np.cross(right, forward)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, cam_up, -forward, eye
    return c2w


def orbit_position(azimuth_deg: float, elevation_deg: float, distance: float) -> np.ndarray:
    az, el = math.radians(azimuth_deg), math.radians(elevation_deg)
    return distance * np.array([math.sin(az) * math.cos(el), -math.cos(az) * math.cos(el), math.sin(el)])


@dataclass(frozen=True)
class OrbitCamera:
    c2w: np.ndarray
    fov_y_deg: float

    @property
    def position(self) -> np.ndarray:
        return self.c2w[:3, 3]


def orbit_camera(azimuth_deg: float, elevation_deg: float, distance: float, fov_y_deg: float) -> OrbitCamera:
    return OrbitCamera(look_at(orbit_position(azimuth_deg, elevation_deg, distance)), float(fov_y_deg))
