"""The surface stage: the visual hull of the decoded views, and Taubin smoothing of the mesh."""

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import trimesh

from engine.carve import carve
from engine.colour import DecodedView
from engine.export import extract_mesh
from engine.occupancy import lattice, winding_numbers
from engine.surface import SurfaceConfig, hull, hull_agreement, hull_surface, normal_filtered, taubin_smoothed
from engine.tasks.common import colour_cameras
from engine.testing import ring_views, silhouette_views, tilted_box, tiny_metadata
from primitive_world.meshes import contract_mesh

BOUND = 0.75
IMAGE = 64


def inside(vertices: np.ndarray, faces: np.ndarray, points) -> np.ndarray:
    return winding_numbers(vertices, faces, np.asarray(points, dtype=np.float64)) > 0.5


def test_the_hull_of_views_of_a_torus_keeps_its_hole_and_its_ring():
    views = ring_views(contract_mesh("torus"))
    vertices, faces = hull_surface(hull(BOUND, views, SurfaceConfig(mesh_resolution=64), 0.1), BOUND, 1.0)
    centre, tube = [0.0, 0.0, 0.0], [0.32, 0.0, 0.0]
    assert list(inside(vertices, faces, [centre, tube])) == [False, True]
    welded = trimesh.Trimesh(vertices, faces, process=True)
    assert welded.euler_number == 0  # one handle: a torus, not a disc


def test_the_hull_of_views_of_a_sphere_lies_on_the_sphere():
    views = ring_views(contract_mesh("sphere"))
    vertices, faces = hull_surface(hull(BOUND, views, SurfaceConfig(mesh_resolution=64), 0.1), BOUND, 1.0)
    radius = np.linalg.norm(vertices, axis=1)
    # The hull is a little larger than the object between views, never smaller.
    assert abs(np.median(radius) - 0.45) < 0.02 and radius.min() > 0.40


def test_the_hulls_views_span_the_elevation_range_so_a_flat_base_is_bounded_from_below():
    # The contract's camera range, 0-50 degrees: nothing looks at the cone's base from below, so the
    # hull bulges beneath it; the lowest ring at the range's end bounds that bulge closest.
    prior = SimpleNamespace(metadata=dataclasses.replace(tiny_metadata(), camera=dataclasses.replace(
        tiny_metadata().camera, distance=(2.2, 2.2), fov_y_deg=(40.0, 40.0), elevation_deg=(0.0, 50.0))))
    inner, ends = (colour_cameras(prior, 8, rings=4, range_ends=flag) for flag in (False, True))
    assert sorted({round(camera.elevation_deg, 2) for camera in ends}) == [0.0, 16.67, 33.33, 50.0]
    assert sorted({round(camera.elevation_deg, 2) for camera in inner}) == [6.25, 18.75, 31.25, 43.75]
    cone = contract_mesh("cone")  # base at z = -0.40
    hulls = [hull(BOUND, silhouette_views(cone, cameras), SurfaceConfig(), 0.1) for cameras in (inner, ends)]
    bottoms = [hull_surface(occupancy, BOUND, 1.0)[0][:, 2].min() for occupancy in hulls]
    assert bottoms[0] < -0.53 and bottoms[1] > -0.52, bottoms


def test_one_view_that_drew_the_object_thinner_does_not_cut_the_hull_within_the_tolerance():
    views = ring_views(contract_mesh("sphere"))
    thin = views[5]
    views[5] = DecodedView(thin.camera, np.ones_like(thin.image), thin.opacity)  # draws nothing at all
    tolerant, _ = hull_surface(hull(BOUND, views, SurfaceConfig(mesh_resolution=48, hull_tolerance=1), 0.1), BOUND, 1.0)
    assert np.median(np.linalg.norm(tolerant, axis=1)) > 0.42
    # Without tolerance that view empties the box.
    assert not hull(BOUND, views, SurfaceConfig(mesh_resolution=48, hull_tolerance=0), 0.1).any()


def test_views_of_one_object_agree_on_its_hull_and_speckled_views_do_not():
    views = ring_views(contract_mesh("cone"), azimuths=4)
    config = SurfaceConfig(mesh_resolution=48)
    assert hull_agreement(hull(BOUND, views, config, 0.1), BOUND, views, 0.1) > 0.8
    rng = np.random.default_rng(0)
    speckled = [DecodedView(v.camera, np.where(rng.random((IMAGE, IMAGE, 1)) < 0.5, v.image, 1.0), v.opacity)
                for v in views]
    assert hull_agreement(hull(BOUND, speckled, config, 0.1), BOUND, speckled, 0.1) < 0.5


def test_taubin_smoothing_halves_the_normal_noise_and_shrinks_the_shape_a_little():
    sphere = trimesh.creation.icosphere(4, 0.45)
    rng = np.random.default_rng(0)
    noisy = sphere.vertices + rng.normal(0, 0.01, sphere.vertices.shape)
    smoothed = taubin_smoothed(noisy, sphere.faces, 10)

    def normal_error(vertices):  # median angle between face normals and the sphere's, in degrees
        mesh = trimesh.Trimesh(vertices, sphere.faces, process=False)
        radial = mesh.triangles_center / np.linalg.norm(mesh.triangles_center, axis=1, keepdims=True)
        return np.degrees(np.median(np.arccos(np.clip((mesh.face_normals * radial).sum(axis=1), -1, 1))))

    assert normal_error(smoothed) < 0.5 * normal_error(noisy)
    shrink = 1 - trimesh.Trimesh(smoothed, sphere.faces).volume / sphere.volume
    assert 0 <= shrink < 0.05
    assert taubin_smoothed(noisy, sphere.faces, 0) is noisy


