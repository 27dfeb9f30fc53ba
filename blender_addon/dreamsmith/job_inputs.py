"""What a job takes from the scene: the camera rig and, for paint and sketch, a triangle mesh."""

from __future__ import annotations

import math
from dataclasses import dataclass

import bpy
import numpy as np


class InputError(ValueError):
    """The scene cannot supply what the job needs; the message is shown to the user as is."""


def camera_entry(scene: bpy.types.Scene, obj: bpy.types.Object, origin=(0.0, 0.0, 0.0)) -> dict:
    """One camera as the engine describes it: camera-to-world matrix and vertical field of view.

    ``origin``: the world point the matrix is made relative to (its position is moved, its rotation kept)."""
    if obj.data.type != "PERSP":
        raise InputError(f"camera '{obj.name}' is not a perspective camera")
    # view_frame applies the sensor fit, the render aspect and the lens, so its corners give the
    # field of view exactly as Blender renders it; its extent also cancels any lens shift.
    frame = np.array([tuple(corner) for corner in obj.data.view_frame(scene=scene)])
    depth = -frame[0, 2]
    half_height = (frame[:, 1].max() - frame[:, 1].min()) / 2
    half_width = (frame[:, 0].max() - frame[:, 0].min()) / 2
    c2w = np.array(obj.matrix_world.normalized())  # an object's scale is not part of a camera
    c2w[:3, 3] -= origin
    return {
        "name": obj.name,
        "c2w": c2w.tolist(),
        "fov_y_deg": math.degrees(2 * math.atan2(half_height, depth)),
        "aspect": half_width / half_height,
    }


def camera_rig(scene: bpy.types.Scene, collection: bpy.types.Collection | None,
               origin=(0.0, 0.0, 0.0)) -> list[dict]:
    """The cameras of ``collection`` (in name order), or else the scene's active camera; may be empty.

    ``origin``: the world point the rig is sent relative to. Paint and sketch take the world as it
    is; generate makes its prop at the origin of its own frame, which the add-on puts at the 3D cursor."""
    if collection is not None:
        cameras = sorted((obj for obj in collection.all_objects if obj.type == "CAMERA"), key=lambda o: o.name)
        if not cameras:
            raise InputError(f"collection '{collection.name}' holds no camera")
    else:
        cameras = [scene.camera] if scene.camera is not None else []
    return [camera_entry(scene, obj, origin) for obj in cameras]


@dataclass
class MeshInput:
    """A mesh triangulated and split along UV seams, ready to send, in world space."""
    vertices: np.ndarray  # (V, 3) float32
    faces: np.ndarray  # (F, 3) int32
    uvs: np.ndarray | None  # (V, 2) float32 from the active UV map; None when the mesh has none
    corner_vertex: np.ndarray  # (L,) int: the sent vertex behind each face corner of the Blender mesh
    triangle_loops: np.ndarray  # (F, 3) int: the face corner (loop) behind each corner of each sent triangle


def loop_attribute(mesh: bpy.types.Mesh, collection, name: str, width: int, dtype) -> np.ndarray:
    values = np.empty(len(collection) * width, dtype=dtype)
    collection.foreach_get(name, values)
    return values.reshape(-1, width) if width > 1 else values


def mesh_input(obj: bpy.types.Object) -> MeshInput:
    """``obj``'s own mesh (modifiers not applied, so returned UVs fit its face corners)."""
    if obj is None or obj.type != "MESH":
        raise InputError("select a mesh object")
    mesh = obj.data
    if not mesh.polygons:
        raise InputError(f"'{obj.name}' has no faces")
    mesh.calc_loop_triangles()
    corner_vertex = loop_attribute(mesh, mesh.loops, "vertex_index", 1, np.int32)
    corner_keys = corner_vertex[:, None].astype(np.float64)
    uv_layer = mesh.uv_layers.active
    if uv_layer is not None:
        corner_uvs = loop_attribute(mesh, uv_layer.data, "uv", 2, np.float32)
        corner_keys = np.hstack([corner_keys, corner_uvs])
    # One sent vertex per distinct (vertex, uv) pair: a vertex on a UV seam is sent once per side.
    _, first_corner, sent_index = np.unique(corner_keys, axis=0, return_index=True, return_inverse=True)
    sent_index = sent_index.reshape(-1)
    positions = loop_attribute(mesh, mesh.vertices, "co", 3, np.float32)
    matrix = np.array(obj.matrix_world)
    world = positions @ matrix[:3, :3].T + matrix[:3, 3]
    triangle_corners = loop_attribute(mesh, mesh.loop_triangles, "loops", 3, np.int32)
    return MeshInput(
        vertices=world[corner_vertex[first_corner]].astype(np.float32),
        faces=sent_index[triangle_corners].astype(np.int32),
        uvs=corner_uvs[first_corner] if uv_layer is not None else None,
        corner_vertex=sent_index,
        triangle_loops=triangle_corners,
    )
