"""The server process: the ROUTER socket and its I/O loop, and the start-up that wires the parts together.

The I/O thread is the only one that touches the ROUTER socket. It answers requests (through the
RequestHandler) and forwards job events that the workers hand over through the EventChannel.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass

import zmq

from . import keys
from .engine_runner import load_runner
from .events import EventChannel
from .handlers import Request, RequestHandler
from .job_queue import JobQueue
from .peers import Sessions, Subscriptions
from .protocol import MAX_FRAMES, Code, Msg, ProtocolError, decode, peek_request_id
from .results import ResultStore
from .settings import Settings, StartupError
from .store import JobStore
from .worker import Runner, Worker

log = logging.getLogger(__name__)

POLL_MS = 200  # how soon a stop request is noticed
BATCH = 64  # requests or events handled before looking at the other source, so neither starves
SEND_HWM = 10_000  # messages queued per client before its previews and progress start to drop
# Frames up to this many times the message limit are read and refused with too_large; beyond it
# libzmq drops the connection without reading (no reply is possible then).
HARD_FRAME_FACTOR = 2
WORKER_STOP_TIMEOUT_S = 5.0


@dataclass
class Incoming:
    peer: bytes
    frames: list
    overflow: ProtocolError | None  # set when frames beyond the limits were dropped unread


def receive(socket: zmq.Socket, max_message_bytes: int) -> Incoming | None:
    """One message, keeping at most MAX_FRAMES frames and max_message_bytes bytes of it in memory."""
    try:
        peer = socket.recv(zmq.NOBLOCK)
    except zmq.Again:
        return None
    frames, size, overflow = [], 0, None
    while socket.getsockopt(zmq.RCVMORE):
        frame = socket.recv(copy=False)
        size += len(frame)
        if overflow is not None:
            continue
        if len(frames) >= MAX_FRAMES:
            overflow = ProtocolError(Code.TOO_LARGE, f"frames: at most {MAX_FRAMES} allowed", "frames")
        elif size > max_message_bytes:
            overflow = ProtocolError(Code.TOO_LARGE, f"message: at most {max_message_bytes} bytes allowed",
                                     "message")
        else:
            frames.append(frame)
    return Incoming(peer, frames, overflow)


class Server:
    def __init__(self, socket: zmq.Socket, handler: RequestHandler, events: EventChannel,
                 subscriptions: Subscriptions, max_message_bytes: int, curve: bool):
        self.socket, self.handler, self.events, self.subscriptions = socket, handler, events, subscriptions
        self.max_message_bytes, self.curve = max_message_bytes, curve

    def serve(self, stop: threading.Event) -> None:
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        poller.register(self.events.fileno(), zmq.POLLIN)
        while not stop.is_set():
            ready = dict(poller.poll(POLL_MS))
            if self.events.fileno() in ready:
                self._forward_events()
            if self.socket in ready:
                self._answer_requests()

    def _answer_requests(self) -> None:
        for _ in range(BATCH):
            incoming = receive(self.socket, self.max_message_bytes)
            if incoming is None:
                return
            self._send(incoming.peer, self._reply(incoming))

    def _reply(self, incoming: Incoming) -> list:
        if incoming.overflow is not None:
            incoming.overflow.request_id = peek_request_id(incoming.frames[0]) if incoming.frames else 0
            return incoming.overflow.to_frames()
        try:
            message = decode(incoming.frames, Msg.REQUESTS, self.max_message_bytes)
        except ProtocolError as error:
            log.debug("refused a malformed message: %s", error.message)
            return error.to_frames()
        except Exception:  # a bug in the checks must not take the server down
            log.exception("could not decode a message")
            return ProtocolError(Code.INTERNAL, "the server failed to read this message; its log says why",
                                 request_id=peek_request_id(incoming.frames[0])).to_frames()
        curve_key = incoming.frames[0].get("User-Id") if self.curve else None
        return self.handler.handle(Request(incoming.peer, curve_key, message))

    def _forward_events(self) -> None:
        for event in self.events.drain():
            for peer in self.subscriptions.peers(event.job_id):
                if not self._send(peer, event.frames, event.droppable):
                    self.subscriptions.forget_peer(peer)
            if event.terminal:
                self.subscriptions.forget_job(event.job_id)

    def _send(self, peer: bytes, frames: list, droppable: bool = False) -> bool:
        """False when the peer is gone; a peer that is too slow just misses this message."""
        try:
            self.socket.send_multipart([peer, *frames], flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            log.log(logging.DEBUG if droppable else logging.WARNING, "a client is not reading; dropped a message")
        except zmq.ZMQError as error:
            if error.errno == errno.EHOSTUNREACH:
                return False
            log.warning("could not send to a client: %s", error)
        return True


def bind_router(context: zmq.Context, settings: Settings) -> zmq.Socket:
    socket = context.socket(zmq.ROUTER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.ROUTER_MANDATORY, 1)  # tells a vanished peer apart from a slow one
    socket.setsockopt(zmq.MAXMSGSIZE, HARD_FRAME_FACTOR * settings.max_message_bytes)
    socket.setsockopt(zmq.SNDHWM, SEND_HWM)
    if settings.keys_dir is not None:
        keys.make_curve_server(socket, settings.keys_dir)
    try:
        socket.bind(settings.bind)
    except zmq.ZMQError as error:
        socket.close()
        raise StartupError(f"cannot bind {settings.bind}: {error}") from None
    return socket


def serve(settings: Settings, stop: threading.Event) -> None:
    """Start every part, serve until ``stop`` is set, then take them down in reverse order."""
    with contextlib.ExitStack() as stack:
        context = zmq.Context()
        stack.callback(context.term)
        if settings.keys_dir is not None:
            stack.callback(keys.start_authenticator(context, settings.keys_dir).stop)
        socket = bind_router(context, settings)
        stack.callback(socket.close, 0)
        store = _open_store(settings)
        stack.callback(store.close)
        for job_id in store.interrupt_unfinished(time.time()):
            log.info("job %s interrupted: the server stopped before it finished", job_id)
        runner, jobs = start_runner(settings, stack)
        queue = JobQueue(settings.max_queued, settings.max_per_client)
        results = ResultStore(settings.results_dir)
        events = EventChannel()
        stack.callback(events.close)
        workers = [Worker(queue, store, results, runner, events, number) for number in range(jobs)]
        for worker in workers:
            worker.start()
        stack.callback(_stop_workers, queue, workers)
        subscriptions = Subscriptions()
        handler = RequestHandler(queue=queue, store=store, results=results, runner=runner, events=events,
                                 sessions=Sessions(), subscriptions=subscriptions,
                                 max_message_bytes=settings.max_message_bytes)
        curve = settings.keys_dir is not None
        log.info("serving on %s (%s)", settings.bind, "CurveZMQ" if curve else "unencrypted, local only")
        Server(socket, handler, events, subscriptions, settings.max_message_bytes, curve).serve(stop)
        log.info("stopping")


def start_runner(settings: Settings, stack: contextlib.ExitStack) -> tuple[Runner, int]:
    """The backend jobs run on, and how many jobs it runs at once (one worker thread each).

    Args:
        settings: the server's settings; ``backend`` picks in-process or Ray.
        stack: the server's clean-up stack; the Ray backend leaves its cluster there, so it is left
            after the workers have stopped.
    """
    if settings.backend == "ray":
        from .ray_backend import start_ray_runner  # Ray is imported only when it is asked for

        runner = start_ray_runner(settings)
        stack.callback(runner.close)
        return runner, runner.actors
    return load_runner(settings.model, settings.device, settings.threads, settings.jobs), settings.jobs


def _open_store(settings: Settings) -> JobStore:
    try:
        return JobStore(settings.database)
    except sqlite3.Error as error:
        raise StartupError(f"cannot open the job table {settings.database}: {error}") from None


def _stop_workers(queue: JobQueue, workers: list[Worker]) -> None:
    queue.close()  # asks every running job to stop
    deadline = time.monotonic() + WORKER_STOP_TIMEOUT_S
    for worker in workers:
        worker.join(max(0.0, deadline - time.monotonic()))
    if any(worker.is_alive() for worker in workers):
        log.warning("a running job did not stop within %.0f s; leaving it", WORKER_STOP_TIMEOUT_S)
