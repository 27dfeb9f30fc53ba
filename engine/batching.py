"""Many jobs, one U-Net: concurrent noise predictions of jobs that share a prior run as one forward.

Each job runs in a thread of its own with a ``BatchedPrior``: the prior's interface, whose U-Net
calls go through a ``Lane`` of one ``SharedForward``. The shared forward gathers the calls that are
waiting, concatenates them along the batch dimension, runs the U-Net once and hands each caller its
rows. Everything else (field, seed, generator, cancel, progress, text encoder, VAE) stays the job's
own, so a job knows nothing of the others.

When to run: at once when every job that is taking part is waiting (a lone job never waits), when
the waiting rows fill ``max_rows``, or ``window_s`` after the oldest waiting call. A job the window
ran out on (busy meshing, say) counts as absent until it calls again, so it costs the others one
window, not one per step. Jobs whose token is cancelled are never waited for.

    shared = SharedForward(prior.unet_forward)
    with BatchedPrior(prior, shared.join(cancel)) as job_prior:   # one per job thread
        generate("a red cube", job_prior, config, cancel=cancel)
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import torch

from .prior import Prior, UNetForward
from .progress import Cancelled, CancelToken

log = logging.getLogger(__name__)

# Rows in one forward: 8 jobs' Perp-Neg colour refinement fits, and an SD-sized U-Net at 64x64 in fp16
# stays a few GiB of activations.
DEFAULT_MAX_ROWS = 64
# About one step of the engine's own work besides the U-Net: long enough for jobs in lock step to
# arrive together, short enough that a job gone meshing costs the others little (once).
DEFAULT_WINDOW_S = 0.025


class BatchingError(RuntimeError):
    """A lane used after it left, or a forward that ended without an answer for its call."""


@dataclass
class BatchStats:
    """What a shared forward has done, for logs, benchmarks and tests."""

    forwards: int = 0  # shared forwards run (a failed one's calls then run one by one)
    calls: int = 0  # noise predictions served
    rows: int = 0  # rows through the U-Net
    largest: int = 0  # most calls in one forward
    timed_waits: int = 0  # times a caller waited on the window's clock for others to arrive


@dataclass(eq=False)
class _Call:
    """One job's U-Net call, waiting for its rows of a forward."""

    lane: "Lane"
    model_in: torch.Tensor
    timesteps: torch.Tensor
    text: torch.Tensor
    arrived: float
    result: torch.Tensor | None = None
    error: BaseException | None = None
    done: bool = False

    @property
    def rows(self) -> int:
        return self.model_in.shape[0]

    @property
    def signature(self) -> tuple:
        """Calls concatenate when everything but their batch size agrees."""
        return (tuple(self.model_in.shape[1:]), tuple(self.text.shape[1:]), self.model_in.dtype, self.text.dtype,
                self.timesteps.dtype, self.model_in.device)


