"""Hostile and broken input against a real server: each gets an error reply, and the server keeps working."""

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server import protocol
from server.client import Client
from server.protocol import Code, Msg, State, encode, peek_request_id
from server.testing import FAST_JOB, RawConnection


@pytest.fixture
def raw(dreamsmith_server):
    with RawConnection(dreamsmith_server.address) as connection:
        hello = connection.request(encode(Msg.HELLO, 1, client_id="raw-tester"))
        assert hello.type == Msg.LIMITS
        yield connection


def header(msg_type, request_id=5, **fields):
    return msgpack.packb({"v": protocol.PROTOCOL_VERSION, "type": msg_type, "id": request_id, **fields})


def paint(vertices=None, faces=None):
    vertices = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], np.float32) if vertices is None else vertices
    faces = np.array([[0, 1, 2]], np.int32) if faces is None else faces
    return encode(Msg.SUBMIT, 5, {"vertices": vertices, "faces": faces}, kind="paint", params={"prompt": "a cube"})


MIB = 2**20

BAD_MESSAGES = {  # name: (frames, the error code, its field, the request id the reply must carry)
    "garbage msgpack": (lambda: [b"\xc1\xc1 not msgpack"], Code.BAD_REQUEST, "header", 0),
    "truncated msgpack": (lambda: [header(Msg.PING)[:-3]], Code.BAD_REQUEST, "header", 0),
    "header is a list": (lambda: [msgpack.packb([1, "ping", 5])], Code.BAD_REQUEST, "header", 0),
    "unknown message type": (lambda: [header("format_disk")], Code.BAD_REQUEST, "type", 5),
    "wrong field type": (lambda: [header(Msg.STATUS, job_id=12345)], Code.BAD_REQUEST, "job_id", 5),
    "steps out of range": (lambda: [header(Msg.SUBMIT, kind="generate", params={"prompt": "a", "steps": 10**9})],
                           Code.BAD_REQUEST, "params.steps", 5),
    "NaN vertices": (lambda: paint(vertices=np.full((3, 3), np.nan, np.float32)), Code.BAD_REQUEST, "vertices", 5),
    "vertices out of range": (lambda: paint(vertices=np.full((3, 3), 1e9, np.float32)), Code.BAD_REQUEST,
                              "vertices", 5),
    "face index out of range": (lambda: paint(faces=np.array([[0, 1, 3]], np.int32)), Code.BAD_REQUEST, "faces", 5),
    "frame shorter than described": (lambda: paint()[:2] + [bytes(paint()[2])[:-1]], Code.BAD_REQUEST,
                                     "frames[1]", 5),
    "too many frames": (lambda: [header(Msg.PING)] + [b"x"] * protocol.MAX_FRAMES, Code.TOO_LARGE, "frames", 5),
    "oversize header": (lambda: [header(Msg.PING, pad="x" * protocol.MAX_HEADER_BYTES)], Code.TOO_LARGE,
                        "header", 0),
    "oversize frame": (lambda: [header(Msg.PING), np.zeros(protocol.DEFAULT_MAX_MESSAGE_BYTES + 1, np.uint8)],
                       Code.TOO_LARGE, "message", 5),
}


@pytest.mark.parametrize("name", BAD_MESSAGES)
def test_bad_input_gets_an_error_naming_the_field(raw, name):
    make_frames, code, field, request_id = BAD_MESSAGES[name]
    reply = raw.request(make_frames())
    assert reply is not None and reply.type == Msg.ERROR, reply
    assert (reply.header["code"], reply.header["field"], reply.request_id) == (code, field, request_id), reply.header


def test_requests_before_hello_are_forbidden(dreamsmith_server):
    with RawConnection(dreamsmith_server.address) as stranger:
        reply = stranger.request([header(Msg.STATUS)])
    assert (reply.header["code"], reply.header["field"]) == (Code.FORBIDDEN, protocol.SESSION_FIELD)


