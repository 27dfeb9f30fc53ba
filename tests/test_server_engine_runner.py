"""EngineRunner without sockets: what each job kind's params and arrays become before the job is queued."""

import dataclasses

import numpy as np
import pytest

from engine import Camera
from engine.meshes import MeshInput
from engine.tasks import PRESET_NAMES, TASKS, preset_config
from engine.tasks.generate import GenerateConfig
from engine.tasks.paint import PaintConfig
from engine.tasks.sketch import SketchConfig
from server.engine_runner import EngineRunner, mesh_error_field
from server.protocol import Code, Msg, ProtocolError, decode, encode


def cube_arrays() -> dict:
    vertices = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=np.float32)
    faces = np.array([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
                      [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]], dtype=np.int32)
    return {"vertices": vertices, "faces": faces}


def camera_map(angle_deg: float, position, fov: float) -> dict:
    turn = np.radians(angle_deg)
    c2w = np.eye(4)
    c2w[:3, :3] = [[np.cos(turn), -np.sin(turn), 0], [np.sin(turn), np.cos(turn), 0], [0, 0, 1]]
    c2w[:3, :3] = c2w[:3, :3] @ [[1, 0, 0], [0, 0, -1], [0, 1, 0]]  # tipped up to look along the horizon
    c2w[:3, 3] = position
    return {"name": f"cam {angle_deg}", "c2w": c2w.tolist(), "fov_y_deg": fov, "aspect": 1.5}


def prepared(kind: str, arrays=None, **params):
    """Through the protocol's decoder first, as the server does."""
    message = decode([bytes(f) for f in encode(Msg.SUBMIT, 1, arrays, kind=kind,
                                               params={"prompt": "a red cube", **params})], Msg.REQUESTS)
    return EngineRunner(prior=None).prepare(kind, message.header["params"], message.arrays)


def refusal(kind: str, arrays=None, **params) -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        prepared(kind, arrays, **params)
    return caught.value


def test_the_runner_runs_all_three_kinds():
    assert EngineRunner.kinds == ("generate", "paint", "sketch")


@pytest.mark.parametrize("kind, config_type, arrays", [
    ("generate", GenerateConfig, None), ("paint", PaintConfig, cube_arrays()), ("sketch", SketchConfig, cube_arrays())])
def test_each_kind_gets_its_own_presets_with_the_params_on_top(kind, config_type, arrays):
    from engine.tasks import preset_config

    draft = preset_config(kind, "draft")
    job = prepared(kind, arrays, preset="draft", seed=5, negative_prompt="blurry", guidance_scale=7.5, method="sjc")
    config = job.config
    assert type(config) is config_type
    # the kind's own draft
    assert (config.steps, config.colour.texture_size) == (draft.steps, draft.colour.texture_size)
    assert (config.seed, config.negative_prompt) == (5, "blurry")
    assert (config.guidance.guidance_scale, config.guidance.method) == (7.5, "sjc")
    sized = prepared(kind, arrays, steps=9, texture_size=640, albedo=False).config
    assert (sized.steps, sized.colour.texture_size, sized.colour.delight) == (9, 640, False)
    assert job.rig == ()
    assert (job.mesh is None) == (arrays is None)


@pytest.mark.parametrize("kind, arrays", [("generate", None), ("paint", cube_arrays()), ("sketch", cube_arrays())])
def test_every_protocol_preset_is_a_preset_of_every_kind(kind, arrays):
    from server.protocol import PRESETS

    for preset in PRESETS:
        assert prepared(kind, arrays, preset=preset).config.steps >= 1, preset
    # Configs are frozen: one job cannot change another's settings, nor a preset's.
    first = prepared(kind, arrays, preset="sd").config
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.guidance.guidance_scale = 1.0
    assert prepared(kind, arrays, preset="sd").config.guidance.guidance_scale == 100.0


