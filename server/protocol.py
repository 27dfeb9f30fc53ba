"""The Dreamsmith job protocol over ZeroMQ: the one definition shared by the server, the Python client
and the Blender add-on, which vendors this file verbatim. It may import only the standard library,
msgpack and numpy.

A message is a multipart ZeroMQ message: frame 0 is a msgpack map (the header), every further frame
is the raw little-endian bytes of one array, described in order by ``header["frames"]``
(name, dtype, shape). The server is a ROUTER, clients are DEALERs. docs/protocol.md is the prose
version of this file.
"""

from __future__ import annotations

import math
import re
import struct
import zlib
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import msgpack
import numpy as np

PROTOCOL_VERSION = 1
DEFAULT_ADDRESS = "tcp://127.0.0.1:5555"


class Msg:
    """Message types. Every request gets exactly one reply carrying the request's id; events carry id 0."""

    # client -> server
    HELLO, SUBMIT, CANCEL, STATUS = "hello", "submit", "cancel", "status"
    ATTACH, FETCH, PING = "attach", "fetch", "ping"
    # server -> client, replies
    LIMITS, ACCEPTED, JOB_STATUS, SERVER_STATUS = "limits", "accepted", "job_status", "server_status"
    RESULT, ERROR, PONG = "result", "error", "pong"
    # server -> client, events of a job the connection submitted or attached to
    STATE, PROGRESS, PREVIEW, WARNING = "state", "progress", "preview", "warning"

    REQUESTS = frozenset({HELLO, SUBMIT, CANCEL, STATUS, ATTACH, FETCH, PING})
    REPLIES = frozenset({LIMITS, ACCEPTED, JOB_STATUS, SERVER_STATUS, RESULT, ERROR, PONG})
    EVENTS = frozenset({STATE, PROGRESS, PREVIEW, WARNING})


EVENT_ID = 0


class Code:
    """Error codes; every error also carries a human message and the offending field (or None)."""

    BAD_REQUEST, TOO_LARGE, QUEUE_FULL, NOT_FOUND = "bad_request", "too_large", "queue_full", "not_found"
    FORBIDDEN, OUT_OF_MEMORY, WORKER_CRASHED = "forbidden", "out_of_memory", "worker_crashed"
    CANCELLED, INTERNAL = "cancelled", "internal"

    ALL = (BAD_REQUEST, TOO_LARGE, QUEUE_FULL, NOT_FOUND, FORBIDDEN, OUT_OF_MEMORY, WORKER_CRASHED, CANCELLED,
           INTERNAL)


class State:
    QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"
    CANCELLED, INTERRUPTED = "cancelled", "interrupted"  # interrupted: the server stopped while it was unfinished

    ALL = (QUEUED, RUNNING, DONE, FAILED, CANCELLED, INTERRUPTED)
    TERMINAL = frozenset({DONE, FAILED, CANCELLED, INTERRUPTED})


JOB_KINDS = ("generate", "paint", "sketch")
PRESETS = ("draft", "standard", "high", "sd")
METHODS = ("sds", "sjc")

# The error a request gets from a connection that has not said hello (new, or reconnected after a
# server restart): the client says hello again and repeats the request.
SESSION_FIELD = "session"

