"""Latent-Paint: texture an existing mesh from a prompt.

The shape is the user's and never changes.  A latent texture (as many channels as the prior's VAE
latents) is optimised in the mesh's UV space with score distillation on latent renders of the
mesh, then decoded views of it are back-projected onto an RGB texture (Metzer et al., Latent-NeRF,
section 4.3).

Coordinates: the mesh and the rig arrive in the user's Blender world; the optimisation runs in the
prior's frame (``Normalisation``: bounding box centred, largest half-extent ``frame_half_extent``),
and the result goes back out with the user's exact vertex positions.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
import trimesh

from ..cameras import Camera, ViewSampler
from ..colour import DecodedView, backproject, view_fidelity
from ..export import TexturedMesh, bake_texture, unwrap
from ..field import EnvironmentBackground
from ..guidance import GuidanceConfig, ScoreDistillation, surrogate_loss
from ..mesh_render import LatentFragments, ViewPool, fragments_for, render_latent
from ..meshes import MeshError, MeshInput, Normalisation, validate_mesh
from ..prior import Prior
from ..progress import CancelToken, Progress, ProgressCallback
from ..prompts import ViewPrompts
from ..raster import render_textured
from .generate import _background, _preview_image, check_prompt, colour_cameras, seeded_generator

log = logging.getLogger(__name__)

# xatlas leaves 4 texels between charts at the resolution it packs for (export.ATLAS_PADDING).
# Packing for twice the latent texture's size makes that gap two latent texels, so bilinear
# lookups at a chart's border never reach into a neighbouring chart of unrelated surface.
ATLAS_PACK_PER_LATENT_TEXEL = 2
# UVs this far outside [0, 1] are treated as rounding, anything beyond as tiling (unsupported).
UV_TOLERANCE = 1e-4


@dataclass
class PaintConfig:
    steps: int = 400
    seed: int = 0
    negative_prompt: str = ""
    view_dependent_prompts: bool = True
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)
    # latent texture and its optimisation
    latent_texture_size: int = 64  # about one texel per supersampled pixel of a 16x16 latent render
    learning_rate: float = 0.03  # Adam on the latent texture (latents span about +-2)
    background_learning_rate: float = 0.01
    supersample: int = 4  # raster samples per latent pixel side, box-filtered
    view_pool: int = 96  # random views rasterised once and reused
    texture_init_rgb: tuple[float, float, float] = (0.5, 0.5, 0.5)
    frame_half_extent: float = 0.45
    # colour stage and export
    colour_view_azimuths: int = 8  # per ring; two rings, so 16 decoded views plus the rig
    colour_angle_power: float = 2.0
    texture_size: int = 1024
    preview_every: int = 0  # steps between preview pictures; 0 picks about 20 per run

    def __post_init__(self) -> None:
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps must be a positive integer, got {self.steps!r}")
        if self.texture_size < 512:
            raise ValueError(f"texture_size must be at least 512, got {self.texture_size}")
        if not 8 <= self.latent_texture_size <= 1024:
            raise ValueError(f"latent_texture_size must lie in [8, 1024], got {self.latent_texture_size}")
        for name in ("learning_rate", "background_learning_rate"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a non-negative number, got {value}")
        if not self.learning_rate > 0:
            raise ValueError("learning_rate must be positive")
        if not 1 <= self.supersample <= 8:
            raise ValueError(f"supersample must lie in [1, 8], got {self.supersample}")
        if self.view_pool < 1:
            raise ValueError(f"view_pool must be at least 1, got {self.view_pool}")
        if len(self.texture_init_rgb) != 3 or not all(0 <= c <= 1 for c in self.texture_init_rgb):
            raise ValueError("texture_init_rgb must be three numbers in [0, 1]")
        if not (math.isfinite(self.frame_half_extent) and self.frame_half_extent > 0):
            raise ValueError(f"frame_half_extent must be a positive number, got {self.frame_half_extent}")
        if self.colour_view_azimuths < 1:
            raise ValueError(f"colour_view_azimuths must be at least 1, got {self.colour_view_azimuths}")
        if not (math.isfinite(self.colour_angle_power) and self.colour_angle_power >= 0):
            raise ValueError("colour_angle_power must be a non-negative number")
        if self.preview_every < 0:
            raise ValueError("preview_every must be 0 (automatic) or positive")


# Named trade-offs between time and quality; "standard" is PaintConfig's defaults.
PRESETS = {
    "draft": dict(steps=150, texture_size=512, colour_view_azimuths=4, view_pool=48),
    "standard": {},
    "high": dict(steps=1000, latent_texture_size=128, texture_size=2048, colour_view_azimuths=12),
}


def preset_config(preset: str = "standard", **overrides) -> PaintConfig:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")
    return PaintConfig(**{**PRESETS[preset], **overrides})


@dataclass
class PaintResult:
    mesh: TexturedMesh  # the input's geometry (user coordinates), UVs and the painted texture
    preview: np.ndarray  # shaded render of the painted mesh from the first colour view, (H, W, 3) uint8
    timings: dict[str, float]
    colour_error: float  # mean abs RGB error of mesh renders against the decoded views
    final_loss: float
    source_vertex: np.ndarray  # (V_out,) int64: the input vertex each output vertex came from


@dataclass
class _Layout:
    """The mesh as the optimisation sees it: in the prior's frame, with one UV per vertex."""

    vertices: np.ndarray  # (V_out, 3) float64, prior frame
    faces: np.ndarray  # (F, 3) int64, the input's faces in the input's order
    uvs: np.ndarray  # (V_out, 2) float64
    source_vertex: np.ndarray  # (V_out,) int64


