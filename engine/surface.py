"""The surface stage: the optimised field becomes a triangle mesh, shaped by the decoded views.

Two methods:

* ``hull`` (default): the visual hull of the decoded views' object masks on a fine lattice. The
  prior redraws each rendered view as an image it knows (SDEdit), and those outlines are sharper
  and truer than the density score distillation leaves (a torus gets its hole, a cone its point).
* ``density``: the field's own density, shaped by the views: outline fit, silhouette carving,
  smoothing and the iso-level whose silhouettes match the views (engine.carve).

Either way marching cubes (engine.export) follows, then Taubin smoothing of the mesh, which takes
the lattice's staircase out of the normals, and optionally bilateral normal filtering, which
flattens dented faces and keeps creases (``normal_filtered``; Sketch-Shape's blockouts use it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import trimesh
from scipy import sparse
from scipy.ndimage import binary_opening, gaussian_filter

from .carve import background_votes, carve, fit_silhouettes, matching_level, silhouette_iou
from .colour import DecodedView, silhouette_mask
from .config import MESH_RESOLUTION_RANGE, check_bool, check_choice, check_int, check_number
from .export import extract_mesh
from .field import VoxelField
from .occupancy import lattice

log = logging.getLogger(__name__)

DEFAULT_LEVEL_CHOICES = (0.03, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0)
SURFACE_METHODS = ("hull", "density")
MIN_HULL_AGREEMENT = 0.5  # below this mean silhouette IoU the hull is not trusted
MAX_HULL_HANDLES = 8  # nor a hull with more tunnels than any prop has


@dataclass(frozen=True)
class SurfaceConfig:
    """How the field and its decoded views become a surface."""

    method: str = "hull"  # "hull": the views' visual hull; "density": the field's density (see the module)
    # hull: a lattice point inside the object may project onto background in this many views (a
    # view the prior redrew a little thinner must not cut the shape).
    hull_tolerance: int = 1
    # hull: a morphological opening of this many lattice voxels before marching cubes removes struts
    # and specks thinner than twice that (DreamGaussian-style cleanup); 0 skips it.
    hull_opening: int = 1
    silhouette_fit_steps: int = 200  # density fitted to the decoded views' outlines; 0 skips it
    # A lattice point at least this many decoded views show as background is emptied; 0 skips carving.
    carve_votes: int = 2
    # Carving cuts only outside each view's outline, never through background the object encloses
    # (a hole, or as often a white object's lit face on a white ground).
    carve_outline_only: bool = False
    # Pixels the views' object masks grow by before they carve: 1 keeps carving off the outline's
    # edge, 0 trims up to it.
    carve_margin_px: int = 1
    mesh_resolution: int = 64  # the lattice marching cubes runs on; xatlas time grows with the face count
    iso_level: float = 1.0  # in units of the density that makes one field voxel half opaque
    # Multiples of iso_level tried; the one whose silhouettes best match the decoded views wins.
    # Empty: iso_level as it is.
    iso_level_choices: tuple[float, ...] = DEFAULT_LEVEL_CHOICES
    # Gaussian blur of the density in field voxels (the hull's occupancy: in lattice voxels): score
    # distillation leaves voxel-scale noise that would otherwise become a bumpy surface.
    smoothing: float = 1.0
    taubin_iterations: int = 10  # mesh smoothing after marching cubes; 0 skips it
    # Feature-preserving smoothing after Taubin's (``normal_filtered``): flat faces, sharp creases.
    # Off for text-to-3D, whose hull surfaces are rounded blobs it barely changes (docs/tuning.md).
    normal_filter_iterations: int = 0
    normal_filter_sigma: float = 0.2

    def __post_init__(self) -> None:
        check_choice("surface method", self.method, SURFACE_METHODS)
        check_int("surface.hull_tolerance", self.hull_tolerance, 0, 1000)
        check_int("surface.hull_opening", self.hull_opening, 0, 16)
        check_int("surface.silhouette_fit_steps", self.silhouette_fit_steps, 0, 100_000)
        check_int("surface.carve_votes", self.carve_votes, 0, 1000)
        check_int("surface.carve_margin_px", self.carve_margin_px, 0, 16)
        check_bool("surface.carve_outline_only", self.carve_outline_only)
        check_int("surface.mesh_resolution", self.mesh_resolution, *MESH_RESOLUTION_RANGE)
        check_number("surface.iso_level", self.iso_level, 0, 1e6, low_open=True)
        for factor in self.iso_level_choices:
            check_number("surface.iso_level_choices", factor, 0, 1e6, low_open=True)
        check_number("surface.smoothing", self.smoothing, 0, 100)
        check_int("surface.taubin_iterations", self.taubin_iterations, 0, 1000)
        check_int("surface.normal_filter_iterations", self.normal_filter_iterations, 0, 1000)
        check_number("surface.normal_filter_sigma", self.normal_filter_sigma, 0, 2, low_open=True)


def views_show_object(views: list[DecodedView], foreground_threshold: float) -> bool:
    """Whether the decoded views show an object at all: an untrained prior's would carve everything."""
    return float(np.mean([silhouette_mask(view, foreground_threshold).mean() for view in views])) > 0.01


