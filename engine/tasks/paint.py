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
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import trimesh

from ..cameras import Camera, ViewSampler
from ..colour import (
    DecodedView,
    FlattenConfig,
    albedo,
    backproject,
    filled,
    inside_colours,
    light_to_divide_out,
    view_fidelity,
)
from ..config import TEXTURE_SIZE_RANGE, TaskConfig, check_bool, check_int, check_number
from ..export import TexturedMesh, bake_texture, unwrap
from ..guidance import GuidanceConfig, ScoreDistillation, surrogate_loss
from ..mesh_render import ViewPool, fragments_for, render_latent
from ..meshes import MeshError, MeshInput, frame_normalisation, validate_mesh
from ..prior import Prior
from ..progress import CancelToken, Progress, ProgressCallback
from ..prompts import ViewPrompts
from ..raster import Lighting, render_textured
from .common import (
    cancel_token,
    check_prompt,
    colour_cameras,
    encoded_colour,
    plain_background,
    run_steps,
    seeded_generator,
)

log = logging.getLogger(__name__)

# xatlas leaves 4 texels between charts at the resolution it packs for (export.ATLAS_PADDING).
# Packing for twice the latent texture's size makes that gap two latent texels, so bilinear
# lookups at a chart's border never reach into a neighbouring chart of unrelated surface.
ATLAS_PACK_PER_LATENT_TEXEL = 2
# UVs this far outside [0, 1] are treated as rounding, anything beyond as tiling (unsupported).
UV_TOLERANCE = 1e-4


@dataclass(frozen=True)
class LatentTextureConfig:
    """The latent texture and its optimisation."""

    size: int = 64  # about one texel per supersampled pixel of a 16x16 latent render
    learning_rate: float = 0.03  # Adam on the latent texture (latents span about +-2)
    background_learning_rate: float = 0.01
    supersample: int = 4  # raster samples per latent pixel side, box-filtered
    view_pool: int = 96  # random views rasterised once and reused
    init_rgb: tuple[float, float, float] = (0.5, 0.5, 0.5)
    init_views: int = 24  # encoded renders of the plain mesh the latent texture starts fitted to
    init_iterations: int = 300

    def __post_init__(self) -> None:
        check_int("texture.size", self.size, 8, 1024)
        check_number("texture.learning_rate", self.learning_rate, 0, 10, low_open=True)
        check_number("texture.background_learning_rate", self.background_learning_rate, 0, 10)
        check_int("texture.supersample", self.supersample, 1, 8)
        check_int("texture.view_pool", self.view_pool, 1, 10_000)
        check_int("texture.init_views", self.init_views, 1, 10_000)
        check_int("texture.init_iterations", self.init_iterations, 0, 100_000)
        if len(self.init_rgb) != 3:
            raise ValueError("texture.init_rgb must be three numbers in [0, 1]")
        for channel in self.init_rgb:
            check_number("texture.init_rgb", channel, 0, 1)


@dataclass(frozen=True)
class PaintColourConfig:
    """The colour stage: the decoded views of the painted mesh and the texture baked from them."""

    view_azimuths: int = 8  # per ring; two rings, so 16 decoded views plus the rig
    angle_power: float = 2.0
    # Decoded pixels this close to a view's silhouette mix in the background (VAE blur); they are
    # replaced by the nearest pixel further inside before back-projection.
    edge_px: int = 2
    # An albedo texture that Blender lights, as text-to-3D's (engine.colour.light_to_divide_out).
    delight: bool | None = None
    # An albedo texture's noise flattened on the surface; a shaded one is left as it is, since the
    # filter would take its shading gradient for noise.
    flatten: FlattenConfig = FlattenConfig()
    texture_size: int = 1024

    def __post_init__(self) -> None:
        check_int("colour.view_azimuths", self.view_azimuths, 1, 64)
        check_number("colour.angle_power", self.angle_power, 0, 100)
        check_int("colour.edge_px", self.edge_px, 0, 16)
        check_int("colour.texture_size", self.texture_size, *TEXTURE_SIZE_RANGE)
        check_bool("colour.delight", self.delight, allow_none=True)


@dataclass(frozen=True)
class PaintConfig(TaskConfig):
    steps: int = 900
    # A small prior's predictions leave the image manifold at SDS's scale 100 (docs/tuning.md).
    guidance: GuidanceConfig = GuidanceConfig(guidance_scale=5.0, t_max_final=0.4)
    texture: LatentTextureConfig = LatentTextureConfig()
    # The mesh's box half-extent and RMS surface radius in the prior's frame (meshes.frame_normalisation).
    frame_half_extent: float = 0.45
    colour: PaintColourConfig = PaintColourConfig()

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number("frame_half_extent", self.frame_half_extent, 0, 10, low_open=True)