def test_shape_params_reach_generate_and_sketch():
    for kind, arrays in (("generate", None), ("sketch", cube_arrays())):
        config = prepared(kind, arrays, grid_resolution=24, mesh_resolution=40).config
        assert (config.field.grid_resolution, config.surface.mesh_resolution) == (24, 40)


@pytest.mark.parametrize("kind", ["paint", "sketch"])
def test_the_mesh_becomes_an_engine_mesh_input(kind):
    arrays = cube_arrays()
    arrays["uvs"] = (arrays["vertices"][:, :2] + 1) / 2
    mesh = prepared(kind, arrays).mesh
    assert isinstance(mesh, MeshInput)
    assert (mesh.vertices.dtype, mesh.faces.dtype, mesh.uvs.dtype) == (np.float64, np.int64, np.float64)
    np.testing.assert_array_equal(mesh.vertices, arrays["vertices"])
    np.testing.assert_array_equal(mesh.faces, arrays["faces"])
    np.testing.assert_array_equal(mesh.uvs, arrays["uvs"])


@pytest.mark.parametrize("kind, arrays", [("generate", None), ("paint", cube_arrays()), ("sketch", cube_arrays())])
def test_cameras_become_engine_cameras_with_the_sent_matrices(kind, arrays):
    sent = [camera_map(30, (4.0, -6.0, 1.5), 39.6), camera_map(-90, (-5.0, 0.5, 2.0), 22.9)]
    rig = prepared(kind, arrays, cameras=sent).rig
    assert len(rig) == 2 and all(isinstance(camera, Camera) for camera in rig)
    for camera, entry in zip(rig, sent):
        assert camera.c2w.shape == (4, 4) and camera.c2w.dtype == np.float64
        np.testing.assert_array_equal(camera.c2w, np.array(entry["c2w"]))
        assert camera.fov_y_deg == entry["fov_y_deg"]


def test_a_camera_turned_30_degrees_looks_where_its_matrix_says():
    (camera,) = prepared("generate", cameras=[camera_map(30, (0.0, 0.0, 0.0), 40.0)]).rig
    forward = -camera.c2w[:3, 2]  # Blender cameras look down their local -Z
    np.testing.assert_allclose(forward, [-np.sin(np.radians(30)), np.cos(np.radians(30)), 0], atol=1e-12)


@pytest.mark.parametrize("change, field, words", [
    (lambda a: a.__setitem__("vertices", np.zeros((8, 3), np.float32)), "vertices", "no extent"),
    (lambda a: a.__setitem__("faces", np.zeros((0, 3), np.int32)), "faces", "a mesh needs"),  # the protocol's check
    (lambda a: a.__setitem__("uvs", np.full((8, 2), 0.5, np.float32)), None, None),  # fine: UVs may coincide
])
def test_meshes_the_engine_cannot_use_are_refused_naming_the_field(change, field, words):
    arrays = cube_arrays()
    change(arrays)
    for kind in ("paint", "sketch"):
        if field is None:
            assert prepared(kind, arrays).mesh is not None
            continue
        error = refusal(kind, arrays)
        assert (error.code, error.field) == (Code.BAD_REQUEST, field), error.message
        assert words in error.message and error.message.startswith(f"{field}: ")


def test_the_runner_refuses_meshes_beyond_the_engines_bounds_on_its_own():
    """Arrays that did not come through the protocol's decoder (a Python caller of prepare)."""
    from engine import meshes

    runner = EngineRunner(prior=None)
    big = {"vertices": np.random.default_rng(0).random((3, 3)),
           "faces": np.zeros((meshes.MAX_FACES + 1, 3), np.int64) + [0, 1, 2]}
    with pytest.raises(ProtocolError) as too_large:
        runner.prepare("paint", {"prompt": "a cube"}, big)
    assert too_large.value.field == "faces" and "too large" in too_large.value.message
    with pytest.raises(ProtocolError) as bad_uvs:
        runner.prepare("sketch", {"prompt": "a cube"}, {**cube_arrays(), "uvs": np.zeros((8, 3))})
    assert bad_uvs.value.field == "uvs"


