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
from typing import Callable, Sequence

import numpy as np
import torch
import trimesh
from scipy import ndimage

from ..cameras import Camera, ViewSampler
from ..colour import DecodedView, albedo, backproject, view_fidelity
from ..export import TexturedMesh, bake_texture, unwrap
from ..guidance import GuidanceConfig, ScoreDistillation, surrogate_loss
from ..mesh_render import ViewPool, fragments_for, render_latent
from ..meshes import MeshError, MeshInput, Normalisation, validate_mesh
from ..prior import Prior
from ..progress import CancelToken, Progress, ProgressCallback
from ..prompts import ViewPrompts
from ..raster import render_textured
from .generate import (check_prompt, colour_cameras, config_from_preset, latent_preview, plain_background,
                       seeded_generator)

log = logging.getLogger(__name__)

# xatlas leaves 4 texels between charts at the resolution it packs for (export.ATLAS_PADDING).
# Packing for twice the latent texture's size makes that gap two latent texels, so bilinear
# lookups at a chart's border never reach into a neighbouring chart of unrelated surface.
ATLAS_PACK_PER_LATENT_TEXEL = 2
# UVs this far outside [0, 1] are treated as rounding, anything beyond as tiling (unsupported).
UV_TOLERANCE = 1e-4


# Guidance for painting, measured on the embedded prior (bench/paint_quality.py).  DreamFusion's
# scale 100 wrecks a latent texture there: x0 predictions from house renders leave the image
# manifold from scale ~15 up, and SDS started from a texture fitted to the true house drifts to
# white blobs and dark rims at 20 and at 100, while it stays a house at 3-7.5.  Within that range
# the house's door is the trade-off: at 7.5 the front gets a strong door but 2 seeds of 5 also
# grow one on the back (Janus), at 5 with 900 steps all 5 seeds had a door in front only.  A large
# prior may want more (pass a GuidanceConfig).  Annealing the top of the t-range to 0.4 spends the
# later steps on mid-noise levels, which is where the door forms.
PAINT_GUIDANCE = dict(guidance_scale=5.0, t_max_final=0.4)


@dataclass
class PaintConfig:
    steps: int = 900
    seed: int = 0
    negative_prompt: str = ""
    view_dependent_prompts: bool = True
    guidance: GuidanceConfig = field(default_factory=lambda: GuidanceConfig(**PAINT_GUIDANCE))
    # latent texture and its optimisation
    latent_texture_size: int = 64  # about one texel per supersampled pixel of a 16x16 latent render
    learning_rate: float = 0.03  # Adam on the latent texture (latents span about +-2)
    background_learning_rate: float = 0.01
    supersample: int = 4  # raster samples per latent pixel side, box-filtered
    view_pool: int = 96  # random views rasterised once and reused
    texture_init_rgb: tuple[float, float, float] = (0.5, 0.5, 0.5)
    init_views: int = 24  # encoded renders of the plain mesh the latent texture starts fitted to
    init_iterations: int = 300
    frame_half_extent: float = 0.45  # the frame's box half-extent and RMS surface radius (frame_normalisation)
    # colour stage and export
    colour_view_azimuths: int = 8  # per ring; two rings, so 16 decoded views plus the rig
    colour_angle_power: float = 2.0
    # Decoded pixels this close to a view's silhouette mix in the background (VAE blur); they are
    # replaced by the nearest pixel further inside before back-projection.
    colour_edge_px: int = 2
    # Divide the prior's known light (PriorMetadata.lighting) out of the baked colours, for an albedo
    # texture as text-to-3D makes. Off by default: the embedded prior paints the house's door as a
    # dark patch that reads as a door only in its shading (bench/paint_quality: 52 door pixels in
    # front with the shading kept, 16 without).
    delight: bool = False
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
        if self.init_views < 1 or self.init_iterations < 0:
            raise ValueError("init_views must be at least 1 and init_iterations non-negative")
        if len(self.texture_init_rgb) != 3 or not all(0 <= c <= 1 for c in self.texture_init_rgb):
            raise ValueError("texture_init_rgb must be three numbers in [0, 1]")
        if not (math.isfinite(self.frame_half_extent) and self.frame_half_extent > 0):
            raise ValueError(f"frame_half_extent must be a positive number, got {self.frame_half_extent}")
        if self.colour_view_azimuths < 1:
            raise ValueError(f"colour_view_azimuths must be at least 1, got {self.colour_view_azimuths}")
        if not 0 <= self.colour_edge_px <= 16:
            raise ValueError(f"colour_edge_px must lie in [0, 16], got {self.colour_edge_px}")
        if not (math.isfinite(self.colour_angle_power) and self.colour_angle_power >= 0):
            raise ValueError("colour_angle_power must be a non-negative number")
        if self.preview_every < 0:
            raise ValueError("preview_every must be 0 (automatic) or positive")


