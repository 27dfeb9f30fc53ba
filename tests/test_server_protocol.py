"""The wire protocol on its own: encoding, strict decoding and the stdlib PNG writer (no sockets)."""

import io

import msgpack
import numpy as np
import pytest
from PIL import Image

from server import protocol
from server.protocol import Code, Msg, ProtocolError, decode, encode


def cube_inputs():
    vertices = np.array([[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)], dtype=np.float32)
    faces = np.array([[0, 1, 2], [1, 3, 2], [4, 6, 5], [5, 6, 7]], dtype=np.int32)
    uvs = np.clip(vertices[:, :2], 0, 1).astype(np.float32)
    return {"vertices": vertices, "faces": faces, "uvs": uvs}


def submit(kind="generate", arrays=None, **params):
    return encode(Msg.SUBMIT, 7, arrays, kind=kind, params={"prompt": "a red cube", **params})


def refusal(frames, accept=Msg.REQUESTS, **limits) -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        decode([bytes(f) for f in frames], accept, **limits)
    return caught.value


def test_a_submit_with_a_mesh_round_trips_exactly():
    inputs = cube_inputs()
    message = decode([bytes(f) for f in submit("paint", inputs, steps=10, guidance_scale=7)], Msg.REQUESTS)
    assert message.type == Msg.SUBMIT and message.request_id == 7
    assert message.header["params"] == {"prompt": "a red cube", "steps": 10, "guidance_scale": 7.0}
    for name, array in inputs.items():
        assert message.arrays[name].dtype == array.dtype
        np.testing.assert_array_equal(message.arrays[name], array)


def test_big_endian_arrays_are_sent_little_endian():
    vertices = cube_inputs()["vertices"].astype(">f4")
    frames = submit("sketch", {**cube_inputs(), "vertices": vertices})
    assert bytes(frames[1]) == cube_inputs()["vertices"].tobytes()


@pytest.mark.parametrize("frames, code, field", [
    ([b"\xc1garbage"], Code.BAD_REQUEST, "header"),
    ([msgpack.packb({"v": 1, "type": "ping", "id": 3})[:-2]], Code.BAD_REQUEST, "header"),
    ([msgpack.packb([1, "ping", 3])], Code.BAD_REQUEST, "header"),
    ([msgpack.packb({"v": 2, "type": "ping", "id": 3})], Code.BAD_REQUEST, "v"),
    ([msgpack.packb({"v": 1, "type": "launch", "id": 3})], Code.BAD_REQUEST, "type"),
    ([msgpack.packb({"v": 1, "type": "pong", "id": 3, "time": 1.0})], Code.BAD_REQUEST, "type"),  # wrong direction
    ([msgpack.packb({"v": 1, "type": "ping", "id": -1})], Code.BAD_REQUEST, "id"),
    ([msgpack.packb({"v": 1, "type": "ping", "id": 3, "extra": 1})], Code.BAD_REQUEST, "extra"),
    ([msgpack.packb({"v": 1, "type": "cancel", "id": 3, "job_id": "../../etc"})], Code.BAD_REQUEST, "job_id"),
    ([msgpack.packb({"v": 1, "type": "ping", "id": 3, "x": b"\0\1"}, use_bin_type=True)], Code.BAD_REQUEST,
     "header"),
    ([msgpack.packb({"v": 1, "type": "ping", "id": 3, "x": "y" * 70000})], Code.TOO_LARGE, "header"),
    ([msgpack.packb({"v": 1, "type": "ping", "id": 3})] + [b""] * 8, Code.TOO_LARGE, "frames"),
    (submit(steps="many"), Code.BAD_REQUEST, "params.steps"),
    (submit(steps=True), Code.BAD_REQUEST, "params.steps"),
    (submit(steps=0), Code.BAD_REQUEST, "params.steps"),
    (submit(steps=protocol.MAX_STEPS + 1), Code.BAD_REQUEST, "params.steps"),
    (submit(seed=-1), Code.BAD_REQUEST, "params.seed"),
    (submit(seed=2**32), Code.BAD_REQUEST, "params.seed"),
    (submit(guidance_scale=float("nan")), Code.BAD_REQUEST, "params.guidance_scale"),
    (submit(guidance_scale=1e9), Code.BAD_REQUEST, "params.guidance_scale"),
    (submit(prompt="   "), Code.BAD_REQUEST, "params.prompt"),
    (submit(prompt="x" * (protocol.MAX_PROMPT_CHARS + 1)), Code.BAD_REQUEST, "params.prompt"),
    (submit(method="magic"), Code.BAD_REQUEST, "params.method"),
    (submit(strict="yes"), Code.BAD_REQUEST, "params.strict"),
    (submit(colour="red"), Code.BAD_REQUEST, "params.colour"),
    (submit("paint", grid_resolution=32), Code.BAD_REQUEST, "params.grid_resolution"),
    (submit("generate", cube_inputs()), Code.BAD_REQUEST, "vertices"),
    (submit("paint"), Code.BAD_REQUEST, "vertices"),
])
def test_malformed_messages_are_refused_naming_the_field(frames, code, field):
    error = refusal(frames)
    assert (error.code, error.field) == (code, field), error.message


