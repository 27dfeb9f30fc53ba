"""Text-to-3D: optimise a latent voxel field with score distillation, then export a textured mesh."""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from ..cameras import Camera, ViewSampler
from ..carve import carve, fit_silhouettes, matching_level
from ..colour import DecodedView, albedo, backproject, decode_views, foreground_mask, view_fidelity
from ..export import TexturedMesh, bake_texture, extract_mesh, unwrap
from ..field import EnvironmentBackground, VoxelField
from ..guidance import GuidanceConfig, GuidanceStep, ScoreDistillation, surrogate_loss
from ..prior import Prior
from ..progress import CancelToken, Progress, ProgressCallback
from ..prompts import ViewPrompts
from ..refine import RefineConfig, refine_latents
from ..regularizers import center_depth_loss, emptiness_loss, emptiness_weight, opacity_entropy
from ..renderer import RenderOutput, render

log = logging.getLogger(__name__)


@dataclass
class GenerateConfig:
    steps: int = 600
    seed: int = 0
    negative_prompt: str = ""
    view_dependent_prompts: bool = True
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)
    # field and renderer
    grid_resolution: int = 32  # coarse grids move shape faster under noisy SDS; "high" uses 64
    samples_per_ray: int = 64
    learning_rate: float = 0.05  # density logits and background
    # The features' learning rate ramps up from a tenth over this fraction of the run: if colours
    # learn as fast as density, the prior gets unwanted parts of the blob "removed" by painting them
    # the background's colour instead of emptying them, and the shape never forms.
    feature_learning_rate: float = 0.03
    feature_warmup: float = 0.5
    blob_strength: float = 10.0
    blob_radius: float = 0.42  # as a fraction of the scene bound
    # regularisers; weights are per latent pixel, like the SDS term they balance
    emptiness_beta: float = 10.0
    emptiness_early: float = 2.5
    emptiness_late: float = 50.0
    emptiness_switch: float = 0.5  # fraction of the run at which the weight goes up (SJC's K)
    entropy_weight: float = 0.5
    center_depth_weight: float = 0.0
    # colour stage and export
    colour_view_azimuths: int = 8
    colour_refine: RefineConfig = field(default_factory=lambda: RefineConfig(strength=0.3))
    # Silhouette carving (engine.carve): a lattice point the decoded views show as background in at
    # least this many views is emptied before marching cubes; 0 turns carving off.
    carve_votes: int = 2
    silhouette_fit_steps: int = 200  # density fitted to the decoded views' outlines (engine.carve)
    foreground_threshold: float = 0.1  # colour difference from the decoded background that counts as object,
    # for carving and for which decoded pixels may colour the surface
    mesh_resolution: int = 64  # xatlas time grows fast with face count (0.6 s here, 4 s at 96)
    iso_level: float = 1.0  # in units of the density that makes one field voxel half opaque
    # Multiples of iso_level tried for the surface; the one whose silhouettes best match the decoded
    # views' objects wins (engine.carve.matching_level). Empty: iso_level as it is.
    iso_level_choices: tuple[float, ...] = (0.03, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0)
    # Gaussian blur of the density before marching cubes, in field voxels: score distillation
    # leaves voxel-scale noise in the density that would otherwise become a bumpy surface.
    surface_smoothing: float = 1.0
    texture_size: int = 1024
    delight: bool = True  # albedo texture: the prior's known light (PriorMetadata.lighting) divided out
    preview_every: int = 0  # steps between preview pictures; 0 picks about 20 per run

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError("steps must be at least 1")
        if self.grid_resolution < 8 or self.mesh_resolution < 8:
            raise ValueError("grid and mesh resolutions must be at least 8")
        if self.texture_size < 512:
            raise ValueError("texture_size must be at least 512")


