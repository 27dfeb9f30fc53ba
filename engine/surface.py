"""The surface stage: the optimised field becomes a triangle mesh, shaped by the decoded views.

Outline fit, silhouette carving, smoothing and the iso-level whose silhouettes match the views
(engine.carve), then marching cubes (engine.export).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

from .carve import carve, fit_silhouettes, matching_level
from .colour import DecodedView, foreground_mask
from .config import MESH_RESOLUTION_RANGE, check_int, check_number
from .export import extract_mesh
from .field import VoxelField

log = logging.getLogger(__name__)

DEFAULT_LEVEL_CHOICES = (0.03, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0)


@dataclass(frozen=True)
class SurfaceConfig:
    """How the field's density becomes a surface."""

    silhouette_fit_steps: int = 200  # density fitted to the decoded views' outlines; 0 skips it
    # A lattice point at least this many decoded views show as background is emptied; 0 skips carving.
    carve_votes: int = 2
    mesh_resolution: int = 64  # xatlas time grows fast with the face count
    iso_level: float = 1.0  # in units of the density that makes one field voxel half opaque
    # Multiples of iso_level tried; the one whose silhouettes best match the decoded views wins.
    # Empty: iso_level as it is.
    iso_level_choices: tuple[float, ...] = DEFAULT_LEVEL_CHOICES
    # Gaussian blur of the density in field voxels: score distillation leaves voxel-scale noise
    # that would otherwise become a bumpy surface.
    smoothing: float = 1.0

    def __post_init__(self) -> None:
        check_int("surface.silhouette_fit_steps", self.silhouette_fit_steps, 0, 100_000)
        check_int("surface.carve_votes", self.carve_votes, 0, 1000)
        check_int("surface.mesh_resolution", self.mesh_resolution, *MESH_RESOLUTION_RANGE)
        check_number("surface.iso_level", self.iso_level, 0, 1e6, low_open=True)
        for factor in self.iso_level_choices:
            check_number("surface.iso_level_choices", factor, 0, 1e6, low_open=True)
        check_number("surface.smoothing", self.smoothing, 0, 100)


def views_show_object(views: list[DecodedView], foreground_threshold: float) -> bool:
    """Whether the decoded views show an object at all: an untrained prior's would carve everything."""
    return float(np.mean([foreground_mask(view, foreground_threshold).mean() for view in views])) > 0.01


def field_surface(field: VoxelField, views: list[DecodedView], config: SurfaceConfig, foreground_threshold: float,
                  fit_resolution: int, samples_per_ray: int) -> tuple[np.ndarray, np.ndarray]:
    """The field's surface (vertices, faces), shaped by the views' object masks when they show one.

    Args:
        field: the optimised field; its density is changed in place by the outline fit.
        views: decoded colour views; their object masks guide the fit, carving and the level.
        config: the surface settings.
        foreground_threshold: colour difference from a view's border that counts as object.
        fit_resolution: the rendered resolution of the outline fit.
        samples_per_ray: the renderer's samples per ray during the fit.
    """
    guided = views_show_object(views, foreground_threshold)
    if config.silhouette_fit_steps > 0 and guided:
        fit_silhouettes(field, views, foreground_threshold, config.silhouette_fit_steps, fit_resolution,
                        samples_per_ray)
    density = field.density_grid(config.mesh_resolution).cpu().numpy()
    level = config.iso_level * np.log(2.0) / field.voxel_size
    if config.carve_votes > 0 and guided:
        density = carve(density, field.bound, views, foreground_threshold, config.carve_votes)
    if config.smoothing > 0:
        sigma = config.smoothing * (config.mesh_resolution - 1) / (field.resolution - 1)
        density = gaussian_filter(density, sigma, mode="nearest")
    if config.iso_level_choices and guided:
        level = matching_level(density, field.bound, views, foreground_threshold,
                               [level * factor for factor in config.iso_level_choices])
        log.info("iso-level %.3g x the half-opaque density matches the decoded silhouettes best",
                 level * field.voxel_size / np.log(2.0))
    return extract_mesh(density, field.bound, level)
