"""The Ray backend (``python -m server --backend ray [--ray-address ADDRESS]``): jobs run in Ray actors,
each holding one loaded prior, while this process stays the front that owns authentication,
validation, the job table and the result files.

Each actor runs one job at a time. The front puts the job's prepared inputs (config, mesh arrays,
cameras) into Ray's object store and follows a streaming call, ``JobActor.run``, which yields the
engine's progress as it comes (what piled up, as one list, when the front falls behind) and, last,
the result (the TexturedMesh arrays, through the object store) or how the job ended. A cancel is a
second call on the same threaded actor, which sets the job's CancelToken.

Faults: an actor that dies mid-job fails that job with ``worker_crashed`` (it is not retried: a job
that killed its worker would likely kill the next one too) and is replaced for the next job; a
cluster that cannot be reached at start is a StartupError, within CONNECT_TIMEOUT_S.

This module imports Ray; only ``--backend ray`` imports this module.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import socket
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Callable, Iterator

import ray
from ray.exceptions import RayActorError, RayError

from engine import PriorError, load_prompt_reader
from engine.progress import Cancelled, CancelToken, Progress

from .engine_runner import EngineRunner, load_runner
from .job_queue import Job
from .protocol import Code, State
from .results import JobOutput
from .settings import Settings, StartupError
from .worker import JobEnd, JobEnded, job_end

log = logging.getLogger(__name__)

# A local Ray's object store holds only the inputs and results in flight (a few MB each).
LOCAL_OBJECT_STORE_BYTES = 200 * 2**20
CONNECT_TIMEOUT_S = 15.0  # reaching a cluster's head, then joining it
ACTOR_START_TIMEOUT_S = 300.0  # every actor has loaded its prior (a big model on a slow disk takes a while)
ACTOR_THREADS = 2  # one runs the job, the other takes its cancel (and the start-up check)
POLL_S = 0.05  # how often the front, waiting on an actor, looks at the job's cancel token
# Reports an actor may have sent that the front has not read yet. Beyond them the actor's stream
# waits (the engine does not) and sends what piled up as one list: a front that falls behind, with
# many actors of fast steps, gets fewer, larger messages rather than a growing backlog.
REPORTS_IN_FLIGHT = 2
# The engine stops a cancelled job within one optimisation step, or when its mesh or colour stage
# ends; an actor that has not stopped by then is stuck, and is killed and replaced.
CANCEL_GRACE_S = 120.0


# ------------------------------------------------------------------ what an actor tells the front
@dataclass(frozen=True)
class ActorInfo:
    """What an actor says once its prior has loaded (or failed to)."""

    pid: int
    node: str
    problem: str | None  # why it cannot run jobs (its prior did not load), or None


@dataclass(frozen=True)
class StepReport:
    progress: Progress
    reported_at: float  # Unix time on the actor's machine


@dataclass(frozen=True)
class Finished:
    output: JobOutput


@dataclass(frozen=True)
class Ended:
    end: JobEnd
    trace: str | None = None  # the engine's traceback when it crashed, for the front's log


Report = StepReport | Finished | Ended


# -------------------------------------------------------------------------------------- the actor
class JobActor:
    """One Ray actor: a loaded prior that runs the front's jobs, one at a time.

    Args:
        model: the prior's folder or cached Hugging Face id (None: the embedded prior), which must
            exist on the actor's machine.
        device: "cpu" or "cuda" (the actor then holds one GPU).
        threads: torch CPU threads; None leaves torch's (Ray's) choice.
    """

    def __init__(self, model: str | None, device: str, threads: int | None):
        self._tokens: dict[str, CancelToken] = {}
        self._tokens_lock = threading.Lock()
        try:
            self.runner, self.problem = load_runner(model, device, threads), None
        except StartupError as error:  # told to the front by ready(), which refuses to start with it
            self.runner, self.problem = None, str(error)

    def ready(self) -> ActorInfo:
        return ActorInfo(os.getpid(), ray.util.get_node_ip_address(), self.problem)

    def run(self, job_id: str, kind: str, params: dict, prepared) -> Iterator[list[Report]]:
        """Run one job; yields lists of StepReports (one per engine step), the last list ending with
        one Finished or Ended.

        Args:
            job_id: the front's job id (cancel names it).
            kind, params, prepared: the job as the front's runner prepared it.
        """
        job = Job(job_id, "", kind, params, {}, prepared, time.time(), self._token(job_id))
        reports: queue.SimpleQueue = queue.SimpleQueue()
        # The engine reports through a callback; a thread of its own lets this generator yield them.
        threading.Thread(target=self._execute, args=(job, reports), name=f"job-{job_id}", daemon=True).start()
        try:
            while True:
                batch = queued_reports(reports)
                yield batch
                if not isinstance(batch[-1], StepReport):
                    return
        finally:
            with self._tokens_lock:
                self._tokens.pop(job_id, None)

    def cancel(self, job_id: str) -> None:
        """Ask the job to stop; the engine notices at its next step."""
        self._token(job_id).cancel()

    def _token(self, job_id: str) -> CancelToken:
        # Made by whichever comes first: a cancel may overtake its run on the actor's other thread.
        with self._tokens_lock:
            return self._tokens.setdefault(job_id, CancelToken())

    def _execute(self, job: Job, reports: queue.SimpleQueue) -> None:
        try:
            output = self.runner.run(job, lambda progress: reports.put(StepReport(progress, time.time())),
                                     job.cancel)
            job.cancel.raise_if_cancelled()  # asked to stop during a stage the engine cannot interrupt
            reports.put(Finished(output))
        except BaseException as error:  # whatever happens, the stream gets its last item
            end = job_end(error)
            crashed = end.code == Code.WORKER_CRASHED
            reports.put(Ended(end, traceback.format_exc() if crashed else None))


RemoteJobActor = ray.remote(JobActor)


def queued_reports(reports: queue.SimpleQueue) -> list[Report]:
    """The next report (waiting for it) and every one queued behind it, up to a job's last."""
    batch = [reports.get()]
    while isinstance(batch[-1], StepReport):
        try:
            batch.append(reports.get_nowait())
        except queue.Empty:
            break
    return batch


