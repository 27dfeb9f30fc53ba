import math

import numpy as np
import pytest
import trimesh

from engine.cameras import Camera, camera_rays, look_at, orbit_camera, project
from engine.raster import (
    rasterize,
    rasterize_screen,
    render_silhouette,
    render_textured,
    vertex_normals,
)

# A 90-degree camera one metre in front of the y = 0 plane: at 64 px the focal length is 32 px,
# so world x = +-0.25 lands exactly on pixel columns 24 and 40.
FRONT_CAMERA = Camera(look_at((0.0, -1.0, 0.0)), 90.0)
SIZE = 64


def square(half: float, y: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """A square in the plane at ``y`` facing -Y (towards FRONT_CAMERA), corners ccw from bottom-left."""
    vertices = np.array([[-half, y, -half], [half, y, -half], [half, y, half], [-half, y, half]])
    return vertices, np.array([[0, 1, 2], [0, 2, 3]])


def test_square_covers_its_projected_pixels_at_its_depth():
    vertices, faces = square(0.25)

    fragments = rasterize(vertices, faces, FRONT_CAMERA, SIZE, SIZE)

    rows, cols = np.nonzero(fragments.mask)
    assert fragments.mask.sum() == 16 * 16
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (24, 39, 24, 39)
    np.testing.assert_allclose(fragments.depth[fragments.mask], 1.0, atol=1e-6)
    assert np.all(np.isinf(fragments.depth[~fragments.mask]))
    assert np.all(fragments.face_id[~fragments.mask] == -1)
    np.testing.assert_allclose(fragments.bary[fragments.mask].sum(axis=1), 1.0, atol=1e-6)


@pytest.mark.parametrize("winding", [[0, 1, 2], [0, 2, 1]])
def test_triangle_covers_pixel_centres_inside_it_for_either_winding(winding):
    # Right triangle with legs of 16.2 px from (24, 24): centres with i + j <= 15 are inside.
    corners = np.array([[[24.0, 24.0], [40.2, 24.0], [24.0, 40.2]]])[:, winding]

    fragments = rasterize_screen(corners, np.ones((1, 3)), SIZE, SIZE)

    i, j = np.mgrid[0:SIZE, 0:SIZE]
    expected = (i >= 24) & (j >= 24) & ((i - 24) + (j - 24) <= 15)
    assert expected.sum() == 136
    np.testing.assert_array_equal(fragments.mask, expected)


def test_ray_through_each_pixel_hits_the_point_that_projects_to_its_centre():
    camera = orbit_camera(30.0, 20.0, 2.5, 50.0)
    width, height = 80, 60  # not square, to catch aspect-ratio mistakes
    vertices = np.array([[-0.6, -0.2, -0.4], [0.5, 0.3, -0.3], [0.1, -0.1, 0.6]])
    faces = np.array([[0, 1, 2]])

    fragments = rasterize(vertices, faces, camera, width, height)
    rows, cols = np.nonzero(fragments.mask)
    assert len(rows) > 100
    points = fragments.bary[rows, cols].astype(np.float64) @ vertices

    pixels, depth = project(points, camera, width, height)
    np.testing.assert_allclose(pixels, np.stack([cols + 0.5, rows + 0.5], axis=1), atol=1e-3)
    np.testing.assert_allclose(depth, fragments.depth[rows, cols], rtol=1e-5)
    origins, directions = (t.double().numpy() for t in camera_rays(camera, width, height))
    to_point = points - origins[rows, cols]
    off_ray = np.linalg.norm(np.cross(to_point, directions[rows, cols]), axis=1)
    assert off_ray.max() < 1e-5


@pytest.mark.parametrize("near_first", [True, False])
def test_nearest_surface_wins_where_squares_overlap(near_first):
    near_vertices, near_faces = square(0.2, y=-0.2)  # depth 0.8
    far_vertices, far_faces = square(0.6, y=0.3)  # depth 1.3, larger on screen
    parts = [(near_vertices, near_faces), (far_vertices, far_faces)]
    if not near_first:
        parts.reverse()
    vertices = np.concatenate([parts[0][0], parts[1][0]])
    faces = np.concatenate([parts[0][1], parts[1][1] + 4])
    near_face_ids = {0, 1} if near_first else {2, 3}

    fragments = rasterize(vertices, faces, FRONT_CAMERA, SIZE, SIZE)

    centre_ids = set(np.unique(fragments.face_id[28:36, 28:36]).tolist())
    assert centre_ids <= near_face_ids
    np.testing.assert_allclose(fragments.depth[32, 32], 0.8, rtol=1e-6)
    np.testing.assert_allclose(fragments.depth[32, 20], 1.3, rtol=1e-6)  # only the far square


def test_triangles_behind_the_camera_are_discarded():
    vertices, faces = square(0.25, y=-2.0)  # one metre behind FRONT_CAMERA

    fragments = rasterize(vertices, faces, FRONT_CAMERA, SIZE, SIZE)

    assert not fragments.mask.any()


def test_sphere_silhouette_has_the_analytic_disc_area():
    radius, distance, fov, size = 0.5, 2.0, 40.0, 128
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=radius)
    camera = orbit_camera(15.0, 10.0, distance, fov)

    coverage = render_silhouette(sphere.vertices, sphere.faces, camera, size, size, ssaa=4)

    # The silhouette cone has half-angle asin(r / d); its disc radius in pixels follows.
    disc_radius = camera.focal_px(size) * math.tan(math.asin(radius / distance))
    assert coverage.sum() == pytest.approx(math.pi * disc_radius**2, rel=0.01)
    assert np.any((coverage > 0.1) & (coverage < 0.9))  # antialiased edge
    assert coverage[size // 2, size // 2] == 1.0 and coverage[0, 0] == 0.0


def checker_texture() -> np.ndarray:
    """2x2 texture, image rows top to bottom: [red, green], [blue, white]."""
    return np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [255, 255, 255]]], dtype=np.uint8)


