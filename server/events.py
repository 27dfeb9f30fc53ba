"""Job events on their way from the worker (or a handler) to the I/O thread, the only one that may
touch the ROUTER socket. Events are encoded where they are made, so the I/O thread only forwards bytes.
"""

from __future__ import annotations

import queue
import socket
from dataclasses import dataclass

from .protocol import MAX_MESSAGE_CHARS, Msg, State, bytes_array, encode

# A preview is worth sending only while it is fresh: beyond this backlog the I/O thread is behind,
# and previews are skipped rather than queued.
PREVIEW_BACKLOG_LIMIT = 64


@dataclass(frozen=True)
class Event:
    job_id: str
    frames: list
    droppable: bool = False  # previews: skipped when anyone downstream cannot keep up
    terminal: bool = False  # the job's last event: after it, nobody needs the job's events


def state_event(job_id: str, state: str, error: dict | None = None) -> Event:
    return Event(job_id, encode(Msg.STATE, job_id=job_id, state=state, error=error),
                 terminal=state in State.TERMINAL)


def progress_event(job_id: str, phase: str, step: int, total: int, loss: float | None, eta_s: float | None,
                   sent_at: float) -> Event:
    return Event(job_id, encode(Msg.PROGRESS, job_id=job_id, phase=phase, step=step, total=total, loss=loss,
                                eta_s=eta_s, time=sent_at))


def warning_event(job_id: str, message: str) -> Event:
    return Event(job_id, encode(Msg.WARNING, job_id=job_id, message=message[:MAX_MESSAGE_CHARS]))


def preview_event(job_id: str, step: int, png: bytes) -> Event:
    return Event(job_id, encode(Msg.PREVIEW, arrays={"image_png": bytes_array(png)}, job_id=job_id, step=step),
                 droppable=True)


class EventChannel:
    """A thread-safe queue whose socket-pair wake-up the I/O thread's poller watches next to the ROUTER."""

    def __init__(self):
        self._events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)

    def fileno(self) -> int:
        return self._reader.fileno()

    def publish(self, event: Event) -> None:
        if event.droppable and self._events.qsize() > PREVIEW_BACKLOG_LIMIT:
            return
        self._events.put(event)
        try:
            self._writer.send(b"\0")
        except BlockingIOError:
            pass  # the socket buffer is full of wake-ups already; one is enough

    def drain(self) -> list[Event]:
        # Wake-up bytes first: an event published after this point leaves a byte for the next poll.
        try:
            while self._reader.recv(4096):
                pass
        except BlockingIOError:
            pass
        events = []
        while True:
            try:
                events.append(self._events.get_nowait())
            except queue.Empty:
                return events

    def close(self) -> None:
        self._reader.close()
        self._writer.close()
