"""The colour stage's parts: SDEdit refinement, silhouette carving, object-only back-projection, rig views."""

from dataclasses import replace

import numpy as np
import pytest
import torch
import trimesh
from scipy.ndimage import binary_dilation, binary_erosion

from engine import generate
from engine.cameras import CameraConvention, ViewSampler, fit_rig, orbit_camera
from engine.carve import carve
from engine.colour import (
    MAX_FILL_SOURCES,
    DecodedView,
    albedo,
    backproject,
    fill_sources,
    filled,
    foreground_mask,
    silhouette_mask,
)
from engine.export import texel_surface_points, unwrap
from engine.occupancy import lattice
from engine.prior import Prior
from engine.prompts import ViewPrompts
from engine.raster import Lighting, render_silhouette
from engine.refine import RefineConfig, refine_latents
from engine.tasks import preset_config
from engine.testing import albedo_texels_mismatch, tiny_components, tiny_metadata

RED, WHITE = np.array([0.8, 0.1, 0.1]), np.ones(3)


def sphere_views(radius: float, azimuths=range(0, 360, 45), elevation=20.0, rim_pixels: int = 0):
    """Views of a red sphere on white, as if decoded; ``rim_pixels`` of its edge show background."""
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=radius)
    views = []
    for azimuth in azimuths:
        camera = orbit_camera(azimuth, elevation, 2.2, 40.0)
        mask = render_silhouette(sphere.vertices, sphere.faces, camera, 64, 64) > 0.5
        if rim_pixels:
            mask = binary_erosion(mask, iterations=rim_pixels)
        image = np.where(mask[..., None], RED, WHITE)
        views.append(DecodedView(camera, image, mask.astype(float)))
    return views


def test_foreground_mask_is_the_difference_from_the_border_colour():
    view = sphere_views(0.3, azimuths=[0])[0]
    mask = foreground_mask(view, 0.1)
    assert np.array_equal(mask, view.opacity > 0.5)
    assert foreground_mask(view, 0.1, grow=2).sum() > mask.sum() > foreground_mask(view, 0.1, grow=-2).sum()


def test_the_silhouette_keeps_faint_pixels_that_touch_the_object_and_drops_faint_specks():
    # A white object on white: its lit face is 0.04 off the background, its shaded rim 0.3.
    view = sphere_views(0.3, azimuths=[0])[0]
    obj = view.opacity > 0.5
    rim = obj & ~binary_erosion(obj, iterations=2)
    image = np.where(obj[..., None], 0.96, 1.0) - np.where(rim[..., None], 0.26, 0.0)
    image[4:6, 4:6] = 0.96  # a faint speck far from the object: the VAE's background noise
    halo = binary_dilation(obj) & ~obj
    image[halo] = 0.96  # and the VAE's faint halo around the object's outline
    white_on_white = DecodedView(view.camera, np.repeat(image, 3, axis=-1), view.opacity)
    assert np.array_equal(silhouette_mask(white_on_white, 0.1), obj)
    assert np.array_equal(foreground_mask(white_on_white, 0.1), rim)  # colour only from clear pixels


def test_carving_keeps_the_visual_hull_and_empties_what_views_show_as_background():
    bound, resolution = 0.75, 32
    density = np.ones((resolution,) * 3)
    carved = carve(density, bound, sphere_views(0.3), threshold=0.1, min_votes=1)
    radius = np.linalg.norm(lattice(resolution, bound), axis=-1)
    voxel = 2 * bound / (resolution - 1)
    assert (carved[radius < 0.3 - voxel] == 1).all()  # the object itself is never carved
    assert (carved[radius > 0.3 + 3 * voxel] == 0).all()  # outside the hull's bulge, all empty
    # With a vote of 2, a point only one view calls background survives.
    assert (carve(density, bound, sphere_views(0.3), 0.1, min_votes=2) >= carved).all()


def test_backprojection_takes_no_colour_from_pixels_that_show_background():
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.3)
    vertices, faces, uvs = unwrap(sphere.vertices.astype(np.float32), sphere.faces.astype(np.int32), 512)
    _, _, points, normals, _ = texel_surface_points(vertices, faces, uvs, 256)
    views = sphere_views(0.3, rim_pixels=2)  # the decoded object is thinner than the mesh
    plain, _ = backproject(points, normals, vertices, faces, views, depth_tolerance=0.03)
    masked, seen = backproject(points, normals, vertices, faces, views, depth_tolerance=0.03,
                               foreground_threshold=0.1)
    assert np.abs(plain - RED).max(axis=1).mean() > 0.05  # the rim's white leaks in without the mask
    assert 0.3 < seen.mean() < 1.0  # grazing points are unseen
    assert np.abs(masked[seen] - RED).max(axis=1).max() < 1e-6
    # and take their seen neighbours' colour
    assert np.abs(filled(points, masked, seen) - RED).max(axis=1).max() < 1e-6


