"""A user's mesh as paint and sketch take it: checked, loaded from a file, and moved into the prior's frame.

Tasks work in the frame the prior was trained in (objects centred on the origin, about a metre
across); ``Normalisation`` maps a user's mesh and cameras into that frame and results back out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import trimesh

from .cameras import Camera

MAX_FACES = 500_000  # beyond this, per-view rasterisation no longer fits a prop-sized job
MAX_VERTICES = 1_000_000
MAX_COORDINATE = 1.0e4  # metres; anything beyond is a unit mistake, not a prop
MESH_SUFFIXES = (".glb", ".gltf", ".obj", ".ply", ".stl", ".off")


class MeshError(ValueError):
    """A mesh the engine cannot use; the message says what is wrong in one line."""


@dataclass
class MeshInput:
    vertices: np.ndarray  # (V, 3) float64, Blender axes
    faces: np.ndarray  # (F, 3) int64
    uvs: np.ndarray | None = None  # (V, 2) float64 in [0, 1], bottom-left origin, or None


def validate_mesh(vertices, faces, uvs=None, max_faces: int = MAX_FACES) -> MeshInput:
    """Check shapes, sizes, finiteness and indices; returns the arrays as a ``MeshInput``."""
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces)
    if vertices.ndim != 2 or vertices.shape[1] != 3:
        raise MeshError(f"vertices must have shape (N, 3), got {vertices.shape}")
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise MeshError(f"faces must be triangles with shape (M, 3), got {faces.shape}")
    if len(vertices) < 3 or len(faces) < 1:
        raise MeshError("the mesh is empty: it needs at least 3 vertices and 1 face")
    if len(faces) > max_faces or len(vertices) > MAX_VERTICES:
        raise MeshError(f"the mesh is too large: {len(faces)} faces and {len(vertices)} vertices "
                        f"(at most {max_faces} faces and {MAX_VERTICES} vertices)")
    if not np.issubdtype(faces.dtype, np.integer):
        raise MeshError(f"face indices must be integers, got {faces.dtype}")
    if not np.isfinite(vertices).all():
        raise MeshError("the vertices are not all finite (NaN or infinity)")
    if np.abs(vertices).max() > MAX_COORDINATE:
        raise MeshError(f"vertex coordinates must lie within ±{MAX_COORDINATE:g}")
    if faces.min() < 0 or faces.max() >= len(vertices):
        raise MeshError(f"face indices must lie in [0, {len(vertices)}), got [{faces.min()}, {faces.max()}]")
    extent = np.ptp(vertices[np.unique(faces)], axis=0)
    if extent.max() <= 0:
        raise MeshError("the mesh has no extent: all its vertices are at one point")
    if uvs is not None:
        uvs = np.asarray(uvs, dtype=np.float64)
        if uvs.shape != (len(vertices), 2):
            raise MeshError(f"uvs must have shape ({len(vertices)}, 2), got {uvs.shape}")
        if not np.isfinite(uvs).all():
            raise MeshError("the uvs are not all finite")
    return MeshInput(vertices, faces.astype(np.int64), uvs)


def load_mesh(path: str | Path, max_faces: int = MAX_FACES) -> MeshInput:
    """A mesh file (glb, gltf, obj, ply, stl, off) as one triangle mesh in Blender axes, UVs kept."""
    from .axes import gltf_to_blender

    path = Path(path)
    if not path.is_file():
        raise MeshError(f"no mesh file at {str(path)!r}")
    if path.suffix.lower() not in MESH_SUFFIXES:
        raise MeshError(f"cannot read {path.suffix or 'a file without a suffix'}; use one of "
                        f"{', '.join(MESH_SUFFIXES)}")
    if path.stat().st_size == 0:
        raise MeshError(f"{path.name} is empty (0 bytes)")
    try:
        loaded = trimesh.load(path, force="mesh", process=False)
    except Exception as error:  # trimesh raises many types for corrupt files
        raise MeshError(_read_failure(path, error)) from None
    if not isinstance(loaded, trimesh.Trimesh) or len(loaded.faces) == 0:
        raise MeshError(f"{path.name} holds no triangles")
    vertices = np.asarray(loaded.vertices, dtype=np.float64)
    if path.suffix.lower() in (".glb", ".gltf"):
        vertices = gltf_to_blender(vertices)
    uv = getattr(loaded.visual, "uv", None)
    uvs = None if uv is None or len(uv) != len(vertices) else np.asarray(uv, dtype=np.float64)
    try:
        return validate_mesh(vertices, np.asarray(loaded.faces), uvs, max_faces)
    except MeshError:
        # trimesh reads some bad OBJ indices (0) as others; the file's own numbers say it plainly.
        problem = obj_face_problem(path) if path.suffix.lower() == ".obj" else None
        if problem:
            raise MeshError(f"{path.name}: {problem}") from None
        raise


def _read_failure(path: Path, error: Exception) -> str:
    """One plain line for a file trimesh could not read. An out-of-range face index surfaces from
    trimesh as numpy's IndexError; for an OBJ the face is found and named."""
    if isinstance(error, IndexError):
        if path.suffix.lower() == ".obj":
            problem = obj_face_problem(path)
            if problem:
                return f"{path.name}: {problem}"
        return f"cannot read {path.name}: a face refers to a vertex the file does not have"
    lines = str(error).strip().splitlines()
    reason = lines[0] if lines else type(error).__name__
    return f"cannot read {path.name}: it is not a valid {path.suffix[1:].upper()} file ({reason})"