# Size limits. The server's `limits` reply states the ones it enforces.
MAX_HEADER_BYTES = 64 * 1024
MAX_FRAMES = 8  # header included
DEFAULT_MAX_MESSAGE_BYTES = 64 * 2**20
MAX_ARRAY_DIMS = 4
MAX_PROMPT_CHARS = 1000
MAX_MESSAGE_CHARS = 4000  # an error's or a warning's text, for people
MAX_STEPS = 20000
MAX_SEED = 2**32 - 1
GUIDANCE_RANGE = (1.0, 1000.0)
TEXTURE_SIZE_RANGE = (512, 4096)
GRID_RESOLUTION_RANGE = (8, 128)
MESH_RESOLUTION_RANGE = (8, 256)
# The engine's own mesh bounds (engine.meshes): a mesh the protocol lets through, the engine takes.
MAX_VERTICES = 1_000_000
MAX_FACES = 500_000
MAX_COORDINATE = 1.0e4  # metres; anything beyond is a unit mistake, not a prop
MAX_CAMERAS = 16
FOV_Y_RANGE = (1.0, 179.0)  # degrees, both ends excluded
ASPECT_RANGE = (0.0, 100.0)  # width / height, both ends excluded
# How far a camera matrix's rotation part may be from orthonormal: Blender's matrices are float32
# (errors near 1e-7), while any real scale or shear left in them is far larger.
ROTATION_TOLERANCE = 1.0e-4
MAX_REQUEST_ID = 2**63 - 1
CLIENT_ID_PATTERN = r"[A-Za-z0-9._:@-]{1,128}"
JOB_ID_PATTERN = r"[0-9a-f]{32}"

# Only these, little-endian: frame length must equal product(shape) * itemsize.
DTYPES = {"uint8": np.dtype("|u1"), "int32": np.dtype("<i4"), "float32": np.dtype("<f4")}

_UNPACK_LIMITS = dict(raw=False, strict_map_key=True, use_list=True, max_str_len=MAX_HEADER_BYTES,
                      max_bin_len=0, max_array_len=64, max_map_len=64, max_ext_len=0)


class ProtocolError(Exception):
    """A message that breaks the protocol, or a request the server refuses: becomes an `error` reply."""

    def __init__(self, code: str, message: str, field: str | None = None, request_id: int = EVENT_ID):
        super().__init__(message)
        self.code, self.message, self.field, self.request_id = code, message, field, request_id

    def info(self) -> dict:
        return {"code": self.code, "message": self.message, "field": self.field}

    def to_frames(self) -> list:
        return encode(Msg.ERROR, self.request_id, **self.info())


def _bad(field: str, message: str) -> ProtocolError:
    return ProtocolError(Code.BAD_REQUEST, f"{field}: {message}", field)


def _type_name(value: Any) -> str:
    return "nil" if value is None else type(value).__name__


# ---------------------------------------------------------------------------------------------
# Field schemas: each spec checks one value and says which field is wrong.


class Spec:
    def check(self, value: Any, where: str) -> Any:
        raise NotImplementedError


@dataclass(frozen=True)
class Str(Spec):
    max_len: int
    min_len: int = 0
    choices: tuple = ()
    pattern: str | None = None
    non_blank: bool = False

    def check(self, value, where):
        if not isinstance(value, str):
            raise _bad(where, f"must be a string, got {_type_name(value)}")
        if not self.min_len <= len(value) <= self.max_len:
            raise _bad(where, f"must be {self.min_len} to {self.max_len} characters long, got {len(value)}")
        if self.choices and value not in self.choices:
            raise _bad(where, f"must be one of {', '.join(self.choices)}, got {value[:40]!r}")
        if self.pattern and not re.fullmatch(self.pattern, value):
            raise _bad(where, f"must match {self.pattern}")
        if self.non_blank and not value.strip():
            raise _bad(where, "must not be blank")
        return value


@dataclass(frozen=True)
class Int(Spec):
    low: int
    high: int

    def check(self, value, where):
        if not isinstance(value, int) or isinstance(value, bool):
            raise _bad(where, f"must be an integer, got {_type_name(value)}")
        if not self.low <= value <= self.high:
            raise _bad(where, f"must be in [{self.low}, {self.high}], got {value}")
        return value


@dataclass(frozen=True)
class Float(Spec):
    low: float
    high: float
    exclusive: bool = False  # both ends excluded

    def check(self, value, where):
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise _bad(where, f"must be a number, got {_type_name(value)}")
        if not math.isfinite(value):
            raise _bad(where, f"must be finite, got {value}")
        if self.exclusive and not self.low < value < self.high:
            raise _bad(where, f"must be in ({self.low:g}, {self.high:g}), got {value:g}")
        if not self.low <= value <= self.high:
            raise _bad(where, f"must be in [{self.low:g}, {self.high:g}], got {value:g}")
        return float(value)


