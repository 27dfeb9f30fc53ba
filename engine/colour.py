"""The colour stage: the exported texture is real RGB, not latents.

Rendered latent views are decoded with the prior's VAE, then every texel of the mesh takes the
visibility- and view-angle-weighted mean of the decoded pixels it projects to. That mean is the
least-squares fit of one colour per texel to all views. Texels no view sees, or sees only at
grazing angles, take the colour of the nearest texel that was seen well.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from scipy import ndimage
from scipy.ndimage import binary_dilation, binary_erosion
from scipy.spatial import cKDTree
from skimage.filters import apply_hysteresis_threshold

from .cameras import Camera, pixel_indices, project
from .config import TEXTURE_SIZE_RANGE, check_bool, check_int, check_number
from .field import EnvironmentBackground, VoxelField
from .prior import Prior
from .raster import Lighting, rasterize, render_textured, sample_pixels
from .refine import RefineConfig
from .renderer import render

MAX_FILL_SOURCES = 20_000
# A white object's lit faces come within 0.1 of a white background, yet the VAE's background noise
# stays under 0.01 away from the object: faint pixels count as object when they touch clear ones.
FAINT_FOREGROUND = 0.3
SQUARE = np.ones((3, 3), dtype=bool)  # pixel neighbourhoods: diagonal neighbours count, bilinear taps reach them


@dataclass(frozen=True)
class FlattenConfig:
    """An albedo texture's noise flattened on the surface (``flattened``): cells across the scene box,
    diffusion passes and the colour difference that still counts as the same colour. 0 passes skip it."""

    cells: int = 64
    iterations: int = 200
    sigma: float = 0.1

    def __post_init__(self) -> None:
        check_int("flatten.cells", self.cells, 4, 4096)
        check_int("flatten.iterations", self.iterations, 0, 1000)
        check_number("flatten.sigma", self.sigma, 0, 10, low_open=True)

    def apply(self, points: np.ndarray, colours: np.ndarray, bound: float) -> np.ndarray:
        """``colours`` (N, 3) of surface ``points`` (N, 3) in a scene box of half-size ``bound``, flattened."""
        if self.iterations == 0:
            return colours
        return flattened(points, colours, 2 * bound / self.cells, self.iterations, self.sigma)


@dataclass(frozen=True)
class ColourConfig:
    """The colour stage of a field task: which views are decoded, and the texture baked from them."""

    view_azimuths: int = 8  # per ring, plus the rig
    view_rings: int = 4  # the surface's hull needs high views (a torus's hole) as well as low ones
    refine: RefineConfig = RefineConfig(strength=0.3)
    # Colour difference from a decoded view's background that counts as object: the pixels that may
    # colour the surface, and the masks the surface stage follows.
    foreground_threshold: float = 0.1
    texture_size: int = 1024
    # Albedo texture: the prior's light divided out whenever its metadata knows it (None or True);
    # False keeps the shading the prior paints.
    delight: bool | None = None
    # Texels whose summed view weight is under this share of the median are coloured like the
    # nearest well-seen texel (``backproject``): grazing views blend in the background.
    min_confidence: float = 0.5
    flatten: FlattenConfig = FlattenConfig()

    def __post_init__(self) -> None:
        check_int("colour.view_azimuths", self.view_azimuths, 1, 64)
        check_int("colour.view_rings", self.view_rings, 1, 16)
        check_number("colour.foreground_threshold", self.foreground_threshold, 0, 1)
        check_int("colour.texture_size", self.texture_size, *TEXTURE_SIZE_RANGE)
        check_bool("colour.delight", self.delight, allow_none=True)
        check_number("colour.min_confidence", self.min_confidence, 0, 1)


@dataclass
class DecodedView:
    camera: Camera
    image: np.ndarray  # (H, W, 3) float in [0, 1], the VAE's decoding of the rendered latents
    opacity: np.ndarray  # (H, W), the field's accumulated alpha, upsampled to the image size


@torch.no_grad()
def decode_views(prior: Prior, field: VoxelField, background: EnvironmentBackground, cameras: list[Camera],
                 samples_per_ray: int, batch_size: int = 8,
                 on_batch: Callable[[], None] = lambda: None,
                 refine: Callable[[torch.Tensor, list[Camera]], torch.Tensor] | None = None) -> list[DecodedView]:
    """``on_batch`` runs before each batch; it may raise to stop (cancellation). ``refine`` maps a
    batch of rendered latents (and their cameras) to the latents that are decoded."""
    size, image_size = prior.metadata.latent_size, prior.metadata.image_size
    views = []
    for start in range(0, len(cameras), batch_size):
        on_batch()
        chunk = cameras[start:start + batch_size]
        renders = [render(field, cam, size, size, samples_per_ray, background) for cam in chunk]
        latents = torch.stack([r.features for r in renders])
        images = prior.decode(refine(latents, chunk) if refine is not None else latents)
        opacity = torch.nn.functional.interpolate(torch.stack([r.opacity for r in renders])[:, None],
                                                  size=(image_size, image_size), mode="bilinear")
        for cam, image, alpha in zip(chunk, images, opacity):
            views.append(DecodedView(cam, image.permute(1, 2, 0).cpu().numpy(), alpha[0].cpu().numpy()))
    return views


def border_colour(image: np.ndarray) -> np.ndarray:
    """The median colour of an image's outermost pixels: the background, in a view that frames the
    object in its middle as the prior's training images do."""
    ring = np.concatenate([image[0], image[-1], image[1:-1, 0], image[1:-1, -1]])
    return np.median(ring, axis=0)