def obj_face_problem(path: Path) -> str | None:
    """The first face of an OBJ file that refers to a vertex the file does not have, said plainly,
    or None. OBJ counts vertices from 1; a negative index counts back from the last vertex so far."""
    try:
        lines = [line.split() for line in path.read_text(errors="replace").splitlines()]
        total = sum(1 for parts in lines if parts and parts[0] == "v")
        seen = faces = 0
        for parts in lines:
            if parts and parts[0] == "v":
                seen += 1
            elif parts and parts[0] == "f":
                faces += 1
                for corner in parts[1:]:
                    index = int(corner.split("/")[0])
                    if index == 0:
                        return f"face {faces} refers to vertex 0, but OBJ vertices are numbered from 1"
                    if index > total:
                        return f"face {faces} refers to vertex {index}, but the file has only {total} vertices"
                    if index < -seen:
                        return (f"face {faces} refers to vertex {index} (counting back), but only {seen} "
                                "vertices come before it")
    except (OSError, ValueError):  # unreadable, or not numbers: trimesh's own failure stands
        return None
    return None


@dataclass(frozen=True)
class Normalisation:
    """user = centre + scale * frame: centres the bounding box and fits its largest half-extent."""

    centre: np.ndarray  # (3,)
    scale: float

    @classmethod
    def fit(cls, vertices: np.ndarray, half_extent: float) -> "Normalisation":
        low, high = vertices.min(axis=0), vertices.max(axis=0)
        return cls((low + high) / 2, float((high - low).max() / 2 / half_extent))

    def to_frame(self, points: np.ndarray) -> np.ndarray:
        return (np.asarray(points, dtype=np.float64) - self.centre) / self.scale

    def to_user(self, points: np.ndarray) -> np.ndarray:
        return np.asarray(points, dtype=np.float64) * self.scale + self.centre

    def camera_to_frame(self, camera: Camera) -> Camera:
        c2w = np.array(camera.c2w, dtype=np.float64)
        c2w[:3, 3] = self.to_frame(c2w[:3, 3])
        return Camera(c2w, camera.fov_y_deg)


def surface_rms_radius(vertices: np.ndarray, faces: np.ndarray, centre: np.ndarray) -> float:
    """Root-mean-square distance of the surface from ``centre``, by area (exact per triangle)."""
    a, b, c = (vertices[faces[:, k]] - centre for k in range(3))
    area = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)
    second_moment = (np.einsum("ij,ij->i", a, a) + np.einsum("ij,ij->i", b, b) + np.einsum("ij,ij->i", c, c)
                     + np.einsum("ij,ij->i", a, b) + np.einsum("ij,ij->i", b, c) + np.einsum("ij,ij->i", c, a)) / 6
    total = area.sum()
    return float(np.sqrt((second_moment * area).sum() / total)) if total > 0 else 0.0


def frame_normalisation(vertices: np.ndarray, faces: np.ndarray, half_extent: float,
                        max_rms_radius: float | None = None) -> Normalisation:
    """The user -> prior frame map of a mesh: its bounding box centred and scaled so that its largest
    half-extent is at most ``half_extent`` and, when ``max_rms_radius`` is given, the surface's
    RMS radius (``surface_rms_radius``) at most that. Only the vertices that faces use count.

    The box alone misjudges how big a finished object looks to a prior: a cube fills its box far
    more than a sphere does. A sketch is a blockout of the object's box, so it uses the box alone.
    """
    box = Normalisation.fit(vertices[np.unique(faces)], half_extent)
    if max_rms_radius is None:
        return box
    spread = surface_rms_radius(vertices, faces, box.centre) / max_rms_radius
    return Normalisation(box.centre, max(box.scale, spread))