def test_points_seen_only_at_grazing_angles_take_the_colour_of_well_seen_neighbours():
    # A decoded object's outline blends into the background: here its outer two pixels are pale
    # pink, which no foreground threshold can tell from a real pink.
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.3)
    vertices, faces, uvs = unwrap(sphere.vertices.astype(np.float32), sphere.faces.astype(np.int32), 512)
    _, _, points, normals, _ = texel_surface_points(vertices, faces, uvs, 256)
    views = sphere_views(0.3)
    for view in views:
        rim = (view.opacity > 0.5) & ~binary_erosion(view.opacity > 0.5, iterations=2)
        view.image[rim] = (0.9, 0.6, 0.6)

    def texture(min_confidence):
        colours, seen = backproject(points, normals, vertices, faces, views, depth_tolerance=0.03,
                                    foreground_threshold=0.1, min_confidence=min_confidence)
        return filled(points, colours, seen), seen

    every_view, _ = texture(0.0)
    confident, seen = texture(0.5)
    # Pale: more than half way from red to the rim's pink (0.5 off in green and blue).
    assert np.mean(np.abs(every_view - RED).max(axis=1) > 0.25) > 0.1  # the poles came out pale
    assert np.abs(confident - RED).max(axis=1).max() < 0.25
    assert seen.mean() > 0.5


def test_one_point_more_seen_changes_at_most_one_fill_source_of_a_bounded_few():
    # The texture's unseen texels take the colour of the nearest source: sources that all shifted on
    # one threshold pixel recoloured a fifth of a texture on a 1e-6 difference in the U-Net.
    seen = np.random.default_rng(0).random(300_000) < 0.6
    sources = fill_sources(seen)
    assert seen[sources].all() and len(sources) <= MAX_FILL_SOURCES + 1
    for flipped in (3, 150_001, 299_999):
        seen[flipped] = not seen[flipped]
        changed = set(fill_sources(seen)) ^ set(sources)
        assert changed <= {flipped}
        seen[flipped] = not seen[flipped]
    few = np.zeros(300_000, dtype=bool)
    few[[7, 11]] = True  # fewer seen points than the stride: all of them colour the rest
    assert fill_sources(few).tolist() == [7, 11]


def test_refinement_is_identity_at_zero_strength_and_seeded_otherwise(tiny):
    prompts = ViewPrompts(tiny, "a red cube")
    cameras = [orbit_camera(0, 20, 2.2, 40), orbit_camera(180, 20, 2.2, 40)]
    latents = torch.randn(2, tiny.latent_channels, tiny.metadata.latent_size, tiny.metadata.latent_size)
    same = refine_latents(tiny, latents, cameras, prompts, RefineConfig(strength=0.0), torch.Generator())
    assert same is latents
    config = RefineConfig(strength=0.5, steps=3)
    first = refine_latents(tiny, latents, cameras, prompts, config, torch.Generator().manual_seed(1))
    again = refine_latents(tiny, latents, cameras, prompts, config, torch.Generator().manual_seed(1))
    assert torch.equal(first, again) and torch.isfinite(first).all()
    assert not torch.allclose(first, latents, atol=1e-3)


def test_rig_views_are_fitted_to_the_prior_distance_and_optimised_every_few_steps():
    shot = orbit_camera(30.0, 25.0, 11.0, 39.6)
    [fitted] = fit_rig([shot], 2.2)
    assert abs(fitted.distance - 2.2) < 1e-9
    assert abs(fitted.azimuth_deg - 30.0) < 1e-6 and abs(fitted.elevation_deg - 25.0) < 1e-6
    assert np.allclose(fitted.c2w[:3, :3], shot.c2w[:3, :3])
    sampler = ViewSampler(CameraConvention(distance=(2.2, 2.2), elevation_deg=(0.0, 50.0)), [shot], rig_every=4)
    generator = torch.Generator().manual_seed(0)
    cameras = [sampler.camera(step, generator) for step in range(40)]
    assert all(np.allclose(cameras[step].c2w, fitted.c2w) for step in range(0, 40, 4))
    others = [camera for step, camera in enumerate(cameras) if step % 4]
    elevations = [camera.elevation_deg for camera in others]
    assert min(elevations) >= 0.0 - 1e-6 and max(elevations) <= 50.0 + 1e-6
    assert abs(np.mean(elevations) - 25.0) < 8.0  # centred on the rig's elevation