def _difference_from_border(view: DecodedView) -> np.ndarray:
    return np.abs(view.image - border_colour(view.image)).max(axis=-1)


def foreground_mask(view: DecodedView, threshold: float, grow: int = 0) -> np.ndarray:
    """Pixels whose colour differs from the view's background (its border colour) by more than
    ``threshold`` in some channel, grown by ``grow`` pixels (shrunk when negative): the pixels that
    may lend the surface their colour. The decoded view's own border is the reference, not the
    learned background decoded alone: refinement redraws the background too."""
    return _grown(_difference_from_border(view) > threshold, grow)


def silhouette_mask(view: DecodedView, threshold: float, grow: int = 0) -> np.ndarray:
    """The object's whole outline in a view: ``foreground_mask``'s pixels and, connected to them,
    pixels that differ from the background by more than ``FAINT_FOREGROUND`` of ``threshold``
    (hysteresis), such as a white object's lit faces on a white background; grown like
    ``foreground_mask``. Faint pixels beside the background around the object are left out: they
    are the VAE's halo, which would widen every outline by a pixel. The surface follows these
    masks; colour comes from the clearer pixels only."""
    difference = _difference_from_border(view)
    faint = FAINT_FOREGROUND * threshold
    mask = apply_hysteresis_threshold(difference, faint, threshold)
    mask &= (difference > threshold) | ~binary_dilation(_around_the_object(difference <= faint), SQUARE)
    return _grown(mask, grow)


def _around_the_object(background: np.ndarray) -> np.ndarray:
    """The ``background`` pixels connected to the image's border (not a hole inside the object)."""
    labels, _ = ndimage.label(background)
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    return np.isin(labels, edge[edge > 0])


def _grown(mask: np.ndarray, grow: int) -> np.ndarray:
    if grow > 0:
        return binary_dilation(mask, SQUARE, iterations=grow)
    return binary_erosion(mask, SQUARE, iterations=-grow) if grow < 0 else mask


def inside_colours(view: DecodedView, edge_px: int) -> DecodedView:
    """The view with every pixel within ``edge_px`` of the silhouette known from its ``opacity``
    (and the background) given the colour of the nearest pixel well inside the object.

    For views of a known mesh, whose coverage is exact: back-projection then never samples the
    VAE's blend of object and background at silhouettes. Views of a field, whose outline is only
    known from the decoded colours, skip such pixels instead (``backproject``'s threshold)."""
    inside = view.opacity > 0.999
    if edge_px > 0:
        inside = ndimage.binary_erosion(inside, iterations=edge_px)
    if not inside.any():
        return view
    _, (rows, cols) = ndimage.distance_transform_edt(~inside, return_indices=True)
    return DecodedView(view.camera, view.image[rows, cols], view.opacity)


