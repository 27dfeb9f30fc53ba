"""What every task shares: the step loop with progress, previews and cancel; prompt checks; a local
seeded generator; the colour stage's cameras; and latents of plain colours."""

from __future__ import annotations

import logging
from typing import Callable, Sequence

import numpy as np
import torch

from ..cameras import Camera
from ..config import TaskConfig
from ..field import EnvironmentBackground
from ..prior import Prior
from ..progress import CancelToken, Progress, ProgressCallback
from ..prompts import PromptError, check_words

log = logging.getLogger(__name__)

PREVIEWS_PER_RUN = 20


def check_prompt(prompt: str, prior: Prior, config: TaskConfig) -> None:
    """Refuse an empty prompt, and warn about (or, with ``config.strict_prompt``, refuse) words the
    prior does not know, before any work starts.

    Args:
        prompt: the task's prompt.
        prior: the prior whose tokenizer will read it.
        config: the task's config (its negative prompt and ``strict_prompt``).

    Raises:
        PromptError: an empty prompt, or unknown words under ``strict_prompt``.
    """
    if not prompt.strip():
        raise PromptError("the prompt is empty")
    for message in check_words(prior, prompt, config.negative_prompt, config.strict_prompt):
        log.warning("%s", message)


def seeded_generator(seed: int) -> torch.Generator:
    """A CPU generator of its own: runs are reproducible and the caller's global RNG is left alone."""
    return torch.Generator().manual_seed(seed)


def cancel_token(cancel: CancelToken | None) -> CancelToken:
    """The caller's token, or one nobody sets, so stages can check it unconditionally."""
    return cancel if cancel is not None else CancelToken()


def latent_preview(prior: Prior, latents: torch.Tensor) -> np.ndarray:
    """A small RGB picture (H, W, 3) uint8 of one latent image (C, h, w)."""
    image = prior.decode(latents.detach()[None])[0]
    return (image.permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)


# One optimisation step: (the step's rendered latents (C, h, w), its loss as a 0-dim tensor).
StepFn = Callable[[int], tuple[torch.Tensor, torch.Tensor]]


def run_steps(step: StepFn, steps: int, prior: Prior, on_progress: ProgressCallback | None,
              cancel: CancelToken, preview_every: int = 0) -> None:
    """Run ``step(0) ... step(steps - 1)``, checking ``cancel`` before each and reporting each to
    ``on_progress`` as phase "optimise", with a decoded preview every ``preview_every`` steps
    (0: about ``PREVIEWS_PER_RUN`` per run) and after the last. On a GPU the loss is read (a host
    sync that stalls the launch queue) only with a preview; on the CPU every step."""
    preview_every = preview_every or max(1, steps // PREVIEWS_PER_RUN)
    for index in range(steps):
        cancel.raise_if_cancelled()
        latents, loss = step(index)
        if on_progress is not None:
            last = index == steps - 1
            preview = latent_preview(prior, latents) if last or index % preview_every == 0 else None
            reported = float(loss) if preview is not None or loss.device.type == "cpu" else None
            on_progress(Progress("optimise", index + 1, steps, reported, preview))


def encoded_colour(prior: Prior, rgb: Sequence[float]) -> torch.Tensor:
    """The mean latent (C,) of a plain image of one colour."""
    size = prior.metadata.image_size
    plain = torch.tensor(rgb, dtype=torch.float32).view(1, 3, 1, 1).expand(1, 3, size, size)
    return prior.encode(plain).mean(dim=(0, 2, 3))


def plain_background(prior: Prior) -> EnvironmentBackground:
    """The learnable background, starting as the prior's plain background colour when it has one."""
    rgb = prior.metadata.background_rgb
    init = encoded_colour(prior, rgb) if rgb is not None else None
    return EnvironmentBackground(prior.latent_channels, init=init).to(prior.device)


def colour_cameras(prior: Prior, azimuths: int, rig: Sequence[Camera] = (), rings: int = 2,
                   range_ends: bool = False) -> list[Camera]:
    """Views decoded for the colour stage: the rig, then ``rings`` rings of ``azimuths`` cameras at
    elevations evenly inside the prior's range, or from its lowest to its highest with ``range_ends``
    (a visual hull's views: only the lowest ring bounds the object's hidden underside, and the
    highest sees furthest into holes)."""
    low, high = prior.metadata.camera.elevation_deg
    if range_ends and rings > 1:
        elevations = [low + k / (rings - 1) * (high - low) for k in range(rings)]
    else:
        elevations = [low + (k + 0.5) / rings * (high - low) for k in range(rings)]
    return list(rig) + prior.metadata.camera.ring(azimuths, elevations)