@pytest.mark.parametrize("change, code, field", [
    (lambda a: a["vertices"].__setitem__((0, 0), np.nan), Code.BAD_REQUEST, "vertices"),
    (lambda a: a["vertices"].__setitem__((0, 0), 1e6), Code.BAD_REQUEST, "vertices"),
    (lambda a: a["faces"].__setitem__((0, 0), 8), Code.BAD_REQUEST, "faces"),
    (lambda a: a["faces"].__setitem__((0, 0), -1), Code.BAD_REQUEST, "faces"),
    (lambda a: a["uvs"].__setitem__((0, 0), 1.5), Code.BAD_REQUEST, "uvs"),
    (lambda a: a.__setitem__("uvs", a["uvs"][:4]), Code.BAD_REQUEST, "uvs"),
    (lambda a: a.__setitem__("faces", a["faces"].astype(np.float32)), Code.BAD_REQUEST, "faces"),
    (lambda a: a.__setitem__("vertices", a["vertices"][:, :2].copy()), Code.BAD_REQUEST, "vertices"),
    (lambda a: a.__setitem__("normals", a["vertices"]), Code.BAD_REQUEST, "normals"),
])
def test_bad_mesh_inputs_are_refused(change, code, field):
    inputs = cube_inputs()
    change(inputs)
    error = refusal(submit("sketch", inputs))
    assert (error.code, error.field) == (code, field), error.message


def test_frames_must_match_their_descriptions():
    header, *arrays = [bytes(f) for f in submit("paint", cube_inputs())]
    described = msgpack.unpackb(header)
    assert refusal([header, arrays[0][:-4], *arrays[1:]]).field == "frames[0]"
    assert refusal([header, *arrays[:2]]).field == "frames"
    described["frames"][0]["dtype"] = "float64"
    assert refusal([msgpack.packb(described), *arrays]).field == "frames[0].dtype"
    assert refusal([header, *arrays], max_message_bytes=100).code == Code.TOO_LARGE


def test_meshes_beyond_the_size_bound_are_too_large(monkeypatch):
    monkeypatch.setattr(protocol, "MAX_VERTICES", 7)
    assert refusal(submit("paint", cube_inputs())).code == Code.TOO_LARGE


def test_a_refusal_carries_the_request_id_when_it_can_be_read():
    assert refusal(submit(steps=0)).request_id == 7
    assert refusal([b"\xc1"]).request_id == protocol.EVENT_ID
    assert protocol.peek_request_id(msgpack.packb({"id": 12})) == 12


def test_unsupported_dtypes_cannot_be_encoded():
    with pytest.raises(ValueError, match="float64"):
        encode(Msg.RESULT, 1, {"vertices": np.zeros((3, 3))}, job_id="0" * 32)


@pytest.mark.parametrize("channels", [3, 4])
def test_encode_png_decodes_to_the_same_pixels(channels):
    image = np.random.default_rng(0).integers(0, 256, (17, 23, channels), dtype=np.uint8)
    decoded = np.asarray(Image.open(io.BytesIO(protocol.encode_png(image))))
    np.testing.assert_array_equal(decoded, image)


# -- the camera rig


def camera_matrix(eye=(7.0, -6.0, 5.0)) -> np.ndarray:
    """Camera-to-world of a camera at ``eye`` looking at the origin (Blender: it looks down its local -Z)."""
    eye = np.asarray(eye, dtype=np.float64)
    back = eye / np.linalg.norm(eye)
    right = np.cross([0.0, 0.0, 1.0], back)
    right /= np.linalg.norm(right)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, np.cross(back, right), back, eye
    return c2w


def camera(**changes) -> dict:
    return {"name": "Camera", "c2w": camera_matrix().tolist(), "fov_y_deg": 22.9, "aspect": 16 / 9, **changes}


def with_c2w(change) -> dict:
    c2w = camera_matrix()
    change(c2w)
    return camera(c2w=c2w.tolist())


@pytest.mark.parametrize("kind, arrays", [("generate", None), ("paint", cube_inputs()), ("sketch", cube_inputs())])
def test_every_kind_takes_a_camera_rig(kind, arrays):
    rig = [camera(), camera(name="Side", c2w=camera_matrix((3, 0, 0)).tolist(), fov_y_deg=40)]
    message = decode([bytes(f) for f in submit(kind, arrays, cameras=rig)], Msg.REQUESTS)
    received = message.header["params"]["cameras"]
    assert [c["name"] for c in received] == ["Camera", "Side"]
    np.testing.assert_array_equal(received[0]["c2w"], camera_matrix())
    assert received[1]["fov_y_deg"] == 40.0 and isinstance(received[1]["fov_y_deg"], float)