# Named trade-offs between time and quality; "standard" is PaintConfig's defaults, tuned on the
# embedded prior (a small prior over-saturates at SDS's guidance 100). "sd" is the quality preset for
# a Stable Diffusion checkpoint, from Latent-Paint (guidance 100, 5k steps, a 128x128 latent
# texture); like text-to-3D's, it has not been run here.
PRESETS = {
    "draft": dict(steps=300, texture_size=512, colour_view_azimuths=4, view_pool=48),
    "standard": {},
    "high": dict(steps=1500, texture_size=2048, colour_view_azimuths=12),
    # The view pool stays at 96: at 64x64 latents each pooled view holds 16x the fragments.
    "sd": dict(steps=5000, guidance=GuidanceConfig(guidance_scale=100.0), latent_texture_size=128, texture_size=2048),
}


def preset_config(preset: str = "standard", **overrides) -> PaintConfig:
    return config_from_preset(PaintConfig, PRESETS, preset, overrides)


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
    return UVLayout(frame_vertices[source], faces, uvs.astype(np.float64), source)


def surface_rms_radius(vertices: np.ndarray, faces: np.ndarray, centre: np.ndarray) -> float:
    """Root-mean-square distance of the surface from ``centre``, by area (exact per triangle)."""
    a, b, c = (vertices[faces[:, k]] - centre for k in range(3))
    area = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)
    second_moment = (np.einsum("ij,ij->i", a, a) + np.einsum("ij,ij->i", b, b) + np.einsum("ij,ij->i", c, c)
                     + np.einsum("ij,ij->i", a, b) + np.einsum("ij,ij->i", b, c) + np.einsum("ij,ij->i", c, a)) / 6
    total = area.sum()
    return float(np.sqrt((second_moment * area).sum() / total)) if total > 0 else 0.0


def frame_normalisation(vertices: np.ndarray, faces: np.ndarray, half_extent: float) -> Normalisation:
    """The user -> prior frame map: bounding box centred, and scaled so that both the largest
    half-extent and the RMS surface radius are at most ``half_extent``.

    The box alone misjudges how big a shape looks: Primitive World's objects have box half-extents
    from 0.35 (cube) to 0.45 (sphere, house), so fitting every box to 0.45 shows the prior a cube
    29 % too large, and it paints the excess white to carve it back.  Their RMS surface radii all
    lie in 0.42-0.45 (the flat torus 0.36), so with both bounds every contract shape lands within
    7 % of its own size.  Only the vertices that faces use count.
    """
    used = np.unique(faces)
    box = Normalisation.fit(vertices[used], half_extent)
    spread = surface_rms_radius(vertices, faces, box.centre) / half_extent
    return Normalisation(box.centre, max(box.scale, spread))


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

    def __init__(self, layout: UVLayout, prompt: str, prior: Prior, config: PaintConfig,
                 generator: torch.Generator, rig: Sequence[Camera] = ()):
        meta = prior.metadata
        self.prior, self.config, self.generator, self.layout = prior, config, generator, layout
        size = config.latent_texture_size
        start = _encoded_colour(prior, config.texture_init_rgb).view(1, -1, 1, 1)
        self.texture = torch.nn.Parameter(start.expand(1, prior.latent_channels, size, size).clone())
        self.background = plain_background(prior)
        self.views = ViewPool(ViewSampler(meta.camera, rig), layout.vertices, layout.faces, layout.uvs,
                              meta.latent_size, config.supersample, config.view_pool, generator, prior.device)
        self._fit_plain_renders()
        self.prompts = ViewPrompts(prior, prompt, config.negative_prompt, config.view_dependent_prompts)
        self.guidance = ScoreDistillation(prior, config.guidance)
        self.optimiser = torch.optim.Adam(
            [{"params": [self.texture]},
             {"params": [self.background.image], "lr": config.background_learning_rate}],
            lr=config.learning_rate, betas=(0.9, 0.99))
        self.final_loss = float("nan")

    def _fit_plain_renders(self) -> None:
        """Start from the latents of the mesh itself, shaded and plain grey.

        A VAE's latents are not per-pixel colours: the mean latent of a plain grey image decodes to
        white inside an object, and a constant latent field lies off the latents the prior knows.
        Fitting the texture to encoded renders of the mesh (contract-style shading, a mid grey that
        is about equally far from every colour) gives a start that decodes to the shape the prior
        expects, so the score only has to change colours.  The background is left alone.
        """
        config, prior = self.config, self.prior
        if config.init_iterations == 0:
            return
        layout, image_size = self.layout, prior.metadata.image_size
        plain = np.ones((1, 1, 3), dtype=np.float32) * np.asarray(config.texture_init_rgb, dtype=np.float32)
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

    def step(self, step: int) -> tuple[torch.Tensor, float]:
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
            chunk = fragments_for(layout.vertices, layout.faces, layout.uvs, batch, size, config.supersample,
                                  self.prior.device)
            latents = torch.stack([render_latent(self.texture, f, self.background) for f in chunk])
            images = self.prior.decode(latents)
            for fragments, image in zip(chunk, images):
                views.append(DecodedView(fragments.camera, image.permute(1, 2, 0).cpu().numpy(),
                                         fragments.opacity(image_size)))
        return views


