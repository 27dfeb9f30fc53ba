"""The worker threads: each runs queued jobs one at a time through the engine and records how each
ended. The server starts ``--jobs`` of them; the runner lets their jobs share one prior (and, when
more than one runs, one batched U-Net forward per step: engine.batching).

A job's result is committed to disk and to the job table before its `done` event is published, so a
client told "done" can always fetch, even from a restarted server.
"""

from __future__ import annotations

import gc
import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Callable, Protocol

import torch

from engine.progress import Cancelled, Progress

from .events import EventChannel, preview_event, progress_event, state_event
from .job_queue import Job, JobQueue
from .protocol import Code, ProtocolError, State, encode_png
from .results import JobOutput, ResultStore
from .store import JobStore

log = logging.getLogger(__name__)

PREVIEW_INTERVAL_S = 0.5
OUT_OF_MEMORY = (MemoryError, torch.cuda.OutOfMemoryError)


class Runner(Protocol):
    """Where jobs run: in this process (server.engine_runner) or in Ray actors (server.ray_backend)."""

    kinds: tuple[str, ...]

    def prepare(self, kind: str, params: dict, inputs: dict) -> object:
        """What the job becomes (kept as ``Job.prepared``); raises ProtocolError to refuse it. A
        ``warnings`` attribute on it, when there is one, goes to the client as warning events."""

    def run(self, job: Job, on_progress: Callable[..., None], cancel) -> JobOutput:
        """Runs the job to its output. ``on_progress(progress, reported_at=None)`` takes each engine
        Progress, with the Unix time the engine reported it when that was elsewhere. Raises what the
        engine raised (see job_end), ProtocolError when the job's input turns out unusable while it
        runs, or JobEnded for a job that ended elsewhere and already knows how."""


@dataclass(frozen=True)
class JobEnd:
    """How a job that gave no result ends: its final state and the error map its client gets."""

    state: str
    code: str
    message: str
    field: str | None = None


class JobEnded(Exception):
    """Raised by a runner whose job ended out of this process (a Ray actor), carrying how it ended."""

    def __init__(self, end: JobEnd):
        super().__init__(end.message)
        self.end = end


def job_end(error: BaseException) -> JobEnd:
    """How a job whose run raised ``error`` ends; the same rule wherever the engine ran.

    Args:
        error: what the runner (or the engine inside it) raised.
    """
    if isinstance(error, JobEnded):
        return error.end
    if isinstance(error, Cancelled):
        return JobEnd(State.CANCELLED, Code.CANCELLED, "cancelled by its client")
    if isinstance(error, ProtocolError):  # the runner found the job's input unusable only once it ran
        return JobEnd(State.FAILED, error.code, error.message, error.field)
    if isinstance(error, OUT_OF_MEMORY):
        _release_memory()
        return JobEnd(State.FAILED, Code.OUT_OF_MEMORY, f"the job ran out of memory ({type(error).__name__}); "
                      "try a smaller preset, grid or texture")
    return JobEnd(State.FAILED, Code.WORKER_CRASHED, f"the engine failed: {type(error).__name__}: {error}")


class ProgressReporter:
    """Engine callbacks -> a progress event every step and a preview event at most every PREVIEW_INTERVAL_S."""

    def __init__(self, job_id: str, events: EventChannel):
        self.job_id, self.events = job_id, events
        self._phase, self._phase_started = None, time.monotonic()
        self._last_call = self._phase_started
        self._last_preview = -math.inf

    def __call__(self, progress: Progress, reported_at: float | None = None) -> None:
        """Args:
            progress: the engine's report of one step.
            reported_at: Unix time the engine made it, when that was in another process (a Ray
                actor); None: now.
        """
        now = time.monotonic()
        if progress.phase != self._phase:
            self._phase, self._phase_started = progress.phase, self._last_call
        self._last_call = now
        per_step = (now - self._phase_started) / max(progress.step, 1)
        loss = float(progress.loss) if progress.loss is not None and math.isfinite(progress.loss) else None
        self.events.publish(progress_event(self.job_id, progress.phase, progress.step, progress.total, loss,
                                           per_step * max(progress.total - progress.step, 0),
                                           time.time() if reported_at is None else reported_at))
        if progress.preview is not None and now - self._last_preview >= PREVIEW_INTERVAL_S:
            self._last_preview = now
            self.events.publish(preview_event(self.job_id, progress.step, encode_png(progress.preview)))


class Worker(threading.Thread):
    """One of the server's job slots: takes the next queued job whenever its last one has ended.

    Args:
        queue, store, results, runner, events: the server's parts, shared by every worker.
        number: which slot, for the thread's name in logs.
    """

    def __init__(self, queue: JobQueue, store: JobStore, results: ResultStore, runner: Runner,
                 events: EventChannel, number: int = 0):
        # daemon: an engine step must not block exit
        super().__init__(name=f"dreamsmith-worker-{number}", daemon=True)
        self.queue, self.store, self.results, self.runner, self.events = queue, store, results, runner, events

    def run(self) -> None:
        while (job := self.queue.take()) is not None:
            try:
                self._run_job(job)
            except Exception:  # the job table itself failed; keep serving the jobs after it
                log.exception("job %s: the worker could not record how it ended", job.id)
                self.events.publish(state_event(job.id, State.FAILED, {
                    "code": Code.INTERNAL, "message": "the server could not record this job; see its log",
                    "field": None}))
            finally:
                self.queue.finish(job)

    def _run_job(self, job: Job) -> None:
        self.store.mark_running(job.id, time.time())
        self.events.publish(state_event(job.id, State.RUNNING))
        log.info("job %s running (%s for %s)", job.id, job.kind, job.client)
        try:
            output = self.runner.run(job, ProgressReporter(job.id, self.events), job.cancel)
            if job.cancel.cancelled:  # asked to stop during a stage the engine cannot interrupt
                raise Cancelled("cancelled by its client")
        except Exception as error:
            end = job_end(error)
            if end.code == Code.WORKER_CRASHED and not isinstance(error, JobEnded):
                log.exception("job %s: the engine failed", job.id)
            return self._finish(job, end.state, end.code, end.message, end.field)
        try:
            self.results.commit(job.id, output)
        except Exception as error:  # a full disk, or a mesh the GLB writer refuses
            log.exception("job %s: cannot store the result", job.id)
            return self._finish(job, State.FAILED, Code.INTERNAL, f"the server could not store the result: {error}")
        self._finish(job, State.DONE)

    def _finish(self, job: Job, state: str, code: str | None = None, message: str = "",
                field: str | None = None) -> None:
        error = {"code": code, "message": message, "field": field} if code else None
        self.store.mark_finished(job.id, state, time.time(), error)
        self.events.publish(state_event(job.id, state, error))
        log.info("job %s %s%s", job.id, state, f": {message}" if message else "")


def _release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