@dataclass(frozen=True)
class Bool(Spec):
    def check(self, value, where):
        if not isinstance(value, bool):
            raise _bad(where, f"must be true or false, got {_type_name(value)}")
        return value


@dataclass(frozen=True)
class Nullable(Spec):
    spec: Spec

    def check(self, value, where):
        return None if value is None else self.spec.check(value, where)


@dataclass(frozen=True)
class Opt(Spec):
    """A map entry that may be left out."""

    spec: Spec

    def check(self, value, where):
        return self.spec.check(value, where)


@dataclass(frozen=True)
class ListOf(Spec):
    item: Spec
    max_len: int

    def check(self, value, where):
        if not isinstance(value, list):
            raise _bad(where, f"must be a list, got {_type_name(value)}")
        if len(value) > self.max_len:
            raise _bad(where, f"must have at most {self.max_len} items, got {len(value)}")
        return [self.item.check(item, f"{where}[{i}]") for i, item in enumerate(value)]


@dataclass(frozen=True)
class Map(Spec):
    fields: Mapping[str, Spec]

    def check(self, value, where):
        if not isinstance(value, dict):
            raise _bad(where, f"must be a map, got {_type_name(value)}")
        prefix = f"{where}." if where else ""
        for key in value:
            if key not in self.fields:
                raise _bad(f"{prefix}{key}", "is not a known field")
        checked = {}
        for key, spec in self.fields.items():
            if key in value:
                checked[key] = spec.check(value[key], f"{prefix}{key}")
            elif not isinstance(spec, Opt):
                raise _bad(f"{prefix}{key}", "is required")
        return checked


@dataclass(frozen=True)
class RigidMatrix(Spec):
    """A 4x4 rigid transform as 4 lists of 4 numbers: rotation and translation only, last row (0, 0, 0, 1)."""

    max_translation: float
    tolerance: float

    def check(self, value, where):
        if not (isinstance(value, list) and len(value) == 4
                and all(isinstance(row, list) and len(row) == 4 for row in value)):
            raise _bad(where, "must be 4 lists of 4 numbers (rows of a 4x4 matrix)")
        rows = [[_FINITE.check(x, f"{where}[{i}][{j}]") for j, x in enumerate(row)]
                for i, row in enumerate(value)]
        matrix = np.array(rows)
        if rows[3] != [0.0, 0.0, 0.0, 1.0]:
            raise _bad(where, f"the last row must be (0, 0, 0, 1), got {tuple(rows[3])}")
        rotation = matrix[:3, :3]
        off = float(np.abs(rotation.T @ rotation - np.eye(3)).max())
        if off > self.tolerance or np.linalg.det(rotation) <= 0:
            raise _bad(where, f"the 3x3 part must be a rotation (orthonormal, right-handed: no scale, shear or "
                              f"mirroring), but it is {off:.2g} from orthonormal with determinant "
                              f"{np.linalg.det(rotation):.3g}")
        if np.abs(matrix[:3, 3]).max() > self.max_translation:
            raise _bad(where, f"the position must lie within ±{self.max_translation:g}")
        return rows


@dataclass(frozen=True)
class AnyMap(Spec):
    """A map checked later, once the field it depends on is known (submit params depend on the kind)."""

    def check(self, value, where):
        if not isinstance(value, dict):
            raise _bad(where, f"must be a map, got {_type_name(value)}")
        return value


JOB_ID = Str(32, pattern=JOB_ID_PATTERN)
_SECONDS = Float(0.0, 1.0e12)
_FINITE = Float(-math.inf, math.inf)  # Float refuses NaN and infinity before it looks at the range
_COUNT = Int(0, 2**31 - 1)
_ERROR_FIELDS = {"code": Str(32, choices=Code.ALL), "message": Str(MAX_MESSAGE_CHARS), "field": Nullable(Str(200))}
ERROR_INFO = Map(_ERROR_FIELDS)