def _inside_colours(view: DecodedView, edge_px: int) -> DecodedView:
    """The view with every pixel within ``edge_px`` of the silhouette (and the background) given the
    colour of the nearest pixel well inside the object, so back-projection never samples the
    VAE's blend of object and background at silhouettes."""
    inside = view.opacity > 0.999
    if edge_px > 0:
        inside = ndimage.binary_erosion(inside, iterations=edge_px)
    if not inside.any():
        return view
    _, (rows, cols) = ndimage.distance_transform_edt(~inside, return_indices=True)
    return DecodedView(view.camera, view.image[rows, cols], view.opacity)


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
    decoded views, so the prop looks right from the shot.  They move into the prior's frame with
    the mesh, and the view sampler then slides them along their line of sight to the prior's
    camera distance (``cameras.fit_rig``).  Deterministic for a given seed on the CPU.
    """
    config = config or PaintConfig()
    check_prompt(prompt)
    mesh = validate_mesh(mesh.vertices, mesh.faces, mesh.uvs)
    timings: dict[str, float] = {}

    def check_cancel() -> None:
        if cancel is not None:
            cancel.raise_if_cancelled()

    started = time.perf_counter()
    normalisation = frame_normalisation(mesh.vertices, mesh.faces, config.frame_half_extent)
    rig_frame = [normalisation.camera_to_frame(camera) for camera in rig]
    layout = uv_layout(mesh, normalisation.to_frame(mesh.vertices), config)
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
            preview = latent_preview(prior, latents) if last or step % preview_every == 0 else None
            on_progress(Progress("optimise", step + 1, config.steps, loss, preview))
    timings["optimise_s"] = time.perf_counter() - started

    started = time.perf_counter()
    # The rig as optimised: moved into the frame, then to the prior's camera distance.
    cameras = colour_cameras(prior, config.colour_view_azimuths, run.views.rig)
    total = 2 * len(cameras)  # decoding, then back-projection, one count per view
    done = 0

    def colour_step(count: int) -> None:
        nonlocal done
        check_cancel()
        if on_progress is not None:
            on_progress(Progress("colour", done, total, run.final_loss))
        done += count

    views = run.decode_views(cameras, on_batch=colour_step)
    tolerance = _depth_tolerance(cameras, prior.metadata.image_size)
    sign, closed = _normal_orientation(layout.vertices, layout.faces)

    cleaned = [_inside_colours(view, config.colour_edge_px) for view in views]
    lighting = prior.metadata.lighting if config.delight else None

    def colour_fn(points: np.ndarray, normals: np.ndarray) -> np.ndarray:
        normals = sign * normals  # outward, where the winding says so
        colours, seen = backproject(points, normals, layout.vertices, layout.faces, cleaned, tolerance,
                                    config.colour_angle_power, on_view=lambda: colour_step(1))
        if not closed and not seen.all():
            # Open or inconsistently wound meshes: a face no view sees from its normal's side may be
            # seen from the other (occlusion is still checked).  Closed meshes skip this: their
            # unseen texels (the bottom) would only pick up neighbouring faces' edge pixels.
            hidden = ~seen
            back, seen_back = backproject(points[hidden], -normals[hidden], layout.vertices,
                                          layout.faces, cleaned, tolerance, config.colour_angle_power,
                                          on_view=check_cancel)
            fill = np.flatnonzero(hidden)[seen_back]
            colours[fill] = back[seen_back]
            normals[fill] *= -1  # the side the colour was seen from
            log.info("painted %d of %d unseen texels from their back side", len(fill), int(hidden.sum()))
        return albedo(colours, normals, lighting)

    texture = bake_texture(layout.vertices, layout.faces, layout.uvs, colour_fn, size=config.texture_size)
    check_cancel()
    colour_error = view_fidelity(layout.vertices, layout.faces, layout.uvs, texture, views, lighting=lighting)
    out = TexturedMesh(
        vertices=mesh.vertices[layout.source_vertex].astype(np.float32),
        faces=layout.faces.astype(np.int32),
        uvs=layout.uvs.astype(np.float32),
        texture=texture,
    )
    # Lit as the prior's views were; unlit when the texture carries that lighting already.
    rgb, _ = render_textured(layout.vertices, layout.faces, layout.uvs, texture, cameras[0], 128, 128,
                             shading=lighting, ssaa=2)
    preview = np.round(rgb * 255).astype(np.uint8)
    timings["colour_s"] = time.perf_counter() - started
    if on_progress is not None:
        on_progress(Progress("colour", total, total, run.final_loss, preview))
    log.info("painted %r: %d vertices, %d faces, colour error %.3f, %s", prompt, len(out.vertices),
             len(out.faces), colour_error, {k: round(v, 2) for k, v in timings.items()})
    return PaintResult(out, preview, timings, colour_error, run.final_loss, layout.source_vertex)