def field_surface(field: VoxelField, views: list[DecodedView], config: SurfaceConfig, foreground_threshold: float,
                  fit_resolution: int, samples_per_ray: int) -> tuple[np.ndarray, np.ndarray]:
    """The surface (vertices, faces) of the field and its decoded views, by ``config.method``.

    Args:
        field: the optimised field; the density method's outline fit changes its density in place.
        views: decoded colour views; their object masks make the hull, or guide the density.
        config: the surface settings.
        foreground_threshold: colour difference from a view's border that counts as object.
        fit_resolution: the rendered resolution of the density method's outline fit.
        samples_per_ray: the renderer's samples per ray during that fit.
    """
    guided = views_show_object(views, foreground_threshold)
    inside = hull(field.bound, views, config, foreground_threshold) if config.method == "hull" and guided else None
    surface = None
    if inside is not None and hull_agreement(inside, field.bound, views, foreground_threshold) >= MIN_HULL_AGREEMENT:
        surface = hull_surface(inside, field.bound, config.smoothing)
        if handles(*surface) > MAX_HULL_HANDLES:  # a sponge: the views' outlines are noise, not an object
            surface = None
    if surface is None:  # views that show no object (an untrained prior), or disagree: the density decides
        if inside is not None:
            log.info("the decoded views do not agree on a shape; the surface follows the field's density")
        surface = density_surface(field, views, config, foreground_threshold, fit_resolution, samples_per_ray,
                                  guided)
    vertices, faces = surface
    vertices = taubin_smoothed(vertices, faces, config.taubin_iterations)
    return normal_filtered(vertices, faces, config.normal_filter_iterations, config.normal_filter_sigma), faces


def hull(bound: float, views: list[DecodedView], config: SurfaceConfig, foreground_threshold: float) -> np.ndarray:
    """The visual hull (R, R, R) bool of the views' object masks on the ``mesh_resolution`` lattice
    over the box: a point is inside when at most ``hull_tolerance`` views show background there."""
    resolution = config.mesh_resolution
    votes = background_votes(lattice(resolution, bound).reshape(-1, 3), views, foreground_threshold, margin_px=0)
    inside = (votes <= config.hull_tolerance).reshape((resolution,) * 3)
    return binary_opening(inside, iterations=config.hull_opening) if config.hull_opening else inside


def hull_agreement(inside: np.ndarray, bound: float, views: list[DecodedView], foreground_threshold: float) -> float:
    """Mean IoU of the hull's silhouettes with the views' object masks: near 1 when the views show
    one object from all sides, low when they disagree (a random prior's speckle leaves a sponge)."""
    masks = [silhouette_mask(view, foreground_threshold) for view in views]
    return silhouette_iou(inside, bound, views, masks)


def handles(vertices: np.ndarray, faces: np.ndarray) -> int:
    """Tunnels through a closed, connected mesh: its genus, (2 - Euler characteristic) / 2."""
    edges = np.unique(np.sort(faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2), axis=1), axis=0)
    return (2 - (len(vertices) - len(edges) + len(faces))) // 2


def hull_surface(inside: np.ndarray, bound: float, smoothing: float) -> tuple[np.ndarray, np.ndarray]:
    """Marching cubes of the hull's occupancy, blurred by ``smoothing`` lattice voxels."""
    occupancy = inside.astype(np.float32)
    if smoothing > 0:
        occupancy = gaussian_filter(occupancy, smoothing, mode="constant")
    return extract_mesh(occupancy, bound, 0.5)


def taubin_smoothed(vertices: np.ndarray, faces: np.ndarray, iterations: int) -> np.ndarray:
    """Vertices after Taubin's lambda|mu smoothing, a low-pass filter of the surface: ten passes halve
    a noisy sphere's normal error at a cost of about 1.5 % of its radius (the hull errs large)."""
    if iterations == 0:
        return vertices
    mesh = trimesh.Trimesh(vertices, faces, process=False)
    trimesh.smoothing.filter_taubin(mesh, lamb=0.5, nu=-0.53, iterations=iterations)
    return np.asarray(mesh.vertices, dtype=np.float32)


