"""The engine behind the server: which job kinds it runs, job params -> engine config, and running one job."""

from __future__ import annotations

import dataclasses
import logging

import torch

from engine import CancelToken, GenerateConfig, PriorError, generate, load_prior
from engine.tasks.generate import preset_config

from .job_queue import Job
from .protocol import Code, ProtocolError
from .results import JobOutput
from .settings import StartupError

log = logging.getLogger(__name__)

# Params that map one to one onto GenerateConfig fields; "preset" picks the defaults they override.
CONFIG_PARAMS = ("steps", "seed", "negative_prompt", "grid_resolution", "mesh_resolution", "texture_size")
GUIDANCE_PARAMS = ("method", "guidance_scale")


def generate_config(params: dict) -> GenerateConfig:
    config = preset_config(params.get("preset", "standard"), **{k: params[k] for k in CONFIG_PARAMS if k in params})
    config.guidance = dataclasses.replace(config.guidance, **{k: params[k] for k in GUIDANCE_PARAMS if k in params})
    return config


class EngineRunner:
    # Latent-Paint and Sketch-Shape are part of the protocol but not of this engine version yet.
    kinds = ("generate",)

    def __init__(self, prior):
        self.prior = prior

    def prepare(self, kind: str, params: dict, inputs: dict) -> GenerateConfig:
        """Everything about a job that can be refused is refused here, before it is queued."""
        if kind not in self.kinds:
            raise ProtocolError(Code.BAD_REQUEST, f"kind {kind!r} is not available in this engine version "
                                f"(available: {', '.join(self.kinds)})", "kind")
        try:
            return generate_config(params)
        except ValueError as error:
            raise ProtocolError(Code.BAD_REQUEST, f"params: {error}", "params") from None

    def run(self, job: Job, on_progress, cancel: CancelToken) -> JobOutput:
        result = generate(job.params["prompt"], self.prior, job.prepared, on_progress=on_progress, cancel=cancel)
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
