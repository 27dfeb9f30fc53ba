"""Latent-Paint on the tiny random prior: geometry kept, coordinates round-trip, seeds, cancel, errors."""

import numpy as np
import pytest
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from engine import Cancelled
from engine.cameras import Camera, ViewSampler, look_at
from engine.config import with_overrides
from engine.export import texel_surface_points, unwrap
from engine.mesh_render import ViewPool
from engine.meshes import MAX_FACES, MeshError, MeshInput, frame_normalisation
from engine.raster import rasterize
from engine.tasks import paint as paint_module
from engine.tasks import preset_config
from engine.tasks.common import seeded_generator
from engine.tasks.paint import LatentPaint, PaintConfig, paint, uv_layout
from engine.testing import cancel_when
from primitive_world.meshes import contract_mesh

CENTRE = np.array([10.0, -5.0, 2.0])
SCALE = 3.0


def small_config(overrides: dict | None = None):
    return preset_config("paint", "draft", {"steps": 4, "texture.size": 16, "texture.view_pool": 6,
                                            "texture.init_views": 4, "texture.init_iterations": 10,
                                            "colour.view_azimuths": 4, **(overrides or {})})


def user_cube(subdivisions: int = 1) -> MeshInput:
    """The contract cube, scaled and moved far from the origin: the user's coordinates, not the frame."""
    cube = contract_mesh("cube", subdivisions)
    return MeshInput(np.asarray(cube.vertices) * SCALE + CENTRE, np.asarray(cube.faces, dtype=np.int64))


def user_rig() -> list[Camera]:
    """A shot camera in the user's world, looking at the (moved) cube from the front-right."""
    eye = CENTRE + SCALE * np.array([1.2, -1.8, 0.6])
    return [Camera(look_at(eye, CENTRE), 35.0)]


@pytest.fixture(scope="module")
def cube_run(tiny):
    """One paint of the moved cube, with its progress events: (input mesh, result, events)."""
    mesh, events = user_cube(), []
    result = paint(mesh, "a red cube", tiny, small_config({"steps": 5}), on_progress=events.append)
    return mesh, result, events


def test_unwrapped_paint_keeps_faces_and_returns_the_users_positions(cube_run):
    mesh, result, _ = cube_run
    out = result.mesh
    assert out.faces.shape == mesh.faces.shape
    # Seams split vertices, each output vertex maps back, and every face keeps its own corners.
    assert len(out.vertices) > len(mesh.vertices)
    assert result.source_vertex.shape == (len(out.vertices),)
    assert np.array_equal(result.source_vertex[out.faces], mesh.faces)
    assert np.array_equal(out.vertices, mesh.vertices[result.source_vertex].astype(np.float32))
    assert out.uvs.shape == (len(out.vertices), 2) and out.uvs.min() >= 0 and out.uvs.max() <= 1
    assert out.texture.dtype == np.uint8 and out.texture.shape == (512, 512, 3)
    assert result.preview.dtype == np.uint8 and result.preview.ndim == 3 and result.preview.shape[2] == 3
    assert np.isfinite(result.final_loss) and np.isfinite(result.colour_error)
    assert {"optimise_s", "colour_s"} <= set(result.timings)


def test_progress_every_step_with_previews_then_the_colour_stage(cube_run):
    _, _, events = cube_run
    optimise = [e for e in events if e.phase == "optimise"]
    assert [e.step for e in optimise] == [1, 2, 3, 4, 5] and all(e.total == 5 for e in optimise)
    assert any(e.preview is not None and e.preview.ndim == 3 for e in optimise)
    colour = [e for e in events if e.phase == "colour"]
    assert events[:5] == optimise and events[5:] == colour
    assert [e.step for e in colour] == sorted(e.step for e in colour)
    assert colour[-1].step == colour[-1].total and colour[-1].preview is not None


def test_user_uvs_are_kept_exactly(tiny):
    cube = user_cube()
    vertices, faces, uvs = unwrap(cube.vertices, cube.faces, 512)
    uvs = 0.05 + 0.9 * uvs.astype(np.float64)  # not what paint's own unwrap would give
    mesh = MeshInput(vertices.astype(np.float64), faces.astype(np.int64), uvs)
    result = paint(mesh, "a red cube", tiny, small_config())
    assert np.array_equal(result.mesh.vertices, mesh.vertices.astype(np.float32))
    assert np.array_equal(result.mesh.faces, mesh.faces)
    assert np.array_equal(result.mesh.uvs, uvs.astype(np.float32))
    assert np.array_equal(result.source_vertex, np.arange(len(vertices)))