def backproject(points: np.ndarray, normals: np.ndarray, vertices: np.ndarray, faces: np.ndarray,
                views: list[DecodedView], depth_tolerance: float, angle_power: float = 2.0,
                on_view: Callable[[], None] = lambda: None, foreground_threshold: float | None = None,
                min_confidence: float = 0.0):
    """Weighted mean colour (N, 3) over the views that see each surface point, and a seen mask;
    unseen points are black until ``filled``.

    Args:
        points, normals: (N, 3) surface points and their unit outward normals.
        vertices, faces: the mesh, for occlusion.
        views: the decoded views.
        depth_tolerance: how far behind the nearest surface a point still counts as visible.
        angle_power: a view's weight is the cosine of its angle to the normal to this power.
        on_view: runs before each view; it may raise to stop (cancellation).
        foreground_threshold: when given, a view lends no colour where it shows background (a point
            seen at a grazing angle, or one the mesh has and the view has not).
        min_confidence: a point counts as seen when its summed view weight is at least this share of
            the median over the points any view sees. Points seen only at grazing angles get the
            views' blend of object and background, and dividing out the light, weak on a side that
            faces away from it, amplifies their error; ``filled`` gives them a confident colour.
    """
    total = np.zeros((len(points), 3))
    weight_sum = np.zeros(len(points))
    # n.(c - p) and |c - p| from dot products with the camera position c: no (N, 3) temporaries per view
    normal_dot_point, point_norm_squared = (normals * points).sum(axis=1), (points * points).sum(axis=1)
    for view in views:
        on_view()
        camera = view.camera.position
        # Only the points facing the camera can lend it weight: about half of them, and the rest
        # need no projecting.
        toward_camera = normals @ camera - normal_dot_point
        toward = np.flatnonzero(toward_camera > 0)
        height, width = view.image.shape[:2]
        zbuffer = rasterize(vertices, faces, view.camera, width, height).depth
        xy, depth = project(points[toward], view.camera, width, height)
        rows, cols, inside = pixel_indices(xy, depth, width, height)
        visible = np.zeros(len(toward), dtype=bool)
        visible[inside] = np.abs(zbuffer[rows[inside], cols[inside]] - depth[inside]) < depth_tolerance
        if foreground_threshold is not None:
            # shrunk by a pixel: bilinear taps at the silhouette's edge mix in the background
            object_pixel = foreground_mask(view, foreground_threshold, grow=-1)
            visible[inside] &= object_pixel[rows[inside], cols[inside]]
        lends = toward[visible]
        distance = np.sqrt(camera @ camera - 2 * points[lends] @ camera + point_norm_squared[lends])
        weight = np.clip(toward_camera[lends] / distance, 0, 1)**angle_power
        total[lends] += weight[:, None] * sample_pixels(view.image, xy[visible])
        weight_sum[lends] += weight
    seen = weight_sum > 1e-6
    if min_confidence > 0 and seen.any():
        seen &= weight_sum >= min_confidence * np.median(weight_sum[seen])
    colours = np.zeros((len(points), 3))
    colours[seen] = total[seen] / weight_sum[seen, None]
    return np.clip(colours, 0, 1), seen


