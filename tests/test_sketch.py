"""Sketch-Shape: the sketch's occupancy on the field's grid, the loss, and the task end to end."""

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import trimesh

import engine.tasks.sketch as sketch_module
from engine import Cancelled, SketchConfig, orbit_camera, sketch
from engine.config import with_overrides
from engine.field import VoxelField
from engine.meshes import MeshError, MeshInput
from engine.occupancy import SketchLoss, SketchOccupancy, lattice, voxel_opacity, winding_numbers
from engine.surface import field_surface
from engine.tasks import preset_config
from engine.tasks.common import seeded_generator
from engine.tasks.latent_field import FieldOptimisation
from engine.testing import cancel_when, ring_views, tilted_box
from primitive_world.meshes import contract_mesh

BOUND = 0.75


def small_config(overrides: dict | None = None):
    return preset_config("sketch", "draft", {"steps": 6, "field.grid_resolution": 24, "surface.mesh_resolution": 40,
                                             **(overrides or {})})


def box(low, high) -> trimesh.Trimesh:
    low, high = np.asarray(low, float), np.asarray(high, float)
    mesh = trimesh.creation.box(extents=high - low)
    mesh.apply_translation((low + high) / 2)
    return mesh


def l_shape() -> trimesh.Trimesh:
    """Two boxes overlapping into an L: no symmetry a blob or a wrong axis order could fake."""
    a = box((-0.4, -0.2, -0.4), (0.4, 0.2, -0.05))
    b = box((-0.4, -0.2, -0.1), (-0.05, 0.2, 0.4))
    return trimesh.Trimesh(np.vstack([a.vertices, b.vertices]), np.vstack([a.faces, b.faces + len(a.vertices)]))


def as_input(mesh: trimesh.Trimesh) -> MeshInput:
    return MeshInput(np.asarray(mesh.vertices, dtype=np.float64), np.asarray(mesh.faces, dtype=np.int64))


def volume_iou(a: MeshInput, b: MeshInput, resolution: int = 48) -> float:
    low = np.minimum(a.vertices.min(0), b.vertices.min(0))
    high = np.maximum(a.vertices.max(0), b.vertices.max(0))
    axes = [np.linspace(lo, hi, resolution) for lo, hi in zip(low, high)]
    points = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    inside_a = winding_numbers(a.vertices, a.faces, points) > 0.5
    inside_b = winding_numbers(b.vertices, b.faces, points) > 0.5
    return float((inside_a & inside_b).sum() / (inside_a | inside_b).sum())


# ---------------------------------------------------------------------------------------------
# occupancy on the grid


def test_lattice_is_the_fields_own_grid():
    field = VoxelField(17, 4, BOUND)
    assert np.array_equal(lattice(17, BOUND).astype(np.float32), field.grid_points().numpy())


def test_box_occupancy_and_distance_are_exact_on_the_grid():
    # Bounds off the lattice (spacing 0.075) and different on every axis, so no point is ambiguous
    # and a swapped axis would show.
    low, high = np.array([-0.16, -0.41, -0.29]), np.array([0.36, 0.12, 0.52])
    mesh = box(low, high)
    occupancy = SketchOccupancy.on_grid(mesh.vertices, mesh.faces, 21, BOUND)
    points = lattice(21, BOUND)
    inside = np.all((points > low) & (points < high), axis=-1)
    assert inside.sum() > 100
    assert np.array_equal(occupancy.inside, inside)

    centre, half = (low + high) / 2, (high - low) / 2
    offset = np.abs(points - centre) - half
    outside_distance = np.linalg.norm(np.maximum(offset, 0), axis=-1)
    inside_distance = -offset.max(axis=-1)
    expected = np.where(inside, inside_distance, outside_distance)
    np.testing.assert_allclose(occupancy.distance, expected, atol=1e-9)
    np.testing.assert_allclose(occupancy.signed_distance, np.where(inside, -expected, expected), atol=1e-9)
    # A few by hand: the lattice's corner (-0.75, -0.75, -0.75) is outside, off the box's corner.
    assert occupancy.distance[0, 0, 0] == pytest.approx(np.linalg.norm([0.59, 0.34, 0.46]))