def normal_filtered(vertices: np.ndarray, faces: np.ndarray, iterations: int, sigma: float,
                    vertex_iterations: int = 20) -> np.ndarray:
    """Vertices moved so that smooth stretches of the surface become flat and its creases stay sharp.

    Bilateral normal filtering (after Zheng et al. 2011 and Sun et al. 2007): each face normal
    becomes the area-weighted mean of the normals of the faces that share a vertex with it, each
    weighted by exp(-|n_i - n_j|^2 / (2 sigma^2)), so a dent's normals (a few degrees apart) merge and
    a crease's (tens of degrees apart) do not; ``iterations`` rounds. The vertices then follow the
    filtered normals: each moves towards the planes of its faces through their centroids,
    ``vertex_iterations`` rounds. Taubin smoothing rounds a box's edges; this keeps them.

    Args:
        vertices: (N, 3) mesh vertices.
        faces: (M, 3) triangles.
        iterations: normal filtering rounds; 0 returns ``vertices`` as they are.
        sigma: normal difference (the chord between unit normals) at which a neighbour's weight
            falls to exp(-1/2): 0.2 merges normals up to ~10 degrees apart and keeps creases of ~25
            degrees and more.
        vertex_iterations: rounds of the vertex update.
    """
    if iterations == 0:
        return vertices
    points = np.asarray(vertices, dtype=np.float64).copy()
    faces = np.asarray(faces, dtype=np.int64)
    incidence = sparse.csr_matrix((np.ones(faces.size), (np.repeat(np.arange(len(faces)), 3), faces.ravel())),
                                  shape=(len(faces), len(points)))
    neighbours = (incidence @ incidence.T).tocoo()  # faces sharing a vertex, each face with itself
    rows, cols = neighbours.row, neighbours.col
    surface = trimesh.Trimesh(points, faces, process=False)
    normals, areas = surface.face_normals, surface.area_faces
    for _ in range(iterations):
        weights = areas[cols] * np.exp(-((normals[rows] - normals[cols]) ** 2).sum(axis=1) / (2 * sigma**2))
        mixed = sparse.csr_matrix((weights, (rows, cols)), shape=(len(faces), len(faces))) @ normals
        normals = mixed / np.maximum(np.linalg.norm(mixed, axis=1, keepdims=True), 1e-12)
    corners = faces.ravel()
    per_vertex = np.bincount(corners, minlength=len(points))[:, None]
    corner_normals = np.repeat(normals, 3, axis=0)
    for _ in range(vertex_iterations):
        centroids = np.repeat(points[faces].mean(axis=1), 3, axis=0)
        along = (corner_normals * (centroids - points[corners])).sum(axis=1, keepdims=True) * corner_normals
        step = np.zeros_like(points)
        np.add.at(step, corners, along)
        points += step / np.maximum(per_vertex, 1)
    return points.astype(np.float32)


def density_surface(field: VoxelField, views: list[DecodedView], config: SurfaceConfig, foreground_threshold: float,
                    fit_resolution: int, samples_per_ray: int, guided: bool) -> tuple[np.ndarray, np.ndarray]:
    """The field's density surface, fitted to, carved by and levelled on the views when ``guided``."""
    if config.silhouette_fit_steps > 0 and guided:
        fit_silhouettes(field, views, foreground_threshold, config.silhouette_fit_steps, fit_resolution,
                        samples_per_ray)
    density = field.density_grid(config.mesh_resolution).cpu().numpy()
    level = config.iso_level * np.log(2.0) / field.voxel_size
    if config.carve_votes > 0 and guided:
        density = carve(density, field.bound, views, foreground_threshold, config.carve_votes,
                        config.carve_outline_only, config.carve_margin_px)
    if config.smoothing > 0:
        sigma = config.smoothing * (config.mesh_resolution - 1) / (field.resolution - 1)
        density = gaussian_filter(density, sigma, mode="nearest")
    if config.iso_level_choices and guided:
        level = matching_level(density, field.bound, views, foreground_threshold,
                               [level * factor for factor in config.iso_level_choices])
        log.info("iso-level %.3g x the half-opaque density matches the decoded silhouettes best",
                 level * field.voxel_size / np.log(2.0))
    return extract_mesh(density, field.bound, level)
