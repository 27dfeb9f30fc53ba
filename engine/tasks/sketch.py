"""Sketch-Shape: text-to-3D whose geometry follows a coarse mesh the user made (Latent-NeRF).

The sketch is moved into the prior's frame, measured once on the field's grid (engine.occupancy),
and its occupancy term joins score distillation; the field starts as the sketch rather than as the
default blob. The mesh that comes out is moved back to the sketch's own place and scale.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
import torch

from ..cameras import Camera
from ..meshes import MeshError, MeshInput, Normalisation, validate_mesh
from ..occupancy import SketchLoss, SketchOccupancy
from ..prior import Prior
from ..progress import CancelToken, ProgressCallback
from .generate import (PRESETS, GenerateConfig, GenerateResult, check_prompt, config_from_preset, optimise_field,
                       seeded_generator, textured_mesh)

log = logging.getLogger(__name__)

SKETCH_INITS = ("sketch", "blob")


@dataclass
class SketchConfig(GenerateConfig):
    # Per latent pixel, like the regularisers (the grid-mean cross-entropy is O(1) per voxel). On the
    # embedded prior, a sphere sketched as "a blue cube" keeps volume IoU 0.77 / 0.83 / 0.80 with
    # the sketch at 10 / 30 / 100 (seed 0; at 3 it swells into the prompt's cube, 0.68); 30 leaves
    # the prompt visibly squaring it while holding IoU 0.79-0.84 over seeds 0-5, and a cube sketched
    # as "a red house" at 0.91-0.92 (bench/sketch_quality.py).
    sketch_weight: float = 30.0
    # Width, in frame units, of the band around the sketch's surface the loss leaves (mostly) free:
    # about one field voxel at the default grid (0.048), so the weight is 0.37 one voxel off the
    # surface and 0.84 two voxels off. 0.1 let the sphere-as-cube case drop to IoU 0.76.
    sketch_sigma: float = 0.05
    # The sketch's largest half-extent once in the prior's frame: the prior's objects are about
    # 0.35-0.45 in half-extent, so a sketch this size is drawn as large as the prior draws things.
    frame_half_extent: float = 0.45
    # "sketch": the density starts as the sketch (a soft copy, as steep as the default blob);
    # "blob": it starts as the default blob and only the loss pulls it towards the sketch.
    sketch_init: str = "sketch"
    # Export settings of text-to-3D that second-guess the field's surface, turned off: here the
    # cross-entropy calibrates the field so that its voxel opacity crosses 1/2 on the sketch, which
    # is the iso-level as it is, and the sketch, not the prior's decoded outlines, has the last word
    # on the coarse shape. Blurring the density moves that surface out by about a voxel (the inside
    # is saturated: Adam drives the inside logits up at its full step whatever the size of the
    # saturating gradient); picking the level from, fitting the density to, or carving by the decoded
    # silhouettes reshapes the sketch into whatever the prior painted on it (a cube sketched as "a
    # red house" fell from IoU 0.92 to 0.79 with carving on).
    surface_smoothing: float = 0.0
    carve_votes: int = 0
    silhouette_fit_steps: int = 0
    iso_level_choices: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (math.isfinite(self.sketch_weight) and self.sketch_weight >= 0):
            raise ValueError("sketch_weight must be a non-negative number")
        if not (math.isfinite(self.sketch_sigma) and self.sketch_sigma > 0):
            raise ValueError("sketch_sigma must be a positive number")
        if not (math.isfinite(self.frame_half_extent) and self.frame_half_extent > 0):
            raise ValueError("frame_half_extent must be a positive number")
        if self.sketch_init not in SKETCH_INITS:
            raise ValueError(f"unknown sketch_init {self.sketch_init!r}; expected one of {', '.join(SKETCH_INITS)}")


def preset_config(preset: str = "standard", **overrides) -> SketchConfig:
    # A preset trades time for quality; the fields SketchConfig sets itself (the sketch's own and the
    # export settings it turns off) are not text-to-3D's to change, so a preset's values for them are
    # dropped. Explicit overrides still win.
    own = set(SketchConfig.__annotations__)
    presets = {name: {k: v for k, v in values.items() if k not in own} for name, values in PRESETS.items()}
    return config_from_preset(SketchConfig, presets, preset, overrides)


def sketch(mesh: MeshInput, prompt: str, prior: Prior, config: SketchConfig | None = None,
           on_progress: ProgressCallback | None = None, cancel: CancelToken | None = None,
           rig: Sequence[Camera] = ()) -> GenerateResult:
    """A coarse mesh + a prompt -> UV-textured mesh shaped like the sketch, in the sketch's coordinates.

    ``mesh``: the sketch in any place and scale (Blender axes); it need not be watertight.
    ``rig``: cameras in the sketch's coordinates, always among the optimised and decoded views."""
    config = config or SketchConfig()
    check_prompt(prompt)
    mesh = validate_mesh(mesh.vertices, mesh.faces, mesh.uvs)
    bound = prior.metadata.scene_bound
    if config.frame_half_extent >= bound:
        raise ValueError(f"frame_half_extent {config.frame_half_extent} must be smaller than the "
                         f"prior's scene bound {bound}")
    # Fitted on the vertices the faces use: stray unreferenced vertices would otherwise shrink the sketch.
    used = mesh.vertices[np.unique(mesh.faces)]
    frame = Normalisation.fit(used, config.frame_half_extent)
    vertices = frame.to_frame(mesh.vertices)
    frame_rig = [frame.camera_to_frame(camera) for camera in rig]

    started = time.perf_counter()
    occupancy = SketchOccupancy.on_grid(vertices, mesh.faces, config.grid_resolution, bound)
    if not occupancy.inside.any():
        raise MeshError("the sketch encloses no volume at the field's resolution; Sketch-Shape needs a "
                        "closed (or nearly closed) shape")
    loss = SketchLoss(occupancy, config.sketch_weight, config.sketch_sigma, prior.device)
    density_init = None
    if config.sketch_init == "sketch":
        # The blob's slope (logits per unit of distance), so the start is as soft as generate's.
        slope = config.blob_strength / (config.blob_radius * bound)
        density_init = torch.as_tensor(occupancy.density_logits(slope), dtype=torch.float32,
                                       device=prior.device)
    timings = {"sketch_s": time.perf_counter() - started}

    generator = seeded_generator(config.seed)
    started = time.perf_counter()
    run = optimise_field(prompt, prior, config, generator, on_progress, cancel, frame_rig, loss, density_init)
    timings["optimise_s"] = time.perf_counter() - started
    result = textured_mesh(run, config, on_progress, cancel, timings)
    out = result.mesh
    result = replace(result, mesh=replace(out, vertices=frame.to_user(out.vertices).astype(np.float32)))
    log.info("sketched %r: %d vertices, %d faces, colour error %.3f, %s", prompt, len(out.vertices),
             len(out.faces), result.colour_error, {k: round(v, 2) for k, v in timings.items()})
    return result