# One camera of the rig: camera-to-world in Blender axes (the camera looks down its local -Z, +Y up),
# vertical field of view in degrees, and the frame's width / height.
CAMERA = Map({
    "name": Opt(Str(200)),
    "c2w": RigidMatrix(MAX_COORDINATE, ROTATION_TOLERANCE),
    "fov_y_deg": Float(*FOV_Y_RANGE, exclusive=True),
    "aspect": Opt(Float(*ASPECT_RANGE, exclusive=True)),
})
_COMMON_PARAMS = {
    "prompt": Str(MAX_PROMPT_CHARS, 1, non_blank=True),
    "negative_prompt": Opt(Str(MAX_PROMPT_CHARS)),
    # Refuse a prompt with words the prior does not know; otherwise the job runs and a warning
    # event names them.
    "strict": Opt(Bool()),
    "preset": Opt(Str(16, choices=PRESETS)),
    "steps": Opt(Int(1, MAX_STEPS)),
    "seed": Opt(Int(0, MAX_SEED)),
    "guidance_scale": Opt(Float(*GUIDANCE_RANGE)),
    "method": Opt(Str(8, choices=METHODS)),
    "texture_size": Opt(Int(*TEXTURE_SIZE_RANGE)),
    # False keeps the prior's shading in the texture; by default it is albedo when the prior knows its light.
    "albedo": Opt(Bool()),
    # Cameras the result must look right from: world space for paint and sketch, the prop's own
    # frame (the prop at the origin) for generate.
    "cameras": Opt(ListOf(CAMERA, MAX_CAMERAS)),
}
_SHAPE_PARAMS = {"grid_resolution": Opt(Int(*GRID_RESOLUTION_RANGE)),
                 "mesh_resolution": Opt(Int(*MESH_RESOLUTION_RANGE))}
PARAMS = {
    "generate": Map({**_COMMON_PARAMS, **_SHAPE_PARAMS}),
    "paint": Map(_COMMON_PARAMS),  # Latent-Paint keeps the given shape
    "sketch": Map({**_COMMON_PARAMS, **_SHAPE_PARAMS}),
}

FIELDS: dict[str, dict[str, Spec]] = {
    Msg.HELLO: {"client_id": Str(128, 1, pattern=CLIENT_ID_PATTERN), "software": Opt(Str(200))},
    Msg.SUBMIT: {"kind": Str(16, choices=JOB_KINDS), "params": AnyMap()},
    Msg.CANCEL: {"job_id": JOB_ID},
    Msg.STATUS: {"job_id": Opt(JOB_ID)},
    Msg.ATTACH: {"job_id": JOB_ID},
    Msg.FETCH: {"job_id": JOB_ID},
    Msg.PING: {},
    Msg.LIMITS: {
        "server": Str(200), "identity": Str(200), "kinds": ListOf(Str(16, choices=JOB_KINDS), len(JOB_KINDS)),
        "max_message_bytes": _COUNT, "max_header_bytes": _COUNT, "max_frames": _COUNT, "max_queued": _COUNT,
        "max_per_client": _COUNT, "max_vertices": _COUNT, "max_faces": _COUNT,
    },
    Msg.ACCEPTED: {"job_id": JOB_ID, "position": _COUNT},
    Msg.JOB_STATUS: {
        "job_id": JOB_ID, "kind": Str(16, choices=JOB_KINDS), "state": Str(16, choices=State.ALL),
        "position": Nullable(_COUNT), "error": Nullable(ERROR_INFO), "created": _SECONDS,
        "started": Nullable(_SECONDS), "finished": Nullable(_SECONDS), "cancel_requested": Bool(),
    },
    Msg.SERVER_STATUS: {
        "queued": _COUNT, "running": _COUNT,
        "jobs": ListOf(Map({"job_id": JOB_ID, "state": Str(16, choices=State.ALL), "position": Nullable(_COUNT)}),
                       10000),
    },
    Msg.RESULT: {"job_id": JOB_ID},
    Msg.ERROR: _ERROR_FIELDS,
    Msg.PONG: {"time": _SECONDS},
    Msg.STATE: {"job_id": JOB_ID, "state": Str(16, choices=State.ALL), "error": Nullable(ERROR_INFO)},
    Msg.PROGRESS: {
        "job_id": JOB_ID, "phase": Str(32), "step": _COUNT, "total": _COUNT, "loss": Nullable(_FINITE),
        "eta_s": Nullable(_SECONDS), "time": _SECONDS,
    },
    Msg.PREVIEW: {"job_id": JOB_ID, "step": _COUNT},
    Msg.WARNING: {"job_id": JOB_ID, "message": Str(MAX_MESSAGE_CHARS)},
}

