"""Regularisers on the rendered field, as in SJC (section 4.2) and DreamFusion."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import check_number


@dataclass(frozen=True)
class RegularizerConfig:
    """Weights per latent pixel, like the score distillation term they balance."""

    emptiness_beta: float = 10.0
    emptiness_early: float = 2.5
    emptiness_late: float = 50.0
    emptiness_switch: float = 0.5  # fraction of the run at which the weight goes up (SJC's K)
    entropy_weight: float = 0.5
    center_depth_weight: float = 0.0

    def __post_init__(self) -> None:
        for name in ("emptiness_beta", "emptiness_early", "emptiness_late", "entropy_weight", "center_depth_weight"):
            check_number(f"regularizers.{name}", getattr(self, name), 0, 1e6)
        check_number("regularizers.emptiness_switch", self.emptiness_switch, 0, 1)



def emptiness_loss(weights: torch.Tensor, beta: float = 10.0) -> torch.Tensor:
    """SJC eq. 26: mean log(1 + beta * w_i). Steep at small weights, so it removes faint fog first."""
    return torch.log1p(beta * weights).mean()


def emptiness_weight(step: int, switch_step: int, early: float, late: float) -> float:
    """SJC's two-stage schedule: a small weight while the geometry forms, a larger one after."""
    return early if step < switch_step else late


def opacity_entropy(opacity: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Binary entropy of each pixel's accumulated alpha: pushes silhouettes towards 0 or 1."""
    a = opacity.clamp(eps, 1 - eps)
    return -(a * torch.log(a) + (1 - a) * torch.log(1 - a)).mean()


def center_depth_loss(depth: torch.Tensor, opacity: torch.Tensor, box_fraction: float = 0.5) -> torch.Tensor:
    """SJC eq. 27 on the unnormalised depth (0 where a ray hits nothing): keeps the object central."""
    surface_depth = depth * opacity
    height, width = surface_depth.shape
    h0, w0 = int(height * (1 - box_fraction) / 2), int(width * (1 - box_fraction) / 2)
    inside = torch.zeros_like(surface_depth, dtype=torch.bool)
    inside[h0:height - h0, w0:width - w0] = True
    gap = surface_depth[inside].mean() - surface_depth[~inside].mean()
    return -torch.log(gap.clamp(min=1e-4))
