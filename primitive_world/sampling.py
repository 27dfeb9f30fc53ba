"""DDIM text-to-image sampling from a prior, to judge it.

The engine's ``Prior`` supplies the models, the prompt encoding and the classifier-free guided noise
estimate, so samples come through the same path as score distillation does.
"""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler

from engine.prior import Prior


@torch.no_grad()
def sample(prior: Prior, prompts: list[str], steps: int = 50, guidance: float = 5.0,
           generator: torch.Generator | None = None, batch: int = 64) -> torch.Tensor:
    """DDIM with classifier-free guidance; returns images (B, 3, H, W) in [0, 1]."""
    uncond = prior.encode_prompts([""])
    size, channels = prior.unet.config.sample_size, prior.unet.config.in_channels
    out = []
    for start in range(0, len(prompts), batch):
        chunk = prompts[start:start + batch]
        cond = prior.encode_prompts(chunk)
        latents = torch.randn(len(chunk), channels, size, size, generator=generator).to(prior.device)
        ddim = DDIMScheduler.from_config(prior.scheduler.config)
        ddim.set_timesteps(steps)
        latents = latents * ddim.init_noise_sigma
        for t in ddim.timesteps:
            eps = prior.predict_noise(latents, t.repeat(len(chunk)), cond, uncond.expand_as(cond), guidance)
            latents = ddim.step(eps, t, latents).prev_sample
        out.append(prior.decode(latents))
    return torch.cat(out)
