"""The engine behind the server: which job kinds it runs, job params -> engine inputs, and running a job
(several at once share the prior, their U-Net calls batched by engine.batching)."""

from __future__ import annotations

import contextlib
import logging
import re
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from engine import Camera, CancelToken, PriorError, load_prior
from engine.batching import BatchedPrior, SharedForward
from engine.meshes import MeshError, MeshInput, validate_mesh
from engine.prompts import PromptError, check_words
from engine.tasks import TASKS, Task

from .job_queue import Job
from .protocol import MAX_MESSAGE_CHARS, Code, ProtocolError
from .results import JobOutput
from .settings import StartupError

log = logging.getLogger(__name__)

# The job params that set a task's config, and the setting each sets; "preset" picks the defaults
# they override. The protocol lets through only the ones a kind has (no grid for paint).
CONFIG_SETTINGS = {
    "steps": "steps", "seed": "seed", "negative_prompt": "negative_prompt",
    "grid_resolution": "field.grid_resolution", "mesh_resolution": "surface.mesh_resolution",
    "texture_size": "colour.texture_size", "method": "guidance.method", "guidance_scale": "guidance.guidance_scale",
    "strict": "strict_prompt", "albedo": "colour.delight",
}
# How a MeshError's message names the input array it is about ("face indices ..." is faces).
MESH_FIELD_WORDS = re.compile(r"\b(uvs|faces?|vertices)\b")


@dataclass(frozen=True)
class PreparedJob:
    """What a job's params and arrays become, once, at submission."""

    config: object  # the task's config dataclass
    mesh: MeshInput | None  # paint and sketch: the input mesh, user (Blender world) coordinates
    rig: tuple[Camera, ...]  # generate: the prop's frame; paint and sketch: the mesh's coordinates
    warnings: tuple[str, ...] = ()  # for the submitting client, as warning events: words the prior does not know


def task_config(task: Task, params: dict):
    """The task's config from a job's params (already checked by the protocol)."""
    settings = {CONFIG_SETTINGS[key]: value for key, value in params.items() if key in CONFIG_SETTINGS}
    return task.config(params.get("preset", "standard"), settings)


def rig_cameras(cameras: list[dict]) -> tuple[Camera, ...]:
    """The protocol's camera maps (already checked to be rigid, finite and bounded) as engine cameras.

    Their aspect is not passed on: the engine renders the square views the prior was trained on."""
    return tuple(Camera(np.array(camera["c2w"], dtype=np.float64), camera["fov_y_deg"]) for camera in cameras)


def mesh_error_field(message: str) -> str:
    """The input array a MeshError is about: the first one its message names."""
    match = MESH_FIELD_WORDS.search(message.lower())
    return "vertices" if match is None else {"face": "faces"}.get(match.group(1), match.group(1))


def refused_mesh(error: MeshError) -> ProtocolError:
    field = mesh_error_field(str(error))
    return ProtocolError(Code.BAD_REQUEST, f"{field}: {error}", field)


def input_mesh(arrays: dict[str, np.ndarray]) -> MeshInput:
    try:
        return validate_mesh(arrays["vertices"], arrays["faces"], arrays.get("uvs"))
    except MeshError as error:
        raise refused_mesh(error) from None


class EngineRunner:
    """Runs jobs on one loaded prior; with ``jobs`` > 1, jobs running at the same time (one per worker
    thread) share each step's U-Net forward.

    Args:
        prior: the loaded prior; for a runner that only prepares jobs, its ``PromptReader``
            (the Ray backend's front) or None (tests: no prompt is checked).
        jobs: how many jobs the server runs at once.
    """

    kinds = tuple(TASKS)

    def __init__(self, prior, jobs: int = 1):
        self.prior = prior
        # One job alone gains nothing from the batcher, so it calls the prior directly.
        self.shared = SharedForward(prior.unet_forward) if prior is not None and jobs > 1 else None

    def prepare(self, kind: str, params: dict, inputs: dict) -> PreparedJob:
        """Everything about a job that can be refused is refused here, before it is queued."""
        if kind not in self.kinds:
            raise ProtocolError(Code.BAD_REQUEST, f"kind {kind!r} is not available in this engine version "
                                f"(available: {', '.join(self.kinds)})", "kind")
        task = TASKS[kind]
        try:
            config = task_config(task, params)
        except ValueError as error:
            raise ProtocolError(Code.BAD_REQUEST, f"params: {error}", "params") from None
        warnings = self.prompt_warnings(params["prompt"], config)
        mesh = input_mesh(inputs) if task.takes_mesh else None
        return PreparedJob(config, mesh, rig_cameras(params.get("cameras", [])), warnings)

    def prompt_warnings(self, prompt: str, config) -> tuple[str, ...]:
        """The engine's warnings about words the prior does not know; with ``strict`` the job is
        refused instead, naming the prompt's param."""
        if self.prior is None:  # a runner made without a prior, to test what params become
            return ()
        try:
            return tuple(check_words(self.prior, prompt, config.negative_prompt, config.strict_prompt))
        except PromptError as error:
            field = f"params.{error.field}"
            raise ProtocolError(Code.BAD_REQUEST, f"{field}: {error}"[:MAX_MESSAGE_CHARS], field) from None

    def run(self, job: Job, on_progress, cancel: CancelToken) -> JobOutput:
        task, prepared = TASKS[job.kind], job.prepared
        inputs = (prepared.mesh,) if task.takes_mesh else ()
        try:
            with self.job_prior(job.id, cancel) as prior:
                result = task.run(*inputs, job.params["prompt"], prior, prepared.config, on_progress=on_progress,
                                  cancel=cancel, rig=prepared.rig)
        except MeshError as error:  # found only once the engine works on it, e.g. a sketch enclosing nothing
            raise refused_mesh(error) from None
        return JobOutput(result.mesh, result.preview)

    @contextlib.contextmanager
    def job_prior(self, job_id: str, cancel: CancelToken) -> Iterator:
        """The prior one job runs on: its own lane of the shared forward, left when the job ends
        however it ends, or the plain prior when jobs run one at a time.

        Args:
            job_id: the job, for the log.
            cancel: the job's token; the shared forward stops waiting for a cancelled job.
        """
        if self.shared is None:
            yield self.prior
            return
        lane = self.shared.join(cancel)
        try:
            with BatchedPrior(self.prior, lane) as prior:
                yield prior
        finally:
            log.info("job %s: %d of its %d U-Net calls shared a forward with other jobs", job_id, lane.shared_calls,
                     lane.calls)


def load_runner(model: str | None, device: str, threads: int | None, jobs: int = 1) -> EngineRunner:
    """Load the prior once for every job.

    Args:
        model: the prior's folder or cached Hugging Face id; None for the embedded prior.
        device: "cpu" or "cuda".
        threads: torch CPU threads; None leaves torch's choice.
        jobs: how many jobs the server runs at once (see EngineRunner).

    Raises:
        StartupError: no CUDA GPU for ``device`` "cuda", or no usable prior.
    """
    if device == "cuda" and not torch.cuda.is_available():
        raise StartupError("--device cuda was asked for, but this machine has no usable CUDA GPU")
    if threads:
        torch.set_num_threads(threads)
    try:
        prior = load_prior(model, device=device)
    except PriorError as error:
        raise StartupError(str(error)) from None
    log.info("prior %s loaded on %s; %d job%s at once%s", prior.metadata.name, device, jobs, "s" * (jobs > 1),
             ", their U-Net calls batched" if jobs > 1 else "")
    return EngineRunner(prior, jobs)
