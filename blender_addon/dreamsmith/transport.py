"""Talking to the server off Blender's main thread. No bpy here.

Each job, each cancel request and the status monitor gets its own thread, and each thread makes its
own Client (one DEALER socket), so no socket is ever touched by two threads. What the threads learn
goes into one queue as the events below, which the main thread drains (see session.py).

Shutting down follows ZeroMQ's own pattern: terminating the add-on's context makes every blocking
call in these threads raise ContextTerminated; each thread then closes its socket (LINGER 0) and ends.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
from dataclasses import dataclass, field

import numpy as np
import zmq

from ._vendor.client import Client, CurveKeys, NoServer, Result, ServerError, ServerTimeout
from ._vendor.protocol import Code, Msg, State

log = logging.getLogger(__name__)

# Requests that carry meshes or results may take longer than a quick exchange over a slow link.
TRANSFER_TIMEOUT_S = 120.0
STATUS_EVERY_S = 3.0
SHUTDOWN_TIMEOUT_S = 2.0


class SettingsError(ValueError):
    """The add-on preferences cannot make a connection; the message says what to fix."""


@dataclass(frozen=True)
class ConnectionSettings:
    address: str
    client_id: str  # kept across sessions: without CURVE it is what makes old jobs ours
    timeout: float
    server_public_key: str = ""
    client_secret_key: str = ""

    def curve_keys(self) -> CurveKeys | None:
        if not self.server_public_key and not self.client_secret_key:
            return None
        if not (self.server_public_key and self.client_secret_key):
            raise SettingsError("CURVE needs both the server's public key file and this client's secret key "
                                "file (add-on preferences)")
        try:
            return CurveKeys.from_files(self.server_public_key, self.client_secret_key)
        except (OSError, ValueError) as error:
            raise SettingsError(f"cannot read the CURVE key files: {error}") from None

    def client(self, context: zmq.Context) -> Client:
        return Client(self.address, self.client_id, timeout=self.timeout, curve=self.curve_keys(), context=context)


# -- events, from the threads to the main thread


@dataclass(frozen=True)
class ServerStatus:
    connected: bool
    text: str
    kinds: tuple = ()  # the job kinds this server runs


@dataclass(frozen=True)
class JobAccepted:
    job_id: str


@dataclass(frozen=True)
class JobProgress:
    job_id: str
    phase: str
    step: int
    total: int


@dataclass(frozen=True)
class JobPreview:
    job_id: str
    png: bytes


@dataclass(frozen=True)
class JobWarning:
    """Something the user should know about a job that runs anyway, e.g. words the prior does not know."""
    job_id: str
    message: str


@dataclass(frozen=True)
class JobEnded:
    """The last event of every job run: ``result`` when it succeeded, else ``message`` says why not."""
    job_id: str | None  # None when the server never accepted the job
    state: str  # a protocol State; "failed" also covers a server that cannot be reached
    message: str = ""
    result: Result | None = None


@dataclass
class JobOrder:
    """A job to submit; with ``job_id`` set, a job submitted earlier to attach to and fetch."""
    kind: str
    params: dict = field(default_factory=dict)
    inputs: dict[str, np.ndarray] | None = None
    job_id: str | None = None


def describe_failure(error: Exception, settings: ConnectionSettings) -> str:
    if isinstance(error, NoServer):  # the client's own message: the address, and how to start a server
        return str(error)
    if isinstance(error, ServerTimeout):
        return (f"the server is not answering ({error}). Is it running? Start one with: "
                f"python -m server --bind {settings.address}")
    if isinstance(error, ServerError):
        return f"the server refused: {error.message}"
    return str(error)


def ended_message(final: dict) -> str:
    error = final.get("error")
    return error["message"] if error else ""


def run_job(order: JobOrder, settings: ConnectionSettings, context: zmq.Context, events: queue.SimpleQueue) -> None:
    """Submit (or attach to) one job, relay its progress, fetch its result. Always ends with JobEnded,
    except when the add-on is shutting down."""
    job_id = order.job_id
    try:
        with settings.client(context) as client:
            client.hello()  # a quick exchange first, so an absent server is reported within the timeout
            if job_id is None:
                job_id = client.submit(kind=order.kind, inputs=order.inputs, timeout=TRANSFER_TIMEOUT_S,
                                       **order.params)
                final = None
            else:
                status = client.attach(job_id)
                final = status if status["state"] in State.TERMINAL else None
            events.put(JobAccepted(job_id))
            if final is None:
                final = client.wait(job_id, on_event=lambda message: relay(message, events), timeout=math.inf)
            if final["state"] == State.DONE:
                events.put(JobEnded(job_id, State.DONE, result=client.fetch(job_id, timeout=TRANSFER_TIMEOUT_S)))
            else:
                events.put(JobEnded(job_id, final["state"], ended_message(final)))
    except zmq.ContextTerminated:
        log.debug("job thread stopped by the add-on shutting down")
    except (ServerError, ServerTimeout, SettingsError) as error:
        cancelled = isinstance(error, ServerError) and error.code == Code.CANCELLED
        events.put(JobEnded(job_id, State.CANCELLED if cancelled else State.FAILED, describe_failure(error, settings)))
    except Exception as error:  # a bug must still end the job in the panel, not leave it spinning
        log.exception("job thread failed")
        events.put(JobEnded(job_id, State.FAILED, f"{type(error).__name__}: {error}"))


def relay(message, events: queue.SimpleQueue) -> None:
    header = message.header
    if message.type == Msg.PROGRESS:
        events.put(JobProgress(header["job_id"], header["phase"], header["step"], header["total"]))
    elif message.type == Msg.PREVIEW:
        events.put(JobPreview(header["job_id"], message.arrays["image_png"].tobytes()))
    elif message.type == Msg.WARNING:
        events.put(JobWarning(header["job_id"], header["message"]))


def request_cancel(job_id: str, settings: ConnectionSettings, context: zmq.Context) -> None:
    """From a connection of its own: the job's thread may be blocked waiting on its socket."""
    try:
        with settings.client(context) as client:
            client.cancel(job_id)
    except zmq.ContextTerminated:
        pass
    except (ServerError, ServerTimeout, SettingsError) as error:
        # The job's own thread reports how the job ended; this only failed to hurry it.
        log.warning("could not cancel job %s: %s", job_id, describe_failure(error, settings))


