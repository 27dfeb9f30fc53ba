from types import SimpleNamespace

import pytest
import torch

from engine.guidance import WEIGHTINGS, GuidanceConfig, ScoreDistillation, surrogate_loss
from engine.prior import Prior
from engine.testing import tiny_components, tiny_metadata


class FakeUNet(torch.nn.Module):
    """eps(x_t, y) = 0.3 x_t + mean(y): a known, differentiable function of its input."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(sample_size=8)
        self.calls = 0

    def forward(self, x, t, encoder_hidden_states):
        self.calls += 1
        return SimpleNamespace(sample=0.3 * x + encoder_hidden_states.mean(dim=(1, 2)).view(-1, 1, 1, 1)
                               + self.anchor)


def fake_prior(prediction_type="epsilon"):
    _, vae, text_encoder, tokenizer, scheduler = tiny_components(prediction_type)
    return Prior(FakeUNet(), vae, text_encoder, tokenizer, scheduler, tiny_metadata())


def test_sds_gradient_on_rendered_latents_is_weighted_noise_residual():
    prior = fake_prior()
    guidance = ScoreDistillation(prior, GuidanceConfig(guidance_scale=7.0, weighting="dreamfusion"))
    cond, uncond = prior.encode_prompts(["a red cube", ""])
    latents = torch.randn(1, 4, 8, 8, requires_grad=True)
    t, noise = torch.tensor([600]), torch.randn(1, 4, 8, 8)

    gradient = guidance.sds_gradient(latents.detach(), cond, uncond, t, noise)
    surrogate_loss(latents, gradient).backward()

    alpha_bar = prior.alphas_cumprod[600]
    noisy = alpha_bar.sqrt() * latents.detach() + (1 - alpha_bar).sqrt() * noise
    eps_u, eps_c = 0.3 * noisy + uncond.mean(), 0.3 * noisy + cond.mean()
    eps_hat = eps_u + 7.0 * (eps_c - eps_u)
    expected = (1 - alpha_bar) * (eps_hat - noise)
    assert torch.allclose(latents.grad, expected, atol=1e-5)
    # The U-Net's Jacobian (0.3 here) never enters: nothing flows into the U-Net either.
    assert prior.unet.anchor.grad is None


def test_v_prediction_is_converted_to_epsilon():
    prior = fake_prior("v_prediction")
    cond, uncond = prior.encode_prompts(["a red cube", ""])
    noisy, t = torch.randn(1, 4, 8, 8), torch.tensor([300])
    eps = prior.predict_noise(noisy, t, cond[None], uncond[None], guidance_scale=1.0)
    alpha_bar = prior.alphas_cumprod[300]
    v = 0.3 * noisy + cond.mean()
    assert torch.allclose(eps, alpha_bar.sqrt() * v + (1 - alpha_bar).sqrt() * noisy, atol=1e-5)


def test_sjc_with_one_perturbation_matches_uniform_sds():
    prior = fake_prior()
    cond, uncond = prior.encode_prompts(["a blue sphere", ""])
    latents, noise, t = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8), torch.tensor([400])
    sjc = ScoreDistillation(prior, GuidanceConfig(method="sjc", guidance_scale=100.0))
    sds = ScoreDistillation(prior, GuidanceConfig(method="sds", guidance_scale=100.0, weighting="uniform"))
    assert torch.allclose(sjc.sjc_gradient(latents, cond, uncond, t, noise),
                          sds.sds_gradient(latents, cond, uncond, t, noise), atol=1e-4)


def test_sjc_averages_perturbations_in_one_unet_call():
    prior = fake_prior()
    cond, uncond = prior.encode_prompts(["a blue sphere", ""])
    latents, t = torch.randn(1, 4, 8, 8), torch.tensor([400])
    noises = torch.randn(3, 4, 8, 8)
    sjc = ScoreDistillation(prior, GuidanceConfig(method="sjc", paas_samples=3))
    calls = prior.unet.calls
    averaged = sjc.sjc_gradient(latents, cond, uncond, t, noises)
    assert prior.unet.calls == calls + 1
    singles = [sjc.sjc_gradient(latents, cond, uncond, t, n[None]) for n in noises]
    assert torch.allclose(averaged, torch.stack(singles).mean(dim=0), atol=1e-4)


def test_timestep_range_anneals_and_weightings_are_selectable():
    guidance = ScoreDistillation(fake_prior(), GuidanceConfig(t_min=0.02, t_max=0.98, t_max_final=0.5))
    assert guidance.timestep_range(0.0) == (20, 980)
    assert guidance.timestep_range(1.0) == (20, 500)
    generator = torch.Generator().manual_seed(0)
    late = [int(guidance.sample_timestep(1.0, generator)) for _ in range(200)]
    assert 20 <= min(late) and max(late) <= 500
    alpha_bar = torch.tensor([0.5])
    assert WEIGHTINGS["uniform"](alpha_bar) == 1 and WEIGHTINGS["dreamfusion"](alpha_bar) == 0.5


class TableUNet(torch.nn.Module):
    """Returns a fixed noise pattern per prompt: the prompt embedding's mean picks the row."""

    def __init__(self, table):
        super().__init__()
        self.table = table
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # a module the prior can freeze
        self.batches = []

    def forward(self, x, t, encoder_hidden_states):
        self.batches.append(len(x))
        rows = encoder_hidden_states.mean(dim=(1, 2)).round().long()
        return SimpleNamespace(sample=self.table[rows])


def test_perp_neg_removes_only_the_negative_part_orthogonal_to_the_prompt():
    generator = torch.Generator().manual_seed(0)
    table = torch.randn(3, 4, 8, 8, generator=generator)  # eps for uncond (0), cond (1), negative (2)
    _, vae, text_encoder, tokenizer, scheduler = tiny_components()
    prior = Prior(TableUNet(table), vae, text_encoder, tokenizer, scheduler, tiny_metadata())
    uncond, cond, negative = (torch.full((1, 12, 32), float(k)) for k in range(3))
    noisy, t = torch.randn(1, 4, 8, 8), torch.tensor([500])

    plain = prior.predict_noise(noisy, t, cond, uncond, 7.5)
    guided = prior.predict_noise(noisy, t, cond, uncond, 7.5, negative, negative_weight=2.0)

    assert prior.unet.batches == [2, 3]  # the negative rides in the same U-Net batch
    d_c, d_n = table[1] - table[0], table[2] - table[0]
    perpendicular = d_n - (d_n * d_c).sum() / d_c.pow(2).sum() * d_c
    assert torch.allclose(guided[0], table[0] + 7.5 * (d_c - 2.0 * perpendicular), atol=1e-4)
    # What the prompt asks for is kept whole: the change is orthogonal to the prompt's direction.
    assert abs(float(((guided - plain)[0] * d_c).sum())) < 1e-3 * float(d_c.pow(2).sum())
    # A zero weight, or the prompt as its own negative, is plain guidance.
    assert torch.allclose(prior.predict_noise(noisy, t, cond, uncond, 7.5, negative, 0.0), plain)
    assert torch.allclose(prior.predict_noise(noisy, t, cond, uncond, 7.5, cond, 2.0), plain, atol=1e-5)


def test_perp_neg_config_is_checked():
    with pytest.raises(ValueError, match="perp_neg_weight"):
        GuidanceConfig(perp_neg_weight=-1.0)
