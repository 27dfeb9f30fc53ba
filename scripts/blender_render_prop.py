"""Render a generated prop inside Blender, imported the way the add-on imports a finished job.

Runs in the Blender environment (``.venv-blender/``, ``python -m scripts.blender_venv``), not the main
one: it needs ``bpy`` and nothing of the engine. ``scripts/readme_pictures.py`` calls it as

    .venv-blender/bin/python scripts/blender_render_prop.py --result RESULT_DIR --label "a red cube" --out PNG

``RESULT_DIR`` is a result folder as the server stores it (``server.results.ResultStore``: ``mesh.npz``,
``model.glb``, ``preview.png``). The add-on is enabled from the source tree, the folder is read into the
same ``Result`` the add-on's client hands it, and the add-on's importer (``importer.place_result``) puts
it into the default scene; the scene then gets a floor, a sun and a camera and is rendered with
Cycles on the CPU. A line ``@@prop@@ {json}`` on stdout says what was imported.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path

import bpy
import numpy as np
from mathutils import Vector

log = logging.getLogger("scripts.blender_render_prop")

ROOT = Path(__file__).resolve().parents[1]
ADDON_REPOSITORY = ROOT / "blender_addon"
ADDON_MODULE = "bl_ext.source.dreamsmith"
SUMMARY_MARKER = "@@prop@@"
CAMERA_AZIMUTH_DEG = 35.0  # front-right three-quarter view, the house's door side
CAMERA_ELEVATION_DEG = 20.0
CAMERA_LENS_MM = 50.0
FRAME_MARGIN = 1.35  # room around the prop's bounding sphere
FLOOR_RGB = (0.6, 0.6, 0.58)


def enable_addon():
    """The add-on enabled from a local extension repository pointing at the source tree; its module."""
    bpy.context.preferences.extensions.repos.new(name="source", module="source",
                                                 custom_directory=str(ADDON_REPOSITORY), source="USER")
    bpy.ops.preferences.addon_enable(module=ADDON_MODULE)
    return sys.modules[ADDON_MODULE]


def stored_result(addon, folder: Path):
    """The ``Result`` a client fetching this stored job would hand the add-on."""
    with np.load(folder / "mesh.npz", allow_pickle=False) as arrays:
        vertices, faces, uvs = arrays["vertices"], arrays["faces"], arrays["uvs"]
        texture_png = arrays["texture_png"].tobytes()
    return addon._vendor.client.Result(folder.name, vertices, faces, uvs, texture_png,
                                       (folder / "preview.png").read_bytes(), (folder / "model.glb").read_bytes())


def clear_scene() -> None:
    """The default scene without its cube; its camera and light are replaced below."""
    for obj in list(bpy.data.objects):
        bpy.data.objects.remove(obj, do_unlink=True)


def world_bounds(obj) -> tuple[Vector, Vector]:
    corners = [obj.matrix_world @ Vector(corner) for corner in obj.bound_box]
    low = Vector([min(c[i] for c in corners) for i in range(3)])
    high = Vector([max(c[i] for c in corners) for i in range(3)])
    return low, high


def add_floor(z: float, size: float) -> None:
    """A matte plane under the prop, so its shadow shows where it stands."""
    bpy.ops.mesh.primitive_plane_add(size=size, location=(0.0, 0.0, z))
    floor = bpy.context.active_object
    material = bpy.data.materials.new("Floor")
    if material.node_tree is None:  # Blender 4.x; from 5.0 every material has nodes
        material.use_nodes = True
    material.node_tree.nodes["Principled BSDF"].inputs["Base Color"].default_value = (*FLOOR_RGB, 1.0)
    floor.data.materials.append(material)


def add_sun() -> None:
    """A soft sun from the front right, and a grey sky that fills the shadows."""
    bpy.ops.object.light_add(type="SUN", rotation=(math.radians(40), 0.0, math.radians(30)))
    sun = bpy.context.active_object.data
    sun.energy, sun.angle = 2.5, math.radians(10)
    world = bpy.context.scene.world or bpy.data.worlds.new("World")
    bpy.context.scene.world = world
    if world.node_tree is None:
        world.use_nodes = True
    background = world.node_tree.nodes["Background"]
    background.inputs["Color"].default_value = (0.9, 0.92, 0.95, 1.0)
    background.inputs["Strength"].default_value = 0.5


def add_camera(centre: Vector, radius: float) -> None:
    """A camera on an orbit around ``centre`` that fits a sphere of ``radius`` in the frame."""
    azimuth, elevation = math.radians(CAMERA_AZIMUTH_DEG), math.radians(CAMERA_ELEVATION_DEG)
    sensor_mm = 36.0
    half_fov = math.atan(sensor_mm / 2 / CAMERA_LENS_MM)
    distance = FRAME_MARGIN * radius / math.sin(half_fov)
    offset = Vector((math.sin(azimuth) * math.cos(elevation), -math.cos(azimuth) * math.cos(elevation),
                     math.sin(elevation))) * distance
    bpy.ops.object.camera_add(location=centre + offset)
    camera = bpy.context.active_object
    camera.rotation_euler = (-offset).to_track_quat("-Z", "Y").to_euler()
    camera.data.lens, camera.data.sensor_width = CAMERA_LENS_MM, sensor_mm
    bpy.context.scene.camera = camera


def configure_cycles(width: int, height: int, samples: int) -> None:
    """Cycles on the CPU, few samples and denoised when Blender has a denoiser: a small, quick picture."""
    import _cycles  # Blender's own Cycles module, present in the bpy wheel

    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = samples
    scene.cycles.use_denoising = bool(getattr(_cycles, "with_openimagedenoise", False))
    scene.render.resolution_x, scene.render.resolution_y = width, height
    scene.render.resolution_percentage = 100
    scene.render.image_settings.file_format = "PNG"
    scene.render.image_settings.color_mode = "RGB"
    scene.view_settings.view_transform = "Standard"  # the texture's colours as baked, not AgX's filmic look


def render_prop(result_dir: Path, label: str, out: Path, width: int, height: int, samples: int) -> dict:
    """Import the stored result through the add-on and render it; what was imported, for the caller.

    Args:
        result_dir: a result folder as the server stores it.
        label: the object's name, as the add-on names it after the prompt.
        out: the PNG to write.
        width, height: the picture's size in pixels.
        samples: Cycles samples per pixel.
    """
    addon = enable_addon()
    result = stored_result(addon, result_dir)
    clear_scene()
    prop = addon.importer.place_result(bpy.context, "generate", label, "", result, origin=(0.0, 0.0, 0.0))
    bpy.context.view_layer.update()
    low, high = world_bounds(prop)
    centre, radius = (low + high) / 2, (high - low).length / 2
    add_floor(low.z, size=20 * radius)
    add_sun()
    add_camera(centre, radius)
    configure_cycles(width, height, samples)
    bpy.context.scene.render.filepath = str(out)
    bpy.ops.render.render(write_still=True)
    texture = prop.active_material.node_tree.nodes["Principled BSDF"].inputs["Base Color"].links[0].from_node
    summary = {"object": prop.name, "vertices": len(prop.data.vertices), "faces": len(prop.data.polygons),
               "uv_maps": prop.data.uv_layers.keys(), "texture_packed": texture.image.packed_file is not None,
               "texture_size": list(texture.image.size), "engine": bpy.context.scene.render.engine,
               "device": bpy.context.scene.cycles.device, "samples": samples, "blender": bpy.app.version_string}
    bpy.ops.preferences.addon_disable(module=ADDON_MODULE)  # stops the add-on's server-status thread
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--result", type=Path, required=True, help="a stored result folder (mesh.npz, model.glb)")
    parser.add_argument("--label", required=True, help="the prompt, which names the object")
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    parser.add_argument("--width", type=int, default=480)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--samples", type=int, default=32)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    summary = render_prop(args.result, args.label, args.out.resolve(), args.width, args.height, args.samples)
    log.info("rendered %s to %s", summary["object"], args.out)
    print(SUMMARY_MARKER + json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
