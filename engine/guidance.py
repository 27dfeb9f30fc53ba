"""Score distillation: the gradient a frozen 2D prior gives a rendered latent image.

Two estimators, both without the U-Net Jacobian (the U-Net only ever runs under no_grad):

* ``sds`` (DreamFusion, eq. 3):  grad = w(t) * (eps_hat(x_t; y, t) - eps), with
  x_t = sqrt(abar_t) x + sqrt(1 - abar_t) eps.
* ``sjc`` (Score Jacobian Chaining, eqs. 12-16): Perturb-and-Average Scoring on the variance-
  exploding scale sigma = sqrt((1 - abar) / abar).  The denoiser D(x + sigma n; sigma) =
  x + sigma n - sigma eps_hat is evaluated for ``paas_samples`` noises n in one batch, the score
  (D - x) / sigma^2 is averaged, and the update is -sigma * PAAS, SJC's own scaling. With one
  sample this equals SDS with w(t) = 1; more samples average the score over several noises.

eps_hat is classifier-free guided: eps_u + s (eps_c - eps_u), default s = 100 (DreamFusion).
The timestep is drawn uniformly from a t-range whose upper end can anneal down over the run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import GUIDANCE_SCALE_RANGE, check_choice, check_int, check_number
from .prior import Prior

WEIGHTINGS = {
    "dreamfusion": lambda alpha_bar: 1 - alpha_bar,  # sigma_t^2, DreamFusion's choice
    "uniform": lambda alpha_bar: torch.ones_like(alpha_bar),
    "snr_sqrt": lambda alpha_bar: (alpha_bar * (1 - alpha_bar)).sqrt(),  # Fantasia3D-like, mid-t heavy
}
METHODS = ("sds", "sjc")


@dataclass(frozen=True)
class GuidanceConfig:
    method: str = "sds"
    guidance_scale: float = 100.0
    weighting: str = "dreamfusion"
    t_min: float = 0.02
    t_max: float = 0.98
    t_max_final: float = 0.98  # t_max anneals linearly to this over the run
    paas_samples: int = 1
    # Perp-Neg weight of the opposite view's prompt (engine.prompts.OPPOSITE_VIEWS) on front and back
    # views; 0 is plain view-dependent prompting. It costs a third U-Net batch entry on those steps.
    perp_neg_weight: float = 0.0

    def __post_init__(self) -> None:
        check_choice("guidance method", self.method, METHODS)
        check_choice("weighting", self.weighting, tuple(WEIGHTINGS))
        check_number("guidance_scale", self.guidance_scale, *GUIDANCE_SCALE_RANGE)
        for name in ("t_min", "t_max", "t_max_final"):
            check_number(name, getattr(self, name), 0, 1)
        if not self.t_min < min(self.t_max, self.t_max_final):
            raise ValueError("need 0 <= t_min < t_max, t_max_final <= 1")
        check_int("paas_samples", self.paas_samples, 1, 64)
        check_number("perp_neg_weight", self.perp_neg_weight, 0, 100)


@dataclass
class GuidanceStep:
    gradient: torch.Tensor  # d loss / d latents, same shape as the latents
    timestep: int
    # Mean squared gradient, a rough progress signal (SDS has no meaningful loss value). A 0-dim tensor
    # on the prior's device: reading it waits for the GPU, so the step loop reads it only when it reports.
    loss: torch.Tensor


class ScoreDistillation:
    def __init__(self, prior: Prior, config: GuidanceConfig):
        self.prior = prior
        self.config = config

    def timestep_range(self, progress: float) -> tuple[int, int]:
        cfg = self.config
        t_max = cfg.t_max + (cfg.t_max_final - cfg.t_max) * min(max(progress, 0.0), 1.0)
        steps = self.prior.num_train_timesteps
        low = int(cfg.t_min * steps)
        high = max(int(t_max * steps), low + 1)
        return low, min(high, steps - 1)

    def sample_timestep(self, progress: float, generator: torch.Generator) -> torch.Tensor:
        low, high = self.timestep_range(progress)
        return torch.randint(low, high + 1, (1,), generator=generator)

    def step(self, latents: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor, progress: float,
             generator: torch.Generator, negative: torch.Tensor | None = None) -> GuidanceStep:
        """Gradient for one rendered latent image (1, C, h, w); cond/uncond/negative are (tokens, dim).
        ``negative``: the Perp-Neg prompt for this view, used when ``perp_neg_weight`` > 0."""
        t = self.sample_timestep(progress, generator)
        latents = latents.detach().float()
        if self.config.method == "sds":
            gradient = self.sds_gradient(latents, cond, uncond, t, self._noise(latents.shape, generator), negative)
        else:
            shape = (self.config.paas_samples,) + tuple(latents.shape[1:])
            gradient = self.sjc_gradient(latents, cond, uncond, t, self._noise(shape, generator), negative)
        return GuidanceStep(gradient, int(t), gradient.pow(2).mean().detach())

    def _guided_noise(self, noisy, t, cond, uncond, negative) -> torch.Tensor:
        """eps_hat for a batch of noisy copies of one view."""
        k, weight = noisy.shape[0], self.config.perp_neg_weight

        def expand(text: torch.Tensor) -> torch.Tensor:
            return text[None].expand(k, -1, -1)

        return self.prior.predict_noise(noisy, t.expand(k), expand(cond), expand(uncond), self.config.guidance_scale,
                                        None if negative is None else expand(negative), weight)

    def _noise(self, shape, generator: torch.Generator) -> torch.Tensor:
        return torch.randn(shape, generator=generator).to(self.prior.device)

    def sds_gradient(self, latents, cond, uncond, t, noise, negative=None) -> torch.Tensor:
        noisy = self.prior.add_noise(latents, noise, t.to(self.prior.device))
        eps_hat = self._guided_noise(noisy, t, cond, uncond, negative)
        alpha_bar = self.prior.alphas_cumprod[t]
        return WEIGHTINGS[self.config.weighting](alpha_bar).view(-1, 1, 1, 1) * (eps_hat - noise)

    def sjc_gradient(self, latents, cond, uncond, t, perturbations, negative=None) -> torch.Tensor:
        alpha_bar = self.prior.alphas_cumprod[t].view(1, 1, 1, 1)
        sigma = ((1 - alpha_bar) / alpha_bar).sqrt()
        perturbed = latents + sigma * perturbations  # x + sigma n, variance-exploding scale
        eps_hat = self._guided_noise(alpha_bar.sqrt() * perturbed, t, cond, uncond, negative)
        denoised = perturbed - sigma * eps_hat
        paas = ((denoised - latents) / sigma**2).mean(dim=0, keepdim=True)
        return -sigma * paas


def surrogate_loss(latents: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """A scalar whose gradient w.r.t. ``latents`` is exactly ``gradient``: how the score reaches
    the field through the renderer's Jacobian, while the U-Net's Jacobian is never formed."""
    return (gradient.detach() * latents).sum()
