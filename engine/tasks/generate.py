"""Text-to-3D: optimise a latent voxel field with score distillation, then export a textured mesh."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Sequence

from ..cameras import Camera
from ..prior import Prior
from ..progress import CancelToken, ProgressCallback
from .common import cancel_token, check_prompt, seeded_generator
from .latent_field import FIELD_PRESETS, FieldTaskConfig, GenerateResult, optimise_field, textured_mesh

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerateConfig(FieldTaskConfig):
    """Text-to-3D's settings: the field task's groups with their defaults (the "standard" preset)."""


PRESETS = FIELD_PRESETS


def generate(prompt: str, prior: Prior, config: GenerateConfig | None = None,
             on_progress: ProgressCallback | None = None, cancel: CancelToken | None = None,
             rig: Sequence[Camera] = ()) -> GenerateResult:
    """Prompt -> UV-textured mesh in Blender axes. Deterministic for a given seed on the CPU.

    Args:
        prompt: what to make, e.g. "a red cube".
        prior: the 2D diffusion prior (``load_prior()``).
        config: the settings; the "standard" preset when None.
        on_progress: called with a ``Progress`` every step ("optimise") and after the "mesh" and
            "colour" stages; previews come about 20 times per run.
        cancel: set from any thread to stop within one step (``Cancelled`` is raised).
        rig: cameras (Blender world, the prop at the origin) that are always among the optimised
            and the decoded views, so the prop looks right from the shot.

    Returns:
        The textured mesh, a preview picture, per-stage timings and the colour stage's error.
    """
    config = config or GenerateConfig()
    check_prompt(prompt, prior, config)
    cancel = cancel_token(cancel)
    started = time.perf_counter()
    run = optimise_field(prompt, prior, config, seeded_generator(config.seed), on_progress, cancel, rig)
    timings = {"optimise_s": time.perf_counter() - started}
    result = textured_mesh(run, on_progress, cancel, timings)
    mesh = result.mesh
    log.info("generated %r: %d vertices, %d faces, colour error %.3f, %s", prompt, len(mesh.vertices),
             len(mesh.faces), result.colour_error, {k: round(v, 2) for k, v in timings.items()})
    return result
