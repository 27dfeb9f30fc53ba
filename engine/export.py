"""Density grid -> closed mesh -> UV atlas -> baked texture -> GLB / OBJ / preview files.

The engine works in Blender axes (+Z up, front faces -Y); files are written in glTF axes
(+Y up, front faces +Z) through ``engine.axes``.  UVs follow the convention documented in
``engine.raster``: origin at the bottom-left of the texture image, texel row = (1 - v) * size.
That is also trimesh's convention, so trimesh's glTF/OBJ writers need no extra flip.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import trimesh
import xatlas
from PIL import Image
from scipy import ndimage
from skimage import measure

from engine import raster
from engine.axes import blender_to_gltf, gltf_to_blender
from engine.cameras import Camera, look_at, orbit_position

log = logging.getLogger(__name__)

DEFAULT_TEXTURE_SIZE = 1024
DEFAULT_PADDING = 8
# Below this, bilinear taps on the first mip levels can reach the background at chart borders.
MIN_PADDING = 4
# Gap xatlas leaves between charts, in texels of the final texture; dilation fills it.
ATLAS_PADDING = 4
ROUGHNESS = 0.8
PREVIEW_ELEVATION_DEG = 20.0
PREVIEW_FOV_DEG = 40.0
PREVIEW_COLUMNS = 4
# Extra room around the bounding sphere so the turntable never clips the object.
PREVIEW_MARGIN = 1.1

ColourFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass
class TexturedMesh:
    vertices: np.ndarray  # (V, 3) float32, Blender axes, metres
    faces: np.ndarray  # (F, 3) int32
    uvs: np.ndarray  # (V, 2) float32, one per (seam-split) vertex, bottom-left origin
    texture: np.ndarray  # (S, S, 3) uint8, row 0 = top of the image

    def vertex_normals(self) -> np.ndarray:
        """(V, 3) unit normals, identical on both sides of UV seams."""
        return raster.vertex_normals(self.vertices, self.faces)


# ---------------------------------------------------------------------------------------------
# Density grid -> mesh


def extract_mesh(density: np.ndarray, bound: float, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Closed, outward-facing iso-surface of ``density`` at ``level``: (vertices, faces).

    ``density[z, y, x]`` is sampled at ``np.linspace(-bound, bound, N)`` along each axis.  Only
    the largest connected piece is kept, so floaters disappear.
    """
    density = np.asarray(density, dtype=np.float32)
    if not density.max() > level:
        raise ValueError(
            f"No surface at level {level}: density spans [{density.min():.4g}, {density.max():.4g}], "
            "nothing is denser than the level; lower the level or train longer"
        )
    # A border below the level closes surfaces that run into the sides of the box.
    padded = np.pad(density, 1, mode="constant", constant_values=min(float(density.min()), level) - 1.0)
    spacing_zyx = np.array([2.0 * bound / (n - 1) for n in density.shape])
    verts_zyx, faces, _, _ = measure.marching_cubes(padded, level=level, spacing=tuple(spacing_zyx))
    # Padded index 1 is the first real sample, at -bound.
    # In (z, y, x) index order skimage's right-hand face normals point into the denser side;
    # reordering to (x, y, z) is a mirror, which turns them outward.
    vertices = (verts_zyx - spacing_zyx - bound)[:, ::-1]
    mesh = _largest_component(trimesh.Trimesh(vertices, faces, process=True))
    log.info("extracted mesh: %d vertices, %d faces", len(mesh.vertices), len(mesh.faces))
    return mesh.vertices.astype(np.float32), mesh.faces.astype(np.int32)