# Named trade-offs between time and quality ("standard" is tuned on the embedded prior, docs/tuning.md);
# "sd" is Latent-Paint's setting for a Stable Diffusion checkpoint (guidance 100, a 128x128 latent texture).
PRESETS = {
    "draft": {"steps": 300, "colour.texture_size": 512, "colour.view_azimuths": 4, "texture.view_pool": 48},
    "standard": {},
    "high": {"steps": 1500, "colour.texture_size": 2048, "colour.view_azimuths": 12},
    "sd": {"steps": 5000, "guidance": GuidanceConfig(guidance_scale=100.0), "texture.size": 128,
           "colour.texture_size": 2048},
}


@dataclass
class PaintResult:
    mesh: TexturedMesh  # the input's geometry (user coordinates), UVs and the painted texture
    preview: np.ndarray  # render of the painted mesh from the first colour view (the rig's first
    # camera when there is a rig), lit by the prior's light when the texture is albedo, (H, W, 3) uint8
    timings: dict[str, float]
    colour_error: float  # mean abs RGB error of mesh renders against the decoded views
    final_loss: float
    source_vertex: np.ndarray  # (V_out,) int64: the input vertex each output vertex came from


@dataclass
class UVLayout:
    """The mesh as the optimisation sees it: in the prior's frame, with one UV per vertex."""

    vertices: np.ndarray  # (V_out, 3) float64, prior frame
    faces: np.ndarray  # (F, 3) int64, the input's faces in the input's order
    uvs: np.ndarray  # (V_out, 2) float64
    source_vertex: np.ndarray  # (V_out,) int64


def _check_uvs(uvs: np.ndarray) -> None:
    if uvs.min() < -UV_TOLERANCE or uvs.max() > 1 + UV_TOLERANCE:
        raise MeshError(f"the uvs must lie inside [0, 1] (one texture, no tiling), got "
                        f"[{uvs.min():.4g}, {uvs.max():.4g}]")