_FRAME_DESCRIPTOR = Map({"name": Str(32, 1, pattern=r"[a-z_]+"), "dtype": Str(16, choices=tuple(DTYPES)),
                         "shape": ListOf(Int(0, 2**40), MAX_ARRAY_DIMS)})
_ENVELOPE = ("v", "type", "id", "frames")


# ---------------------------------------------------------------------------------------------
# Arrays each message type carries


@dataclass(frozen=True)
class FrameSpec:
    dtype: str
    shape: tuple  # None: any length along that axis
    required: bool = True

    def check(self, name: str, array: np.ndarray) -> None:
        if array.dtype != DTYPES[self.dtype]:
            raise _bad(name, f"must be {self.dtype}, got {array.dtype}")
        if len(array.shape) != len(self.shape) or any(
                want is not None and want != got for want, got in zip(self.shape, array.shape)):
            wanted = "(" + ", ".join("N" if n is None else str(n) for n in self.shape) + ")"
            raise _bad(name, f"must have shape {wanted}, got {tuple(array.shape)}")


_BYTES = FrameSpec("uint8", (None,))
MESH_INPUT_FRAMES = {
    "vertices": FrameSpec("float32", (None, 3)),
    "faces": FrameSpec("int32", (None, 3)),
    "uvs": FrameSpec("float32", (None, 2), required=False),
}
SUBMIT_FRAMES = {"generate": {}, "paint": MESH_INPUT_FRAMES, "sketch": MESH_INPUT_FRAMES}
RESULT_FRAMES = {"vertices": MESH_INPUT_FRAMES["vertices"], "faces": MESH_INPUT_FRAMES["faces"],
                 "uvs": FrameSpec("float32", (None, 2)), "texture_png": _BYTES, "preview_png": _BYTES, "glb": _BYTES}
FRAMES = {Msg.RESULT: RESULT_FRAMES, Msg.PREVIEW: {"image_png": _BYTES}}


def cast_frames(arrays: Mapping[str, np.ndarray], specs: Mapping[str, FrameSpec]) -> dict[str, np.ndarray]:
    """The arrays in the dtypes ``specs`` names (float64 vertices become float32, int64 faces int32);
    arrays ``specs`` does not name pass unchanged, for the receiver to refuse. An integer that the
    wire type cannot hold raises ValueError instead of wrapping around into a valid-looking index."""
    cast = {}
    for name, array in arrays.items():
        array = np.asarray(array)
        if name in specs:
            dtype = DTYPES[specs[name].dtype]
            if dtype.kind in "iu" and array.dtype.kind in "iu" and array.size:
                limits = np.iinfo(dtype)
                if array.min() < limits.min or array.max() > limits.max:
                    raise ValueError(f"{name}: values beyond {dtype.name} cannot be sent")
            array = array.astype(dtype, copy=False)
        cast[name] = array
    return cast


