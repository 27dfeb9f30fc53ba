"""Sketch-Shape: text-to-3D whose geometry follows a coarse mesh the user made (Latent-NeRF).

The sketch is moved into the prior's frame, measured once on the field's grid (engine.occupancy),
and its occupancy term joins score distillation; the field starts as the sketch rather than as the
default blob. The mesh that comes out is moved back to the sketch's own place and scale.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, fields, replace
from typing import Sequence

import numpy as np
import torch

from ..cameras import Camera
from ..colour import ColourConfig
from ..config import check_choice, check_number
from ..meshes import MeshError, MeshInput, frame_normalisation, validate_mesh
from ..occupancy import SketchLoss, SketchOccupancy
from ..prior import Prior
from ..progress import CancelToken, ProgressCallback
from ..surface import SurfaceConfig
from .common import cancel_token, check_prompt, seeded_generator
from .latent_field import FIELD_PRESETS, FieldTaskConfig, GenerateResult, optimise_field, textured_mesh

log = logging.getLogger(__name__)

SKETCH_INITS = ("sketch", "blob")


@dataclass(frozen=True)
class SketchShapeConfig:
    """How the sketch holds the field (weights per latent pixel, like the regularisers)."""

    weight: float = 30.0  # lower lets the prompt swell the shape away from the sketch (docs/tuning.md)
    sigma: float = 0.05  # frame units: about one field voxel around the surface is left (mostly) free
    # "sketch": the density starts as a soft copy of the sketch; "blob": as generate's blob, and only
    # the loss pulls it towards the sketch.
    init: str = "sketch"

    def __post_init__(self) -> None:
        check_number("sketch.weight", self.weight, 0, 1e6)
        check_number("sketch.sigma", self.sigma, 0, 10, low_open=True)
        check_choice("sketch.init", self.init, SKETCH_INITS)


# The surface as the field holds it: the sketch loss calibrates the field so its voxel opacity crosses
# 1/2 on the sketch, so no level is picked from, and no density fitted to, the decoded outlines. Only
# carving lets the views trim the sketch, up to their outlines, where the prompt leaves something
# out (a house box's top edges above the roof), by the outline alone and with two votes: a white
# object's lit face on a white ground reads as background. Text-to-3D's Taubin passes stay on:
# unlike a blur of the density they barely move the surface, and they take out the lattice's
# staircase; the normal filter then flattens score distillation's dents in a blockout's faces and
# keeps its creases (docs/tuning.md).
SKETCH_SURFACE = SurfaceConfig(method="density", silhouette_fit_steps=0, carve_votes=2, carve_outline_only=True,
                               carve_margin_px=0, iso_level_choices=(), smoothing=0.0, normal_filter_iterations=10)


@dataclass(frozen=True)
class SketchConfig(FieldTaskConfig):
    """Text-to-3D's groups, the sketch's own, and a surface stage that keeps the sketch's shape but
    for what the decoded views show as background outside the object's outline."""

    surface: SurfaceConfig = SKETCH_SURFACE
    # Four rings of colour views, as text-to-3D's: the high ones see the roof's slopes to carve.
    colour: ColourConfig = ColourConfig()
    sketch: SketchShapeConfig = SketchShapeConfig()
    # The sketch's largest half-extent in the prior's frame: about the size the prior draws things.
    frame_half_extent: float = 0.45

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number("frame_half_extent", self.frame_half_extent, 0, 10, low_open=True)


# Text-to-3D's presets, without the surface settings the sketch fixes itself: all but the lattice's
# resolution and the iso-level.
_SKETCH_FIXED = {f"surface.{field.name}" for field in fields(SurfaceConfig)} - {
    "surface.mesh_resolution", "surface.iso_level"}
PRESETS = {name: {key: value for key, value in values.items() if key not in _SKETCH_FIXED}
           for name, values in FIELD_PRESETS.items()}


def sketch_loss(vertices: np.ndarray, faces: np.ndarray, prior: Prior,
                config: SketchConfig) -> tuple[SketchLoss, torch.Tensor | None]:
    """The sketch's occupancy loss on the field's grid, and the density logits to start from."""
    bound = prior.metadata.scene_bound
    occupancy = SketchOccupancy.on_grid(vertices, faces, config.field.grid_resolution, bound)
    if not occupancy.inside.any():
        raise MeshError("the sketch encloses no volume at the field's resolution; Sketch-Shape needs a "
                        "closed (or nearly closed) shape")
    loss = SketchLoss(occupancy, config.sketch.weight, config.sketch.sigma, prior.device)
    if config.sketch.init != "sketch":
        return loss, None
    # The blob's slope (logits per unit of distance), so the start is as soft as generate's.
    slope = config.field.blob_strength / (config.field.blob_radius * bound)
    return loss, torch.as_tensor(occupancy.density_logits(slope), dtype=torch.float32, device=prior.device)


def sketch(mesh: MeshInput, prompt: str, prior: Prior, config: SketchConfig | None = None,
           on_progress: ProgressCallback | None = None, cancel: CancelToken | None = None,
           rig: Sequence[Camera] = ()) -> GenerateResult:
    """A coarse mesh + a prompt -> UV-textured mesh shaped like the sketch, in the sketch's coordinates.

    Args:
        mesh: the sketch in any place and scale (Blender axes); it need not be watertight.
        prompt: what to make of it, e.g. "a red house".
        prior: the 2D diffusion prior (``load_prior()``).
        config: the settings; the "standard" preset when None.
        on_progress: as for ``generate``.
        cancel: set from any thread to stop within one step.
        rig: cameras in the sketch's coordinates, always among the optimised and decoded views.

    Raises:
        MeshError: a sketch that is not a usable mesh or encloses no volume.
    """
    config = config or SketchConfig()
    check_prompt(prompt, prior, config)
    cancel = cancel_token(cancel)
    mesh = validate_mesh(mesh.vertices, mesh.faces, mesh.uvs)
    bound = prior.metadata.scene_bound
    if config.frame_half_extent >= bound:
        raise ValueError(f"frame_half_extent {config.frame_half_extent} must be smaller than the "
                         f"prior's scene bound {bound}")
    frame = frame_normalisation(mesh.vertices, mesh.faces, config.frame_half_extent)
    frame_rig = [frame.camera_to_frame(camera) for camera in rig]

    started = time.perf_counter()
    loss, density_init = sketch_loss(frame.to_frame(mesh.vertices), mesh.faces, prior, config)
    timings = {"sketch_s": time.perf_counter() - started}

    started = time.perf_counter()
    run = optimise_field(prompt, prior, config, seeded_generator(config.seed), on_progress, cancel, frame_rig,
                         loss, density_init)
    timings["optimise_s"] = time.perf_counter() - started
    result = textured_mesh(run, on_progress, cancel, timings)
    out = result.mesh
    result = replace(result, mesh=replace(out, vertices=frame.to_user(out.vertices).astype(np.float32)))
    log.info("sketched %r: %d vertices, %d faces, colour error %.3f, %s", prompt, len(out.vertices),
             len(out.faces), result.colour_error, {k: round(v, 2) for k, v in timings.items()})
    return result
