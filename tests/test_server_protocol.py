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