def test_mesh_error_messages_name_their_field():
    assert mesh_error_field("face indices must lie in [0, 3), got [0, 7]") == "faces"
    assert mesh_error_field("the mesh is too large: 600000 faces and 3 vertices") == "faces"
    assert mesh_error_field("the uvs are not all finite") == "uvs"
    assert mesh_error_field("the mesh has no extent: all its vertices are at one point") == "vertices"
    assert mesh_error_field("the sketch encloses no volume at the field's resolution") == "vertices"


def test_strict_params_refuse_unknown_words_naming_the_prompt_and_otherwise_warn(tiny):
    runner = EngineRunner(tiny)
    assert runner.prepare("generate", {"prompt": "a red cube", "strict": True}, {}).warnings == ()
    assert prepared("generate", strict=True).config.strict_prompt is True
    (warning,) = runner.prepare("generate", {"prompt": "a wooden cube"}, {}).warnings
    assert "the prompt 'a wooden cube' has words the prior does not know" in warning and ": wooden." in warning
    for params, field in (({"prompt": "a wooden cube"}, "params.prompt"),
                          ({"prompt": "a red cube", "negative_prompt": "soggy"}, "params.negative_prompt")):
        with pytest.raises(ProtocolError) as refused:
            runner.prepare("paint", {**params, "strict": True}, cube_arrays())
        assert (refused.value.code, refused.value.field) == (Code.BAD_REQUEST, field)
        assert refused.value.message.startswith(f"{field}: the ")


def test_params_a_config_refuses_are_refused_as_params():
    """Values past the protocol's checks (a Python caller of prepare) still meet the config's own."""
    for kind, arrays in (("generate", {}), ("paint", cube_arrays()), ("sketch", cube_arrays())):
        with pytest.raises(ProtocolError) as refused:
            EngineRunner(prior=None).prepare(kind, {"prompt": "a cube", "steps": 0}, arrays)
        assert (refused.value.code, refused.value.field) == (Code.BAD_REQUEST, "params")
        assert "steps" in refused.value.message


def test_the_protocol_refuses_exactly_what_the_engine_configs_refuse():
    """The add-on vendors the protocol without the engine, so the limits are written twice; equal."""
    from engine import config
    from server import protocol

    for name in ("MAX_STEPS", "MAX_SEED", "TEXTURE_SIZE_RANGE", "GRID_RESOLUTION_RANGE", "MESH_RESOLUTION_RANGE"):
        assert getattr(protocol, name) == getattr(config, name), name
    assert protocol.GUIDANCE_RANGE == config.GUIDANCE_SCALE_RANGE
    assert set(protocol.PRESETS) == set(PRESET_NAMES)
    for task in TASKS.values():
        assert set(task.presets) == set(PRESET_NAMES), task.name
    for kind, arrays in (("generate", None), ("paint", cube_arrays()), ("sketch", cube_arrays())):
        assert prepared(kind, arrays, steps=protocol.MAX_STEPS).config.steps == protocol.MAX_STEPS
        with pytest.raises(ValueError, match="steps"):
            preset_config(kind, "draft", {"steps": protocol.MAX_STEPS + 1})


def test_jobs_run_one_at_a_time_use_the_prior_itself_and_concurrent_ones_each_get_a_lane(tiny):
    from engine.batching import BatchedPrior
    from engine.progress import CancelToken

    with EngineRunner(tiny).job_prior("a" * 32, CancelToken()) as prior:
        assert prior is tiny
    runner = EngineRunner(tiny, jobs=2)
    with runner.job_prior("a" * 32, CancelToken()) as first, runner.job_prior("b" * 32, CancelToken()) as second:
        assert isinstance(first, BatchedPrior) and first.lane is not second.lane
        assert first.metadata is tiny.metadata and runner.shared.active_jobs == 2
    with pytest.raises(RuntimeError, match="boom"), runner.job_prior("c" * 32, CancelToken()):
        raise RuntimeError("boom")
    assert runner.shared.active_jobs == 0  # a job leaves however it ends
