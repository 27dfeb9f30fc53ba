"""Text-to-image sampling with the prior's components, encoded exactly like StableDiffusionPipeline."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from transformers import AutoTokenizer, CLIPTextModel

from .tokenizer import encode


@dataclass
class Prior:
    tokenizer: object
    text_encoder: CLIPTextModel
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    scheduler_config: dict

    @classmethod
    def load(cls, folder: str | Path) -> "Prior":
        folder = Path(folder)
        tok = AutoTokenizer.from_pretrained(str(folder / "tokenizer"))
        te = CLIPTextModel.from_pretrained(str(folder / "text_encoder")).eval()
        unet = UNet2DConditionModel.from_pretrained(str(folder / "unet")).eval()
        vae = AutoencoderKL.from_pretrained(str(folder / "vae")).eval()
        sched = DDPMScheduler.from_pretrained(str(folder / "scheduler"))
        return cls(tok, te, unet, vae, dict(sched.config))

    @torch.no_grad()
    def embed(self, prompts: list[str]) -> torch.Tensor:
        return self.text_encoder(encode(self.tokenizer, prompts))[0]

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> images (B, 3, H, W) in [0, 1]."""
        x = self.vae.decode(latents / self.vae.config.scaling_factor).sample
        return ((x + 1) / 2).clamp(0, 1)

    @torch.no_grad()
    def sample(self, prompts: list[str], steps: int = 50, guidance: float = 5.0,
               generator: torch.Generator | None = None, batch: int = 64) -> torch.Tensor:
        """DDIM with classifier-free guidance; returns images (B, 3, H, W) in [0, 1]."""
        out = []
        for start in range(0, len(prompts), batch):
            chunk = prompts[start:start + batch]
            cond = self.embed(chunk)
            uncond = self.embed([""]).expand_as(cond)
            ctx = torch.cat([uncond, cond])
            size = self.unet.config.sample_size
            latents = torch.randn(len(chunk), self.unet.config.in_channels, size, size, generator=generator)
            ddim = DDIMScheduler.from_config(self.scheduler_config)
            ddim.set_timesteps(steps)
            latents = latents * ddim.init_noise_sigma
            for t in ddim.timesteps:
                eps = self.unet(torch.cat([latents, latents]), t, ctx).sample
                eps_u, eps_c = eps.chunk(2)
                eps = eps_u + guidance * (eps_c - eps_u)
                latents = ddim.step(eps, t, latents).prev_sample
            out.append(self.decode(latents))
        return torch.cat(out)