# Named trade-offs between time and quality. "draft", "standard" (GenerateConfig's defaults) and
# "high" are measured on the embedded prior (bench/, the model card). "sd" is the quality preset for
# a Stable Diffusion checkpoint (64x64 latents, a GPU): the literature's step count (Latent-NeRF
# 5k; DreamFusion 15k, SJC 10k) on the "high" grid. It has not been run here: no SD weights and no
# GPU were available; the README says so.
PRESETS = {
    "draft": dict(steps=150, mesh_resolution=48, texture_size=512, colour_view_azimuths=4, silhouette_fit_steps=64),
    "standard": {},
    "high": dict(steps=1500, grid_resolution=64, mesh_resolution=128, texture_size=2048),
    "sd": dict(steps=5000, grid_resolution=64, mesh_resolution=128, texture_size=2048),
}


def config_from_preset(config_class, presets: dict, preset: str, overrides: dict):
    """``config_class`` built from a named preset, with ``overrides`` on top."""
    if preset not in presets:
        raise ValueError(f"unknown preset {preset!r}; expected one of {', '.join(presets)}")
    # Copied: a preset's nested configs must not be shared by the configs built from it.
    return config_class(**{**copy.deepcopy(presets[preset]), **overrides})


def preset_config(preset: str = "standard", **overrides) -> GenerateConfig:
    return config_from_preset(GenerateConfig, PRESETS, preset, overrides)


@dataclass
class GenerateResult:
    mesh: TexturedMesh
    preview: np.ndarray  # the first colour view as the VAE decoded it, (H, W, 3) uint8
    timings: dict[str, float]
    colour_error: float  # mean abs RGB error of mesh renders against the decoded views
    final_loss: float


def latent_preview(prior: Prior, features: torch.Tensor) -> np.ndarray:
    image = prior.decode(features.detach()[None])[0]
    return (image.permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)


def plain_background(prior: Prior) -> EnvironmentBackground:
    init = None
    if prior.metadata.background_rgb is not None:
        size = prior.metadata.image_size
        plain = torch.tensor(prior.metadata.background_rgb).view(1, 3, 1, 1).expand(1, 3, size, size)
        init = prior.encode(plain).mean(dim=(0, 2, 3))
    return EnvironmentBackground(prior.latent_channels, init=init).to(prior.device)


def colour_cameras(prior: Prior, azimuths: int, rig: list[Camera] = ()) -> list[Camera]:
    """Views decoded for the colour stage: two rings inside the prior's elevation range, plus the rig."""
    low, high = prior.metadata.camera.elevation_deg
    ring = prior.metadata.camera.ring(azimuths, (low + 0.25 * (high - low), low + 0.75 * (high - low)))
    return list(rig) + ring


# An extra loss on the field (Sketch-Shape's occupancy term), weighted per latent pixel like the
# regularisers; it gets the field and the fraction of the run done.
FieldLoss = Callable[[VoxelField, float], torch.Tensor]


