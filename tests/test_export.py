import io
import json
import math
import struct

import numpy as np
import pytest
import trimesh
from PIL import Image

from engine.axes import blender_to_gltf, gltf_to_blender
from engine.cameras import orbit_camera
from engine.export import (
    TexturedMesh,
    bake_texture,
    dilate,
    extract_mesh,
    load_glb,
    unwrap,
    write_glb,
    write_obj,
    write_preview,
)
from engine.raster import render_textured, sample_bilinear

SPHERE_RADIUS = 0.4
SPHERE_BOUND = 0.75
LEVEL = 5.0
RED = np.array([1.0, 0.0, 0.0])
BLUE = np.array([0.0, 0.0, 1.0])
GREEN = np.array([0.1, 0.8, 0.2])
GREY = np.array([0.5, 0.5, 0.5])


def mesh_from_density(density, bound: float, level: float, colour_fn, texture_size: int = 1024) -> TexturedMesh:
    """The export pipeline up to files: iso-surface, unwrap, bake."""
    vertices, faces = extract_mesh(density, bound, level)
    vertices, faces, uvs = unwrap(vertices, faces, texture_size)
    texture = bake_texture(vertices, faces, uvs, colour_fn, texture_size)
    return TexturedMesh(vertices, faces, uvs, texture)



def grid(size: int, bound: float):
    """World x, y, z of density[z, y, x] samples."""
    axis = np.linspace(-bound, bound, size)
    z, y, x = np.meshgrid(axis, axis, axis, indexing="ij")
    return x, y, z


def density_from_sdf(sdf: np.ndarray) -> np.ndarray:
    """Smooth density, 10 deep inside and 0 outside, crossing LEVEL on the surface."""
    return 10.0 / (1.0 + np.exp(np.clip(sdf / 0.02, -50, 50)))


def sphere_density(size: int = 64) -> np.ndarray:
    x, y, z = grid(size, SPHERE_BOUND)
    return density_from_sdf(np.sqrt(x**2 + y**2 + z**2) - SPHERE_RADIUS)


def red_right_blue_left(points: np.ndarray, normals: np.ndarray) -> np.ndarray:
    right = 1.0 / (1.0 + np.exp(-points[:, :1] / 0.02))
    return right * RED + (1.0 - right) * BLUE


BOX_HALF = np.array([0.3, 0.2, 0.25])
BUMP_CENTRE = np.array([0.0, 0.0, 0.25])
BUMP_RADIUS = 0.12


def box_with_bump_density(size: int = 48, bound: float = 0.5) -> np.ndarray:
    """A box whose top (+Z) carries a bump, so up is unambiguous."""
    x, y, z = grid(size, bound)
    box = np.max(np.stack([np.abs(x) - BOX_HALF[0], np.abs(y) - BOX_HALF[1], np.abs(z) - BOX_HALF[2]]), axis=0)
    bump = np.sqrt((x - BUMP_CENTRE[0]) ** 2 + (y - BUMP_CENTRE[1]) ** 2 + (z - BUMP_CENTRE[2]) ** 2) - BUMP_RADIUS
    return density_from_sdf(np.minimum(box, bump))


