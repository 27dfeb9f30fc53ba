"""Pull rendered latent views back onto the prior's image manifold before they are decoded.

Score distillation at high guidance leaves rendered latents that decode to washed-out, blotchy
colours: the field only has to be *near* the manifold for the gradient to vanish.  The colour stage
therefore partly re-noises each view (SDEdit) and denoises it with a few deterministic DDIM steps at
a moderate guidance scale, conditioned on the view's own prompt.  A low strength keeps the
silhouette and the layout, and only the appearance snaps to what the prior would paint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .cameras import Camera
from .config import check_int, check_number
from .prior import Prior
from .prompts import ViewPrompts


@dataclass(frozen=True)
class RefineConfig:
    strength: float = 0.0  # fraction of the diffusion run to re-noise to; 0 decodes the views as rendered
    steps: int = 4
    guidance_scale: float = 7.5  # a sampling scale, not SDS's 100: this is image generation
    perp_neg_weight: float = 0.0  # Perp-Neg weight of the opposite view's prompt (engine.prior.predict_noise)

    def __post_init__(self) -> None:
        check_number("refine strength", self.strength, 0, 1)
        if self.strength == 1:
            raise ValueError("refine strength must be in [0, 1)")
        check_int("refine steps", self.steps, 1, 1000)
        check_number("refine guidance_scale", self.guidance_scale, 0, 1000, low_open=True)
        check_number("perp_neg_weight", self.perp_neg_weight, 0, 100)


@torch.no_grad()
def refine_latents(prior: Prior, latents: torch.Tensor, cameras: Sequence[Camera], prompts: ViewPrompts,
                   config: RefineConfig, generator: torch.Generator) -> torch.Tensor:
    """SDEdit on a batch of views (B, C, h, w): noise to ``strength``, then DDIM (eta 0) down to t = 0."""
    if config.strength <= 0:
        return latents
    last = prior.num_train_timesteps - 1
    timesteps = torch.linspace(config.strength * last, 0, config.steps + 1).round().long()
    noise = torch.randn(latents.shape, generator=generator).to(latents.device, latents.dtype)
    pairs = [prompts.for_camera_with_opposite(camera) for camera in cameras]
    cond = torch.stack([own for own, _ in pairs])
    uncond = prompts.unconditional[None].expand(len(cameras), -1, -1)
    # A view with no opposite gets its own prompt as the negative: its orthogonal part is zero.
    negative = torch.stack([own if opposite is None else opposite for own, opposite in pairs])
    x = prior.add_noise(latents, noise, timesteps[:1].expand(len(latents)))
    for t, t_next in zip(timesteps[:-1], timesteps[1:]):
        eps = prior.predict_noise(x, t.expand(len(latents)), cond, uncond, config.guidance_scale, negative,
                                  config.perp_neg_weight)
        alpha_bar = prior.alphas_cumprod[t]
        alpha_next = prior.alphas_cumprod[t_next] if t_next > 0 else torch.ones_like(alpha_bar)
        denoised = (x - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()
        x = alpha_next.sqrt() * denoised + (1 - alpha_next).sqrt() * eps
    return x