class FieldOptimisation:
    """One score-distillation run on a fresh field: ``step()`` is one SDS/SJC iteration.

    The rig's cameras are among the optimised views, and the random views are drawn around them."""

    def __init__(self, prompt: str, prior: Prior, config: GenerateConfig, generator: torch.Generator,
                 rig: Sequence[Camera] = (), extra_loss: FieldLoss | None = None,
                 density_init: torch.Tensor | None = None):
        meta = prior.metadata
        self.prior, self.config, self.generator = prior, config, generator
        self.views = ViewSampler(meta.camera, rig)
        self.extra_loss = extra_loss
        self.field = VoxelField(config.grid_resolution, prior.latent_channels, meta.scene_bound,
                                config.blob_strength, config.blob_radius).to(prior.device)
        if density_init is not None:  # density logits (R, R, R) [z, y, x] to start from instead of the blob
            with torch.no_grad():
                self.field.density.copy_(density_init.view_as(self.field.density))
        self.background = plain_background(prior)
        self.prompts = ViewPrompts(prior, prompt, config.negative_prompt, config.view_dependent_prompts)
        self.guidance = ScoreDistillation(prior, config.guidance)
        self.optimiser = torch.optim.Adam(
            [{"params": [self.field.density, self.background.image]},
             {"params": [self.field.features], "lr": config.feature_learning_rate}],
            lr=config.learning_rate, betas=(0.9, 0.99), fused=True)  # fused: a fraction of a ms
        self.emptiness_switch = int(config.emptiness_switch * config.steps)
        self.final_loss = float("nan")

    def step(self, step: int) -> tuple[RenderOutput, GuidanceStep]:
        config, size = self.config, self.prior.metadata.latent_size
        progress = step / max(config.steps - 1, 1)
        ramp = min(1.0, progress / config.feature_warmup) if config.feature_warmup > 0 else 1.0
        self.optimiser.param_groups[1]["lr"] = config.feature_learning_rate * (0.1 + 0.9 * ramp)
        camera = self.views.camera(step, self.generator)
        out = render(self.field, camera, size, size, config.samples_per_ray, self.background, self.generator)
        latents = out.features[None]
        cond, opposite = self.prompts.for_camera_with_opposite(camera)
        score = self.guidance.step(latents, cond, self.prompts.unconditional, progress, self.generator, opposite)
        regular = emptiness_weight(step, self.emptiness_switch, config.emptiness_early, config.emptiness_late) \
            * emptiness_loss(out.weights, config.emptiness_beta)
        regular = regular + config.entropy_weight * progress * opacity_entropy(out.opacity)
        if config.center_depth_weight:
            regular = regular + config.center_depth_weight * center_depth_loss(out.depth, out.opacity)
        if self.extra_loss is not None:
            regular = regular + self.extra_loss(self.field, progress)
        loss = surrogate_loss(latents, score.gradient) + size * size * regular
        self.optimiser.zero_grad(set_to_none=True)
        loss.backward()
        self.optimiser.step()
        self.final_loss = score.loss
        return out, score