def test_frame_normalisation_round_trips_and_moves_cameras_with_the_mesh():
    mesh = user_cube()
    frame = frame_normalisation(mesh.vertices, mesh.faces, 0.45, 0.45)
    inside = frame.to_frame(mesh.vertices)
    # The contract cube's RMS surface radius is 0.452: it lands at its own size, centred.
    assert np.allclose(inside.min(axis=0), -inside.max(axis=0))
    assert np.ptp(inside, axis=0).max() / 2 == pytest.approx(0.45 / np.sqrt(5 / 3))
    assert np.allclose(frame.to_user(inside), mesh.vertices)
    # A similarity moves camera and mesh together, so the shot sees exactly the same picture.
    camera = user_rig()[0]
    seen_by_user = rasterize(mesh.vertices, mesh.faces, camera, 48, 48)
    seen_in_frame = rasterize(inside, mesh.faces, frame.camera_to_frame(camera), 48, 48)
    assert seen_by_user.mask.mean() > 0.1
    assert np.array_equal(seen_by_user.mask, seen_in_frame.mask)
    assert np.array_equal(seen_by_user.face_id, seen_in_frame.face_id)


def test_frame_normalisation_fits_the_box_of_a_long_mesh():
    rod = contract_mesh("cube", 0)
    vertices = np.asarray(rod.vertices) * [4.0, 0.2, 0.2]
    frame = frame_normalisation(vertices, np.asarray(rod.faces), 0.45, 0.45)
    assert np.ptp(frame.to_frame(vertices), axis=0).max() / 2 == pytest.approx(0.45)


def test_rig_cameras_are_optimised_and_decoded_in_the_frame(tiny, monkeypatch):
    samplers = []
    real_sampler = paint_module.ViewSampler

    def spy(convention, rig=(), *args, **kwargs):
        samplers.append(list(rig))
        return real_sampler(convention, rig, *args, **kwargs)

    decoded = []
    real_colour_cameras = paint_module.colour_cameras

    def colour_spy(prior, azimuths, rig=()):
        decoded.append(list(rig))
        return real_colour_cameras(prior, azimuths, rig)

    monkeypatch.setattr(paint_module, "ViewSampler", spy)
    monkeypatch.setattr(paint_module, "colour_cameras", colour_spy)
    mesh, rig = user_cube(), user_rig()
    paint(mesh, "a red cube", tiny, small_config(), rig=rig)
    frame = frame_normalisation(mesh.vertices, mesh.faces, 0.45, 0.45)
    [[given]] = samplers
    assert np.allclose(given.position, frame.to_frame(rig[0].position))
    assert np.allclose(given.c2w[:3, :3], rig[0].c2w[:3, :3]) and given.fov_y_deg == rig[0].fov_y_deg
    # The colour stage decodes the rig as it was optimised: the sampler may move it along its own
    # line of sight to the prior's distance, never turn it.
    [[camera]] = decoded
    direction = frame.to_frame(rig[0].position)
    assert np.allclose(np.cross(camera.position, direction), 0.0, atol=1e-9)
    assert np.allclose(camera.c2w[:3, :3], rig[0].c2w[:3, :3]) and camera.fov_y_deg == rig[0].fov_y_deg


def test_view_pool_shows_the_rig_every_fourth_step(tiny):
    mesh = user_cube()
    config = small_config()
    frame = frame_normalisation(mesh.vertices, mesh.faces, config.frame_half_extent, config.frame_half_extent)
    layout = uv_layout(mesh, frame.to_frame(mesh.vertices), config)
    rig = [frame.camera_to_frame(camera) for camera in user_rig()]
    pool = ViewPool(ViewSampler(tiny.metadata.camera, rig), layout.vertices, layout.faces, layout.uvs,
                    tiny.metadata.latent_size, 2, 5, seeded_generator(0))
    assert len(pool) == 6 and pool[0].camera is pool.rig[0]
    generator = seeded_generator(1)
    picks = [pool.index(step, generator) for step in range(40)]
    assert all(pick == 0 for pick in picks[::4])
    assert all(pick >= 1 for step, pick in enumerate(picks) if step % 4) and len(set(picks)) > 3
    # The rig camera frames the moved cube: its cached rasterisation sees the mesh.
    assert pool[0].coverage.mean() > 0.05


def test_gradient_reaches_the_latent_texture_and_never_the_prior(tiny):
    mesh = user_cube()
    config = small_config()
    frame = frame_normalisation(mesh.vertices, mesh.faces, config.frame_half_extent, config.frame_half_extent)
    layout = uv_layout(mesh, frame.to_frame(mesh.vertices), config)
    run = LatentPaint(layout, "a red cube", tiny, config, seeded_generator(0))
    before = run.texture.detach().clone()
    run.optimiser.zero_grad(set_to_none=True)
    run.step(1)  # a random view
    assert run.texture.grad is not None and run.texture.grad.abs().sum() > 0
    assert not torch.equal(run.texture.detach(), before)
    for module in (tiny.unet, tiny.vae, tiny.text_encoder):
        assert all(not p.requires_grad and p.grad is None for p in module.parameters())
    # Only texels a view samples get a gradient: the atlas's empty corners stay untouched.
    touched = run.texture.grad.abs().sum(dim=1)[0] > 0
    assert 0 < touched.float().mean() < 1