def test_a_bad_surface_method_is_refused():
    with pytest.raises(ValueError, match="surface method"):
        SurfaceConfig(method="magic")


def test_a_carving_setting_of_the_wrong_type_is_refused_in_one_line():
    with pytest.raises(ValueError, match=r"^surface.carve_outline_only must be true or false, got 'yes'$"):
        SurfaceConfig(carve_outline_only="yes")
    with pytest.raises(ValueError, match="carve_margin_px"):
        SurfaceConfig(carve_margin_px=-1)


def test_carving_by_the_outline_only_keeps_what_the_object_encloses_in_background_colour():
    """Views of a box whose middle looks like the ground (a white object's lit face on a white
    ground): carving cuts a tunnel through it, carving by the outline only does not."""
    cube = trimesh.creation.box(extents=(0.6, 0.6, 0.6))
    views = []
    for view in ring_views(cube):
        image = view.image.copy()
        image[26:38, 26:38] = 1.0  # inside every view's outline: the box spans about pixels 17-47
        views.append(DecodedView(view.camera, image, view.opacity))
    points = lattice(32, BOUND)
    density = np.where(np.abs(points).max(axis=-1) < 0.3, 1.0, 0.0)
    centre = (16, 16, 16)
    assert carve(density, BOUND, views, 0.1, 2)[centre] == 0.0
    kept = carve(density, BOUND, views, 0.1, 2, outline_only=True)
    assert kept[centre] == 1.0
    assert kept.sum() > 0.9 * carve(density, BOUND, ring_views(cube), 0.1, 2).sum()


def test_carving_without_a_margin_trims_up_to_the_outline_and_keeps_the_object():
    """Views of a box carve a larger block of density: grown by a pixel, the views' masks leave a
    rim around the box that carving up to the outline removes."""
    cube = trimesh.creation.box(extents=(0.6, 0.6, 0.6))
    points = lattice(48, BOUND)
    density = np.where(np.abs(points).max(axis=-1) < 0.5, 1.0, 0.0)
    in_the_box = np.abs(points).max(axis=-1) < 0.27
    kept = {margin: carve(density, BOUND, ring_views(cube), 0.1, 2, margin_px=margin) > 0 for margin in (0, 1)}
    assert kept[0][in_the_box].all() and kept[1][in_the_box].all()
    outside = np.abs(points).max(axis=-1) > 0.33  # more than a voxel out of the box
    assert kept[0][outside].sum() < 0.7 * kept[1][outside].sum()


def test_the_hulls_opening_removes_a_strut_thinner_than_two_voxels_and_keeps_the_body():
    views = ring_views(trimesh.util.concatenate([contract_mesh("sphere"),
                                               trimesh.creation.box((1.2, 0.02, 0.02))]), azimuths=4)
    config = SurfaceConfig(mesh_resolution=48)
    kept = hull(BOUND, views, config, 0.1)
    opened = hull(BOUND, views, dataclasses.replace(config, hull_opening=1), 0.1)
    plain = hull(BOUND, views, dataclasses.replace(config, hull_opening=0), 0.1)
    assert np.array_equal(kept, opened)  # the default opens
    points = lattice(48, BOUND).reshape(-1, 3)
    on_strut = (np.abs(points[:, 1:]) < 0.02).all(axis=1) & (points[:, 0] > 0.53) & (points[:, 0] < 0.62)
    assert on_strut.any() and plain.reshape(-1)[on_strut].all() and not opened.reshape(-1)[on_strut].any()
    assert opened.sum() > 0.9 * plain.sum()


def test_handles_count_the_tunnels_through_a_closed_mesh():
    from engine.surface import handles

    torus = trimesh.creation.torus(0.32, 0.12)
    sphere = trimesh.creation.icosphere(2, 0.45)
    assert handles(torus.vertices, torus.faces) == 1 and handles(sphere.vertices, sphere.faces) == 0


def test_the_normal_filter_flattens_noisy_faces_and_keeps_the_edges_that_taubin_rounds():
    tilted = tilted_box()
    planes = np.unique(tilted.face_normals.round(6), axis=0)  # the box's six faces
    offsets = (tilted.vertices @ planes.T).max(axis=0)
    axis = np.linspace(-BOUND, BOUND, 64)
    z, y, x = np.meshgrid(axis, axis, axis, indexing="ij")
    outside = (np.stack([x, y, z], axis=-1) @ planes.T - offsets).max(axis=-1)  # signed distance, roughly
    vertices, faces = extract_mesh(-outside, BOUND, 0.0)
    noisy = vertices + np.random.default_rng(0).normal(0, 0.001, vertices.shape)

    def errors(points):  # (median, 90th percentile) angle to the nearest face's normal, mean distance to it
        mesh = trimesh.Trimesh(points, faces, process=False)
        signed = mesh.triangles_center @ planes.T - offsets
        nearest = signed.argmax(axis=1)  # a convex shape's nearest face plane
        angles = np.degrees(np.arccos(np.clip((mesh.face_normals * planes[nearest]).sum(axis=1), -1, 1)))
        return np.median(angles), np.percentile(angles, 90), np.abs(signed.max(axis=1)).mean()

    raw, taubin, filtered = errors(noisy), errors(taubin_smoothed(noisy, faces, 10)), errors(
        normal_filtered(noisy, faces, 10, 0.2))
    assert filtered[0] < 0.25 * raw[0]  # the faces are flat again
    assert filtered[1] < 0.5 * taubin[1]  # and the edges sharp, where Taubin rounds them
    assert filtered[2] < raw[2] < taubin[2]  # closer to the box than the noisy surface was
    assert normal_filtered(noisy, faces, 0, 0.2) is noisy