def test_the_grid_index_order_is_the_one_the_field_samples():
    """Occupancy written into a field's density must be read back at the same world points."""
    mesh = l_shape()
    field = VoxelField(32, 4, BOUND)
    occupancy = SketchOccupancy.on_grid(mesh.vertices, mesh.faces, 32, BOUND)
    with torch.no_grad():
        field.density[0, 0] = torch.as_tensor(occupancy.density_logits(40.0), dtype=torch.float32)
    arm_up, arm_along, empty_corner = [-0.25, 0.0, 0.25], [0.25, 0.0, -0.25], [0.25, 0.0, 0.25]
    density = field.query_density(torch.tensor([arm_up, arm_along, empty_corner]))
    half_opaque = np.log(2.0) / field.voxel_size
    assert density[0] > 5 * half_opaque and density[1] > 5 * half_opaque
    assert density[2] < 0.1 * half_opaque


def test_winding_numbers_keep_a_mesh_with_holes_solid():
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.5)
    holed = sphere.faces[np.arange(len(sphere.faces)) % 40 != 0]  # 2.5% of the faces gone
    assert not trimesh.Trimesh(sphere.vertices, holed).is_watertight
    whole = SketchOccupancy.on_grid(sphere.vertices, sphere.faces, 24, BOUND)
    leaky = SketchOccupancy.on_grid(sphere.vertices, holed, 24, BOUND)
    assert whole.inside.sum() > 1000
    assert (whole.inside != leaky.inside).mean() < 0.002
    assert leaky.winding[12, 12, 12] == pytest.approx(1.0, abs=0.05)


def test_the_surface_weight_is_zero_on_the_surface_and_one_far_from_it():
    distance = np.array([0.0, 0.05, 0.1, 0.5])
    occupancy = SketchOccupancy(np.zeros(4, bool), np.zeros(4), distance)
    weights = occupancy.surface_weight(0.05)
    np.testing.assert_allclose(weights, 1 - np.exp(-distance ** 2 / (2 * 0.05 ** 2)))
    assert weights[0] == 0 and weights[-1] == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------
# the loss


def sphere_sketch(resolution=16):
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.45)
    return SketchOccupancy.on_grid(sphere.vertices, sphere.faces, resolution, BOUND)


def test_the_loss_is_the_weighted_cross_entropy_of_voxel_opacity():
    occupancy = sphere_sketch()
    field = VoxelField(16, 4, BOUND, blob_strength=3.0, blob_radius=0.6)
    loss = SketchLoss(occupancy, weight=2.5, sigma=0.1)
    alpha = 1 - torch.exp(-field.activate_density(field.density[0, 0]) * field.voxel_size)
    target = torch.as_tensor(occupancy.inside, dtype=torch.float32)
    weights = torch.as_tensor(occupancy.surface_weight(0.1), dtype=torch.float32)
    expected = 2.5 * F.binary_cross_entropy(alpha, target, weight=weights)
    assert torch.allclose(voxel_opacity(field), alpha)
    assert loss(field, 0.3).item() == pytest.approx(expected.item(), rel=1e-4)


def test_the_gradient_reaches_the_field_density_only_and_not_the_surface(tiny):
    occupancy = sphere_sketch()
    field = VoxelField(16, tiny.latent_channels, BOUND)
    # Voxels exactly on the surface get no gradient: put a few there.
    surface = np.zeros_like(occupancy.inside)
    surface[8, 8, :3] = True
    occupancy.distance[surface] = 0.0
    loss = SketchLoss(occupancy, weight=1.0, sigma=0.05)
    loss(field, 0.5).backward()
    gradient = field.density.grad[0, 0].numpy()
    assert np.all(gradient[surface] == 0)
    assert np.abs(gradient[~surface]).max() > 0
    # Inside voxels are pushed towards opaque, outside ones towards empty.
    assert np.all(gradient[occupancy.inside & ~surface] <= 0) and np.any(gradient[occupancy.inside] < 0)
    assert np.all(gradient[~occupancy.inside & ~surface] >= 0)
    assert field.features.grad is None
    for module in (tiny.unet, tiny.vae, tiny.text_encoder):
        assert all(parameter.grad is None for parameter in module.parameters())


def test_a_field_shaped_like_the_sketch_scores_better_than_the_blob():
    occupancy = sphere_sketch(24)
    loss = SketchLoss(occupancy, weight=1.0, sigma=0.05)
    blob = VoxelField(24, 4, BOUND, blob_strength=10.0, blob_radius=0.3)
    shaped = VoxelField(24, 4, BOUND)
    with torch.no_grad():
        shaped.density[0, 0] = torch.as_tensor(occupancy.density_logits(30.0), dtype=torch.float32)
    assert loss(shaped, 0.0).item() < 0.5 * loss(blob, 0.0).item()


def test_a_loss_for_another_grid_is_refused():
    loss = SketchLoss(sphere_sketch(16), weight=1.0, sigma=0.05)
    with pytest.raises(ValueError, match="grid"):
        loss(VoxelField(20, 4, BOUND), 0.0)


