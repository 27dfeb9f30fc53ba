"""The stages of a task on a latent voxel field (text-to-3D and Sketch-Shape).

1. score distillation on a fresh field (``FieldOptimisation``, ``optimise_field``);
2. the colour views: the field rendered from two rings of cameras (and the rig), SDEdit-refined
   and decoded;
3. the surface, shaped by those views (``engine.surface``), unwrapped by xatlas;
4. the texture, back-projected from the views and baked, with the prior's light divided out.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from ..cameras import Camera, ViewSampler
from ..colour import (
    ColourConfig,
    DecodedView,
    albedo,
    backproject,
    decode_views,
    filled,
    light_to_divide_out,
    view_fidelity,
)
from ..config import TaskConfig
from ..export import TexturedMesh, bake_texture, unwrap
from ..field import FieldConfig, VoxelField
from ..guidance import GuidanceConfig, ScoreDistillation, surrogate_loss
from ..prior import Prior
from ..progress import CancelToken, Progress, ProgressCallback
from ..prompts import ViewPrompts
from ..raster import Lighting
from ..refine import refine_latents
from ..regularizers import RegularizerConfig, center_depth_loss, emptiness_loss, emptiness_weight, opacity_entropy
from ..renderer import render
from ..surface import SurfaceConfig, field_surface
from .common import colour_cameras, plain_background, run_steps

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FieldTaskConfig(TaskConfig):
    """Settings of a field task, in groups that each validate themselves."""

    field: FieldConfig = FieldConfig()
    guidance: GuidanceConfig = GuidanceConfig()
    regularizers: RegularizerConfig = RegularizerConfig()
    surface: SurfaceConfig = SurfaceConfig()
    colour: ColourConfig = ColourConfig()


# Named trade-offs between time and quality (docs/tuning.md says which were measured); "sd" is the
# literature's setting for a Stable Diffusion checkpoint (64x64 latents, a GPU).
FIELD_PRESETS = {
    "draft": {"steps": 150, "surface.mesh_resolution": 48, "surface.silhouette_fit_steps": 64,
              "colour.texture_size": 512, "colour.view_azimuths": 4},
    "standard": {},
    "high": {"steps": 1500, "field.grid_resolution": 64, "surface.mesh_resolution": 128,
             "colour.texture_size": 2048},
    "sd": {"steps": 5000, "field.grid_resolution": 64, "surface.mesh_resolution": 128,
           "colour.texture_size": 2048},
}


@dataclass
class GenerateResult:
    mesh: TexturedMesh
    preview: np.ndarray  # the first colour view as the VAE decoded it, (H, W, 3) uint8
    timings: dict[str, float]
    colour_error: float  # mean abs RGB error of mesh renders against the decoded views
    final_loss: float


# An extra loss on the field (Sketch-Shape's occupancy term), weighted per latent pixel like the
# regularisers; it gets the field and the fraction of the run done.
FieldLoss = Callable[[VoxelField, float], torch.Tensor]


class FieldOptimisation:
    """One score-distillation run on a fresh field: ``step()`` is one SDS/SJC iteration.

    The rig's cameras are among the optimised views, and the random views are drawn around them."""

    def __init__(self, prompt: str, prior: Prior, config: FieldTaskConfig, generator: torch.Generator,
                 rig: Sequence[Camera] = (), extra_loss: FieldLoss | None = None,
                 density_init: torch.Tensor | None = None):
        meta, grid = prior.metadata, config.field
        self.prior, self.config, self.generator = prior, config, generator
        self.views = ViewSampler(meta.camera, rig)
        self.extra_loss = extra_loss
        self.field = VoxelField(grid.grid_resolution, prior.latent_channels, meta.scene_bound,
                                grid.blob_strength, grid.blob_radius).to(prior.device)
        if density_init is not None:  # density logits (R, R, R) [z, y, x] to start from instead of the blob
            with torch.no_grad():
                self.field.density.copy_(density_init.view_as(self.field.density))
        self.background = plain_background(prior)
        self.prompts = ViewPrompts(prior, prompt, config.negative_prompt, config.view_dependent_prompts)
        self.guidance = ScoreDistillation(prior, config.guidance)
        self.optimiser = torch.optim.Adam(
            [{"params": [self.field.density, self.background.image]},
             {"params": [self.field.features], "lr": grid.feature_learning_rate}],
            lr=grid.learning_rate, betas=(0.9, 0.99), fused=True)  # fused: a fraction of a ms
        self.emptiness_switch = int(config.regularizers.emptiness_switch * config.steps)
        self.final_loss = float("nan")

    def regularisation(self, out, step: int, progress: float) -> torch.Tensor:
        weights = self.config.regularizers
        early_or_late = emptiness_weight(step, self.emptiness_switch, weights.emptiness_early, weights.emptiness_late)
        loss = early_or_late * emptiness_loss(out.weights, weights.emptiness_beta)
        loss = loss + weights.entropy_weight * progress * opacity_entropy(out.opacity)
        if weights.center_depth_weight:
            loss = loss + weights.center_depth_weight * center_depth_loss(out.depth, out.opacity)
        if self.extra_loss is not None:
            loss = loss + self.extra_loss(self.field, progress)
        return loss

    def step(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One iteration; returns the rendered latents (C, h, w) and the score's loss."""
        config, size, grid = self.config, self.prior.metadata.latent_size, self.config.field
        progress = step / max(config.steps - 1, 1)
        ramp = min(1.0, progress / grid.feature_warmup) if grid.feature_warmup > 0 else 1.0
        self.optimiser.param_groups[1]["lr"] = grid.feature_learning_rate * (0.1 + 0.9 * ramp)
        camera = self.views.camera(step, self.generator)
        out = render(self.field, camera, size, size, grid.samples_per_ray, self.background, self.generator)
        latents = out.features[None]
        cond, opposite = self.prompts.for_camera_with_opposite(camera)
        score = self.guidance.step(latents, cond, self.prompts.unconditional, progress, self.generator, opposite)
        loss = surrogate_loss(latents, score.gradient) + size * size * self.regularisation(out, step, progress)
        self.optimiser.zero_grad(set_to_none=True)
        loss.backward()
        self.optimiser.step()
        self.final_loss = score.loss
        return out.features, score.loss


def optimise_field(prompt: str, prior: Prior, config: FieldTaskConfig, generator: torch.Generator,
                   on_progress: ProgressCallback | None, cancel: CancelToken, rig: Sequence[Camera] = (),
                   extra_loss: FieldLoss | None = None,
                   density_init: torch.Tensor | None = None) -> FieldOptimisation:
    """The SDS / SJC loop, reporting every step and checking for cancellation before each."""
    run = FieldOptimisation(prompt, prior, config, generator, rig, extra_loss, density_init)
    run_steps(run.step, config.steps, prior, on_progress, cancel, config.preview_every)
    return run


def colour_views(run: FieldOptimisation, cancel: CancelToken) -> list[DecodedView]:
    """The field rendered from the colour cameras (the rig among them), refined and decoded."""
    prior, colour = run.prior, run.config.colour
    refine_generator = torch.Generator().manual_seed(run.config.seed)

    def refine(latents: torch.Tensor, cameras: list[Camera]) -> torch.Tensor:
        return refine_latents(prior, latents, cameras, run.prompts, colour.refine, refine_generator)

    cameras = colour_cameras(prior, colour.view_azimuths, run.views.rig, colour.view_rings,
                             range_ends=run.config.surface.method == "hull")
    return decode_views(prior, run.field, run.background, cameras, run.config.field.samples_per_ray,
                        on_batch=cancel.raise_if_cancelled, refine=refine)


def baked_albedo(vertices: np.ndarray, faces: np.ndarray, uvs: np.ndarray, views: list[DecodedView],
                 colour: ColourConfig, lighting: Lighting | None, tolerance: float, bound: float,
                 cancel: CancelToken) -> np.ndarray:
    """The texture (S, S, 3) uint8: each texel the weighted mean of the views' object pixels it
    projects to, with ``lighting`` (when given) divided out and its noise flattened."""
    def colour_fn(points: np.ndarray, normals: np.ndarray) -> np.ndarray:
        colours, seen = backproject(points, normals, vertices, faces, views, tolerance,
                                    on_view=cancel.raise_if_cancelled, foreground_threshold=colour.foreground_threshold,
                                    min_confidence=colour.min_confidence)
        return colour.flatten.apply(points, filled(points, albedo(colours, normals, lighting), seen), bound)

    return bake_texture(vertices, faces, uvs, colour_fn, size=colour.texture_size)


def textured_mesh(run: FieldOptimisation, on_progress: ProgressCallback | None, cancel: CancelToken,
                  timings: dict[str, float]) -> GenerateResult:
    """The optimised field -> colour views -> surface -> xatlas UVs -> baked texture.
    ``timings`` gains ``colour_s`` and ``mesh_s``."""
    config, prior, final_loss = run.config, run.prior, float(run.final_loss)
    started = time.perf_counter()
    views = colour_views(run, cancel)
    timings["colour_s"] = time.perf_counter() - started

    started = time.perf_counter()
    vertices, faces = field_surface(run.field, views, config.surface, config.colour.foreground_threshold,
                                    2 * prior.metadata.latent_size, config.field.samples_per_ray)
    cancel.raise_if_cancelled()
    vertices, faces, uvs = unwrap(vertices, faces, config.colour.texture_size)
    timings["mesh_s"] = time.perf_counter() - started
    if on_progress is not None:
        on_progress(Progress("mesh", 1, 1, final_loss))
    cancel.raise_if_cancelled()

    started = time.perf_counter()
    lighting = light_to_divide_out(prior, config.colour.delight)
    texture = baked_albedo(vertices, faces, uvs, views, config.colour, lighting, 2.0 * run.field.voxel_size,
                                     run.field.bound, cancel)
    cancel.raise_if_cancelled()
    mesh = TexturedMesh(vertices.astype(np.float32), faces.astype(np.int32), uvs.astype(np.float32), texture)
    colour_error = view_fidelity(mesh.vertices, mesh.faces, mesh.uvs, mesh.texture, views,
                                 config.colour.foreground_threshold, lighting)
    timings["colour_s"] += time.perf_counter() - started
    preview = (views[0].image * 255).round().astype(np.uint8)
    if on_progress is not None:
        on_progress(Progress("colour", 1, 1, final_loss, preview))
    return GenerateResult(mesh, preview, timings, colour_error, final_loss)