def check_server(settings: ConnectionSettings, context: zmq.Context) -> ServerStatus:
    try:
        with settings.client(context) as client:
            limits = client.hello()
            status = client.status()
    except (ServerError, ServerTimeout, SettingsError) as error:
        return ServerStatus(False, describe_failure(error, settings))
    return ServerStatus(True, f"{status['running']} running, {status['queued']} queued", tuple(limits["kinds"]))


class StatusMonitor:
    """Checks the server every few seconds and reports each change of its status."""

    def __init__(self, settings: ConnectionSettings, context: zmq.Context, events: queue.SimpleQueue):
        self.settings, self.context, self.events = settings, context, events
        self._stopping = False
        self._wake = threading.Event()

    def use(self, settings: ConnectionSettings) -> None:
        """New preferences: check again at once."""
        self.settings = settings
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    def run(self) -> None:
        last = None
        try:
            while not self._stopping:
                self._wake.clear()
                status = check_server(self.settings, self.context)
                if status != last:
                    self.events.put(status)
                    last = status
                self._wake.wait(STATUS_EVERY_S)
        except zmq.ContextTerminated:
            pass


class Threads:
    """The add-on's ZeroMQ context and every thread that uses it, so they can all be ended together."""

    def __init__(self):
        self.context = zmq.Context()
        self._threads: list[threading.Thread] = []

    def start(self, target, *args, name: str) -> threading.Thread:
        self._threads = [thread for thread in self._threads if thread.is_alive()]
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()
        return thread

    def shutdown(self) -> None:
        """Terminate the context, which wakes every blocked socket, and join the threads."""
        # term() waits until every socket is closed; a thread in a bug must not freeze Blender.
        terminator = threading.Thread(target=self.context.term, name="dreamsmith-term", daemon=True)
        terminator.start()
        terminator.join(SHUTDOWN_TIMEOUT_S)
        for thread in self._threads:
            thread.join(SHUTDOWN_TIMEOUT_S)
        if terminator.is_alive() or any(thread.is_alive() for thread in self._threads):
            log.warning("Dreamsmith threads did not stop within %s s", SHUTDOWN_TIMEOUT_S)