def test_density_init_replaces_the_blob(tiny):
    occupancy = sphere_sketch(24)
    logits = torch.as_tensor(occupancy.density_logits(30.0), dtype=torch.float32)
    run = FieldOptimisation("a red cube", tiny, small_config(), seeded_generator(0), density_init=logits)
    assert torch.equal(run.field.density[0, 0], logits)
    default = FieldOptimisation("a red cube", tiny, small_config(), seeded_generator(0))
    assert not torch.equal(default.field.density[0, 0], logits)


# ---------------------------------------------------------------------------------------------
# the task


def test_the_output_lands_on_the_sketch_in_its_own_place_and_scale(tiny):
    shape = l_shape()
    shape.apply_scale(4.0)
    shape.apply_translation([12.0, -7.0, 3.0])
    sketch_input = as_input(shape)
    result = sketch(sketch_input, "a red house", tiny, small_config())
    out = MeshInput(result.mesh.vertices.astype(np.float64), result.mesh.faces.astype(np.int64))
    low, high = out.vertices.min(0), out.vertices.max(0)
    sketch_low, sketch_high = shape.bounds
    overlap = np.clip(np.minimum(high, sketch_high) - np.maximum(low, sketch_low), 0, None).prod()
    union = np.prod(np.maximum(high, sketch_high) - np.minimum(low, sketch_low))
    assert overlap / union > 0.8
    # Started as the sketch, a few steps on a random prior keep its shape, L and all.
    assert volume_iou(out, sketch_input) > 0.75
    assert result.mesh.uvs.shape == (len(result.mesh.vertices), 2) and result.mesh.texture.shape[0] >= 512


def test_the_sketch_start_is_what_holds_the_shape_early(tiny):
    """The blob start with no sketch loss gives a round lump, far from the L."""
    sketch_input = as_input(l_shape())
    blob = sketch(sketch_input, "a red house", tiny, small_config({"sketch.init": "blob", "sketch.weight": 0.0}))
    out = MeshInput(blob.mesh.vertices.astype(np.float64), blob.mesh.faces.astype(np.int64))
    assert volume_iou(out, sketch_input) < 0.6


def house_box_field(house: trimesh.Trimesh, prior) -> VoxelField:
    """A field holding the house's bounding box, as the sketch task starts it (``sketch_loss``)."""
    config = SketchConfig()
    sketched = as_input(box(*house.bounds))
    _, logits = sketch_module.sketch_loss(sketched.vertices, sketched.faces, prior, config)
    field = VoxelField(config.field.grid_resolution, prior.latent_channels, prior.metadata.scene_bound)
    with torch.no_grad():
        field.density.copy_(logits.view_as(field.density))
    return field


def test_the_views_carve_the_roof_out_of_a_house_box_sketched_as_a_house(tiny):
    """Views that show a house cut the box's top edges where the roof slopes away; the surface
    stage without carving keeps the box."""
    house = contract_mesh("house")
    views = ring_views(house)
    surface = SketchConfig().surface
    carved = as_input(trimesh.Trimesh(*field_surface(house_box_field(house, tiny), views, surface, 0.1, 32, 64)))
    kept = as_input(trimesh.Trimesh(*field_surface(house_box_field(house, tiny), views,
                                                   dataclasses.replace(surface, carve_votes=0), 0.1, 32, 64)))
    above_the_eaves = np.array([[0.0, -0.25, 0.35], [0.2, 0.25, 0.35]])  # inside the box, outside the roof
    assert not (winding_numbers(carved.vertices, carved.faces, above_the_eaves) > 0.5).any()
    assert (winding_numbers(kept.vertices, kept.faces, above_the_eaves) > 0.5).all()
    exact = as_input(house)
    assert volume_iou(carved, exact) > volume_iou(kept, exact) + 0.05


def test_both_smoothing_stages_smooth_the_sketchs_surface_without_leaving_the_sketch(tiny):
    """Taubin passes and the normal filter each take bumps out of a tilted box's faces; the volume stays."""
    sketch_input = as_input(tilted_box())

    def asset(overrides):
        # Both stages act in mesh edges: at the standard lattice, not the small config's coarser one.
        config = small_config({"surface.mesh_resolution": 64, **overrides})
        mesh = sketch(sketch_input, "a red house", tiny, config).mesh
        return trimesh.Trimesh(mesh.vertices, mesh.faces, process=False)

    def bumpiness(mesh):  # mean angle between neighbouring faces, in degrees
        return float(np.degrees(mesh.face_adjacency_angles.mean()))

    smoothed = asset({})
    for stage in ("surface.taubin_iterations", "surface.normal_filter_iterations"):
        without = asset({stage: 0})
        assert bumpiness(smoothed) < 0.8 * bumpiness(without), stage
        assert abs(smoothed.volume / without.volume - 1) < 0.05, stage
    out = MeshInput(smoothed.vertices.astype(np.float64), smoothed.faces.astype(np.int64))
    assert volume_iou(out, sketch_input) > 0.8