def uv_layout(mesh: MeshInput, frame_vertices: np.ndarray, config: PaintConfig) -> UVLayout:
    if mesh.uvs is not None:
        _check_uvs(mesh.uvs)
        return UVLayout(frame_vertices, mesh.faces, mesh.uvs, np.arange(len(mesh.vertices), dtype=np.int64))
    pack_size = ATLAS_PACK_PER_LATENT_TEXEL * config.texture.size
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
    return UVLayout(frame_vertices[source], faces, uvs.astype(np.float64), source)


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

    def __init__(self, layout: UVLayout, prompt: str, prior: Prior, config: PaintConfig,
                 generator: torch.Generator, rig: Sequence[Camera] = ()):
        meta = prior.metadata
        self.prior, self.config, self.generator, self.layout = prior, config, generator, layout
        size = config.texture.size
        start = encoded_colour(prior, config.texture.init_rgb).view(1, -1, 1, 1)
        self.texture = torch.nn.Parameter(start.expand(1, prior.latent_channels, size, size).clone())
        self.background = plain_background(prior)
        self.views = ViewPool(ViewSampler(meta.camera, rig), layout.vertices, layout.faces, layout.uvs,
                              meta.latent_size, config.texture.supersample, config.texture.view_pool, generator,
                              prior.device)
        self._fit_plain_renders()
        self.prompts = ViewPrompts(prior, prompt, config.negative_prompt, config.view_dependent_prompts)
        self.guidance = ScoreDistillation(prior, config.guidance)
        self.optimiser = torch.optim.Adam(
            [{"params": [self.texture]},
             {"params": [self.background.image], "lr": config.texture.background_learning_rate}],
            lr=config.texture.learning_rate, betas=(0.9, 0.99))
        self.final_loss = float("nan")

    def _fit_plain_renders(self) -> None:
        """Start from the latents of the mesh itself, shaded and plain grey.

        A VAE's latents are not per-pixel colours: the mean latent of a plain grey image decodes to
        white inside an object, and a constant latent field lies off the latents the prior knows.
        Fitting the texture to encoded renders of the mesh (contract-style shading, a mid grey that
        is about equally far from every colour) gives a start that decodes to the shape the prior
        expects, so the score only has to change colours.  The background is left alone.
        """
        config, prior = self.config.texture, self.prior
        if config.init_iterations == 0:
            return
        layout, image_size = self.layout, prior.metadata.image_size
        plain = np.ones((1, 1, 3), dtype=np.float32) * np.asarray(config.init_rgb, dtype=np.float32)
        chosen = np.linspace(0, len(self.views) - 1, min(config.init_views, len(self.views))).round().astype(int)
        images = [render_textured(layout.vertices, layout.faces, layout.uvs, plain, self.views[i].camera,
                                  image_size, image_size, shading=True, background=(1.0, 1.0, 1.0), ssaa=2)[0]
                  for i in chosen]
        targets = torch.cat([prior.encode(torch.from_numpy(np.stack(images[k:k + 8])).permute(0, 3, 1, 2))
                             for k in range(0, len(images), 8)])
        fitter = torch.optim.Adam([self.texture], lr=0.05)
        with torch.no_grad():
            backgrounds = [render_latent(torch.zeros_like(self.texture), self.views[i], self.background)
                           for i in chosen]
        for iteration in range(config.init_iterations):
            k = iteration % len(chosen)
            latents = render_latent(self.texture, self.views[chosen[k]]) + backgrounds[k]
            loss = (latents - targets[k]).pow(2).mean()
            fitter.zero_grad(set_to_none=True)
            loss.backward()
            fitter.step()
        log.info("latent texture fitted to %d plain renders: mse %.4f", len(chosen), float(loss.detach()))

    def step(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        progress = step / max(self.config.steps - 1, 1)
        fragments = self.views[self.views.index(step, self.generator)]
        latents = render_latent(self.texture, fragments, self.background)[None]
        cond, opposite = self.prompts.for_camera_with_opposite(fragments.camera)
        score = self.guidance.step(latents, cond, self.prompts.unconditional, progress, self.generator, opposite)
        self.optimiser.zero_grad(set_to_none=True)
        surrogate_loss(latents, score.gradient).backward()
        self.optimiser.step()
        self.final_loss = score.loss
        return latents[0].detach(), score.loss

    @torch.no_grad()
    def decode_views(self, cameras: Sequence[Camera], on_batch: Callable[[int], None] = lambda count: None,
                     batch_size: int = 8) -> list[DecodedView]:
        """VAE decodings of latent renders of the painted mesh, with each view's coverage.
        ``on_batch(views in the batch)`` runs before each batch; it may raise to stop."""
        size, image_size = self.prior.metadata.latent_size, self.prior.metadata.image_size
        layout, config = self.layout, self.config
        views = []
        for start in range(0, len(cameras), batch_size):
            batch = cameras[start:start + batch_size]
            on_batch(len(batch))
            chunk = fragments_for(layout.vertices, layout.faces, layout.uvs, batch, size, config.texture.supersample,
                                  self.prior.device)
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


class ColourProgress:
    """The colour stage's progress: one count per decoded view, then one per back-projected view."""

    def __init__(self, views: int, final_loss: float, on_progress: ProgressCallback | None, cancel: CancelToken):
        self.total, self.done, self.final_loss = 2 * views, 0, final_loss
        self.on_progress, self.cancel = on_progress, cancel

    def __call__(self, count: int = 1) -> None:
        self.cancel.raise_if_cancelled()
        if self.on_progress is not None:
            self.on_progress(Progress("colour", self.done, self.total, self.final_loss))
        self.done += count


def painted_texture(layout: UVLayout, views: list[DecodedView], config: PaintColourConfig, lighting: Lighting | None,
                    tolerance: float, bound: float, progress: ColourProgress) -> np.ndarray:
    """The texture (S, S, 3) uint8 baked from the decoded views of the painted mesh: albedo, flattened
    within a scene box of half-size ``bound``, when there is a ``lighting`` to divide out."""
    sign, closed = _normal_orientation(layout.vertices, layout.faces)
    cleaned = [inside_colours(view, config.edge_px) for view in views]

    def colour_fn(points: np.ndarray, normals: np.ndarray) -> np.ndarray:
        normals = sign * normals  # outward, where the winding says so
        colours, seen = backproject(points, normals, layout.vertices, layout.faces, cleaned, tolerance,
                                    config.angle_power, on_view=progress)
        if not closed and not seen.all():
            # Open or inconsistently wound meshes: a face no view sees from its normal's side may be
            # seen from the other (occlusion is still checked).  Closed meshes skip this: their
            # unseen texels (the bottom) would only pick up neighbouring faces' edge pixels.
            hidden = ~seen
            back, seen_back = backproject(points[hidden], -normals[hidden], layout.vertices, layout.faces, cleaned,
                                          tolerance, config.angle_power, on_view=progress.cancel.raise_if_cancelled)
            fill = np.flatnonzero(hidden)[seen_back]
            colours[fill], seen[fill] = back[seen_back], True
            normals[fill] *= -1  # the side the colour was seen from
            log.info("painted %d of %d unseen texels from their back side", len(fill), int(hidden.sum()))
        if lighting is None:
            return filled(points, colours, seen)
        return config.flatten.apply(points, filled(points, albedo(colours, normals, lighting), seen), bound)

    return bake_texture(layout.vertices, layout.faces, layout.uvs, colour_fn, size=config.texture_size)


def colour_stage(run: LatentPaint, on_progress: ProgressCallback | None,
                 cancel: CancelToken) -> tuple[np.ndarray, float, np.ndarray]:
    """Decode views of the painted mesh and bake them: (texture, colour error, preview)."""
    prior, layout, config = run.prior, run.layout, run.config.colour
    # The rig as optimised: moved into the frame, then to the prior's camera distance.
    cameras = colour_cameras(prior, config.view_azimuths, run.views.rig)
    progress = ColourProgress(len(cameras), float(run.final_loss), on_progress, cancel)
    views = run.decode_views(cameras, on_batch=progress)
    lighting = light_to_divide_out(prior, config.delight)
    tolerance = _depth_tolerance(cameras, prior.metadata.image_size)
    texture = painted_texture(layout, views, config, lighting, tolerance, prior.metadata.scene_bound, progress)
    cancel.raise_if_cancelled()
    colour_error = view_fidelity(layout.vertices, layout.faces, layout.uvs, texture, views, lighting=lighting)
    # Lit as the prior's views were; unlit when the texture carries that lighting already.
    rgb, _ = render_textured(layout.vertices, layout.faces, layout.uvs, texture, cameras[0], 128, 128,
                             shading=lighting, ssaa=2)
    preview = np.round(rgb * 255).astype(np.uint8)
    if on_progress is not None:
        on_progress(Progress("colour", progress.total, progress.total, progress.final_loss, preview))
    return texture, colour_error, preview


def paint(mesh: MeshInput, prompt: str, prior: Prior, config: PaintConfig | None = None,
          on_progress: ProgressCallback | None = None, cancel: CancelToken | None = None,
          rig: Sequence[Camera] = ()) -> PaintResult:
    """Texture ``mesh`` from ``prompt``; the geometry is kept. Deterministic for a given seed on the CPU.

    Args:
        mesh: the mesh in the user's coordinates (Blender axes); its UVs are kept when it has them
            (inside [0, 1]), otherwise xatlas unwraps it.
        prompt: what it should look like, e.g. "a red house".
        prior: the 2D diffusion prior (``load_prior()``).
        config: the settings; the "standard" preset when None.
        on_progress: called every step ("optimise") and per colour-stage view ("colour").
        cancel: set from any thread to stop within one step.
        rig: cameras in the mesh's coordinates that are always among the optimised and the decoded
            views. They move into the prior's frame with the mesh, and the view sampler slides them
            along their line of sight to the prior's camera distance (``cameras.fit_rig``).

    Raises:
        MeshError: a mesh that is not usable (the message says why in one line).
    """
    config = config or PaintConfig()
    check_prompt(prompt, prior, config)
    cancel = cancel_token(cancel)
    mesh = validate_mesh(mesh.vertices, mesh.faces, mesh.uvs)

    started = time.perf_counter()
    normalisation = frame_normalisation(mesh.vertices, mesh.faces, config.frame_half_extent,
                                        max_rms_radius=config.frame_half_extent)
    layout = uv_layout(mesh, normalisation.to_frame(mesh.vertices), config)
    timings = {"uv_s": time.perf_counter() - started}
    cancel.raise_if_cancelled()

    started = time.perf_counter()
    run = LatentPaint(layout, prompt, prior, config, seeded_generator(config.seed),
                      [normalisation.camera_to_frame(camera) for camera in rig])
    timings["views_s"] = time.perf_counter() - started
    started = time.perf_counter()
    run_steps(run.step, config.steps, prior, on_progress, cancel, config.preview_every)
    timings["optimise_s"] = time.perf_counter() - started

    started = time.perf_counter()
    texture, colour_error, preview = colour_stage(run, on_progress, cancel)
    timings["colour_s"] = time.perf_counter() - started
    out = TexturedMesh(mesh.vertices[layout.source_vertex].astype(np.float32), layout.faces.astype(np.int32),
                       layout.uvs.astype(np.float32), texture)
    log.info("painted %r: %d vertices, %d faces, colour error %.3f, %s", prompt, len(out.vertices),
             len(out.faces), colour_error, {k: round(v, 2) for k, v in timings.items()})
    return PaintResult(out, preview, timings, colour_error, float(run.final_loss), layout.source_vertex)