# --------------------------------------------------------------------------------- the actor pool
@dataclass(frozen=True)
class ActorSpec:
    """How every actor of the pool is made."""

    model: str | None
    device: str
    threads: int | None

    @property
    def cpus(self) -> int:
        return self.threads or 1

    @property
    def gpus(self) -> int:
        return 1 if self.device == "cuda" else 0

    def create(self):
        return RemoteJobActor.options(num_cpus=self.cpus, num_gpus=self.gpus, max_concurrency=ACTOR_THREADS,
                                      max_restarts=0).remote(self.model, self.device, self.threads)


class ActorSlot:
    """One place in the pool: the actor there now, replaced when it dies.

    Args:
        number: its place, for the log.
        spec: how its actors are made.
    """

    def __init__(self, number: int, spec: ActorSpec):
        self.number, self.spec = number, spec
        self.start()

    def start(self) -> None:
        self.handle = self.spec.create()
        self.ready_ref = self.handle.ready.remote()  # resolves once the prior has loaded
        self.info: ActorInfo | None = None

    def replace(self, reason: str) -> None:
        log.warning("%s %s; starting a new one for the next job", self, reason)
        with contextlib.suppress(RayError):  # it may be dead already
            ray.kill(self.handle, no_restart=True)
        self.start()

    def __str__(self) -> str:
        where = f" (pid {self.info.pid} on {self.info.node})" if self.info else ""
        return f"Ray actor {self.number}{where}"