def _check_uvs(uvs: np.ndarray) -> None:
    if uvs.min() < -UV_TOLERANCE or uvs.max() > 1 + UV_TOLERANCE:
        raise MeshError(f"the uvs must lie inside [0, 1] (one texture, no tiling), got "
                        f"[{uvs.min():.4g}, {uvs.max():.4g}]")


def _layout(mesh: MeshInput, frame_vertices: np.ndarray, config: PaintConfig) -> _Layout:
    if mesh.uvs is not None:
        _check_uvs(mesh.uvs)
        return _Layout(frame_vertices, mesh.faces, mesh.uvs, np.arange(len(mesh.vertices), dtype=np.int64))
    pack_size = ATLAS_PACK_PER_LATENT_TEXEL * config.latent_texture_size
    _, faces, uvs = unwrap(frame_vertices, mesh.faces, pack_size)
    faces = faces.astype(np.int64)
    if faces.shape != mesh.faces.shape:
        raise MeshError(f"UV unwrapping changed the face count ({len(mesh.faces)} -> {len(faces)}); "
                        "the mesh may hold degenerate faces")
    # xatlas keeps faces in order and only splits vertices at seams, so each output corner is the
    # same corner of the same input face: that maps every output vertex to its input vertex, even
    # where several input vertices share one position.
    source = np.full(int(faces.max()) + 1, -1, dtype=np.int64)
    source[faces.reshape(-1)] = mesh.faces.reshape(-1)
    if (source < 0).any():
        raise MeshError("UV unwrapping produced vertices no face uses")
    return _Layout(frame_vertices[source], faces, uvs.astype(np.float64), source)


def _encoded_colour(prior: Prior, rgb: Sequence[float]) -> torch.Tensor:
    """The latent (C,) of a plain image of one colour."""
    size = prior.metadata.image_size
    plain = torch.tensor(rgb, dtype=torch.float32).view(1, 3, 1, 1).expand(1, 3, size, size)
    return prior.encode(plain).mean(dim=(0, 2, 3))


def _normal_orientation(vertices: np.ndarray, faces: np.ndarray) -> tuple[float, bool]:
    """(sign that turns the vertex normals outward, whether that sign can be trusted everywhere).

    Back-projection only paints a point from views on its normal's side.  A closed, consistently
    wound mesh has one outside, possibly wound inside out; an open or inconsistently wound one
    has no reliable side at all."""
    mesh = trimesh.Trimesh(vertices, faces, process=True)  # welds UV-seam splits by position
    if mesh.is_watertight and mesh.is_winding_consistent:
        return (-1.0 if mesh.volume < 0 else 1.0), True
    return 1.0, False


