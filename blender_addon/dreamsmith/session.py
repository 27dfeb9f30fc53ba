"""The add-on's running state on Blender's main thread: the job in progress, the server's status, the
recent jobs, and the drain that turns the transport threads' events into panel state and scene changes.

bpy may only be used from the main thread, so the threads never touch it: they post events to a
queue, and ``Session.drain`` handles them, from a ``bpy.app.timers`` timer in the interface, or
right after a blocking job in background mode, where timers never fire.
"""

from __future__ import annotations

import logging
import queue
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

import bpy
import bpy.utils.previews

from . import importer, transport
from ._vendor.protocol import CLIENT_ID_PATTERN, State
from .job_inputs import InputError
from .recent_jobs import JobRecord, RecentJobs

log = logging.getLogger(__name__)

DRAIN_EVERY_S = 0.2
PREVIEW_KEY = "optimisation"


def stored_client_id(path: Path) -> str:
    """This Blender's client id, made once: a server without CURVE knows a job's owner by it."""
    if path.exists():
        text = path.read_text(encoding="utf-8").strip()
        if re.fullmatch(CLIENT_ID_PATTERN, text):
            return text
    client_id = f"blender-{uuid.uuid4().hex}"
    path.write_text(client_id, encoding="utf-8")
    return client_id


@dataclass
class ActiveJob:
    kind: str
    label: str
    target: str  # see JobRecord.target
    job_id: str | None = None  # None until the server accepts the job
    origin: list | None = None  # see JobRecord.origin
    phase: str = "submitting"
    step: int = 0
    total: int = 0
    cancel_requested: bool = False

    @property
    def factor(self) -> float:
        return self.step / self.total if self.total else 0.0


@dataclass(frozen=True)
class Outcome:
    """How the last job ended, as the operator that waited for it reports it."""
    succeeded: bool
    message: str