def test_cancel_stops_within_a_step(tiny):
    token, seen, cancel_at_three = cancel_when(lambda event: event.step == 3)
    with pytest.raises(Cancelled):
        paint(user_cube(), "a red cube", tiny, small_config({"steps": 50}), on_progress=cancel_at_three, cancel=token)
    assert [(event.phase, event.step) for event in seen] == [("optimise", 1), ("optimise", 2), ("optimise", 3)]


def test_cancel_during_the_colour_stage(tiny):
    token, seen, cancel_on_colour = cancel_when(lambda event: event.phase == "colour")
    with pytest.raises(Cancelled):
        paint(user_cube(), "a red cube", tiny, small_config({"steps": 2}), on_progress=cancel_on_colour, cancel=token)
    assert [event.phase for event in seen].count("colour") == 1


def test_same_seed_same_texture(tiny):
    first = paint(user_cube(), "a blue cube", tiny, small_config({"seed": 3}))
    second = paint(user_cube(), "a blue cube", tiny, small_config({"seed": 3}))
    other = paint(user_cube(), "a blue cube", tiny, small_config({"seed": 4}))
    assert np.array_equal(first.mesh.texture, second.mesh.texture)
    assert np.array_equal(first.mesh.uvs, second.mesh.uvs)
    assert not np.array_equal(first.mesh.texture, other.mesh.texture)


@pytest.mark.parametrize("vertices, faces, message", [
    (np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64), "empty"),
    ([[0, 0, 0], [1, 0, 0], [np.nan, 1, 0]], [[0, 1, 2]], "finite"),
    ([[0, 0, 0], [1, 0, 0], [0, 1, 0]], [[0, 1, 3]], "indices"),
    ([[0, 0, 0], [1, 0, 0], [0, 1, 0]], np.zeros((MAX_FACES + 1, 3), dtype=np.int64), "too large"),
])
def test_bad_meshes_are_refused_before_any_work(tiny, vertices, faces, message):
    calls = []
    with pytest.raises(MeshError, match=message):
        paint(MeshInput(np.asarray(vertices, dtype=np.float64), np.asarray(faces)), "a red cube", tiny,
              small_config(), on_progress=calls.append)
    assert calls == []


def test_uvs_outside_the_texture_are_refused(tiny):
    cube = user_cube(0)
    uvs = np.random.default_rng(0).uniform(0, 2, (len(cube.vertices), 2))
    with pytest.raises(MeshError, match=r"inside \[0, 1\]"):
        paint(MeshInput(cube.vertices, cube.faces, uvs), "a red cube", tiny, small_config())


def test_blank_prompt_and_bad_settings_are_refused(tiny):
    with pytest.raises(ValueError, match="empty"):
        paint(user_cube(), "   ", tiny, small_config())
    for key, bad in (("steps", 0), ("steps", 20_001), ("colour.texture_size", 256), ("texture.learning_rate", -1.0),
                     ("texture.size", 4), ("frame_half_extent", 0.0), ("colour.view_azimuths", 0),
                     ("texture.view_pool", 0), ("guidance.guidance_scale", float("nan")), ("colour.delight", "no")):
        with pytest.raises(ValueError, match=key.split(".")[-1]):
            with_overrides(PaintConfig(), {key: bad})
    with pytest.raises(ValueError, match="unknown preset"):
        preset_config("paint", "huge")
    with pytest.raises(ValueError, match="unknown setting 'texture.colour'"):
        preset_config("paint", "draft", {"texture.colour": 1})


def test_contract_meshes_have_the_contracts_dimensions():
    cube = contract_mesh("cube")
    assert np.allclose(cube.bounds, [[-0.35] * 3, [0.35] * 3]) and cube.is_watertight
    sphere = contract_mesh("sphere", subdivisions=3)
    assert np.allclose(np.linalg.norm(sphere.vertices, axis=1), 0.45)
    house = contract_mesh("house")
    assert np.allclose(house.bounds, [[-0.35, -0.30, -0.45], [0.35, 0.30, 0.45]])
    assert house.is_watertight and house.volume == pytest.approx(0.7 * 0.6 * 0.55 + 0.5 * 0.6 * 0.35 * 0.7)
    # Ridge along X at y = 0, z = 0.45; the door is colour, not geometry: the front is one flat wall.
    top = house.vertices[np.isclose(house.vertices[:, 2], 0.45)]
    assert np.allclose(top[:, 1], 0.0) and np.allclose(np.sort(np.unique(top[:, 0]))[[0, -1]], [-0.35, 0.35])
    front = house.vertices[np.isclose(house.vertices[:, 1], -0.30)]
    assert front[:, 2].min() == pytest.approx(-0.45) and front[:, 2].max() == pytest.approx(0.10)
    with pytest.raises(ValueError, match="unknown shape"):
        contract_mesh("teapot")