def green_front_grey_elsewhere(points: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """Green where the surface faces -Y (the engine's front); relies on outward normals."""
    front = (normals[:, 1] < -0.7)[:, None]
    return np.where(front, GREEN, GREY)


@pytest.fixture(scope="module")
def sphere_mesh() -> TexturedMesh:
    return mesh_from_density(sphere_density(), SPHERE_BOUND, LEVEL, red_right_blue_left, texture_size=512)


@pytest.fixture(scope="module")
def box_glb(tmp_path_factory):
    mesh = mesh_from_density(box_with_bump_density(), 0.5, LEVEL, green_front_grey_elsewhere, texture_size=256)
    path = tmp_path_factory.mktemp("box") / "box.glb"
    write_glb(path, mesh)
    return path


def read_glb(path):
    """Minimal GLB reader, independent of trimesh: (json, binary chunk)."""
    data = path.read_bytes()
    magic, version, _ = struct.unpack_from("<4sII", data, 0)
    assert magic == b"glTF" and version == 2
    json_length, _ = struct.unpack_from("<II", data, 12)
    document = json.loads(data[20 : 20 + json_length])
    bin_length, _ = struct.unpack_from("<II", data, 20 + json_length)
    start = 28 + json_length
    return document, data[start : start + bin_length]


def read_accessor(document, blob, index) -> np.ndarray:
    accessor = document["accessors"][index]
    view = document["bufferViews"][accessor["bufferView"]]
    dtype = {5126: np.float32, 5125: np.uint32, 5123: np.uint16}[accessor["componentType"]]
    width = {"SCALAR": 1, "VEC2": 2, "VEC3": 3}[accessor["type"]]
    start = view.get("byteOffset", 0) + accessor.get("byteOffset", 0)
    values = np.frombuffer(blob, dtype=dtype, count=accessor["count"] * width, offset=start)
    return values.reshape(accessor["count"], width)


# ---------------------------------------------------------------------------------------------


def test_axes_map_blender_to_gltf_and_back():
    blender = np.array([[1.0, 2.0, 3.0], [0.0, -1.0, 0.0]])

    gltf = blender_to_gltf(blender)

    np.testing.assert_allclose(gltf, [[1.0, 3.0, -2.0], [0.0, 0.0, 1.0]])  # front (-Y) -> +Z
    np.testing.assert_allclose(gltf_to_blender(gltf), blender)


def test_sphere_field_gives_a_closed_sphere():
    vertices, faces = extract_mesh(sphere_density(), SPHERE_BOUND, LEVEL)

    mesh = trimesh.Trimesh(vertices, faces, process=False)
    assert mesh.is_watertight
    assert mesh.volume > 0  # outward faces
    assert mesh.area == pytest.approx(4 * math.pi * SPHERE_RADIUS**2, rel=0.02)
    assert mesh.volume == pytest.approx(4 / 3 * math.pi * SPHERE_RADIUS**3, rel=0.02)
    np.testing.assert_allclose(np.linalg.norm(vertices, axis=1), SPHERE_RADIUS, atol=0.01)


def test_density_touching_the_box_still_closes():
    x, y, z = grid(32, 0.5)
    slab = density_from_sdf(np.abs(z) - 0.2)  # infinite slab, cut by the box sides

    vertices, faces = extract_mesh(slab, 0.5, LEVEL)

    assert trimesh.Trimesh(vertices, faces, process=False).is_watertight


def test_only_the_largest_piece_is_kept():
    x, y, z = grid(48, 0.75)
    big = np.sqrt((x - 0.3) ** 2 + y**2 + z**2) - 0.3
    floater = np.sqrt((x + 0.5) ** 2 + y**2 + z**2) - 0.1

    vertices, _ = extract_mesh(density_from_sdf(np.minimum(big, floater)), 0.75, LEVEL)

    assert vertices[:, 0].min() > -0.05


def test_empty_grid_raises_a_clear_error():
    with pytest.raises(ValueError, match="No surface at level"):
        extract_mesh(np.zeros((16, 16, 16)), 1.0, 0.5)


def test_glb_round_trip_keeps_geometry_and_field_colours(sphere_mesh, tmp_path):
    path = tmp_path / "sphere.glb"

    write_glb(path, sphere_mesh)
    loaded = load_glb(path)

    np.testing.assert_allclose(loaded.vertices, sphere_mesh.vertices, atol=1e-6)
    np.testing.assert_array_equal(loaded.texture, sphere_mesh.texture)
    assert trimesh.Trimesh(loaded.vertices, loaded.faces).is_watertight  # seams weld shut
    # Colours at vertices (on chart borders) and at face centres (inside charts).
    centres_uv = loaded.uvs[loaded.faces].mean(axis=1)
    centres = loaded.vertices[loaded.faces].mean(axis=1)
    for uv, points in ((loaded.uvs, loaded.vertices), (centres_uv, centres)):
        away_from_boundary = np.abs(points[:, 0]) > 0.1
        error = np.abs(sample_bilinear(loaded.texture, uv) - red_right_blue_left(points, None))
        assert error[away_from_boundary].mean() < 0.05


def test_raw_glb_is_y_up_front_plus_z_with_gltf_uvs(box_glb):
    document, blob = read_glb(box_glb)
    primitive = document["meshes"][0]["primitives"][0]
    positions = read_accessor(document, blob, primitive["attributes"]["POSITION"])
    texcoords = read_accessor(document, blob, primitive["attributes"]["TEXCOORD_0"])
    normals = read_accessor(document, blob, primitive["attributes"]["NORMAL"])
    assert all(set(node) <= {"name", "mesh", "children"} for node in document["nodes"])  # no transforms

    # Up: the bump's top is the highest point and sits over the middle of the box.
    top = positions[positions[:, 1].argmax()]
    assert top[1] == pytest.approx(BUMP_CENTRE[2] + BUMP_RADIUS, abs=0.03)
    assert -positions[:, 1].min() == pytest.approx(BOX_HALF[2], abs=0.03)
    outward = np.einsum("nc,nc->n", normals, positions) > 0  # the box is centred on the origin
    assert outward.mean() > 0.95
    # Front: glTF's UV origin is the image's top-left, so texel row = v * height here.
    image_index = document["textures"][0]["source"]
    view = document["bufferViews"][document["images"][image_index]["bufferView"]]
    png = blob[view.get("byteOffset", 0) : view.get("byteOffset", 0) + view["byteLength"]]
    texture = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    colours = sample_bilinear(texture, np.stack([texcoords[:, 0], 1.0 - texcoords[:, 1]], axis=1))
    front = positions[:, 2] > BOX_HALF[1] - 0.01
    back = positions[:, 2] < -(BOX_HALF[1] - 0.01)
    assert front.sum() > 20 and back.sum() > 20
    assert np.median(colours[front], axis=0) == pytest.approx(GREEN, abs=0.05)
    assert np.median(colours[back], axis=0) == pytest.approx(GREY, abs=0.05)

    pbr = document["materials"][0]["pbrMetallicRoughness"]
    assert pbr["metallicFactor"] == 0.0
    assert pbr["roughnessFactor"] == pytest.approx(0.8)
    assert not document["materials"][0].get("doubleSided", False)


def test_front_still_faces_front_after_loading_the_glb(box_glb):
    mesh = load_glb(box_glb)

    def centre_colour(azimuth: float) -> np.ndarray:
        camera = orbit_camera(azimuth, 0.0, 2.0, 40.0)
        rgb, _ = render_textured(mesh.vertices, mesh.faces, mesh.uvs, mesh.texture, camera, 32, 32, shading=False)
        return rgb[16, 14]  # just below the bump

    np.testing.assert_allclose(centre_colour(0.0), GREEN, atol=0.03)
    np.testing.assert_allclose(centre_colour(180.0), GREY, atol=0.03)
    assert mesh.vertices[:, 2].max() == pytest.approx(BUMP_CENTRE[2] + BUMP_RADIUS, abs=0.03)


def test_obj_mtl_and_png_load_with_their_texture(sphere_mesh, tmp_path):
    path = tmp_path / "sphere.obj"

    write_obj(path, sphere_mesh)

    assert {p.name for p in tmp_path.iterdir()} == {"sphere.obj", "sphere.mtl", "sphere.png"}
    assert "map_Kd sphere.png" in (tmp_path / "sphere.mtl").read_text()
    loaded = trimesh.load(path, process=False)
    image = np.asarray(loaded.visual.material.image.convert("RGB"))
    np.testing.assert_array_equal(image, sphere_mesh.texture)
    vertices = gltf_to_blender(np.asarray(loaded.vertices))
    away_from_boundary = np.abs(vertices[:, 0]) > 0.1
    error = np.abs(sample_bilinear(image, loaded.visual.uv) - red_right_blue_left(vertices, None))
    assert error[away_from_boundary].mean() < 0.05


def test_preview_is_a_grid_of_renders(sphere_mesh, tmp_path):
    path = tmp_path / "preview.png"

    write_preview(path, sphere_mesh, views=8, size=64)

    image = np.asarray(Image.open(path).convert("RGB"))
    assert image.shape == (2 * 64, 4 * 64, 3)
    tiles = image.reshape(2, 64, 4, 64, 3).transpose(0, 2, 1, 3, 4).reshape(8, 64, 64, 3)
    assert all((tile < 250).any(axis=-1).mean() > 0.2 for tile in tiles)  # every view shows the object
    assert (image[0, 0] == 255).all()  # white background


def test_dilate_fills_a_ring_and_keeps_covered_texels():
    texture = np.zeros((32, 32, 3), dtype=np.float32)
    covered = np.zeros((32, 32), dtype=bool)
    covered[12:20, 12:20] = True
    texture[covered] = np.random.default_rng(0).random((64, 3))

    dilated, grown = dilate(texture, covered, iterations=4)

    expected = np.zeros((32, 32), dtype=bool)
    expected[8:24, 8:24] = True
    np.testing.assert_array_equal(grown, expected)
    np.testing.assert_array_equal(dilated[covered], texture[covered])
    ring = expected & ~covered
    lo, hi = texture[covered].min(axis=0), texture[covered].max(axis=0)
    assert np.all((dilated[ring] >= lo - 1e-6) & (dilated[ring] <= hi + 1e-6))
    np.testing.assert_array_equal(dilated[~expected], 0.0)


def test_bake_pads_each_chart_with_its_own_colour_and_fills_the_rest_with_the_mean():
    # Two small charts: a red triangle on the left of the texture, a blue one on the right.
    vertices = np.array([[-1.0, 0, 0], [-0.9, 0, 0], [-1.0, 0, 0.1], [1.0, 0, 0], [1.1, 0, 0], [1.0, 0, 0.1]])
    faces = np.array([[0, 1, 2], [3, 4, 5]])
    uvs = np.array([[0.1, 0.4], [0.3, 0.4], [0.2, 0.6], [0.7, 0.4], [0.9, 0.4], [0.8, 0.6]])
    calls = []

    def red_left_blue_right(points, normals):
        calls.append(len(points))
        return np.where(points[:, :1] < 0, RED, BLUE)

    texture = bake_texture(vertices, faces, uvs, red_left_blue_right, size=64, padding=4)

    assert texture.shape == (64, 64, 3) and texture.dtype == np.uint8
    chart_texels = 2 * 0.5 * (0.2 * 64) ** 2
    assert calls == [pytest.approx(chart_texels, rel=0.15)]  # one call with every covered texel
    row_below_charts = int((1 - 0.4) * 64) + 2  # v = 0.4 is the charts' lower edge
    np.testing.assert_array_equal(texture[row_below_charts, 12], [255, 0, 0])  # padding: own colour
    np.testing.assert_array_equal(texture[row_below_charts, 51], [0, 0, 255])
    np.testing.assert_allclose(texture[2, 32], [128, 0, 128], atol=3)  # far away: mean of the two
