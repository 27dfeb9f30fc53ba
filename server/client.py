"""Python client for the Dreamsmith job server. The Blender add-on vendors it next to protocol.py, so it
may import only the standard library, pyzmq, msgpack, numpy and that protocol module.

One Client is one DEALER socket, for one thread::

    with Client("tcp://127.0.0.1:5555", client_id="my-laptop") as client:
        job_id = client.submit("a red cube", preset="draft")
        final = client.wait(job_id, on_event=lambda event: print(event.type, event.header))
        if final["state"] == "done":
            client.fetch(job_id).save_glb("cube.glb")

Every call has a timeout. A reply that is an error raises ServerError; no reply in time raises
ServerTimeout, or NoServer (a ServerTimeout) when nothing has ever answered at the address. Events
(state, progress, preview, warning) of the jobs this client submitted or attached to arrive between
replies and wait in an inbox for wait() or poll_events().
"""

from __future__ import annotations

import itertools
import logging
import os
import time
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import zmq
import zmq.auth

from . import protocol
from .protocol import DEFAULT_ADDRESS, SESSION_FIELD, Code, Message, Msg, State

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_WAIT_S = 3600.0
CHECK_EVERY_S = 5.0  # a silent job is looked up (and re-attached) this often, as events can be lost
SERVER_GONE_S = 120.0  # while waiting on a job, a server silent this long is taken as gone, not busy
INBOX_LIMIT = 10_000
MAX_REPLY_BYTES = 2**31  # results carry the GLB and the texture; trust the server that far


class ServerError(Exception):
    def __init__(self, code: str, message: str, field: str | None):
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.field = code, message, field


class ServerTimeout(TimeoutError):
    """No reply in time."""


class NoServer(ServerTimeout):
    """Nothing has answered at the address: most likely no server runs there. The message names the
    address and how to start one."""


def no_server_message(address: str, timeout: float, curve: bool = False) -> str:
    """What to tell a user whose client heard nothing at ``address`` within ``timeout`` seconds.

    Args:
        address: the ZeroMQ endpoint the client connected to.
        timeout: how long it waited, in seconds.
        curve: whether the client used CurveZMQ keys, which a server silently refuses when it does
            not know them.
    """
    start = "python -m server" if address == DEFAULT_ADDRESS else f"python -m server --bind {address}"
    keys = " (or the server there does not accept this client's CurveZMQ key)" if curve else ""
    return f"no Dreamsmith server answered at {address} within {timeout:g} s{keys}; start one with: {start}"


@dataclass(frozen=True)
class CurveKeys:
    server_public: bytes
    client_public: bytes
    client_secret: bytes

    @classmethod
    def from_files(cls, server_public_file: str | os.PathLike, client_secret_file: str | os.PathLike) -> "CurveKeys":
        """From the server's ``server.key`` and this client's ``NAME.key_secret`` (python -m server keys)."""
        server_public, _ = zmq.auth.load_certificate(server_public_file)
        client_public, client_secret = zmq.auth.load_certificate(client_secret_file)
        if client_secret is None:
            raise ValueError(f"{client_secret_file} holds no secret key")
        return cls(server_public, client_public, client_secret)


