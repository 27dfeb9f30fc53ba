"""What the server answers to each request. Runs on the I/O thread; never touches the socket itself:
each handler returns the reply's frames, and job events go through the event channel.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass

from .events import EventChannel, state_event, warning_event
from .job_queue import Job, JobQueue
from .peers import Sessions, Subscriptions
from .protocol import (
    MAX_FACES,
    MAX_FRAMES,
    MAX_HEADER_BYTES,
    MAX_VERTICES,
    SESSION_FIELD,
    Code,
    Message,
    Msg,
    ProtocolError,
    State,
    encode,
)
from .results import ResultStore
from .store import JobRecord, JobStore
from .worker import Runner

log = logging.getLogger(__name__)

SERVER_NAME = "dreamsmith"


@dataclass(frozen=True)
class Request:
    peer: bytes  # routing id: where the reply goes, not who sent it
    curve_key: str | None  # the client's CURVE public key (z85) when CurveZMQ is on: then it is the identity
    message: Message


class RequestHandler:
    def __init__(self, *, queue: JobQueue, store: JobStore, results: ResultStore, runner: Runner,
                 events: EventChannel, sessions: Sessions, subscriptions: Subscriptions, max_message_bytes: int):
        self.queue, self.store, self.results, self.runner = queue, store, results, runner
        self.events, self.sessions, self.subscriptions = events, sessions, subscriptions
        self.max_message_bytes = max_message_bytes
        self._handlers = {Msg.HELLO: self.hello, Msg.SUBMIT: self.submit, Msg.CANCEL: self.cancel,
                          Msg.STATUS: self.status, Msg.ATTACH: self.attach, Msg.FETCH: self.fetch, Msg.PING: self.ping}

    def handle(self, request: Request) -> list:
        """The reply frames; a refusal or a server fault becomes an error reply, never an exception."""
        request_id = request.message.request_id
        try:
            return self._handlers[request.message.type](request)
        except ProtocolError as error:
            error.request_id = request_id
            return error.to_frames()
        except Exception:
            log.exception("%s request failed", request.message.type)
            return ProtocolError(Code.INTERNAL, "the server failed on this request; its log says why",
                                 request_id=request_id).to_frames()

    # -- identity and ownership

    def _identity(self, request: Request) -> str:
        identity = self.sessions.identity(request.peer)
        if identity is None:
            raise ProtocolError(Code.FORBIDDEN, "this connection has not said hello (it is new, or the server "
                                "restarted); send hello first", SESSION_FIELD)
        return identity

    def _own_job(self, request: Request) -> JobRecord:
        identity = self._identity(request)
        job_id = request.message.header["job_id"]
        record = self.store.get(job_id)
        if record is None:
            raise ProtocolError(Code.NOT_FOUND, f"there is no job {job_id}", "job_id")
        if record.client != identity:
            raise ProtocolError(Code.FORBIDDEN, f"job {job_id} belongs to another client", "job_id")
        return record

    def _job_status(self, request_id: int, record: JobRecord) -> list:
        return encode(Msg.JOB_STATUS, request_id, job_id=record.id, kind=record.kind, state=record.state,
                      position=self.queue.position(record.id) if record.state == State.QUEUED else None,
                      error=record.error, created=record.created, started=record.started, finished=record.finished,
                      cancel_requested=self.queue.cancel_requested(record.id))

    # -- one method per request type

    def hello(self, request: Request) -> list:
        identity = request.curve_key or request.message.header["client_id"]
        self.sessions.bind(request.peer, identity)
        return encode(Msg.LIMITS, request.message.request_id, server=SERVER_NAME, identity=identity,
                      kinds=list(self.runner.kinds), max_message_bytes=self.max_message_bytes,
                      max_header_bytes=MAX_HEADER_BYTES, max_frames=MAX_FRAMES, max_queued=self.queue.max_queued,
                      max_per_client=self.queue.max_per_client, max_vertices=MAX_VERTICES, max_faces=MAX_FACES)

    def submit(self, request: Request) -> list:
        identity = self._identity(request)
        header, arrays = request.message.header, request.message.arrays
        prepared = self.runner.prepare(header["kind"], header["params"], arrays)
        self.queue.ensure_room(identity)
        job = Job(uuid.uuid4().hex, identity, header["kind"], header["params"],
                  {name: array.copy() for name, array in arrays.items()}, prepared, time.time())
        self.store.insert(job.id, job.client, job.kind, job.params, job.created)
        self.subscriptions.add(job.id, request.peer)
        for message in getattr(prepared, "warnings", ()):  # before the worker can publish "running"
            self.events.publish(warning_event(job.id, message))
        position = self.queue.put(job)
        log.info("job %s queued (%s for %s, position %d)", job.id, job.kind, identity, position)
        return encode(Msg.ACCEPTED, request.message.request_id, job_id=job.id, position=position)

    def cancel(self, request: Request) -> list:
        record = self._own_job(request)
        if record.state not in State.TERMINAL:
            if self.queue.remove_pending(record.id) is not None:
                error = {"code": Code.CANCELLED, "message": "cancelled by its client before it ran", "field": None}
                self.store.mark_finished(record.id, State.CANCELLED, time.time(), error)
                self.events.publish(state_event(record.id, State.CANCELLED, error))
                log.info("job %s cancelled while queued", record.id)
            elif self.queue.signal_running(record.id):
                log.info("job %s asked to stop", record.id)
            record = self.store.get(record.id)
        return self._job_status(request.message.request_id, record)

    def status(self, request: Request) -> list:
        if "job_id" in request.message.header:
            return self._job_status(request.message.request_id, self._own_job(request))
        queued, running = self.queue.counts()
        return encode(Msg.SERVER_STATUS, request.message.request_id, queued=queued, running=running,
                      jobs=self.queue.unfinished_of(self._identity(request)))

    def attach(self, request: Request) -> list:
        record = self._own_job(request)
        # The worker records a job's end before publishing it, so a job seen unfinished here has its
        # final event still ahead of this subscription.
        if record.state not in State.TERMINAL:
            self.subscriptions.add(record.id, request.peer)
        return self._job_status(request.message.request_id, record)

    def fetch(self, request: Request) -> list:
        record = self._own_job(request)
        if record.state == State.DONE:
            arrays = self.results.read(record.id)
            if arrays is None:
                raise ProtocolError(Code.NOT_FOUND, f"the result files of job {record.id} are gone from the server",
                                    "job_id")
            return encode(Msg.RESULT, request.message.request_id, arrays, job_id=record.id)
        if record.error is not None:
            raise ProtocolError(record.error["code"], f"job {record.id} is {record.state}: {record.error['message']}",
                                "job_id")
        raise ProtocolError(Code.NOT_FOUND, f"job {record.id} has no result yet: it is {record.state}", "job_id")

    def ping(self, request: Request) -> list:
        return encode(Msg.PONG, request.message.request_id, time=time.time())