def test_a_camera_needs_only_its_matrix_and_field_of_view():
    only = {"c2w": camera_matrix().tolist(), "fov_y_deg": 50}
    message = decode([bytes(f) for f in submit(cameras=[only])], Msg.REQUESTS)
    assert message.header["params"]["cameras"] == [{"c2w": camera_matrix().tolist(), "fov_y_deg": 50.0}]


@pytest.mark.parametrize("cameras, field", [
    ("front", "params.cameras"),
    ([camera()] * (protocol.MAX_CAMERAS + 1), "params.cameras"),
    ([camera(), "Camera"], "params.cameras[1]"),
    ([{k: v for k, v in camera().items() if k != "c2w"}], "params.cameras[0].c2w"),
    ([camera(lens=50)], "params.cameras[0].lens"),
    ([camera(name=7)], "params.cameras[0].name"),
    ([camera(c2w=camera_matrix()[:3].tolist())], "params.cameras[0].c2w"),
    ([camera(c2w=camera_matrix()[:, :3].tolist())], "params.cameras[0].c2w"),
    ([camera(c2w=camera_matrix().ravel().tolist())], "params.cameras[0].c2w"),
    ([with_c2w(lambda m: m.__setitem__((1, 2), np.nan))], "params.cameras[0].c2w[1][2]"),
    ([with_c2w(lambda m: m.__setitem__((0, 3), np.inf))], "params.cameras[0].c2w[0][3]"),
    ([camera(c2w=[[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, "far"], [0, 0, 0, 1]])], "params.cameras[0].c2w[2][3]"),
    ([with_c2w(lambda m: m.__setitem__((3, 0), 0.5))], "params.cameras[0].c2w"),  # projective last row
    ([with_c2w(lambda m: m.__setitem__((3, 3), 2.0))], "params.cameras[0].c2w"),
    ([with_c2w(lambda m: m[:3, :3].__imul__(2.0))], "params.cameras[0].c2w"),  # scaled
    ([with_c2w(lambda m: m.__setitem__((0, 1), m[0, 1] + 0.01))], "params.cameras[0].c2w"),  # sheared
    ([with_c2w(lambda m: m[:3, 0].__imul__(-1.0))], "params.cameras[0].c2w"),  # mirrored
    ([with_c2w(lambda m: m.__setitem__((0, 3), 2 * protocol.MAX_COORDINATE))], "params.cameras[0].c2w"),
    ([camera(fov_y_deg=1.0)], "params.cameras[0].fov_y_deg"),
    ([camera(fov_y_deg=179.0)], "params.cameras[0].fov_y_deg"),
    ([camera(fov_y_deg=float("nan"))], "params.cameras[0].fov_y_deg"),
    ([camera(aspect=0.0)], "params.cameras[0].aspect"),
    ([camera(aspect=-1.5)], "params.cameras[0].aspect"),
])
def test_bad_cameras_are_refused_naming_the_field(cameras, field):
    for kind, arrays in (("generate", None), ("paint", cube_inputs())):
        error = refusal(submit(kind, arrays, cameras=cameras))
        assert (error.code, error.field) == (Code.BAD_REQUEST, field), error.message


def test_a_camera_matrix_with_float32_rounding_is_accepted():
    c2w = camera_matrix().astype(np.float32).astype(np.float64)  # what Blender's matrices hold
    message = decode([bytes(f) for f in submit(cameras=[camera(c2w=c2w.tolist())])], Msg.REQUESTS)
    np.testing.assert_array_equal(message.header["params"]["cameras"][0]["c2w"], c2w)


def test_the_protocol_mesh_bounds_are_the_engines():
    from engine import meshes

    assert (protocol.MAX_VERTICES, protocol.MAX_FACES, protocol.MAX_COORDINATE) == \
        (meshes.MAX_VERTICES, meshes.MAX_FACES, meshes.MAX_COORDINATE)


def test_cast_frames_sends_any_numeric_mesh_in_the_wire_dtypes():
    inputs = {"vertices": np.zeros((3, 3)), "faces": np.array([[0, 1, 2]]), "normals": np.zeros((3, 3))}
    cast = protocol.cast_frames(inputs, protocol.MESH_INPUT_FRAMES)
    assert (cast["vertices"].dtype, cast["faces"].dtype) == (np.float32, np.int32)
    assert cast["normals"].dtype == np.float64  # not a mesh frame: left for the receiver to refuse
    with pytest.raises(ValueError, match="faces"):
        protocol.cast_frames({"faces": np.array([[0, 1, 2**32]])}, protocol.MESH_INPUT_FRAMES)


def test_the_client_sends_numpy_params_as_plain_values():
    from server.client import plain

    params = plain({"cameras": [{"c2w": camera_matrix(), "fov_y_deg": np.float32(40.0)}], "seed": np.int64(3)})
    assert params == {"cameras": [{"c2w": camera_matrix().tolist(), "fov_y_deg": 40.0}], "seed": 3}
    assert type(params["seed"]) is int
    decode([bytes(f) for f in submit(**params)], Msg.REQUESTS)