class ActorPool:
    """The actors, each lent to one job at a time.

    Args:
        spec: how each actor is made.
        size: how many; the server runs as many jobs at once.
    """

    def __init__(self, spec: ActorSpec, size: int):
        self.slots = [ActorSlot(number, spec) for number in range(size)]
        self._idle: queue.SimpleQueue[ActorSlot] = queue.SimpleQueue()
        for slot in self.slots:
            self._idle.put(slot)

    def wait_until_ready(self, timeout: float) -> None:
        """Block until every actor has loaded its prior.

        Raises:
            StartupError: one could not (its reason), or not all did within ``timeout`` seconds.
        """
        by_ref = {slot.ready_ref: slot for slot in self.slots}
        ready, _ = ray.wait(list(by_ref), num_returns=len(by_ref), timeout=timeout)
        if len(ready) < len(by_ref):
            raise StartupError(f"only {len(ready)} of {len(by_ref)} Ray actors loaded the prior within "
                               f"{timeout:.0f} s; the cluster may be busy or short of what each needs "
                               f"({_needs(self.slots[0].spec)}): lower --jobs or add machines")
        for ref in ready:
            slot = by_ref[ref]
            try:
                slot.info = ray.get(ref)
            except RayError as error:
                raise StartupError(f"a Ray actor could not start: {short_ray_error(error)}") from None
            if slot.info.problem:
                raise StartupError(f"a Ray actor could not load the prior: {slot.info.problem}")
            log.info("%s ready", slot)

    @contextlib.contextmanager
    def lend(self) -> Iterator[ActorSlot]:
        """An idle actor's slot for one job (one worker thread per actor, so one is always idle)."""
        slot = self._idle.get()
        try:
            yield slot
        finally:
            self._idle.put(slot)

    def close(self) -> None:
        for slot in self.slots:
            with contextlib.suppress(RayError):
                ray.kill(slot.handle, no_restart=True)


def _needs(spec: ActorSpec) -> str:
    return f"{spec.cpus} CPU" + (f" and {spec.gpus} GPU" if spec.gpus else "") + " per actor"


def short_ray_error(error: BaseException) -> str:
    """The line of a (multi-line, traceback-laden) Ray error that says what happened."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    # A task's error ends with the exception ("ModuleNotFoundError: ..."); an actor's death starts with it.
    named = [line for line in lines if line.split(":")[0].endswith(("Error", "Exception"))]
    return (named[-1] if named else lines[0] if lines else type(error).__name__)[:500]


# ------------------------------------------------------------------------------- one job, followed
class ActorStuck(Exception):
    """The actor did not end a cancelled job within CANCEL_GRACE_S."""


class RemoteJob:
    """One job on one actor, followed from the front: progress in, a cancel out, the result back.

    Args:
        slot: the actor lent to the job.
        job: the job, as the front queued it.
        on_progress: the worker's progress reporter.
        cancel: the job's token, set by the front when the client cancels.
    """

    def __init__(self, slot: ActorSlot, job: Job, on_progress: Callable[..., None], cancel: CancelToken):
        self.slot, self.job, self.on_progress, self.cancel = slot, job, on_progress, cancel
        self._cancel_sent_at: float | None = None

    def follow(self) -> JobOutput:
        self._await_actor()
        log.info("job %s runs on %s", self.job.id, self.slot)
        stream = self.slot.handle.run.options(
            num_returns="streaming", _generator_backpressure_num_objects=REPORTS_IN_FLIGHT,
        ).remote(self.job.id, self.job.kind, self.job.params, ray.put(self.job.prepared))
        while (ref := self._next(stream)) is not None:
            for report in ray.get(ref):
                if isinstance(report, StepReport):
                    self.on_progress(report.progress, report.reported_at)
                elif isinstance(report, Finished):
                    return report.output
                else:
                    if report.trace:
                        log.error("job %s: the engine failed on %s:\n%s", self.job.id, self.slot, report.trace)
                    raise JobEnded(report.end)
        raise JobEnded(JobEnd(State.FAILED, Code.WORKER_CRASHED, "the Ray actor ended the job without a result"))

    def _await_actor(self) -> None:
        """Wait until the actor has loaded its prior (at once, unless it was just replaced); a job
        cancelled meanwhile ends without it."""
        while not ray.wait([self.slot.ready_ref], timeout=POLL_S)[0]:
            self.cancel.raise_if_cancelled()
        self.slot.info = ray.get(self.slot.ready_ref)
        if problem := self.slot.info.problem:  # a new actor may land on a machine where it can
            self.slot.replace("could not load the prior")
            raise JobEnded(JobEnd(State.FAILED, Code.WORKER_CRASHED, f"the Ray actor could not load the prior: "
                                  f"{problem}"))
        self.cancel.raise_if_cancelled()

    def _next(self, stream):
        """The stream's next item's ref, or None when it has ended."""
        self._await(stream)
        return next(stream, None)

    def _await(self, stream) -> None:
        """Block until the stream's next item is ready, passing a cancel on to the actor."""
        self._pass_cancel_on()
        while not ray.wait([stream], timeout=POLL_S)[0]:
            self._pass_cancel_on()

    def _pass_cancel_on(self) -> None:
        if not self.cancel.cancelled:
            return
        if self._cancel_sent_at is None:
            self.slot.handle.cancel.remote(self.job.id)
            self._cancel_sent_at = time.monotonic()
        elif time.monotonic() - self._cancel_sent_at > CANCEL_GRACE_S:
            raise ActorStuck()