def check_mesh(vertices: np.ndarray, faces: np.ndarray, uvs: np.ndarray | None) -> None:
    """Bounded size, finite coordinates in range, face indices that exist, UVs inside the texture."""
    if len(vertices) > MAX_VERTICES:
        raise ProtocolError(Code.TOO_LARGE, f"vertices: at most {MAX_VERTICES} allowed, got {len(vertices)}",
                            "vertices")
    if len(faces) > MAX_FACES:
        raise ProtocolError(Code.TOO_LARGE, f"faces: at most {MAX_FACES} allowed, got {len(faces)}", "faces")
    if len(vertices) < 3 or len(faces) < 1:
        raise _bad("faces", "a mesh needs at least 3 vertices and 1 face")
    if not np.isfinite(vertices).all():
        raise _bad("vertices", "must be finite (no NaN or infinity)")
    if np.abs(vertices).max() > MAX_COORDINATE:
        raise _bad("vertices", f"coordinates must lie within ±{MAX_COORDINATE:g}")
    if faces.min() < 0 or faces.max() >= len(vertices):
        raise _bad("faces", f"indices must lie in [0, {len(vertices)}), got [{faces.min()}, {faces.max()}]")
    if uvs is not None:
        if len(uvs) != len(vertices):
            raise _bad("uvs", f"need one UV per vertex ({len(vertices)}), got {len(uvs)}")
        if not np.isfinite(uvs).all() or uvs.min() < 0.0 or uvs.max() > 1.0:
            raise _bad("uvs", "must be finite and inside [0, 1]")


# ---------------------------------------------------------------------------------------------
# Encoding and decoding


@dataclass
class Message:
    header: dict
    arrays: dict[str, np.ndarray]

    @property
    def type(self) -> str:
        return self.header["type"]

    @property
    def request_id(self) -> int:
        return self.header["id"]

    @property
    def job_id(self) -> str | None:
        return self.header.get("job_id")


def encode(msg_type: str, request_id: int = EVENT_ID, arrays: Mapping[str, np.ndarray] | None = None,
           **fields) -> list:
    """Header frame plus one frame per array (whitelisted dtypes only), ready for send_multipart."""
    descriptors, payload = [], []
    for name, array in (arrays or {}).items():
        dtype_name = next((n for n, d in DTYPES.items() if d.kind == array.dtype.kind
                           and d.itemsize == array.dtype.itemsize), None)
        if dtype_name is None:
            raise ValueError(f"{name}: dtype {array.dtype} is not one of {', '.join(DTYPES)}")
        array = np.ascontiguousarray(array, dtype=DTYPES[dtype_name])  # also fixes big-endian input
        descriptors.append({"name": name, "dtype": dtype_name, "shape": list(array.shape)})
        payload.append(array.reshape(-1).view(np.uint8).data)
    header = {"v": PROTOCOL_VERSION, "type": msg_type, "id": request_id, **fields}
    if descriptors:
        header["frames"] = descriptors
    return [msgpack.packb(header, use_bin_type=True), *payload]


def bytes_array(data: bytes) -> np.ndarray:
    """A byte blob (PNG, GLB) as the 1-D uint8 array that travels as a frame."""
    return np.frombuffer(data, dtype=np.uint8)


def unpack_header(data) -> Any:
    if len(data) > MAX_HEADER_BYTES:
        raise ProtocolError(Code.TOO_LARGE, f"header: at most {MAX_HEADER_BYTES} bytes, got {len(data)}",
                            "header")
    try:
        return msgpack.unpackb(data, **_UNPACK_LIMITS)
    except Exception as error:  # msgpack raises several kinds for malformed input
        raise _bad("header", f"not a valid msgpack map ({type(error).__name__}: {str(error)[:100]})") from None


def peek_request_id(header_frame) -> int:
    """The request id of a message, where one can be read, so even a refusal reaches its request."""
    try:
        header = unpack_header(header_frame)
    except ProtocolError:
        return EVENT_ID
    return _request_id(header)


def _request_id(header: Any) -> int:
    value = header.get("id") if isinstance(header, dict) else None
    valid = isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_REQUEST_ID
    return value if valid else EVENT_ID