@dataclass(frozen=True)
class Result:
    job_id: str
    vertices: np.ndarray  # (V, 3) float32, Blender axes
    faces: np.ndarray  # (F, 3) int32
    uvs: np.ndarray  # (V, 2) float32, origin bottom-left
    texture_png: bytes
    preview_png: bytes
    glb: bytes  # the file the server stored, byte for byte

    @classmethod
    def from_message(cls, message: Message) -> "Result":
        arrays = message.arrays
        return cls(message.job_id, arrays["vertices"], arrays["faces"], arrays["uvs"],
                   arrays["texture_png"].tobytes(), arrays["preview_png"].tobytes(), arrays["glb"].tobytes())

    def save_glb(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        partial = path.with_name(f".{path.name}.partial")
        partial.write_bytes(self.glb)
        os.replace(partial, path)  # readers never see half a file
        return path


def plain(value):
    """``value`` with numpy arrays and scalars turned into the lists and numbers msgpack packs."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    return value


class Client:
    def __init__(self, address: str = DEFAULT_ADDRESS, client_id: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT_S, curve: CurveKeys | None = None,
                 context: zmq.Context | None = None):
        self.address, self.timeout = address, timeout
        self._uses_curve = curve is not None
        # Without CurveZMQ the client id is the identity: whoever knows it can act on its jobs.
        self.client_id = client_id or f"client-{uuid.uuid4().hex}"
        self.limits: dict | None = None  # the server's hello reply, once said
        self._last_answer: float | None = None  # when anything last came back; a timeout before any is NoServer
        self._ids = itertools.count(1)
        self._inbox: deque[Message] = deque(maxlen=INBOX_LIMIT)
        self._socket = (context or zmq.Context.instance()).socket(zmq.DEALER)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.SNDTIMEO, int(timeout * 1000))
        if curve is not None:
            self._socket.curve_serverkey = curve.server_public
            self._socket.curve_publickey = curve.client_public
            self._socket.curve_secretkey = curve.client_secret
        self._socket.connect(address)

    def close(self) -> None:
        self._socket.close(linger=0)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- requests

    def hello(self, timeout: float | None = None) -> dict:
        reply = self._round_trip(Msg.HELLO, timeout, client_id=self.client_id, software="dreamsmith-client")
        self.limits = reply.header
        return self.limits

    def ping(self, timeout: float | None = None) -> float:
        """Round-trip time in seconds."""
        started = time.monotonic()
        self._round_trip(Msg.PING, timeout)
        return time.monotonic() - started

    def submit(self, prompt: str, kind: str = "generate", inputs: dict[str, np.ndarray] | None = None,
               timeout: float | None = None, **params) -> str:
        """Queue a job; returns its id.

        ``inputs``: vertices, faces and optional uvs for paint and sketch, in any numeric dtype (they
        are sent as float32 / int32). ``params`` may hold numpy values, e.g. ``cameras=[{"c2w":
        matrix, "fov_y_deg": 40.0}]`` with a 4x4 array; they are sent as plain numbers and lists.
        """
        arrays = protocol.cast_frames(inputs, protocol.SUBMIT_FRAMES.get(kind, {})) if inputs else None
        reply = self._request(Msg.SUBMIT, timeout, arrays=arrays, kind=kind,
                              params=plain({"prompt": prompt, **params}))
        return reply.header["job_id"]

    def cancel(self, job_id: str, timeout: float | None = None) -> dict:
        """The job's status right after the request; a running job reports `cancelled` by event soon after."""
        return self._request(Msg.CANCEL, timeout, job_id=job_id).header

    def status(self, job_id: str | None = None, timeout: float | None = None) -> dict:
        """One job's status, or (without job_id) the queue and this client's unfinished jobs."""
        fields = {"job_id": job_id} if job_id is not None else {}
        return self._request(Msg.STATUS, timeout, **fields).header

    def attach(self, job_id: str, timeout: float | None = None) -> dict:
        """Receive this job's events on this connection from now on (after a reconnect, say)."""
        return self._request(Msg.ATTACH, timeout, job_id=job_id).header

    def fetch(self, job_id: str, timeout: float | None = None) -> Result:
        return Result.from_message(self._request(Msg.FETCH, timeout, job_id=job_id))

    # -- events

    def poll_events(self, timeout: float = 0.0) -> list[Message]:
        """Every event received so far (any job), waiting up to ``timeout`` for the first one."""
        if not self._inbox:
            self._pump(time.monotonic() + timeout)
        events = list(self._inbox)
        self._inbox.clear()
        return events

    def wait(self, job_id: str, on_event: Callable[[Message], None] | None = None,
             timeout: float = DEFAULT_WAIT_S) -> dict:
        """Until the job ends; returns its final state (a map with ``state`` and ``error``).

        ``on_event`` sees each of the job's state, progress and preview events. A job that stays silent
        for CHECK_EVERY_S is re-attached, which also catches an end whose event was lost. That check
        waits up to CHECK_EVERY_S for its reply, however short the client's timeout, and one left
        unanswered is tried again with twice the wait: a server busy in a silent stage (xatlas holds
        Python's GIL for seconds on a loaded machine) is slow, not gone. Only SERVER_GONE_S without a
        word from the server raises ServerTimeout before ``timeout``.
        """
        deadline = time.monotonic() + timeout
        heard = time.monotonic()
        check_wait = max(self.timeout, CHECK_EVERY_S)
        while True:
            for event in self._take_events(job_id):
                heard = time.monotonic()
                if on_event is not None:
                    on_event(event)
                if event.type == Msg.STATE and event.header["state"] in State.TERMINAL:
                    return event.header
            now = time.monotonic()
            if now >= deadline:
                raise ServerTimeout(f"job {job_id} did not finish within {timeout:.0f} s")
            if now - heard >= CHECK_EVERY_S:
                try:
                    status = self.attach(job_id, timeout=check_wait)
                except ServerTimeout:
                    if self._last_answer is None or time.monotonic() - self._last_answer >= SERVER_GONE_S:
                        raise
                    log.info("the server has not answered a check on job %s yet; still waiting", job_id)
                    check_wait = min(2 * check_wait, SERVER_GONE_S)  # a reply later than the last wait is dropped
                    status = {"state": None}
                if status["state"] in State.TERMINAL:
                    return status
                heard = time.monotonic()
            self._pump(min(deadline, heard + CHECK_EVERY_S))

    def _take_events(self, job_id: str) -> list[Message]:
        mine = [event for event in self._inbox if event.job_id == job_id]
        if mine:
            self._inbox = deque((event for event in self._inbox if event.job_id != job_id), maxlen=INBOX_LIMIT)
        return mine

    # -- the socket

    def _request(self, msg_type: str, timeout: float | None, arrays: dict | None = None, **fields) -> Message:
        """A request that needs a session: says hello first, and again if the server forgot this connection."""
        if self.limits is None:
            self.hello(timeout)
        try:
            return self._round_trip(msg_type, timeout, arrays, **fields)
        except ServerError as error:
            if error.code != Code.FORBIDDEN or error.field != SESSION_FIELD:
                raise
        self.hello(timeout)
        return self._round_trip(msg_type, timeout, arrays, **fields)

    def _round_trip(self, msg_type: str, timeout: float | None, arrays: dict | None = None, **fields) -> Message:
        request_id = next(self._ids)
        wait = self.timeout if timeout is None else timeout
        try:
            self._socket.send_multipart(protocol.encode(msg_type, request_id, arrays, **fields), copy=False)
        except zmq.Again:
            raise self._timeout(f"could not send {msg_type} to {self.address}", self.timeout) from None  # SNDTIMEO
        deadline = time.monotonic() + wait
        while True:
            message = self._next_message(deadline)
            if message is None:
                raise self._timeout(f"no reply to {msg_type} from {self.address}", wait)
            if message.type in Msg.EVENTS:
                self._inbox.append(message)
            elif message.request_id != request_id:
                log.debug("dropped a late reply to request %d", message.request_id)
            elif message.type == Msg.ERROR:
                raise ServerError(message.header["code"], message.header["message"], message.header["field"])
            else:
                return message

    def _timeout(self, message: str, waited: float) -> ServerTimeout:
        if self._last_answer is None:
            return NoServer(no_server_message(self.address, waited, self._uses_curve))
        return ServerTimeout(message)

    def _pump(self, deadline: float) -> None:
        """Receive until an event arrives or the deadline passes, then take whatever else is waiting."""
        while (message := self._next_message(deadline)) is not None:
            if message.type in Msg.EVENTS:
                self._inbox.append(message)
                deadline = 0.0  # from now on, only what is already here
            else:
                log.debug("dropped a late reply to request %d", message.request_id)

    def _next_message(self, deadline: float) -> Message | None:
        if not self._socket.poll(max(0, int((deadline - time.monotonic()) * 1000))):
            return None
        self._last_answer = time.monotonic()
        return protocol.decode(self._socket.recv_multipart(copy=False), Msg.REPLIES | Msg.EVENTS, MAX_REPLY_BYTES)