# ---------------------------------------------------------------------------------------- runner
class RayRunner:
    """The server's runner (server.worker.Runner) on Ray: jobs are checked here, on the front, and run
    in the pool's actors.

    Args:
        front: a runner on the prior's tokenizer alone (``front_runner``): it prepares (validates)
            jobs, runs none.
        pool: the actors.
    """

    kinds = EngineRunner.kinds

    def __init__(self, front: EngineRunner, pool: ActorPool):
        self.front, self.pool = front, pool
        self._closed = threading.Event()

    @property
    def actors(self) -> int:
        return len(self.pool.slots)

    def prepare(self, kind: str, params: dict, inputs: dict):
        return self.front.prepare(kind, params, inputs)

    def run(self, job: Job, on_progress: Callable[..., None], cancel: CancelToken) -> JobOutput:
        with self.pool.lend() as slot:
            try:
                return RemoteJob(slot, job, on_progress, cancel).follow()
            except (RayError, ActorStuck) as error:
                if self._closed.is_set():
                    _wait_for_exit()
                raise self._after_fault(slot, job, error) from None

    def _after_fault(self, slot: ActorSlot, job: Job, error: Exception) -> Exception:
        """Replace the job's actor, whose state is now unknown; returns how the job ends."""
        if isinstance(error, ActorStuck):
            slot.replace(f"did not stop job {job.id} within {CANCEL_GRACE_S:.0f} s of its cancel")
            return Cancelled("cancelled by its client")
        if isinstance(error, RayActorError):
            slot.replace(f"died running job {job.id}")
            return JobEnded(JobEnd(State.FAILED, Code.WORKER_CRASHED, f"the Ray worker running this job died "
                                   f"({short_ray_error(error)}); the job was not retried: submit it again"))
        slot.replace(f"failed running job {job.id}")  # the object store, the network
        return JobEnded(JobEnd(State.FAILED, Code.WORKER_CRASHED, f"Ray failed running this job: "
                               f"{short_ray_error(error)}"))

    def close(self) -> None:
        self._closed.set()
        self.pool.close()
        ray.shutdown()


def _wait_for_exit() -> None:
    """Where a worker thread whose job the stopping server left (it did not stop in time) waits for
    the process to end: as on the local backend, the job stays running in the job table, and the
    next start reports it interrupted."""
    threading.Event().wait()


# ----------------------------------------------------------------------------------- start-up
def start_ray_runner(settings: Settings) -> RayRunner:
    """Join the cluster at ``settings.ray_address`` (or start a local Ray), start one actor per job
    slot, and wait until each has loaded its prior.

    Args:
        settings: the server's settings: model, device, threads, jobs (None: one actor per GPU of
            the cluster) and ray_address.

    Raises:
        StartupError: the cluster cannot be reached or joined, is too small for the actors, or an
            actor cannot load the prior; one line for the user.
    """
    spec = ActorSpec(settings.model, settings.device, settings.threads)
    connect(settings.ray_address, local_cpus=(settings.jobs or os.cpu_count() or 1) * spec.cpus)
    try:
        pool = ActorPool(spec, actor_count(settings.jobs, spec, ray.cluster_resources()))
        front = front_runner(settings.model)  # loads while the actors load theirs
        pool.wait_until_ready(ACTOR_START_TIMEOUT_S)
    except BaseException:
        ray.shutdown()
        raise
    log.info("Ray backend: %d actor%s (%s)", len(pool.slots), "s" * (len(pool.slots) > 1), _needs(spec))
    return RayRunner(front, pool)