def _largest_component(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    pieces = mesh.split(only_watertight=False)
    if len(pieces) <= 1:
        return mesh
    log.info("keeping the largest of %d connected pieces", len(pieces))
    return max(pieces, key=lambda piece: len(piece.faces))


# ---------------------------------------------------------------------------------------------
# UV atlas


def unwrap(
    vertices: np.ndarray, faces: np.ndarray, texture_size: int = DEFAULT_TEXTURE_SIZE
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """UV-unwrap with xatlas: (vertices split at seams, faces, per-vertex uvs in [0, 1]).

    ``texture_size`` is the texture the atlas is packed for, which sets the gap between charts.
    """
    atlas = xatlas.Atlas()
    atlas.add_mesh(np.asarray(vertices, dtype=np.float32), np.asarray(faces, dtype=np.uint32))
    pack_options = xatlas.PackOptions()
    pack_options.resolution = texture_size
    pack_options.padding = ATLAS_PADDING
    pack_options.bilinear = True
    atlas.generate(xatlas.ChartOptions(), pack_options)
    if atlas.atlas_count != 1:
        raise RuntimeError(f"xatlas made {atlas.atlas_count} atlases; one texture needs exactly one")
    vertex_map, new_faces, uvs = atlas.get_mesh(0)
    log.info("unwrapped into %d charts, %d vertices after seam splits", atlas.chart_count, len(vertex_map))
    new_vertices = np.asarray(vertices, dtype=np.float32)[vertex_map.astype(np.int64)]
    return new_vertices, new_faces.astype(np.int32), uvs.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Texture baking


def texel_surface_points(
    vertices: np.ndarray, faces: np.ndarray, uvs: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Surface point and normal behind every texel whose centre lies inside a UV triangle.

    Returns (texel_rows, texel_cols, points (N, 3), normals (N, 3), face_ids), all flat arrays.
    Normals are the smooth vertex normals interpolated across the face.
    """
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    uvs = np.asarray(uvs, dtype=np.float64)
    texel_xy = np.stack([uvs[:, 0] * size, (1.0 - uvs[:, 1]) * size], axis=1)
    # Charts never overlap, so a constant depth gives plain affine barycentrics.
    fragments = raster.rasterize_screen(texel_xy[faces], np.ones(faces.shape), size, size)
    rows, cols = np.nonzero(fragments.mask)
    face_ids = fragments.face_id[rows, cols]
    bary = fragments.bary[rows, cols].astype(np.float64)
    points = np.einsum("nk,nkc->nc", bary, vertices[faces[face_ids]])
    normals = np.einsum("nk,nkc->nc", bary, raster.vertex_normals(vertices, faces)[faces[face_ids]])
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    return rows, cols, points, normals, face_ids


def bake_texture(
    vertices: np.ndarray,
    faces: np.ndarray,
    uvs: np.ndarray,
    colour_fn: ColourFn,
    size: int = DEFAULT_TEXTURE_SIZE,
    padding: int = DEFAULT_PADDING,
) -> np.ndarray:
    """(size, size, 3) uint8 texture with ``colour_fn(points, normals)`` baked into the UV charts.

    Charts are grown by ``padding`` texels and the remaining background is the mean colour, so
    bilinear filtering and mipmaps never pull in a foreign colour at the seams.
    """
    rows, cols, points, normals, _ = texel_surface_points(vertices, faces, uvs, size)
    colours = np.clip(np.asarray(colour_fn(points, normals), dtype=np.float32), 0.0, 1.0)
    texture = np.zeros((size, size, 3), dtype=np.float32)
    covered = np.zeros((size, size), dtype=bool)
    texture[rows, cols] = colours
    covered[rows, cols] = True
    texture, covered = dilate(texture, covered, max(padding, MIN_PADDING))
    texture[~covered] = colours.mean(axis=0) if len(colours) else 0.5
    return np.round(texture * 255.0).astype(np.uint8)


def dilate(texture: np.ndarray, covered: np.ndarray, iterations: int) -> tuple[np.ndarray, np.ndarray]:
    """Grow covered regions: each pass gives every uncovered texel touching a covered one (of its
    8 neighbours) their mean colour.  Returns (new texture, new covered mask); covered texels
    are never changed.
    """
    texture = np.array(texture, dtype=np.float32)
    covered = np.array(covered, dtype=bool)
    neighbourhood = np.ones((3, 3), np.float32)
    for _ in range(iterations):
        weight = covered.astype(np.float32)
        neighbour_count = ndimage.convolve(weight, neighbourhood, mode="constant")
        grow = (neighbour_count > 0) & ~covered
        if not grow.any():
            break
        for channel in range(texture.shape[2]):
            summed = ndimage.convolve(texture[..., channel] * weight, neighbourhood, mode="constant")
            texture[..., channel][grow] = summed[grow] / neighbour_count[grow]
        covered |= grow
    return texture, covered


# ---------------------------------------------------------------------------------------------
# Files


def _to_trimesh(mesh: TexturedMesh, name: str = "dreamsmith") -> trimesh.Trimesh:
    """The mesh in glTF axes with a PBR material; trimesh flips v itself when writing glTF."""
    material = trimesh.visual.material.PBRMaterial(
        name=name,
        baseColorTexture=Image.fromarray(np.ascontiguousarray(mesh.texture[..., :3], dtype=np.uint8)),
        baseColorFactor=[255, 255, 255, 255],
        metallicFactor=0.0,
        roughnessFactor=ROUGHNESS,
        doubleSided=False,
    )
    visual = trimesh.visual.TextureVisuals(uv=np.asarray(mesh.uvs, dtype=np.float64), material=material)
    return trimesh.Trimesh(
        vertices=blender_to_gltf(np.asarray(mesh.vertices, dtype=np.float64)),
        faces=np.asarray(mesh.faces, dtype=np.int64),
        # Seam-welded normals, so viewers shade smoothly across UV seams.
        vertex_normals=blender_to_gltf(mesh.vertex_normals()),
        visual=visual,
        process=False,
    )


def write_glb(path: str | Path, mesh: TexturedMesh) -> None:
    """Binary glTF 2.0 (+Y up, front +Z) with the texture embedded as PNG baseColorTexture."""
    data = _to_trimesh(mesh).export(file_type="glb")
    Path(path).write_bytes(data)
    log.info("wrote %s (%d bytes)", path, len(data))


def write_obj(path: str | Path, mesh: TexturedMesh) -> list[Path]:
    """OBJ + MTL + PNG side by side, in glTF axes (Blender's OBJ importer maps them back); returns
    the paths written: the OBJ, the MTL, then the texture."""
    path = Path(path)
    text, side_files = trimesh.exchange.obj.export_obj(
        # Naming the material after the file names the PNG after it too, so OBJs can share a folder.
        _to_trimesh(mesh, name=path.stem), include_normals=True, return_texture=True, mtl_name=f"{path.stem}.mtl"
    )
    path.write_text(text)
    for name, data in side_files.items():
        (path.parent / name).write_bytes(data)
    log.info("wrote %s with %s", path, ", ".join(sorted(side_files)))
    side = sorted(side_files, key=lambda name: not name.endswith(".mtl"))  # the MTL, then its texture
    return [path, *(path.parent / name for name in side)]


def load_glb(path: str | Path) -> TexturedMesh:
    """Read a GLB (any number of textured primitives) back into Blender axes.

    The material's baseColorFactor is ignored; files written by ``write_glb`` keep it white.
    """
    scene = trimesh.load(str(path), force="scene", process=False)
    geometries = scene.dump(concatenate=False)
    combined = geometries[0] if len(geometries) == 1 else trimesh.util.concatenate(geometries)
    uvs = getattr(combined.visual, "uv", None)
    image = _base_colour_image(getattr(combined.visual, "material", None))
    if uvs is None or image is None:
        raise ValueError(f"{path} has no UV-mapped base colour texture")
    return TexturedMesh(
        vertices=gltf_to_blender(np.asarray(combined.vertices, dtype=np.float32)),
        faces=np.asarray(combined.faces, dtype=np.int32),
        uvs=np.asarray(uvs, dtype=np.float32),
        texture=np.asarray(image.convert("RGB"), dtype=np.uint8),
    )


def _base_colour_image(material) -> Image.Image | None:
    """PBR materials keep it as baseColorTexture; trimesh's simple (merged) ones as image."""
    image = getattr(material, "baseColorTexture", None)
    return image if image is not None else getattr(material, "image", None)


def write_preview(path: str | Path, mesh: TexturedMesh, views: int = 8, size: int = 160) -> None:
    """Turntable contact sheet: ``views`` shaded renders around the object, 4 per row, on white."""
    tiles = [
        raster.render_textured(
            mesh.vertices, mesh.faces, mesh.uvs, mesh.texture, camera, size, size, shading=True, ssaa=2
        )[0]
        for camera in preview_cameras(mesh.vertices, views)
    ]
    columns = min(views, PREVIEW_COLUMNS)
    rows = math.ceil(views / columns)
    sheet = np.ones((rows * size, columns * size, 3), dtype=np.float32)
    for index, tile in enumerate(tiles):
        row, column = divmod(index, columns)
        sheet[row * size : (row + 1) * size, column * size : (column + 1) * size] = tile
    Image.fromarray(np.round(sheet * 255.0).astype(np.uint8)).save(path)
    log.info("wrote preview %s", path)


def preview_cameras(vertices: np.ndarray, views: int) -> list[Camera]:
    """Evenly spaced azimuths (front first) that frame the mesh's bounding sphere."""
    vertices = np.asarray(vertices, dtype=np.float64)
    centre = 0.5 * (vertices.min(axis=0) + vertices.max(axis=0))
    radius = max(float(np.linalg.norm(vertices - centre, axis=1).max()), 1e-6)
    distance = PREVIEW_MARGIN * radius / math.sin(math.radians(PREVIEW_FOV_DEG) / 2)
    return [
        Camera(look_at(centre + orbit_position(360.0 * i / views, PREVIEW_ELEVATION_DEG, distance), centre),
               PREVIEW_FOV_DEG)
        for i in range(views)
    ]