def test_no_seams_where_the_atlas_cuts_a_smooth_surface(tiny):
    """Texels on either side of a UV seam show the same colour as neighbours inside one chart."""
    sphere = contract_mesh("sphere", subdivisions=2)
    result = paint(MeshInput(np.asarray(sphere.vertices) * 2.0 + CENTRE, np.asarray(sphere.faces)), "a red sphere",
                   tiny, small_config())
    out = result.mesh
    # Charts: faces joined through shared (seam-split) vertices.
    faces = len(out.faces)
    links = coo_matrix((np.ones(3 * faces), (np.repeat(np.arange(faces), 3), out.faces.reshape(-1) + faces)),
                       shape=(faces + len(out.vertices),) * 2)
    chart = connected_components(links, directed=False)[1][:faces]
    assert chart.max() >= 1  # the sphere is cut somewhere
    rows, cols, points, _, face_ids = texel_surface_points(out.vertices, out.faces, out.uvs, out.texture.shape[0])
    colours = out.texture[rows, cols] / 255.0
    texel = np.sqrt(sphere.area * 4.0 / len(points))  # world size of one texel (the mesh is scaled by 2)
    pairs = cKDTree(points).query_pairs(2.0 * texel, output_type="ndarray")
    across = chart[face_ids[pairs[:, 0]]] != chart[face_ids[pairs[:, 1]]]
    difference = np.abs(colours[pairs[:, 0]] - colours[pairs[:, 1]]).mean(axis=1)
    assert across.sum() > 100
    assert difference[across].mean() < 1.5 * difference[~across].mean() + 1e-3


def test_v_prediction_prior_and_sjc_paint_too(tiny_v):
    from engine import GuidanceConfig

    config = small_config({"guidance": GuidanceConfig(method="sjc", guidance_scale=5.0, paas_samples=2),
                           "view_dependent_prompts": False})
    result = paint(user_cube(0), "a green cube", tiny_v, config)
    assert result.mesh.texture.shape == (512, 512, 3) and np.isfinite(result.final_loss)
    assert result.mesh.texture.std() > 0  # painted, not left blank


def lit_tiny_prior():
    from dataclasses import replace

    from engine.prior import Prior
    from engine.raster import Lighting
    from engine.testing import tiny_components, tiny_metadata

    return Prior(*tiny_components(), metadata=replace(tiny_metadata(), lighting=Lighting()))


def test_by_default_a_prior_that_knows_its_light_gets_an_albedo_texture_and_delight_false_keeps_the_shading():
    from engine.colour import albedo
    from engine.testing import albedo_texels_mismatch

    lit_prior = lit_tiny_prior()
    mesh = user_cube()
    shaded = paint(mesh, "a red cube", lit_prior, small_config({"colour.delight": False})).mesh
    delit = paint(mesh, "a red cube", lit_prior, small_config({"colour.flatten.iterations": 0})).mesh
    rows, cols, points, normals, _ = texel_surface_points(delit.vertices, delit.faces, delit.uvs, 512)
    # The cube is closed and wound outward, so the texel normals face the views it was painted from.
    expected = albedo(shaded.texture[rows, cols] / 255.0, normals, lit_prior.metadata.lighting)
    assert np.abs(shaded.texture[rows, cols] / 255.0 - expected).max() > 0.1  # the two differ
    assert albedo_texels_mismatch(shaded.texture[rows, cols], delit.texture[rows, cols], normals,
                                  lit_prior.metadata.lighting) is None


def test_an_albedo_texture_is_flattened_and_a_shaded_one_is_not():
    lit_prior = lit_tiny_prior()
    mesh = user_cube()

    def texel_spread(overrides):
        painted = paint(mesh, "a red cube", lit_prior, small_config(overrides)).mesh
        rows, cols, *_ = texel_surface_points(painted.vertices, painted.faces, painted.uvs, 512)
        return (painted.texture[rows, cols] / 255.0).std(axis=0).mean()

    assert texel_spread({}) < 0.7 * texel_spread({"colour.flatten.iterations": 0})
    shaded = {"colour.delight": False}
    assert texel_spread({**shaded, "colour.flatten.iterations": 50}) == texel_spread(shaded)