class LatentPaint:
    """One SDS run on a latent texture of a fixed mesh: ``step()`` is one iteration."""

    def __init__(self, layout: _Layout, prompt: str, prior: Prior, config: PaintConfig,
                 generator: torch.Generator, rig: Sequence[Camera] = ()):
        meta = prior.metadata
        self.prior, self.config, self.generator, self.layout = prior, config, generator, layout
        size = config.latent_texture_size
        # Start from a plain mid grey, not the background's white: on white the object would be
        # invisible, and the prior's first (high-noise) steps could not tell object from background.
        # Grey is also about equally far from every palette colour, so it biases no colour.
        start = _encoded_colour(prior, config.texture_init_rgb).view(1, -1, 1, 1)
        self.texture = torch.nn.Parameter(start.expand(1, prior.latent_channels, size, size).clone())
        self.background = _background(prior)
        self.views = ViewPool(ViewSampler(meta.camera, rig), layout.vertices, layout.faces, layout.uvs,
                              meta.latent_size, config.supersample, config.view_pool, generator, prior.device)
        self.prompts = ViewPrompts(prior, prompt, config.negative_prompt, config.view_dependent_prompts)
        self.guidance = ScoreDistillation(prior, config.guidance)
        self.optimiser = torch.optim.Adam(
            [{"params": [self.texture]},
             {"params": [self.background.image], "lr": config.background_learning_rate}],
            lr=config.learning_rate, betas=(0.9, 0.99))
        self.final_loss = float("nan")

    def step(self, step: int) -> tuple[torch.Tensor, float]:
        progress = step / max(self.config.steps - 1, 1)
        fragments = self.views[self.views.index(step, self.generator)]
        latents = render_latent(self.texture, fragments, self.background)[None]
        score = self.guidance.step(latents, self.prompts.for_camera(fragments.camera),
                                   self.prompts.unconditional, progress, self.generator)
        self.optimiser.zero_grad(set_to_none=True)
        surrogate_loss(latents, score.gradient).backward()
        self.optimiser.step()
        self.final_loss = score.loss
        return latents[0].detach(), score.loss

    @torch.no_grad()
    def decode_views(self, cameras: Sequence[Camera], on_batch=lambda: None,
                     batch_size: int = 8) -> list[DecodedView]:
        """VAE decodings of latent renders of the painted mesh, with each view's coverage."""
        size, image_size = self.prior.metadata.latent_size, self.prior.metadata.image_size
        layout, config = self.layout, self.config
        views = []
        for start in range(0, len(cameras), batch_size):
            on_batch()
            chunk: list[LatentFragments] = fragments_for(
                layout.vertices, layout.faces, layout.uvs, cameras[start:start + batch_size], size,
                config.supersample, self.prior.device)
            latents = torch.stack([render_latent(self.texture, f, self.background) for f in chunk])
            images = self.prior.decode(latents)
            for fragments, image in zip(chunk, images):
                views.append(DecodedView(fragments.camera, image.permute(1, 2, 0).cpu().numpy(),
                                         fragments.opacity(image_size)))
        return views


def _depth_tolerance(cameras: Sequence[Camera], image_size: int) -> float:
    """Two pixels' footprint at the views' distance: the z-buffer is sampled at a pixel corner,
    so a visible point can sit about a pixel's depth slope off it."""
    footprint = [2 * c.distance * math.tan(math.radians(c.fov_y_deg) / 2) / image_size for c in cameras]
    return 2.0 * float(np.mean(footprint))