def optimise_field(prompt: str, prior: Prior, config: GenerateConfig, generator: torch.Generator,
                   on_progress: ProgressCallback | None = None, cancel: CancelToken | None = None,
                   rig: Sequence[Camera] = (), extra_loss: FieldLoss | None = None,
                   density_init: torch.Tensor | None = None) -> FieldOptimisation:
    """The SDS / SJC loop, reporting every step and checking for cancellation before each."""
    run = FieldOptimisation(prompt, prior, config, generator, rig, extra_loss, density_init)
    preview_every = config.preview_every or max(1, config.steps // 20)
    for step in range(config.steps):
        if cancel is not None:
            cancel.raise_if_cancelled()
        out, score = run.step(step)
        if on_progress is not None:
            last = step == config.steps - 1
            preview = latent_preview(prior, out.features) if last or step % preview_every == 0 else None
            on_progress(Progress("optimise", step + 1, config.steps, score.loss, preview))
    return run


def seeded_generator(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def check_prompt(prompt: str) -> None:
    if not prompt.strip():
        raise ValueError("the prompt is empty")


def field_surface(field: VoxelField, views: list[DecodedView], config: GenerateConfig,
                  fit_resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """The field's surface as a mesh, shaped by the decoded views' object masks when they show one:
    outline fit, carving, smoothing and the iso-level whose silhouettes match (engine.carve)."""
    # Views that show no object at all (an untrained prior) would carve everything away.
    views_show_object = np.mean([foreground_mask(view, config.foreground_threshold).mean() for view in views]) > 0.01
    if config.silhouette_fit_steps > 0 and views_show_object:
        fit_silhouettes(field, views, config.foreground_threshold, config.silhouette_fit_steps,
                        fit_resolution, config.samples_per_ray)
    density = field.density_grid(config.mesh_resolution).cpu().numpy()
    level = config.iso_level * np.log(2.0) / field.voxel_size
    if config.carve_votes > 0 and views_show_object:
        density = carve(density, field.bound, views, config.foreground_threshold, config.carve_votes)
    if config.surface_smoothing > 0:
        sigma = config.surface_smoothing * (config.mesh_resolution - 1) / (config.grid_resolution - 1)
        density = gaussian_filter(density, sigma, mode="nearest")
    if config.iso_level_choices and views_show_object:
        level = matching_level(density, field.bound, views, config.foreground_threshold,
                               [level * factor for factor in config.iso_level_choices])
        log.info("iso-level %.3g x the half-opaque density matches the decoded silhouettes best",
                 level * field.voxel_size / np.log(2.0))
    return extract_mesh(density, field.bound, level)


def textured_mesh(run: FieldOptimisation, config: GenerateConfig, on_progress: ProgressCallback | None = None,
                  cancel: CancelToken | None = None, timings: dict | None = None) -> GenerateResult:
    """The optimised field -> marching cubes -> xatlas UVs -> texture baked from decoded views (the
    run's rig among them)."""
    prior, field_, background, final_loss = run.prior, run.field, run.background, run.final_loss
    timings = {} if timings is None else timings

    def check_cancel() -> None:  # between the stages that cannot stop half-way
        if cancel is not None:
            cancel.raise_if_cancelled()

    refine_generator = torch.Generator().manual_seed(config.seed)

    def refine(latents: torch.Tensor, cameras: list[Camera]) -> torch.Tensor:
        return refine_latents(prior, latents, cameras, run.prompts, config.colour_refine, refine_generator)

    started = time.perf_counter()
    views = decode_views(prior, field_, background, colour_cameras(prior, config.colour_view_azimuths, run.views.rig),
                         config.samples_per_ray, on_batch=check_cancel, refine=refine)
    timings["colour_s"] = time.perf_counter() - started

    started = time.perf_counter()
    vertices, faces = field_surface(field_, views, config, 2 * prior.metadata.latent_size)
    check_cancel()
    vertices, faces, uvs = unwrap(vertices, faces, config.texture_size)
    timings["mesh_s"] = time.perf_counter() - started
    if on_progress is not None:
        on_progress(Progress("mesh", 1, 1, final_loss))
    check_cancel()

    started = time.perf_counter()
    tolerance = 2.0 * field_.voxel_size
    lighting = prior.metadata.lighting if config.delight else None

    def colour_fn(points: np.ndarray, normals: np.ndarray) -> np.ndarray:
        colours = backproject(points, normals, vertices, faces, views, tolerance, on_view=check_cancel,
                              foreground_threshold=config.foreground_threshold)[0]
        return albedo(colours, normals, lighting)

    texture = bake_texture(vertices, faces, uvs, colour_fn, size=config.texture_size)
    check_cancel()
    mesh = TexturedMesh(vertices.astype(np.float32), faces.astype(np.int32), uvs.astype(np.float32), texture)
    colour_error = view_fidelity(mesh.vertices, mesh.faces, mesh.uvs, mesh.texture, views, config.foreground_threshold,
                                 lighting)
    timings["colour_s"] += time.perf_counter() - started
    preview = (views[0].image * 255).round().astype(np.uint8)
    if on_progress is not None:
        on_progress(Progress("colour", 1, 1, final_loss, preview))
    return GenerateResult(mesh, preview, timings, colour_error, final_loss)


def generate(prompt: str, prior: Prior, config: GenerateConfig | None = None,
             on_progress: ProgressCallback | None = None, cancel: CancelToken | None = None,
             rig: Sequence[Camera] = ()) -> GenerateResult:
    """Prompt -> UV-textured mesh in Blender axes. Deterministic for a given seed on the CPU.

    ``rig``: cameras (Blender world, the prop at the origin) that are always among the optimised
    and the decoded views, so the prop looks right from the shot."""
    config = config or GenerateConfig()
    check_prompt(prompt)
    generator = seeded_generator(config.seed)
    started = time.perf_counter()
    run = optimise_field(prompt, prior, config, generator, on_progress, cancel, rig)
    timings = {"optimise_s": time.perf_counter() - started}
    result = textured_mesh(run, config, on_progress, cancel, timings)
    mesh = result.mesh
    log.info("generated %r: %d vertices, %d faces, colour error %.3f, %s", prompt, len(mesh.vertices),
             len(mesh.faces), result.colour_error, {k: round(v, 2) for k, v in timings.items()})
    return result