def filled(points: np.ndarray, colours: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """``colours`` (N, 3) of surface ``points`` (N, 3) with every point not ``seen`` given the colour
    of the nearest of the ``fill_sources``. Fill albedo rather than shaded colour: an unseen underside
    faces away from the light its neighbours were seen under."""
    if not seen.any() or seen.all():
        return colours
    sources = fill_sources(seen)
    _, nearest = cKDTree(points[sources]).query(points[~seen])
    colours = colours.copy()
    colours[~seen] = colours[sources][nearest]
    return colours


def fill_sources(seen: np.ndarray) -> np.ndarray:
    """Indices of the seen points that colour the unseen ones: at most about MAX_FILL_SOURCES of them,
    as nearest-neighbour queries from far-away unseen points (a whole underside) cost minutes against
    every seen texel, and a fill colour needs no texel precision. Points are kept by their own index,
    so one point more or less seen (a pixel at the foreground threshold) changes one source, not
    every source after it."""
    stride = max(1, len(seen) // MAX_FILL_SOURCES)
    sources = np.flatnonzero(seen & (np.arange(len(seen)) % stride == 0))
    return sources if len(sources) else np.flatnonzero(seen)


def flattened(points: np.ndarray, colours: np.ndarray, cell: float, iterations: int, sigma: float) -> np.ndarray:
    """Colours (N, 3) of surface points (N, 3) with their noise flattened and their edges kept.

    Texels are noisy where few views agree, and an object of one colour comes out blotchy. The
    points are grouped into cubic cells of side ``cell``; the cells' mean colours diffuse into their
    neighbours' ``iterations`` times, each neighbour weighted by how alike the two colours are
    (a bilateral filter on the surface: ``sigma`` in the largest channel). Each point then takes the
    smoothed colour, among its four nearest cells, closest to its own, so a door's edge stays
    where the texels put it rather than on the cell grid."""
    cluster, counts = _cells(points, cell)
    centres, means = (np.stack([np.bincount(cluster, values[:, axis], len(counts)) for axis in range(3)], axis=1)
                      / counts[:, None] for values in (points, colours))
    tree = cKDTree(centres)
    neighbours = min(9, len(centres))
    distance, index = tree.query(centres, k=neighbours, distance_upper_bound=2.0 * cell)
    # The diffusion runs in float32 torch: within 2e-4 of numpy's float64 after 200 passes (under
    # one 8-bit texel level) and about 3x faster.
    valid = torch.from_numpy(np.isfinite(distance))
    index = torch.from_numpy(np.where(np.isfinite(distance), index, 0))
    smoothed = torch.from_numpy(means.astype(np.float32))
    for _ in range(iterations):
        near = smoothed[index]
        difference = (near - smoothed[:, None]).abs().amax(dim=-1)
        weight = torch.exp(-((difference / sigma) ** 2)) * valid
        smoothed = (weight[..., None] * near).sum(dim=1) / weight.sum(dim=1, keepdim=True)
    means = smoothed.numpy().astype(np.float64)
    _, nearest = tree.query(points, k=min(4, len(centres)))
    nearest = nearest.reshape(len(points), -1)
    candidates = means[nearest]
    choice = np.abs(candidates - colours[:, None]).max(axis=-1).argmin(axis=1)
    return candidates[np.arange(len(points)), choice]


def _cells(points: np.ndarray, cell: float) -> tuple[np.ndarray, np.ndarray]:
    """The cubic cell of side ``cell`` each point (N, 3) falls in, numbered in lexicographic order of
    the cells' integer coordinates, and the points per cell."""
    keys = np.floor(points / cell).astype(np.int64)
    keys -= keys.min(axis=0)
    extent = keys.max(axis=0) + 1
    # one integer per cell, ordered as the rows of (x, y, z) keys are: a 1-D unique is far cheaper
    _, cluster, counts = np.unique((keys[:, 0] * extent[1] + keys[:, 1]) * extent[2] + keys[:, 2],
                                   return_inverse=True, return_counts=True)
    return cluster.reshape(-1), counts


def light_to_divide_out(prior: Prior, delight: bool | None) -> Lighting | None:
    """The light a texture is divided by (a colour stage's ``delight``): the prior's known light
    unless ``delight`` is False; None when there is nothing to divide out."""
    return prior.metadata.lighting if delight is not False else None


def albedo(colours: np.ndarray, normals: np.ndarray, lighting: Lighting | None) -> np.ndarray:
    """Colours (N, 3) seen under ``lighting`` with the light divided out, for unit ``normals`` (N, 3)
    that face the viewers; as they are without a lighting. Shadowed sides come out as bright as lit
    ones, so the texture is what a renderer should light.

    Where the division overshoots 1 (a saturated colour on a dim side, or the decoder's error),
    the whole colour is scaled down by its largest channel rather than clipped per channel:
    clipping flattens orange (1, 0.55, 0) seen at 0.6 shade into yellow."""
    if lighting is None:
        return colours
    unlit = colours / lighting.shade(normals)[:, None]
    return unlit / np.maximum(unlit.max(axis=-1, keepdims=True), 1.0)


def view_fidelity(vertices: np.ndarray, faces: np.ndarray, uvs: np.ndarray, texture: np.ndarray,
                  views: list[DecodedView], foreground_threshold: float | None = None,
                  lighting: Lighting | None = None) -> float:
    """Mean absolute RGB error between renders of the textured mesh and the decoded views, over
    pixels inside both silhouettes: the check that the texture says what the prior saw. With a
    ``foreground_threshold``, only over the pixels back-projection could take colour from; with a
    ``lighting`` (an albedo texture), the renders are lit by it, as the views were."""
    errors = []
    for view in views:
        height, width = view.image.shape[:2]
        rgb, alpha = render_textured(vertices, faces, uvs, texture, view.camera, width, height, shading=lighting)
        both = (alpha > 0.99) & (view.opacity > 0.9)
        if foreground_threshold is not None:
            both &= foreground_mask(view, foreground_threshold, grow=-1)
        if both.any():
            errors.append(np.abs(rgb[both] - view.image[both]).mean())
    return float(np.mean(errors)) if errors else float("nan")