def test_a_frame_beyond_the_hard_limit_drops_only_that_connection(dreamsmith_server):
    with RawConnection(dreamsmith_server.address) as reckless:
        reckless.send([header(Msg.PING), np.zeros(2 * protocol.DEFAULT_MAX_MESSAGE_BYTES + MIB, np.uint8)])
        assert reckless.reply(timeout=3) is None  # libzmq hangs up without reading it
    with Client(dreamsmith_server.address) as client:
        assert client.ping() < 5


# Mostly headers that look like requests (right version, known types, plausible fields, frame
# descriptions), so the fuzz reaches the deep checks; the rest is junk of every msgpack shape, or bytes.
scalars = (st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats() | st.text(max_size=40)
           | st.binary(max_size=40))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
param_values = st.integers(-10, 2**33) | st.floats() | st.text(max_size=20) | st.none()
params = st.fixed_dictionaries({"prompt": st.text(max_size=20)},
                               optional={name: param_values for name in [*protocol.PARAMS["generate"].fields, "x"]
                                         if name != "prompt"})
descriptors = st.lists(st.fixed_dictionaries({
    "name": st.sampled_from(["vertices", "faces", "uvs", "glb", "x"]),
    "dtype": st.sampled_from([*protocol.DTYPES, "float64"]),
    "shape": st.lists(st.integers(-1, 4), max_size=3)}), max_size=3)
request_like = st.fixed_dictionaries(
    {"v": st.sampled_from([1, 1, 1, 1, 0, "1"]),
     "type": st.sampled_from(sorted(Msg.REQUESTS) * 3 + sorted(Msg.REPLIES | Msg.EVENTS) + ["bogus"]),
     "id": st.integers(-1, 2**64 - 1)},
    optional={"job_id": st.text("0123456789abcdef", min_size=31, max_size=33) | values,
              "kind": st.sampled_from([*protocol.JOB_KINDS, "x"]) | values, "params": params | values,
              "frames": descriptors | values, "client_id": st.text(max_size=20) | values})
submit_like = st.fixed_dictionaries(
    {"v": st.just(1), "type": st.just(Msg.SUBMIT), "id": st.integers(0, 2**63 - 1),
     "kind": st.sampled_from(protocol.JOB_KINDS), "params": params}, optional={"frames": descriptors})
headers = st.one_of(request_like, request_like, submit_like, submit_like).map(msgpack.packb) \
    | values.map(msgpack.packb) | st.binary(max_size=300)
few_frames = st.lists(st.binary(max_size=48), max_size=3)
tails = st.one_of(st.just([]), st.just([]), few_frames, few_frames,
                  st.lists(st.binary(max_size=8), min_size=protocol.MAX_FRAMES, max_size=protocol.MAX_FRAMES + 2))


def test_fuzzed_headers_always_get_a_valid_reply_and_never_crash_the_server(dreamsmith_server):
    with RawConnection(dreamsmith_server.address) as fuzzer:
        fuzzer.request(encode(Msg.HELLO, 1, client_id="fuzzer"))  # so submits get past the session check

        @settings(max_examples=1000, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
        @given(headers, tails)
        def exchange(head, tail):
            reply = fuzzer.request([head, *tail])
            assert reply is not None, "no reply: the server is stuck or gone"
            assert reply.request_id == peek_request_id(head)
            if reply.type == Msg.ACCEPTED:  # a lucky valid submit must not keep the worker busy
                assert fuzzer.request(encode(Msg.CANCEL, 2, job_id=reply.job_id)).type == Msg.JOB_STATUS

        exchange()
    assert dreamsmith_server.process.poll() is None
    with Client(dreamsmith_server.address) as client:
        assert client.ping() < 5


def test_after_all_that_a_normal_job_still_succeeds(dreamsmith_client):
    job_id = dreamsmith_client.submit("a yellow house", **FAST_JOB)
    assert dreamsmith_client.wait(job_id, timeout=300)["state"] == State.DONE
    assert len(dreamsmith_client.fetch(job_id).vertices) > 0