def actor_count(jobs: int | None, spec: ActorSpec, resources: dict) -> int:
    """How many actors to start: ``jobs``, or one per GPU of the cluster when None.

    Args:
        jobs: the server's --jobs, or None.
        spec: what each actor needs.
        resources: the cluster's resources in all (ray.cluster_resources()).

    Raises:
        StartupError: the cluster can never hold that many actors.
    """
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
    if spec.gpus and gpus < 1:
        raise StartupError("--device cuda was asked for, but the Ray cluster has no GPU")
    count = jobs or max(gpus, 1)
    if count * spec.gpus > gpus or count * spec.cpus > cpus:
        raise StartupError(f"{count} Ray actor{'s' * (count > 1)} need {count * spec.cpus} CPUs"
                           + (f" and {count * spec.gpus} GPUs" if spec.gpus else "")
                           + f"; the cluster has {cpus} CPUs and {gpus} GPUs: lower --jobs or --threads")
    return count


def front_runner(model: str | None) -> EngineRunner:
    """The front's runner: it checks prompts at submission with the prior's tokenizer alone (no
    network is loaded on the front) and runs no job."""
    try:
        return EngineRunner(load_prompt_reader(model))
    except PriorError as error:
        raise StartupError(str(error)) from None


def connect(address: str | None, local_cpus: int) -> None:
    """Join the Ray cluster at ``address``, or start a local Ray with ``local_cpus`` CPUs.

    Raises:
        StartupError: nothing answers at ``address``, or it does not let this process join within
            CONNECT_TIMEOUT_S.
    """
    if address is None:
        start_local(local_cpus)
        return
    probe_head(address, CONNECT_TIMEOUT_S)
    with _signal_handlers_kept():
        join_within(address, CONNECT_TIMEOUT_S)
    log.info("joined the Ray cluster at %s: %s", address, ray.cluster_resources())


def start_local(cpus: int) -> None:
    """Start a private Ray on this machine, stopped with the server.

    Raises:
        StartupError: Ray cannot start here (e.g. no room for its object store).
    """
    try:
        with _signal_handlers_kept():  # "local": a new Ray, never a cluster a stale /tmp/ray file names
            ray.init(address="local", num_cpus=cpus, include_dashboard=False,
                     object_store_memory=LOCAL_OBJECT_STORE_BYTES, log_to_driver=False, logging_level=logging.WARNING)
    except Exception as error:  # Ray's own errors are of many kinds; the user needs one line
        raise StartupError(f"cannot start a local Ray: {short_ray_error(error)}") from None
    log.info("started a local Ray with %d CPUs", cpus)


def probe_head(address: str, timeout: float) -> None:
    """Fail fast, and in one line, when nothing listens at the head's address.

    Args:
        address: HOST:PORT, ray://HOST:PORT or auto (not probed: Ray finds it on this machine).
        timeout: seconds for the TCP connection.
    """
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise StartupError(f"cannot reach the Ray cluster at {address}: {reason} (is `ray start --head` running "
                           "there, and is its port open to this machine?)") from None


def join_within(address: str, timeout: float) -> None:
    """``ray.init(address)``, which waits for ever on a port that is not a Ray head, under a timeout.

    Joining starts no process here, so a thread may do it (a local start may not: Ray ties its
    processes' lives to the thread that starts them).
    """
    failure: list[BaseException] = []

    def join() -> None:
        try:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        except BaseException as error:  # reported by the caller
            failure.append(error)

    worker_logger = logging.getLogger("ray._private.worker")
    level = worker_logger.level
    worker_logger.setLevel(logging.ERROR)  # its "SIGTERM handler is not set" warning is for this thread
    try:
        joiner = threading.Thread(target=join, name="ray-join", daemon=True)
        joiner.start()
        joiner.join(timeout)
    finally:
        worker_logger.setLevel(level)
    if joiner.is_alive():
        raise StartupError(f"the Ray cluster at {address} did not let this server join within {timeout:.0f} s "
                           "(is that the head's GCS port, as `ray start --head` prints it?)")
    if failure:
        raise StartupError(f"cannot join the Ray cluster at {address}: {short_ray_error(failure[0])}")


@contextlib.contextmanager
def _signal_handlers_kept() -> Iterator[None]:
    """Ray's own SIGTERM handlers (Python's exits at once; its core's logs a stack trace) are replaced by
    the server's again, which stop it cleanly."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    kept = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, handler in kept.items():
            signal.signal(number, handler)