class Lane:
    """One job's seat at a shared forward: call it as the U-Net forward; close it when the job ends.

    Args:
        shared: the forward it joins.
        cancel: the job's token; a cancelled job is not waited for, and its waiting call leaves.
    """

    def __init__(self, shared: "SharedForward", cancel: CancelToken | None = None):
        self.shared, self.cancel = shared, cancel
        self.closed = False
        self.calls = 0  # U-Net calls answered
        self.shared_calls = 0  # ...by a forward that also ran other jobs' rows

    @property
    def cancelled(self) -> bool:
        return self.cancel is not None and self.cancel.cancelled

    def __call__(self, model_in: torch.Tensor, timesteps: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return self.shared.call(self, model_in, timesteps, text)

    def close(self) -> None:
        self.shared.leave(self)

    def __enter__(self) -> "Lane":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class SharedForward:
    """Gathers the U-Net calls of concurrent jobs into one forward (see the module's docstring).

    Args:
        forward: what runs the U-Net, e.g. ``prior.unet_forward``.
        max_rows: most rows in one forward; a single call larger than this still runs, alone.
        window_s: longest wait, after the oldest waiting call, for jobs that have not called yet.
    """

    def __init__(self, forward: UNetForward, max_rows: int = DEFAULT_MAX_ROWS, window_s: float = DEFAULT_WINDOW_S):
        if max_rows < 1 or window_s < 0:
            raise ValueError(f"need max_rows >= 1 and window_s >= 0, got {max_rows} and {window_s}")
        self.forward, self.max_rows, self.window_s = forward, max_rows, window_s
        self.stats = BatchStats()
        self._changed = threading.Condition()
        self._lanes: set[Lane] = set()
        self._absent: set[Lane] = set()  # ran out of window; not waited for until they call again
        self._pending: list[_Call] = []
        self._busy = False  # a forward is running: one at a time

    # ------------------------------------------------------------ membership
    def join(self, cancel: CancelToken | None = None) -> Lane:
        """A lane for one job; the job's calls are waited for until it closes the lane.

        Args:
            cancel: the job's cancel token.
        """
        lane = Lane(self, cancel)
        with self._changed:
            self._lanes.add(lane)
        return lane

    def leave(self, lane: Lane) -> None:
        """Take a finished (or failed, or cancelled) job out, so nobody waits for it again.

        Args:
            lane: the job's lane; leaving twice is harmless.
        """
        with self._changed:
            lane.closed = True
            self._lanes.discard(lane)
            self._absent.discard(lane)
            self._changed.notify_all()  # a caller waiting for this lane can go now

    @property
    def active_jobs(self) -> int:
        """Jobs that have joined and not left."""
        with self._changed:
            return len(self._lanes)

    @property
    def waiting_calls(self) -> int:
        """Calls queued for a forward that has not started."""
        with self._changed:
            return len(self._pending)

    @property
    def forward_running(self) -> bool:
        with self._changed:
            return self._busy

    # ------------------------------------------------------------------ calls
    def call(self, lane: Lane, model_in: torch.Tensor, timesteps: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """The U-Net's output for this lane's rows, from a forward shared with whoever else is waiting.

        Args:
            lane: the calling job's lane.
            model_in, timesteps, text: as ``Prior.unet_forward`` takes them.

        Raises:
            Cancelled: the lane's job was cancelled while its call waited.
            BatchingError: the lane has left.
            Exception: whatever the U-Net raised on this call's own rows.
        """
        request = _Call(lane, model_in, timesteps, text, time.monotonic())
        with self._changed:
            if lane.closed:
                raise BatchingError("this job has left the shared forward")
            self._pending.append(request)
            self._absent.discard(lane)
            self._changed.notify_all()  # whoever waits for this lane to arrive
        while (batch := self._next_turn(request)) is not None:
            self._run(batch)
        if request.error is not None:
            raise request.error
        return request.result

    def _next_turn(self, request: _Call) -> list[_Call] | None:
        """Block until ``request`` is answered (None) or this thread is to run a forward (its calls)."""
        with self._changed:
            while not request.done:
                if request.lane.cancelled and request in self._pending:
                    self._pending.remove(request)
                    self._changed.notify_all()
                    raise Cancelled("cancelled while waiting for the shared U-Net")
                if self._busy:
                    self._changed.wait()  # woken when the forward ends
                    continue
                delay = self._delay()
                if delay > 0:
                    self.stats.timed_waits += 1
                    self._changed.wait(delay)
                    continue
                self._busy = True
                return self._take_batch()
            return None

    def _delay(self) -> float:
        """Seconds to wait for jobs that take part but have not called; 0 to run now."""
        waiting = {request.lane for request in self._pending}
        expected = {lane for lane in self._lanes - self._absent if not lane.cancelled}
        if expected <= waiting or sum(request.rows for request in self._pending) >= self.max_rows:
            return 0.0
        left = self._pending[0].arrived + self.window_s - time.monotonic()
        if left <= 0:
            self._absent |= expected - waiting
            return 0.0
        return left

    def _take_batch(self) -> list[_Call]:
        """The oldest waiting call and, up to ``max_rows``, the others that concatenate with it."""
        first = self._pending[0]
        batch, rows = [first], first.rows
        for request in self._pending[1:]:
            if request.signature == first.signature and rows + request.rows <= self.max_rows:
                batch.append(request)
                rows += request.rows
        for request in batch:
            self._pending.remove(request)
        return batch

    def _run(self, batch: list[_Call]) -> None:
        """One forward for the batch (outside the lock); each call gets its rows or its own error."""
        try:
            self._answer(batch)
        finally:
            with self._changed:
                for request in batch:
                    if request.result is None and request.error is None:
                        request.error = BatchingError("the shared forward ended without an answer")
                    request.done = True
                    request.lane.calls += 1
                    request.lane.shared_calls += len(batch) > 1
                self._busy = False
                self.stats.forwards += 1
                self.stats.calls += len(batch)
                self.stats.rows += sum(request.rows for request in batch)
                self.stats.largest = max(self.stats.largest, len(batch))
                self._changed.notify_all()

    def _answer(self, batch: list[_Call]) -> None:
        with torch.no_grad():
            if len(batch) == 1:
                return self._answer_alone(batch[0])
            try:
                out = self.forward(torch.cat([r.model_in for r in batch]), torch.cat([r.timesteps for r in batch]),
                                   torch.cat([r.text for r in batch]))
            except Exception as error:  # one job's bad rows must not fail the others: each runs alone
                log.warning("a shared U-Net forward of %d calls failed (%s: %s); running them one by one",
                            len(batch), type(error).__name__, error)
                for request in batch:
                    self._answer_alone(request)
                return
            for request, rows in zip(batch, out.split([r.rows for r in batch])):
                request.result = rows

    def _answer_alone(self, request: _Call) -> None:
        try:
            request.result = self.forward(request.model_in, request.timesteps, request.text)
        except Exception as error:
            request.error = error


class BatchedPrior:
    """One job's view of a shared prior: the prior's interface, with its U-Net calls through a lane.

    Args:
        prior: the loaded prior every job shares.
        lane: this job's lane of the prior's ``SharedForward``; closed with this view.
    """

    def __init__(self, prior: Prior, lane: Lane):
        self.prior, self.lane = prior, lane

    def predict_noise(self, *args, **kwargs) -> torch.Tensor:
        """``Prior.predict_noise``, its U-Net forward shared with the other jobs."""
        return self.prior.predict_noise(*args, **kwargs, forward=self.lane)

    def __getattr__(self, name: str):
        # Only reached for what this view does not define: the prior's metadata, VAE, text encoder...
        if name == "prior":  # not set yet (a copy being built): no endless lookup
            raise AttributeError(name)
        return getattr(self.prior, name)

    def close(self) -> None:
        self.lane.close()

    def __enter__(self) -> "BatchedPrior":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
