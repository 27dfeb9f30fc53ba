"""Primitive World's shapes (primitive_world.contract) as triangle meshes.

Blender axes (+Z up, front -Y), centred as the contract places them, closed and wound outward.
They are what Latent-Paint and Sketch-Shape are measured on.  Flat-sided shapes can be refined
with ``subdivisions`` (each one splits every triangle into four, the shape unchanged), which
gives meshes of a chosen size for timing; the sphere's ``subdivisions`` is its icosphere level.

The house's door is colour, not geometry: its mesh is the body box and the gable roof only.
"""

from __future__ import annotations

import numpy as np
import trimesh

from . import contract as C
from .contract import CONE, CUBE_SIDE, CYLINDER, HOUSE_BODY, HOUSE_RIDGE_Z, PYRAMID, SPHERE_RADIUS, TORUS

# Round shapes: segments around the axis (and around the torus tube).
SECTIONS = 64


def _convex(points) -> trimesh.Trimesh:
    return trimesh.convex.convex_hull(np.asarray(points, dtype=np.float64))


def _house() -> trimesh.Trimesh:
    """Body box plus a roof prism with its ridge along X: together one convex pentagonal prism."""
    (x0, x1), (y0, y1), (z0, z1) = HOUSE_BODY["x"], HOUSE_BODY["y"], HOUSE_BODY["z"]
    profile = [(y0, z0), (y1, z0), (y1, z1), (0.0, HOUSE_RIDGE_Z), (y0, z1)]  # cross-section in (y, z)
    return _convex([(x, y, z) for x in (x0, x1) for y, z in profile])


def _pyramid() -> trimesh.Trimesh:
    half, (z0, z1) = PYRAMID["side"] / 2, PYRAMID["z"]
    return _convex([(sx * half, sy * half, z0) for sx in (-1, 1) for sy in (-1, 1)] + [(0.0, 0.0, z1)])


def _cone() -> trimesh.Trimesh:
    (z0, z1) = CONE["z"]
    mesh = trimesh.creation.cone(radius=CONE["radius"], height=z1 - z0, sections=SECTIONS)
    mesh.apply_translation((0.0, 0.0, z0))  # trimesh puts the base at z = 0
    return mesh


def contract_mesh(shape: str, subdivisions: int = 3) -> trimesh.Trimesh:
    """The contract's ``shape`` as a closed, outward-wound trimesh centred as in the contract.

    ``subdivisions``: the icosphere level of the sphere; for cube, house and pyramid, how many times
    every triangle is split into four (12, 16 and 6 faces times 4**subdivisions); the round
    shapes (cylinder, cone, torus) have a fixed tessellation and ignore it."""
    if shape not in C.SHAPES:
        raise ValueError(f"unknown shape {shape!r}; expected one of {', '.join(C.SHAPES)}")
    if subdivisions < 0:
        raise ValueError("subdivisions must be non-negative")
    if shape == "sphere":
        return trimesh.creation.icosphere(subdivisions=subdivisions, radius=SPHERE_RADIUS)
    if shape == "cube":
        mesh = trimesh.creation.box(extents=(CUBE_SIDE,) * 3)
    elif shape == "house":
        mesh = _house()
    elif shape == "pyramid":
        mesh = _pyramid()
    elif shape == "cylinder":
        (z0, z1) = CYLINDER["z"]
        mesh = trimesh.creation.cylinder(radius=CYLINDER["radius"], height=z1 - z0, sections=SECTIONS)
    elif shape == "cone":
        mesh = _cone()
    else:
        mesh = trimesh.creation.torus(TORUS["major"], TORUS["minor"], major_sections=SECTIONS,
                                      minor_sections=SECTIONS // 2)
    if shape in ("cube", "house", "pyramid"):
        for _ in range(subdivisions):
            mesh = mesh.subdivide()
    mesh.fix_normals()
    return mesh
