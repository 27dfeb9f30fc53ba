"""Turns the server's arrays into Blender data: meshes, UV maps, image-textured materials.

The engine works in Blender's own axes (+Z up, front facing -Y, metres), so the arrays go in as
they are; the glTF importer is not used because it would convert from glTF's Y-up and back.
"""

from __future__ import annotations

from dataclasses import replace

import bpy
import numpy as np

from ._vendor.client import Result
from .job_inputs import InputError, MeshInput, loop_attribute, mesh_input

UV_MAP_NAME = "Dreamsmith"
MAX_NAME_LENGTH = 63  # Blender's limit for ID names, in bytes


def datablock_name(text: str) -> str:
    name = " ".join(text.split()) or "Dreamsmith"
    while len(name.encode("utf-8")) > MAX_NAME_LENGTH:
        name = name[:-1]
    return name


def weld(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merge the copies the engine makes of a vertex along UV seams.

    Blender keeps UVs per face corner, so a seam needs no split vertices; welding them gives
    artists a closed mesh that smooth shading, modifiers and sculpting treat as one surface.
    Returns (unique vertices, faces indexing them).
    """
    unique, inverse = np.unique(vertices, axis=0, return_inverse=True)
    return unique, inverse.reshape(-1)[faces]


def new_mesh(name: str, vertices: np.ndarray, faces: np.ndarray, uvs: np.ndarray) -> bpy.types.Mesh:
    """A triangle mesh with one UV map; ``uvs`` has one row per entry of ``vertices``."""
    welded, welded_faces = weld(vertices, faces)
    mesh = bpy.data.meshes.new(name)
    mesh.vertices.add(len(welded))
    mesh.vertices.foreach_set("co", welded.astype(np.float32).ravel())
    mesh.loops.add(welded_faces.size)
    mesh.loops.foreach_set("vertex_index", welded_faces.astype(np.int32).ravel())
    mesh.polygons.add(len(welded_faces))
    mesh.polygons.foreach_set("loop_start", np.arange(0, welded_faces.size, 3, dtype=np.int32))
    uv_layer = mesh.uv_layers.new(name=UV_MAP_NAME)
    uv_layer.data.foreach_set("uv", uvs[faces.ravel()].astype(np.float32).ravel())
    mesh.update()
    mesh.validate()
    mesh.shade_smooth()
    return mesh


def set_corner_uvs(mesh: bpy.types.Mesh, corner_uvs: np.ndarray) -> bpy.types.MeshUVLoopLayer:
    """A new active UV map on an existing mesh; ``corner_uvs`` has one row per face corner (loop)."""
    uv_layer = mesh.uv_layers.new(name=UV_MAP_NAME)
    uv_layer.data.foreach_set("uv", corner_uvs.astype(np.float32).ravel())
    mesh.uv_layers.active = uv_layer
    return uv_layer


def packed_image(name: str, png: bytes) -> bpy.types.Image:
    """An image datablock holding ``png`` packed inside the .blend (no file on disk involved)."""
    image = bpy.data.images.new(name, 8, 8)  # the size is replaced by the PNG's on load
    image.pack(data=png, data_len=len(png))
    image.source = "FILE"
    return image


def textured_material(name: str, image: bpy.types.Image) -> bpy.types.Material:
    """Principled BSDF with ``image`` on Base Color."""
    material = bpy.data.materials.new(name)
    if material.node_tree is None:  # Blender 4.x; from 5.0 every material has nodes
        material.use_nodes = True
    nodes = material.node_tree.nodes
    bsdf = next(node for node in nodes if node.bl_idname == "ShaderNodeBsdfPrincipled")
    texture = nodes.new("ShaderNodeTexImage")
    texture.image = image
    texture.location = (bsdf.location.x - 400, bsdf.location.y)
    material.node_tree.links.new(texture.outputs["Color"], bsdf.inputs["Base Color"])
    return material


def assign_only_material(obj: bpy.types.Object, material: bpy.types.Material) -> None:
    obj.data.materials.clear()
    obj.data.materials.append(material)


def make_active(view_layer: bpy.types.ViewLayer, obj: bpy.types.Object) -> None:
    for other in view_layer.objects.selected:
        other.select_set(False)
    obj.select_set(True, view_layer=view_layer)
    view_layer.objects.active = obj


def add_textured_object(view_layer: bpy.types.ViewLayer, name: str, result: Result,
                        location=(0.0, 0.0, 0.0)) -> bpy.types.Object:
    """A new object at ``location`` in the active collection, with its own mesh, material and packed
    texture; the result's vertices are taken relative to ``location``."""
    name = datablock_name(name)
    obj = bpy.data.objects.new(name, new_mesh(name, result.vertices, result.faces, result.uvs))
    obj.location = location
    assign_only_material(obj, textured_material(name, packed_image(name, result.texture_png)))
    view_layer.active_layer_collection.collection.objects.link(obj)
    make_active(view_layer, obj)
    return obj


def painted_corner_uvs(sent: MeshInput, loop_count: int, result: Result) -> np.ndarray:
    """The result's UVs per face corner (loop) of the Blender mesh that was sent.

    Result face f is sent triangle f, so the UV of its k-th corner belongs to the loop behind
    corner k of that triangle; this holds however the engine split vertices along its UV seams.
    A loop shared by two triangles of one polygon takes the UV of one of them (they differ only
    where a seam the engine made crosses the polygon)."""
    corner_uvs = np.zeros((loop_count, 2), dtype=np.float32)
    corner_uvs[sent.triangle_loops.reshape(-1)] = result.uvs[result.faces].reshape(-1, 2)
    return corner_uvs


def matches_triangles(triangle_vertices: np.ndarray, result: Result) -> bool:
    """Whether the result can be the mesh whose triangles' corners are ``triangle_vertices`` (F, 3)
    (Blender vertex indices): as many triangles, and each result vertex standing for one Blender
    vertex (the engine may split a vertex along its UV seams, never merge two)."""
    if result.faces.shape != triangle_vertices.shape:
        return False
    stands_for = np.full(len(result.vertices), -1, dtype=np.int64)
    stands_for[result.faces.reshape(-1)] = triangle_vertices.reshape(-1)
    return bool(np.array_equal(stands_for[result.faces], triangle_vertices))


def retexture_object(obj: bpy.types.Object, result: Result) -> None:
    """Keep the object's geometry; add the returned UV map and a new material using the texture."""
    sent = mesh_input(obj)  # the same triangles, in the same order, as when the job was sent
    loop_vertex = loop_attribute(obj.data, obj.data.loops, "vertex_index", 1, np.int64)
    # Checked on the topology only: the object may have moved, or its active UV map changed, meanwhile.
    if not matches_triangles(loop_vertex[sent.triangle_loops], result):
        raise InputError(f"the mesh of '{obj.name}' changed while the job ran ({len(sent.faces)} triangles "
                         f"now, {len(result.faces)} in the result)")
    name = datablock_name(f"{obj.name} Dreamsmith")
    set_corner_uvs(obj.data, painted_corner_uvs(sent, len(obj.data.loops), result))
    assign_only_material(obj, textured_material(name, packed_image(name, result.texture_png)))


def target_object(name: str) -> bpy.types.Object:
    obj = bpy.data.objects.get(name)
    if obj is None:
        raise InputError(f"the object '{name}' the job was made for no longer exists")
    return obj


def place_result(context: bpy.types.Context, kind: str, label: str, target: str, result: Result,
                 origin=None) -> bpy.types.Object:
    """Put a finished job into the scene the way its kind asks for; returns the object that shows it.

    generate: a new object at ``origin`` (the 3D cursor when the job was sent; the current cursor
    when that is not known). paint: ``target`` keeps its geometry and gets the new UV map and
    material. sketch: a new object where the ``target`` sketch is: the vertices come back in world
    space, as they were sent, and are made relative to the sketch's origin, where the new object is
    put; the sketch is hidden.
    """
    if kind == "paint":
        obj = target_object(target)
        retexture_object(obj, result)
        return obj
    if kind == "sketch":
        sketch = target_object(target)
        pivot = np.array(sketch.matrix_world.translation, dtype=np.float32)
        obj = add_textured_object(context.view_layer, label, replace(result, vertices=result.vertices - pivot),
                                  tuple(pivot))
        sketch.hide_set(True)
        sketch.hide_render = True
        return obj
    location = origin if origin is not None else tuple(context.scene.cursor.location)
    return add_textured_object(context.view_layer, label, result, location)
