"""The bounded FIFO of jobs waiting for the workers (up to ``--jobs`` run at once), with a cap per client."""

from __future__ import annotations

import threading
from collections import Counter, deque
from dataclasses import dataclass, field

import numpy as np

from engine.progress import CancelToken

from .protocol import Code, ProtocolError, State


@dataclass
class Job:
    id: str
    client: str
    kind: str
    params: dict
    inputs: dict[str, np.ndarray]
    prepared: object  # what the runner made of the params at submission, e.g. an engine config
    created: float
    cancel: CancelToken = field(default_factory=CancelToken)


class JobQueue:
    """Shared by the I/O thread (put, cancel, look-ups) and the workers (take, finish)."""

    def __init__(self, max_queued: int, max_per_client: int):
        self.max_queued, self.max_per_client = max_queued, max_per_client
        self._changed = threading.Condition()
        self._pending: deque[Job] = deque()
        self._running: dict[str, Job] = {}  # job id -> job, in the order they started
        self._unfinished = Counter()  # client -> queued + running jobs
        self._closed = False

    def ensure_room(self, client: str) -> None:
        """Raise queue_full unless a job of this client would be accepted now."""
        with self._changed:
            if self._unfinished[client] >= self.max_per_client:
                raise ProtocolError(Code.QUEUE_FULL, f"you already have {self._unfinished[client]} unfinished "
                                    f"jobs; at most {self.max_per_client} per client")
            if len(self._pending) >= self.max_queued:
                raise ProtocolError(Code.QUEUE_FULL, f"the queue is full ({self.max_queued} jobs waiting); "
                                    "try again later")

    def put(self, job: Job) -> int:
        """Append a job that ensure_room allowed; returns how many jobs wait before it."""
        with self._changed:
            self._pending.append(job)
            self._unfinished[job.client] += 1
            self._changed.notify()
            return len(self._pending) - 1

    def take(self) -> Job | None:
        """The next job, now running; blocks while the queue is empty, None once closed."""
        with self._changed:
            while not self._pending and not self._closed:
                self._changed.wait()
            if self._closed:
                return None
            job = self._pending.popleft()
            self._running[job.id] = job
            return job

    def finish(self, job: Job) -> None:
        with self._changed:
            self._running.pop(job.id, None)
            self._release(job.client)

    def remove_pending(self, job_id: str) -> Job | None:
        with self._changed:
            for job in self._pending:
                if job.id == job_id:
                    self._pending.remove(job)
                    self._release(job.client)
                    return job
        return None

    def _release(self, client: str) -> None:
        self._unfinished[client] -= 1
        if not self._unfinished[client]:
            del self._unfinished[client]  # so the counter does not grow with every client ever seen

    def signal_running(self, job_id: str) -> bool:
        """Ask the running job to stop; the engine notices at its next step."""
        with self._changed:
            running = self._running.get(job_id)
            if running is not None:
                running.cancel.cancel()
                return True
        return False

    def position(self, job_id: str) -> int | None:
        with self._changed:
            return next((i for i, job in enumerate(self._pending) if job.id == job_id), None)

    def cancel_requested(self, job_id: str) -> bool:
        with self._changed:
            running = self._running.get(job_id)
        return running is not None and running.cancel.cancelled

    def counts(self) -> tuple[int, int]:
        """(jobs waiting, jobs running)."""
        with self._changed:
            return len(self._pending), len(self._running)

    def unfinished_of(self, client: str) -> list[dict]:
        with self._changed:
            jobs = [{"job_id": job.id, "state": State.RUNNING, "position": None}
                    for job in self._running.values() if job.client == client]
            return jobs + [{"job_id": job.id, "state": State.QUEUED, "position": i}
                           for i, job in enumerate(self._pending) if job.client == client]

    def close(self) -> None:
        """Wake the workers so they stop, and ask the running jobs to stop."""
        with self._changed:
            self._closed = True
            for job in self._running.values():
                job.cancel.cancel()
            self._changed.notify_all()
