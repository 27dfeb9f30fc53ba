"""The engine behind the server: which job kinds it runs, job params -> engine inputs, and running one job."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import numpy as np
import torch

from engine import Camera, CancelToken, PriorError, load_prior
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
    "strict": "strict_prompt",
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
    kinds = tuple(TASKS)

    def __init__(self, prior):
        self.prior = prior

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
            result = task.run(*inputs, job.params["prompt"], self.prior, prepared.config, on_progress=on_progress,
                              cancel=cancel, rig=prepared.rig)
        except MeshError as error:  # found only once the engine works on it, e.g. a sketch enclosing nothing
            raise refused_mesh(error) from None
        return JobOutput(result.mesh, result.preview)


def load_runner(model: str | None, device: str, threads: int | None) -> EngineRunner:
    if device == "cuda" and not torch.cuda.is_available():
        raise StartupError("--device cuda was asked for, but this machine has no usable CUDA GPU")
    if threads:
        torch.set_num_threads(threads)
    try:
        prior = load_prior(model, device=device)
    except PriorError as error:
        raise StartupError(str(error)) from None
    log.info("prior %s loaded on %s", prior.metadata.name, device)
    return EngineRunner(prior)