def test_front_and_back_views_name_each_other_as_perp_neg_negatives(tiny):
    prompts = ViewPrompts(tiny, "a red house")
    back, side, front = (orbit_camera(az, 10.0, 2.2, 40.0) for az in (180.0, 90.0, 0.0))
    assert torch.equal(prompts.opposite_for_camera(back), prompts.conditional["front"])
    assert torch.equal(prompts.opposite_for_camera(front), prompts.conditional["back"])
    assert prompts.opposite_for_camera(side) is None
    assert ViewPrompts(tiny, "a red house", view_dependent=False).opposite_for_camera(back) is None
    with pytest.raises(ValueError, match="perp_neg_weight"):
        RefineConfig(strength=0.3, perp_neg_weight=float("nan"))

    latents = torch.randn(3, tiny.latent_channels, tiny.metadata.latent_size, tiny.metadata.latent_size)
    cameras = [back, side, front]
    plain = refine_latents(tiny, latents, cameras, prompts, RefineConfig(strength=0.5),
                           torch.Generator().manual_seed(2))
    pushed = refine_latents(tiny, latents, cameras, prompts, RefineConfig(strength=0.5, perp_neg_weight=1.0),
                            torch.Generator().manual_seed(2))
    changed = (pushed - plain).flatten(1).abs().amax(dim=1)
    # The side view has no opposite, so Perp-Neg leaves it alone; front and back change.
    assert changed[1] < 1e-4 and changed[0] > 1e-3 and changed[2] > 1e-3


def test_albedo_divides_the_light_out_and_keeps_the_hue_where_that_overshoots():
    lighting = Lighting(direction=(0.0, 0.0, 1.0), ambient=0.4, diffuse=0.6)
    normals = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])  # lit fully, at ambient, at ambient
    colours = np.array([[0.5, 0.25, 0.0], [0.2, 0.1, 0.3], [0.6, 0.33, 0.0]])  # the last is orange in shadow
    out = albedo(colours, normals, lighting)
    assert np.allclose(out[0], colours[0]) and np.allclose(out[1], colours[1] / 0.4)
    # 0.6 / 0.4 = 1.5 would clip to 1 while green reaches 0.825: yellow. Scaled, orange stays orange.
    assert np.allclose(out[2], [1.0, 0.55, 0.0])
    assert albedo(colours, normals, None) is colours


def test_albedo_texture_is_the_baked_colour_with_the_prior_lighting_divided_out():
    lighting = Lighting()
    lit_prior = Prior(*tiny_components(), metadata=replace(tiny_metadata(), lighting=lighting))
    # Flattening off: it works on the albedo, after the division this test checks.
    config = {"steps": 4, "field.grid_resolution": 24, "surface.mesh_resolution": 32, "colour.texture_size": 512,
              "colour.flatten.iterations": 0}
    unlit_config = preset_config("generate", "draft", {"colour.delight": False, **config})
    lit = generate("a red cube", lit_prior, unlit_config).mesh
    delit = generate("a red cube", lit_prior, preset_config("generate", "draft", config)).mesh
    assert np.array_equal(lit.vertices, delit.vertices)
    rows, cols, _, normals, _ = texel_surface_points(lit.vertices, lit.faces, lit.uvs, 512)
    assert albedo_texels_mismatch(lit.texture[rows, cols], delit.texture[rows, cols], normals, lighting) is None
    assert (delit.texture[rows, cols].astype(int) >= lit.texture[rows, cols]).all()


def test_flattening_takes_the_noise_out_of_one_colour_and_keeps_a_door_edge_crisp():
    from engine.colour import flattened

    rng = np.random.default_rng(0)
    x, z = np.meshgrid(np.linspace(-0.35, 0.35, 200), np.linspace(-0.45, 0.1, 160))
    points = np.stack([x.ravel(), np.full(x.size, -0.3), z.ravel()], axis=1)
    door = (np.abs(points[:, 0]) < 0.1) & (points[:, 2] < -0.1)
    truth = np.where(door[:, None], [0.25, 0.12, 0.05], [0.1, 0.65, 0.15])
    noisy = np.clip(truth + rng.normal(0, 0.05, truth.shape), 0, 1)
    flat = flattened(points, noisy, cell=0.025, iterations=200, sigma=0.1)
    error = np.abs(flat - truth).max(axis=1)
    assert np.median(np.abs(noisy - truth).max(axis=1)) > 0.05
    assert np.median(error) < 0.02 and (error > 0.15).mean() < 0.01  # flat, and the edge is where it was
    # Two regions that differ by far more than sigma never bleed into each other.
    assert np.abs(flat[door].mean(axis=0) - [0.25, 0.12, 0.05]).max() < 0.03


def test_colour_cameras_spread_their_rings_evenly_over_the_priors_elevations(tiny):
    from engine.tasks.common import colour_cameras

    low, high = tiny.metadata.camera.elevation_deg
    two = colour_cameras(tiny, 4)
    four = colour_cameras(tiny, 4, rings=4)
    def elevation(camera):
        return np.degrees(np.arcsin(camera.position[2] / camera.distance))

    assert sorted({round(elevation(c), 6) for c in two}) == pytest.approx([low + 0.25 * (high - low),
                                                                            low + 0.75 * (high - low)])
    assert len(four) == 16 and max(elevation(c) for c in four) == pytest.approx(low + 0.875 * (high - low))