class Session:
    def __init__(self):
        self.user_dir = Path(bpy.utils.extension_path_user(__package__, create=True))
        self.recent = RecentJobs(self.user_dir / "recent_jobs.json")
        self.client_id = stored_client_id(self.user_dir / "client_id")
        self.events: queue.SimpleQueue = queue.SimpleQueue()
        self.threads = transport.Threads()
        self.active: ActiveJob | None = None
        self.server = transport.ServerStatus(False, "checking the server…")
        self.last_error = ""  # why the last job failed, shown in the panel until the next job
        self.warnings: list[str] = []  # the server's warnings about the last job, shown until the next job
        self.previews = bpy.utils.previews.new()
        self.monitor = transport.StatusMonitor(self.settings(), self.threads.context, self.events)
        self.threads.start(self.monitor.run, name="dreamsmith-status")
        if not bpy.app.background:
            bpy.app.timers.register(self._tick, first_interval=DRAIN_EVERY_S, persistent=True)

    def close(self) -> None:
        if bpy.app.timers.is_registered(self._tick):
            bpy.app.timers.unregister(self._tick)
        self.monitor.stop()
        self.threads.shutdown()
        bpy.utils.previews.remove(self.previews)

    def settings(self) -> transport.ConnectionSettings:
        prefs = bpy.context.preferences.addons[__package__].preferences
        return transport.ConnectionSettings(
            address=prefs.server_address.strip(), client_id=self.client_id, timeout=prefs.timeout,
            server_public_key=bpy.path.abspath(prefs.server_public_key) if prefs.server_public_key else "",
            client_secret_key=bpy.path.abspath(prefs.client_secret_key) if prefs.client_secret_key else "")

    def preferences_changed(self) -> None:
        self.monitor.use(self.settings())

    # -- jobs

    def run(self, order: transport.JobOrder, label: str, target: str = "", wait: bool = False,
            origin=None) -> Outcome | None:
        """Start a job; with ``wait``, run it to the end in this thread and return how it ended."""
        origin = list(origin) if origin is not None else None
        self.active = ActiveJob(order.kind, label, target, job_id=order.job_id, origin=origin)
        self.last_error = ""
        self.warnings = []
        settings = self.settings()
        if wait:
            transport.run_job(order, settings, self.threads.context, self.events)
            return self.drain()
        self.threads.start(transport.run_job, order, settings, self.threads.context, self.events,
                           name="dreamsmith-job")
        return None

    def cancel(self) -> None:
        if self.active is None:
            return
        self.active.cancel_requested = True
        self.active.phase = "cancelling"
        if self.active.job_id is not None:  # else it is sent once the server has accepted the job
            self._send_cancel(self.active.job_id)

    def _send_cancel(self, job_id: str) -> None:
        self.threads.start(transport.request_cancel, job_id, self.settings(), self.threads.context,
                           name="dreamsmith-cancel")

    # -- events from the threads

    def _tick(self) -> float:
        if self.drain() is not None or self.active is not None:
            tag_sidebar_redraw()
        return DRAIN_EVERY_S

    def drain(self) -> Outcome | None:
        """Handle every event waiting; returns how a job ended, if one did."""
        outcome = None
        while True:
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                return outcome
            if isinstance(event, transport.ServerStatus):
                self.server = event
                tag_sidebar_redraw()
            elif self.active is None:
                log.debug("dropped %s: no job is active", type(event).__name__)
            elif isinstance(event, transport.JobAccepted):
                self._accepted(event)
            elif isinstance(event, transport.JobProgress):
                self.active.phase, self.active.step, self.active.total = event.phase, event.step, event.total
            elif isinstance(event, transport.JobPreview):
                self._show_preview(event.png)
            elif isinstance(event, transport.JobWarning):
                self.warnings.append(event.message)
                log.warning("%s", event.message)
            elif isinstance(event, transport.JobEnded):
                outcome = self._ended(event)

    def _accepted(self, event: transport.JobAccepted) -> None:
        active = self.active
        active.job_id, active.phase = event.job_id, "queued"
        if self.recent.get(event.job_id) is None:
            self.recent.add(JobRecord(event.job_id, active.kind, active.label, target=active.target,
                                      origin=active.origin))
        else:
            self.recent.update(event.job_id, state="running", message="")
        if active.cancel_requested:
            self._send_cancel(event.job_id)

    def _show_preview(self, png: bytes) -> None:
        path = self.user_dir / "preview.png"
        path.write_bytes(png)
        if PREVIEW_KEY in self.previews:
            del self.previews[PREVIEW_KEY]
        self.previews.load(PREVIEW_KEY, str(path), "IMAGE", force_reload=True)

    def _ended(self, event: transport.JobEnded) -> Outcome:
        active, self.active = self.active, None
        if event.state == State.DONE:
            try:
                obj = importer.place_result(bpy.context, active.kind, active.label, active.target, event.result,
                                            active.origin)
                outcome = Outcome(True, f"Dreamsmith: {obj.name} is ready")
                state, message = "imported", ""
            except InputError as error:
                outcome = Outcome(False, f"Dreamsmith could not use the result: {error}")
                state, message = State.FAILED, str(error)
        else:
            message = event.message or f"the job ended {event.state}"
            outcome = Outcome(False, f"Dreamsmith: {message}")
            state = event.state
        if event.job_id is not None:
            self.recent.update(event.job_id, state=state, message=message)
        self.last_error = "" if outcome.succeeded else outcome.message
        log.info("%s", outcome.message)
        return outcome

    def preview_icon(self) -> int:
        return self.previews[PREVIEW_KEY].icon_id if PREVIEW_KEY in self.previews else 0


def tag_sidebar_redraw() -> None:
    for window in getattr(bpy.context.window_manager, "windows", ()):
        for area in window.screen.areas:
            if area.type == "VIEW_3D":
                area.tag_redraw()


_session: Session | None = None


def current() -> Session | None:
    return _session


def start() -> None:
    global _session
    _session = Session()


def stop() -> None:
    global _session
    if _session is not None:
        _session.close()
        _session = None