def decode(frames: Sequence, accept: frozenset, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> Message:
    """Check a received multipart message against the protocol; raises ProtocolError naming the field."""
    request_id = EVENT_ID
    try:
        if not frames:
            raise _bad("message", "is empty")
        if len(frames) > MAX_FRAMES:
            raise ProtocolError(Code.TOO_LARGE, f"frames: at most {MAX_FRAMES} allowed, got {len(frames)}",
                                "frames")
        size = sum(len(frame) for frame in frames)
        if size > max_message_bytes:
            raise ProtocolError(Code.TOO_LARGE, f"message: at most {max_message_bytes} bytes, got {size}",
                                "message")
        header = unpack_header(frames[0])
        request_id = _request_id(header)
        msg_type = _check_envelope(header, accept)
        fields = Map(FIELDS[msg_type]).check({k: v for k, v in header.items() if k not in _ENVELOPE}, "")
        arrays = _decode_arrays(header.get("frames", []), frames[1:])
        if msg_type == Msg.SUBMIT:
            fields["params"] = PARAMS[fields["kind"]].check(fields["params"], "params")
            _check_frames(arrays, SUBMIT_FRAMES[fields["kind"]])
            if arrays:
                check_mesh(arrays["vertices"], arrays["faces"], arrays.get("uvs"))
        else:
            _check_frames(arrays, FRAMES.get(msg_type, {}))
        return Message({**{k: header[k] for k in _ENVELOPE if k in header}, **fields}, arrays)
    except ProtocolError as error:
        error.request_id = request_id
        raise


def _check_envelope(header: Any, accept: frozenset) -> str:
    if not isinstance(header, dict):
        raise _bad("header", f"must be a map, got {_type_name(header)}")
    if header.get("v") != PROTOCOL_VERSION:
        raise _bad("v", f"protocol version {header.get('v')!r} is not spoken here; this side speaks "
                        f"{PROTOCOL_VERSION}")
    Int(0, MAX_REQUEST_ID).check(header.get("id"), "id")
    msg_type = header.get("type")
    if msg_type not in accept:
        raise _bad("type", f"unknown message type {str(msg_type)[:40]!r}; expected one of "
                           f"{', '.join(sorted(accept))}")
    return msg_type


def _decode_arrays(descriptors: Any, frames: Sequence) -> dict[str, np.ndarray]:
    descriptors = ListOf(_FRAME_DESCRIPTOR, MAX_FRAMES - 1).check(descriptors, "frames")
    if len(descriptors) != len(frames):
        raise _bad("frames", f"describes {len(descriptors)} arrays but {len(frames)} frames follow the header")
    arrays = {}
    for index, (descriptor, frame) in enumerate(zip(descriptors, frames)):
        name, dtype = descriptor["name"], DTYPES[descriptor["dtype"]]
        if name in arrays:
            raise _bad(f"frames[{index}].name", f"{name!r} appears twice")
        expected = math.prod(descriptor["shape"]) * dtype.itemsize
        if expected != len(frame):
            raise _bad(f"frames[{index}]", f"{name}: shape {descriptor['shape']} x {dtype.itemsize} bytes = "
                                           f"{expected}, but the frame has {len(frame)} bytes")
        arrays[name] = np.frombuffer(frame, dtype=dtype).reshape(descriptor["shape"])
    return arrays


def _check_frames(arrays: dict[str, np.ndarray], expected: Mapping[str, FrameSpec]) -> None:
    for name in arrays:
        if name not in expected:
            allowed = ", ".join(expected) or "none"
            raise _bad(name, f"is not an array this message carries (allowed: {allowed})")
    for name, spec in expected.items():
        if name in arrays:
            spec.check(name, arrays[name])
        elif spec.required:
            raise _bad(name, "is a required array")


# ---------------------------------------------------------------------------------------------
# Pictures


def encode_png(image: np.ndarray) -> bytes:
    """An (H, W, 3) or (H, W, 4) uint8 image as PNG, with nothing beyond zlib."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"need an (H, W, 3|4) image, got shape {image.shape}")
    height, width, channels = image.shape
    # Each scanline starts with its filter type; 0 means the bytes are stored as they are.
    scanlines = np.concatenate([np.zeros((height, 1), np.uint8), image.reshape(height, width * channels)], axis=1)
    colour_type = 2 if channels == 3 else 6

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(scanlines.tobytes(), 6)) + chunk(b"IEND", b""))