def paint(mesh: MeshInput, prompt: str, prior: Prior, config: PaintConfig | None = None,
          on_progress: ProgressCallback | None = None, cancel: CancelToken | None = None,
          rig: Sequence[Camera] = ()) -> PaintResult:
    """Texture ``mesh`` (user coordinates, Blender axes) from ``prompt``; the geometry is kept.

    ``rig``: cameras in the same user coordinates that are always among the optimised and the
    decoded views, so the prop looks right from the shot.  Deterministic for a given seed on the CPU.
    """
    config = config or PaintConfig()
    check_prompt(prompt)
    mesh = validate_mesh(mesh.vertices, mesh.faces, mesh.uvs)
    timings: dict[str, float] = {}

    def check_cancel() -> None:
        if cancel is not None:
            cancel.raise_if_cancelled()

    started = time.perf_counter()
    # Fit the frame to the vertices faces use: stray unreferenced vertices must not shrink the prop.
    normalisation = Normalisation.fit(mesh.vertices[np.unique(mesh.faces)], config.frame_half_extent)
    rig_frame = [normalisation.camera_to_frame(camera) for camera in rig]
    layout = _layout(mesh, normalisation.to_frame(mesh.vertices), config)
    timings["uv_s"] = time.perf_counter() - started
    check_cancel()

    started = time.perf_counter()
    generator = seeded_generator(config.seed)
    run = LatentPaint(layout, prompt, prior, config, generator, rig_frame)
    timings["views_s"] = time.perf_counter() - started
    started = time.perf_counter()
    preview_every = config.preview_every or max(1, config.steps // 20)
    for step in range(config.steps):
        check_cancel()
        latents, loss = run.step(step)
        if on_progress is not None:
            last = step == config.steps - 1
            preview = _preview_image(prior, latents) if last or step % preview_every == 0 else None
            on_progress(Progress("optimise", step + 1, config.steps, loss, preview))
    timings["optimise_s"] = time.perf_counter() - started

    started = time.perf_counter()
    cameras = colour_cameras(prior, config.colour_view_azimuths, rig_frame)
    total = 2 * len(cameras)  # decoding, then back-projection, one count per view
    done = 0

    def colour_step(count: int) -> None:
        nonlocal done
        check_cancel()
        if on_progress is not None:
            on_progress(Progress("colour", done, total, run.final_loss))
        done += count

    views = run.decode_views(cameras, on_batch=lambda: colour_step(min(8, len(cameras) - done)))
    tolerance = _depth_tolerance(cameras, prior.metadata.image_size)
    sign, closed = _normal_orientation(layout.vertices, layout.faces)

    def colour_fn(points: np.ndarray, normals: np.ndarray) -> np.ndarray:
        colours, seen = backproject(points, sign * normals, layout.vertices, layout.faces, views, tolerance,
                                    config.colour_angle_power, on_view=lambda: colour_step(1))
        if not closed and not seen.all():
            # Open or inconsistently wound meshes: a face no view sees from its normal's side may be
            # seen from the other (occlusion is still checked).  Closed meshes skip this: their
            # unseen texels (the bottom) would only pick up neighbouring faces' edge pixels.
            hidden = ~seen
            back, seen_back = backproject(points[hidden], -sign * normals[hidden], layout.vertices,
                                          layout.faces, views, tolerance, config.colour_angle_power,
                                          on_view=check_cancel)
            fill = np.flatnonzero(hidden)[seen_back]
            colours[fill] = back[seen_back]
            log.info("painted %d of %d unseen texels from their back side", len(fill), int(hidden.sum()))
        return colours

    texture = bake_texture(layout.vertices, layout.faces, layout.uvs, colour_fn, size=config.texture_size)
    check_cancel()
    colour_error = view_fidelity(layout.vertices, layout.faces, layout.uvs, texture, views)
    out = TexturedMesh(
        vertices=mesh.vertices[layout.source_vertex].astype(np.float32),
        faces=layout.faces.astype(np.int32),
        uvs=layout.uvs.astype(np.float32),
        texture=texture,
    )
    rgb, _ = render_textured(layout.vertices, layout.faces, layout.uvs, texture, cameras[0], 128, 128,
                             shading=True, ssaa=2)
    preview = np.round(rgb * 255).astype(np.uint8)
    timings["colour_s"] = time.perf_counter() - started
    if on_progress is not None:
        on_progress(Progress("colour", total, total, run.final_loss, preview))
    log.info("painted %r: %d vertices, %d faces, colour error %.3f, %s", prompt, len(out.vertices),
             len(out.faces), colour_error, {k: round(v, 2) for k, v in timings.items()})
    return PaintResult(out, preview, timings, colour_error, run.final_loss, layout.source_vertex)