SQUARE_UVS = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])  # bottom-left origin


@pytest.mark.parametrize("per_corner", [False, True])
def test_checker_texture_lands_in_the_expected_quadrants(per_corner):
    vertices, faces = square(1.0)  # fills the 64 px frame exactly
    uvs = SQUARE_UVS[faces] if per_corner else SQUARE_UVS

    rgb, alpha = render_textured(vertices, faces, uvs, checker_texture(), FRONT_CAMERA, SIZE, SIZE, shading=False)

    # Pixels near the corners sample beyond the outer texel centres, where clamping keeps colours pure.
    near, far = SIZE // 8, 7 * SIZE // 8
    np.testing.assert_allclose(rgb[near, near], [1, 0, 0], atol=1e-6)  # top-left
    np.testing.assert_allclose(rgb[near, far], [0, 1, 0], atol=1e-6)  # top-right
    np.testing.assert_allclose(rgb[far, near], [0, 0, 1], atol=1e-6)  # bottom-left
    np.testing.assert_allclose(rgb[far, far], [1, 1, 1], atol=1e-6)  # bottom-right
    assert alpha.min() == 1.0


@pytest.mark.parametrize("camera_side", [-1.0, 1.0])
def test_lambert_shading_lights_the_side_facing_the_camera(camera_side):
    vertices, faces = square(0.25)  # wound to face -Y
    camera = Camera(look_at((0.0, camera_side, 0.0)), 90.0)
    white = np.full((4, 4, 3), 255, dtype=np.uint8)

    rgb, alpha = render_textured(
        vertices, faces, SQUARE_UVS, white, camera, SIZE, SIZE, shading=True, background=(0.0, 0.5, 0.0)
    )

    # Seen from behind, an open surface is lit as if its normal faced the camera.
    facing_camera = np.array([0.0, camera_side, 0.0])
    light = np.array([0.4, -0.6, 0.7]) / np.linalg.norm([0.4, -0.6, 0.7])
    expected = 0.4 + 0.6 * max(0.0, float(facing_camera @ light))
    np.testing.assert_allclose(rgb[32, 32], [expected] * 3, atol=1e-4)
    np.testing.assert_allclose(rgb[2, 2], [0.0, 0.5, 0.0])
    assert alpha[32, 32] == 1.0 and alpha[2, 2] == 0.0


def test_vertex_normals_are_outward_and_shared_across_split_vertices():
    sphere = trimesh.creation.icosphere(subdivisions=2, radius=1.0)
    vertices = np.concatenate([sphere.vertices, sphere.vertices[:1]])  # vertex 0 split in two, as at a UV seam
    faces = sphere.faces.copy()
    uses_vertex_0 = np.nonzero((faces == 0).any(axis=1))[0]
    half = uses_vertex_0[: len(uses_vertex_0) // 2]
    faces[half] = np.where(faces[half] == 0, len(vertices) - 1, faces[half])

    normals = vertex_normals(vertices, faces)

    np.testing.assert_allclose(normals[0], normals[-1])
    np.testing.assert_allclose(np.einsum("nc,nc->n", normals, vertices), 1.0, atol=0.01)
