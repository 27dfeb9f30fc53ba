"""Pinhole cameras in Blender's world axes, and camera sampling from a prior's convention.

World: +Z up, the front of an object faces -Y (Blender).  Camera local axes follow Blender's
(and OpenGL's) camera: +X right, +Y up, the camera looks down its local -Z.

Azimuth 0 puts the camera on the -Y axis (front view), 90 on +X (right side), 180 on +Y (back).
Image rows run top to bottom; pixel (row i, col j) has its centre at (j + 0.5, i + 0.5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
import torch

WORLD_UP = np.array([0.0, 0.0, 1.0])


def look_at(eye, target=(0.0, 0.0, 0.0), up=WORLD_UP) -> np.ndarray:
    """Camera-to-world matrix of a camera at ``eye`` looking at ``target``."""
    eye = np.asarray(eye, dtype=np.float64)
    forward = np.asarray(target, dtype=np.float64) - eye
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, np.asarray(up, dtype=np.float64))
    if np.linalg.norm(right) < 1e-8:  # looking straight along `up`: any right vector will do
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
class Camera:
    c2w: np.ndarray  # (4, 4) camera-to-world, Blender axes
    fov_y_deg: float  # vertical field of view

    @property
    def position(self) -> np.ndarray:
        return self.c2w[:3, 3]

    @property
    def distance(self) -> float:
        return float(np.linalg.norm(self.position))

    @property
    def azimuth_deg(self) -> float:
        x, y, _ = self.position
        return math.degrees(math.atan2(x, -y)) % 360.0

    @property
    def elevation_deg(self) -> float:
        return math.degrees(math.asin(float(np.clip(self.position[2] / max(self.distance, 1e-12), -1, 1))))

    def focal_px(self, height: int) -> float:
        return 0.5 * height / math.tan(math.radians(self.fov_y_deg) / 2)


def orbit_camera(azimuth_deg: float, elevation_deg: float, distance: float, fov_y_deg: float) -> Camera:
    return Camera(look_at(orbit_position(azimuth_deg, elevation_deg, distance)), float(fov_y_deg))


def camera_rays(camera: Camera, width: int, height: int, device=None, dtype=torch.float32):
    """World-space ray origins and unit directions, each (height, width, 3)."""
    tan_half = math.tan(math.radians(camera.fov_y_deg) / 2)
    aspect = width / height
    cols = (torch.arange(width, dtype=torch.float64) + 0.5) / width * 2 - 1
    rows = 1 - (torch.arange(height, dtype=torch.float64) + 0.5) / height * 2
    y, x = torch.meshgrid(rows * tan_half, cols * tan_half * aspect, indexing="ij")
    dirs_cam = torch.stack([x, y, -torch.ones_like(x)], dim=-1)
    rotation = torch.from_numpy(camera.c2w[:3, :3])
    dirs = dirs_cam @ rotation.T
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    origins = torch.from_numpy(camera.position).expand_as(dirs)
    return origins.to(device=device, dtype=dtype), dirs.to(device=device, dtype=dtype)


def project(points: np.ndarray, camera: Camera, width: int, height: int):
    """Project world points to continuous pixel coordinates (x right, y down) and view depth."""
    w2c = np.linalg.inv(camera.c2w)
    cam = points @ w2c[:3, :3].T + w2c[:3, 3]
    depth = -cam[:, 2]
    focal = camera.focal_px(height)
    safe = np.where(np.abs(depth) < 1e-9, 1e-9, depth)
    px = width / 2 + focal * cam[:, 0] / safe
    py = height / 2 - focal * cam[:, 1] / safe
    return np.stack([px, py], axis=-1), depth


def pixel_indices(xy: np.ndarray, depth: np.ndarray, width: int, height: int):
    """Integer (rows, cols) of projected points (``project``'s output) and which of them land in
    the image in front of the camera; rows and cols are only meaningful where ``inside``."""
    cols, rows = np.floor(xy[:, 0]).astype(int), np.floor(xy[:, 1]).astype(int)
    inside = (cols >= 0) & (cols < width) & (rows >= 0) & (rows < height) & (depth > 0)
    return rows, cols, inside


def view_label(azimuth_deg: float, elevation_deg: float, overhead_elevation_deg: float) -> str:
    """front / side / back / overhead, by the rules of Primitive World and DreamFusion."""
    if elevation_deg >= overhead_elevation_deg:
        return "overhead"
    az = azimuth_deg % 360.0
    if az >= 315.0 or az < 45.0:
        return "front"
    if 135.0 <= az < 225.0:
        return "back"
    return "side"


@dataclass(frozen=True)
class CameraConvention:
    """How a prior's training images were framed; cameras for optimisation are drawn from it."""

    distance: tuple[float, float] = (1.5, 2.0)
    fov_y_deg: tuple[float, float] = (40.0, 70.0)
    elevation_deg: tuple[float, float] = (-10.0, 45.0)
    azimuth_deg: tuple[float, float] = (0.0, 360.0)
    overhead_elevation_deg: float = 30.0

    @classmethod
    def from_dict(cls, data: dict) -> "CameraConvention":
        kwargs = {}
        for key in ("distance", "fov_y_deg", "elevation_deg", "azimuth_deg"):
            if key in data:
                value = data[key]
                lo, hi = (value, value) if isinstance(value, (int, float)) else value
                kwargs[key] = (float(lo), float(hi))
        if "overhead_elevation_deg" in data:
            kwargs["overhead_elevation_deg"] = float(data["overhead_elevation_deg"])
        return cls(**kwargs)

    def to_dict(self) -> dict:
        return {
            "distance": list(self.distance),
            "fov_y_deg": list(self.fov_y_deg),
            "elevation_deg": list(self.elevation_deg),
            "azimuth_deg": list(self.azimuth_deg),
            "overhead_elevation_deg": self.overhead_elevation_deg,
        }

    @property
    def mean_distance(self) -> float:
        return sum(self.distance) / 2

    @property
    def mean_fov_y_deg(self) -> float:
        return sum(self.fov_y_deg) / 2

    def sample(self, generator: torch.Generator) -> Camera:
        u = torch.rand(4, generator=generator, dtype=torch.float64).tolist()

        def lerp(bounds, t):
            return bounds[0] + (bounds[1] - bounds[0]) * t

        return orbit_camera(
            lerp(self.azimuth_deg, u[0]), lerp(self.elevation_deg, u[1]),
            lerp(self.distance, u[2]), lerp(self.fov_y_deg, u[3]),
        )

    def around(self, rig: Sequence[Camera]) -> "CameraConvention":
        """This convention moved to the rig's mean distance, elevation and field of view, spreads kept."""
        if not rig:
            return self
        ratio = float(np.mean([camera.distance for camera in rig])) / self.mean_distance
        elevation = float(np.mean([camera.elevation_deg for camera in rig]))
        fov = float(np.mean([camera.fov_y_deg for camera in rig]))

        def centred(bounds, centre, low, high):
            half = (bounds[1] - bounds[0]) / 2
            return (max(low, centre - half), min(high, centre + half))

        return replace(self, distance=(self.distance[0] * ratio, self.distance[1] * ratio),
                       elevation_deg=centred(self.elevation_deg, elevation, -85.0, 85.0),
                       fov_y_deg=centred(self.fov_y_deg, fov, 5.0, 120.0))

    def ring(self, azimuths: int, elevations_deg) -> list[Camera]:
        """Fixed cameras at the mean distance and fov: ``azimuths`` evenly spaced per elevation."""
        return [
            orbit_camera(360.0 * i / azimuths, float(el), self.mean_distance, self.mean_fov_y_deg)
            for el in elevations_deg
            for i in range(azimuths)
        ]


def fit_rig(rig: Sequence[Camera], distance: float) -> list[Camera]:
    """The rig scaled about the origin so that its mean distance is ``distance``: a shot camera
    eleven metres from a one-metre prop would otherwise show the prior an object a fraction of the
    size it was trained on. Directions, aim and field of view are kept."""
    if not rig:
        return []
    scale = distance / max(float(np.mean([camera.distance for camera in rig])), 1e-9)
    fitted = []
    for camera in rig:
        c2w = np.array(camera.c2w, dtype=np.float64)
        c2w[:3, 3] *= scale
        fitted.append(Camera(c2w, camera.fov_y_deg))
    return fitted


class ViewSampler:
    """The optimisation's camera for each step: the rig's views in turn every ``rig_every`` steps,
    and otherwise a random view drawn around the rig's elevation and field of view (or from the
    prior's convention without a rig). The rig is first fitted to the convention's distance."""

    def __init__(self, convention: CameraConvention, rig: Sequence[Camera] = (), rig_every: int = 4):
        self.rig = fit_rig(rig, convention.mean_distance)
        self.convention = convention.around(self.rig)
        self.rig_every = rig_every

    def camera(self, step: int, generator: torch.Generator) -> Camera:
        if self.rig and step % self.rig_every == 0:
            return self.rig[(step // self.rig_every) % len(self.rig)]
        return self.convention.sample(generator)