def test_rig_cameras_are_moved_into_the_frame(tiny, monkeypatch):
    shape = box((9.0, 9.0, 9.0), (11.0, 11.0, 11.0))  # half-extent 1 -> scale 1 / 0.45
    target = np.array([10.0, 10.0, 10.0])
    camera = orbit_camera(30.0, 20.0, 4.4, 40.0)
    user_camera = type(camera)(camera.c2w.copy(), camera.fov_y_deg)
    user_camera.c2w[:3, 3] += target
    seen = {}
    original = sketch_module.optimise_field

    def spy(prompt, prior, config, generator, on_progress, cancel, rig, extra_loss, density_init):
        seen["rig"] = list(rig)
        return original(prompt, prior, config, generator, on_progress, cancel, rig, extra_loss, density_init)

    monkeypatch.setattr(sketch_module, "optimise_field", spy)
    sketch(as_input(shape), "a red cube", tiny, small_config({"steps": 2}), rig=[user_camera])
    (moved,) = seen["rig"]
    np.testing.assert_allclose(moved.position, camera.position * 0.45, atol=1e-9)
    np.testing.assert_allclose(moved.c2w[:3, :3], camera.c2w[:3, :3])


def test_progress_and_cancel_within_a_step(tiny):
    token, seen, cancel_at_two = cancel_when(lambda event: event.step == 2)
    with pytest.raises(Cancelled):
        sketch(as_input(l_shape()), "a red cube", tiny, small_config({"steps": 50}), on_progress=cancel_at_two,
               cancel=token)
    assert [(event.phase, event.step) for event in seen] == [("optimise", 1), ("optimise", 2)]


@pytest.mark.parametrize("vertices, faces, message", [
    (np.zeros((0, 3)), np.zeros((0, 3), np.int64), "empty"),
    ([[0, 0, 0], [1, 0, 0], [np.nan, 1, 0]], [[0, 1, 2]], "finite"),
    ([[0, 0, 0], [1, 0, 0], [0, 1, 0]], [[0, 1, 3]], "indices"),
    # A flat sheet has no inside: there is nothing to fill.
    ([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]], [[0, 1, 2], [1, 3, 2]], "encloses no volume"),
])
def test_bad_sketches_are_refused_before_any_work(tiny, vertices, faces, message):
    with pytest.raises(MeshError, match=message):
        sketch(MeshInput(np.asarray(vertices, float), np.asarray(faces)), "a red cube", tiny, small_config())


def test_bad_prompts_and_settings_are_refused(tiny):
    mesh = as_input(l_shape())
    with pytest.raises(ValueError, match="empty"):
        sketch(mesh, "   ", tiny, small_config())
    with pytest.raises(ValueError, match="frame_half_extent"):
        sketch(mesh, "a red cube", tiny, small_config({"frame_half_extent": 0.8}))
    for key, bad in (("sketch.weight", -1.0), ("sketch.sigma", 0.0), ("sketch.weight", float("nan")),
                     ("sketch.init", "cone")):
        with pytest.raises(ValueError, match=key.split(".")[-1]):
            small_config({key: bad})
    with pytest.raises(ValueError, match="unknown preset"):
        preset_config("sketch", "ultra")


def test_presets_keep_the_sketch_defaults():
    from engine.tasks.generate import PRESETS
    from engine.tasks.sketch import SKETCH_SURFACE

    draft, default = preset_config("sketch", "draft"), SketchConfig()
    assert isinstance(draft, SketchConfig) and draft.steps == PRESETS["draft"]["steps"]
    # The surface stages Sketch-Shape turns off stay off under every preset; the resolution follows it.
    for preset in PRESETS:
        config = preset_config("sketch", preset)
        assert config.sketch == default.sketch and config.frame_half_extent == default.frame_half_extent
        expected = with_overrides(SKETCH_SURFACE, {"mesh_resolution": config.surface.mesh_resolution})
        assert config.surface == expected, preset
    assert preset_config("sketch", "high").surface.mesh_resolution == PRESETS["high"]["surface.mesh_resolution"]
    assert preset_config("sketch", "draft", {"surface.carve_votes": 3}).surface.carve_votes == 3
