"""Train the embedded Primitive World prior from scratch and write it as an SD-style folder.

    python -m primitive_world.train --seed 0 --out engine/priors/primitive-world

Phases: (1) render the dataset's geometry, (2) train the VAE, (3) cache VAE latents of every
(geometry, colour) image, (4) train text encoder + U-Net jointly on the cached latents with
classifier-free-guidance dropout (the contract's 70/20/10 prompt mix), EMA weights saved.
The folder is (re)written at every checkpoint, so a usable prior exists before training ends.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from engine.prior import Prior, PriorMetadata

from . import contract as C
from .classify import classify_image_colour
from .data import GeometrySet, make_geometry_set
from .sampling import sample
from .tokenizer import build_tokenizer, encode

log = logging.getLogger("primitive_world.train")

UNET_CONFIG = dict(
    sample_size=C.LATENT_SIZE, in_channels=4, out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(64, 96, 96), layers_per_block=1, attention_head_dim=8,
    norm_num_groups=16,
)
VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32, 64),
    down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
    layers_per_block=1, sample_size=C.IMAGE_SIZE,
    # one group: GroupNorm over all channels keeps the ratios between channels (the object's colour)
    norm_num_groups=1,
)
OBJECT_LOSS_WEIGHT = 2.0  # extra reconstruction weight on non-background pixels
TEXT_HIDDEN = 64
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    prediction_type="epsilon", clip_sample=False, steps_offset=1,
)


def text_encoder_config(tokenizer) -> CLIPTextConfig:
    """A tiny CLIP text encoder sized to the tokenizer's vocabulary and maximum length."""
    return CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=TEXT_HIDDEN, intermediate_size=4 * TEXT_HIDDEN,
        num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=tokenizer.model_max_length,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, projection_dim=TEXT_HIDDEN,
    )


def model_index() -> dict:
    """model_index.json: what makes the folder load as a ``StableDiffusionPipeline``."""
    import diffusers

    return {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "DDPMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }


def save_static(out: Path, tokenizer, vae: AutoencoderKL) -> None:
    """Everything but the text encoder and U-Net."""
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out / "tokenizer"))
    cfg_path = out / "tokenizer" / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"  # loads with transformers 4.x and 5.x
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
    vae.save_pretrained(str(out / "vae"), safe_serialization=True)
    DDPMScheduler(**SCHEDULER_CONFIG).save_pretrained(str(out / "scheduler"))
    (out / "model_index.json").write_text(json.dumps(model_index(), indent=2) + "\n")
    (out / "dreamsmith_prior.json").write_text(json.dumps(C.prior_metadata(), indent=2) + "\n")


def save_models(out: Path, text_encoder, unet, info: dict) -> None:
    """The trained parts and training.json; called at every checkpoint, so the folder is always loadable."""
    text_encoder.save_pretrained(str(out / "text_encoder"), safe_serialization=True)
    unet.save_pretrained(str(out / "unet"), safe_serialization=True)
    (out / "training.json").write_text(json.dumps(info, indent=2) + "\n")


def cosine_lr(step: int, total: int, warmup: int, base: float, final_frac: float = 0.05) -> float:
    """Linear warm-up, then cosine decay to ``final_frac`` of ``base``."""
    if step < warmup:
        return base * (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (final_frac + (1 - final_frac) * 0.5 * (1 + math.cos(math.pi * p)))


def _fit_steps(step: int, requested: int, elapsed: float, deadline: float | None) -> int:
    """Total steps that fit before ``deadline`` (perf_counter time) at the speed seen so far."""
    if deadline is None or step == 0:
        return requested
    per_step = elapsed / step
    left = deadline - time.perf_counter()
    return int(max(step + 1, min(requested, step + left / per_step)))


def train_vae(geo, train_idx, val_idx, steps, batch, lr, kl_weight, gen,
              deadline: float | None = None) -> tuple[AutoencoderKL, dict]:
    """Train the VAE on random (geometry, colour) images; returns it with its step count and validation PSNR."""
    vae = AutoencoderKL(**VAE_CONFIG)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    n_col = len(C.COLOUR_NAMES)
    t0 = time.perf_counter()
    vae.train()
    requested, step = steps, 0
    while step < steps:
        if step in (20, 100) or (step > 0 and step % 200 == 0):
            steps = _fit_steps(step, requested, time.perf_counter() - t0, deadline)
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, steps, 50, lr)
        idx = train_idx[torch.randint(len(train_idx), (batch,), generator=gen)]
        col = torch.randint(n_col, (batch,), generator=gen)
        x = geo.images(idx, col) * 2 - 1
        post = vae.encode(x).latent_dist
        z = post.sample(generator=gen)
        rec = vae.decode(z).sample
        weight = 1.0 + OBJECT_LOSS_WEIGHT * (x.min(dim=1, keepdim=True).values < 0.9).float()
        rec_loss = (weight * ((rec - x) ** 2 + 0.5 * (rec - x).abs())).mean()
        kl = post.kl().mean() / x[0].numel()
        loss = rec_loss + kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            log.info("vae step %d/%d loss %.5f kl %.2f (%.0fs)", step, steps, rec_loss.item(), kl.item(),
                     time.perf_counter() - t0)
        step += 1
    vae.eval()
    psnr = vae_validation_psnr(vae, geo, val_idx)
    log.info("vae validation PSNR %.2f dB", psnr)
    return vae, {"val_psnr_db": psnr, "steps": steps}


@torch.no_grad()
def vae_validation_psnr(vae: AutoencoderKL, geo: GeometrySet, val_idx: torch.Tensor) -> float:
    """Reconstruction PSNR of (up to) 256 held-out geometries, colours cycled, from the posterior mean."""
    vidx = val_idx[:256]
    col = torch.arange(len(vidx)) % len(C.COLOUR_NAMES)
    x = geo.images(vidx, col)
    rec = ((vae.decode(vae.encode(x * 2 - 1).latent_dist.mean).sample + 1) / 2).clamp(0, 1)
    mse = F.mse_loss(rec, x).item()
    return 10 * math.log10(1 / max(mse, 1e-12))


@torch.no_grad()
def cache_latents(vae, geo, batch=256) -> torch.Tensor:
    """(N, 7, 4, 16, 16) posterior-mean latents (unscaled) of every geometry × colour."""
    n_col = len(C.COLOUR_NAMES)
    out = torch.empty(len(geo), n_col, 4, C.LATENT_SIZE, C.LATENT_SIZE)
    t0 = time.perf_counter()
    for start in range(0, len(geo), batch // n_col):
        idx = torch.arange(start, min(len(geo), start + batch // n_col))
        ii = idx.repeat_interleave(n_col)
        cc = torch.arange(n_col).repeat(len(idx))
        z = vae.encode(geo.images(ii, cc) * 2 - 1).latent_dist.mean
        out[idx] = z.reshape(len(idx), n_col, 4, C.LATENT_SIZE, C.LATENT_SIZE)
        if start % (50 * (batch // n_col)) == 0:
            log.info("cached latents %d/%d (%.0fs)", start, len(geo), time.perf_counter() - t0)
    return out


@torch.no_grad()
def quick_colour_check(prior: Prior, seed: int, steps: int = 20, guidance: float = 5.0) -> float:
    """Fraction of bare ``a {colour} {shape}`` prompts sampled in the right colour: a cheap progress signal."""
    prompts, colours = [], []
    for colour in C.COLOUR_NAMES:
        for shape in C.SHAPES:
            prompts.append(C.bare_prompt(colour, shape))
            colours.append(colour)
    imgs = sample(prior, prompts, steps=steps, guidance=guidance, generator=torch.Generator().manual_seed(seed))
    imgs = imgs.permute(0, 2, 3, 1).numpy()
    ok = [classify_image_colour(im)[0] == c for im, c in zip(imgs, colours)]
    return float(np.mean(ok))


# ---- the training script, step by step (main() at the bottom runs them in order) -------------------
@dataclass
class Run:
    """What every step shares: the arguments, the one seeded generator that draws all of training's
    random numbers, and the training.json record (``info``) that each step adds to."""

    args: argparse.Namespace
    gen: torch.Generator
    out: Path
    info: dict
    timings: dict[str, float]
    t_all: float
    deadline: float | None  # perf_counter time by which --budget-min wants the run done


@dataclass
class Dataset:
    """The rendered geometry and its seeded train/validation split (indices into ``geo``)."""

    geo: GeometrySet
    train_idx: torch.Tensor
    val_idx: torch.Tensor


@dataclass
class DiffusionParts:
    """The text encoder and U-Net being trained, their EMA copies (which are what ships), the optimiser
    over both, and the frozen parts (tokenizer, VAE, scheduler) the colour checks sample with."""

    tokenizer: object
    vae: AutoencoderKL
    sched: DDPMScheduler
    text_encoder: CLIPTextModel
    unet: UNet2DConditionModel
    ema_text_encoder: CLIPTextModel
    ema_unet: UNet2DConditionModel
    params: list
    ema_params: list
    opt: torch.optim.Optimizer
    loss_weight: torch.Tensor


def parse_args(argv=None) -> argparse.Namespace:
    """Step 0: the command line; every flag's value is recorded in training.json as the recipe."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="engine/priors/primitive-world")
    ap.add_argument("--cameras-per-shape", type=int, default=600)
    ap.add_argument("--vae-steps", type=int, default=3000)
    ap.add_argument("--vae-batch", type=int, default=16)
    ap.add_argument("--vae-lr", type=float, default=2e-3)
    ap.add_argument("--kl-weight", type=float, default=1e-6)
    ap.add_argument("--steps", type=int, default=1684, help="U-Net + text encoder steps")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--min-snr-gamma", type=float, default=5.0)
    ap.add_argument("--save-every", type=int, default=250)
    ap.add_argument("--check-every", type=int, default=500)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--budget-min", type=float, default=None,
                    help="wall-clock budget for the whole run; VAE and U-Net step counts shrink to fit "
                         "(the counts actually used are recorded; pass them as --vae-steps/--steps to "
                         "retrain reproducibly)")
    ap.add_argument("--vae-budget-frac", type=float, default=0.27)
    ap.add_argument("--cache-dir", default=None, help="cache the rendered geometry here (e.g. runs/cache)")
    return ap.parse_args(argv)


def start_run(args: argparse.Namespace) -> Run:
    """Step 0: seed every RNG (model initialisation uses torch's global one, training draws use ``gen``)
    so that a seed fixes the weights, and open the training record."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    timings: dict[str, float] = {}
    info = {"recipe": vars(args), "timings_s": timings, "unet_config": UNET_CONFIG, "vae_config": VAE_CONFIG}
    t_all = time.perf_counter()
    deadline = None if args.budget_min is None else t_all + 60 * args.budget_min
    return Run(args, gen, Path(args.out), info, timings, t_all, deadline)


def load_or_render_geometry(args: argparse.Namespace) -> GeometrySet:
    """Rendering dominates a short run; --cache-dir reuses an earlier run's geometry (same seed and cameras)."""
    cache = None
    if args.cache_dir:
        cache = Path(args.cache_dir) / f"geometry_seed{args.seed}_n{args.cameras_per_shape}.pt"
        if cache.exists():
            geo = GeometrySet(**torch.load(cache, weights_only=False))
            log.info("loaded cached geometry %s", cache)
            return geo
    geo = make_geometry_set(args.cameras_per_shape, args.seed)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save(vars(geo), cache)
    return geo


def build_dataset(run: Run) -> Dataset:
    """Step 1: the geometry of every training image, and a seeded validation split for the VAE's PSNR."""
    t0 = time.perf_counter()
    geo = load_or_render_geometry(run.args)
    run.timings["render_dataset"] = time.perf_counter() - t0
    perm = torch.randperm(len(geo), generator=run.gen)
    n_val = max(7, len(geo) // 50)
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    run.info["dataset"] = {"geometries": len(geo), "images": len(geo) * len(C.COLOUR_NAMES)}
    log.info("dataset: %d geometries -> %d images in %.1fs", len(geo), len(geo) * 7, run.timings["render_dataset"])
    return Dataset(geo, train_idx, val_idx)


def fit_vae(run: Run, data: Dataset) -> AutoencoderKL:
    """Step 2: train the VAE first, on its share (--vae-budget-frac) of what is left of the budget."""
    args = run.args
    t0 = time.perf_counter()
    vae_deadline = None
    if run.deadline is not None:
        vae_deadline = time.perf_counter() + args.vae_budget_frac * (run.deadline - time.perf_counter())
    vae, vae_info = train_vae(data.geo, data.train_idx, data.val_idx, args.vae_steps, args.vae_batch,
                              args.vae_lr, args.kl_weight, run.gen, vae_deadline)
    run.timings["train_vae"] = time.perf_counter() - t0
    run.info["vae"] = vae_info
    return vae


def encode_dataset(run: Run, vae: AutoencoderKL, data: Dataset) -> torch.Tensor:
    """Step 3: the VAE is frozen from here, so encode every image once; the latents are scaled to unit
    std over the training split and the VAE's ``scaling_factor`` records it, as in Stable Diffusion."""
    t0 = time.perf_counter()
    latents = cache_latents(vae, data.geo)
    std = latents[data.train_idx].std().item()
    scaling = 1.0 / std
    vae.register_to_config(scaling_factor=scaling)
    latents *= scaling
    run.timings["cache_latents"] = time.perf_counter() - t0
    run.info["vae"]["scaling_factor"] = scaling
    log.info("latent std %.4f -> scaling_factor %.5f (%.1fs)", std, scaling, run.timings["cache_latents"])
    return latents


def write_static_parts(run: Run, vae: AutoencoderKL):
    """Step 4: tokenizer, VAE, scheduler and metadata are final now; writing them before the U-Net trains
    makes every later checkpoint a complete, loadable prior. Returns the tokenizer."""
    tokenizer = build_tokenizer()
    save_static(run.out, tokenizer, vae)
    return tokenizer


def min_snr_loss_weights(sched: DDPMScheduler, gamma: float) -> torch.Tensor:
    """Per-timestep weight min(SNR, γ) / SNR (min-SNR-γ for ε prediction): low-noise steps stop dominating."""
    alphas_cumprod = sched.alphas_cumprod
    snr = alphas_cumprod / (1 - alphas_cumprod)
    return torch.clamp(snr, max=gamma) / snr


def build_models(run: Run, tokenizer, vae: AutoencoderKL) -> DiffusionParts:
    """Step 5: the text encoder and U-Net (initialised in this order from torch's global RNG), their EMA
    copies and one optimiser over both, since they train jointly."""
    args = run.args
    text_encoder = CLIPTextModel(text_encoder_config(tokenizer))
    unet = UNet2DConditionModel(cross_attention_dim=TEXT_HIDDEN, **UNET_CONFIG)
    sched = DDPMScheduler(**SCHEDULER_CONFIG)
    loss_weight = min_snr_loss_weights(sched, args.min_snr_gamma)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-2)
    ema_unet, ema_te = copy.deepcopy(unet).eval(), copy.deepcopy(text_encoder).eval()
    ema_params = list(ema_unet.parameters()) + list(ema_te.parameters())
    run.info["params"] = {"unet": sum(p.numel() for p in unet.parameters()),
                          "text_encoder": sum(p.numel() for p in text_encoder.parameters()),
                          "vae": sum(p.numel() for p in vae.parameters())}
    log.info("params %s", run.info["params"])
    return DiffusionParts(tokenizer, vae, sched, text_encoder, unet, ema_te, ema_unet, params, ema_params,
                          opt, loss_weight)


def draw_batch(run: Run, data: Dataset, latents: torch.Tensor, sched: DDPMScheduler):
    """One batch: geometry, colour, prompt-mix draw, noise and timestep, drawn from ``run.gen`` in this
    fixed order (which is what makes a seed reproduce the weights). Returns (prompts, z_t, t, noise)."""
    args, gen = run.args, run.gen
    idx = data.train_idx[torch.randint(len(data.train_idx), (args.batch,), generator=gen)]
    col = torch.randint(len(C.COLOUR_NAMES), (args.batch,), generator=gen)
    u = torch.rand(args.batch, generator=gen, dtype=torch.float64)
    prompts = data.geo.prompts(idx, col, u)
    z0 = latents[idx, col]
    noise = torch.randn(z0.shape, generator=gen)
    t = torch.randint(0, sched.config.num_train_timesteps, (args.batch,), generator=gen)
    zt = sched.add_noise(z0, noise, t)
    return prompts, zt, t, noise


def train_step(parts: DiffusionParts, prompts: list[str], zt, t, noise) -> torch.Tensor:
    """Step 6a: one optimiser step of text encoder + U-Net on the min-SNR-weighted ε-prediction loss."""
    emb = parts.text_encoder(encode(parts.tokenizer, prompts))[0]
    pred = parts.unet(zt, t, emb).sample
    per = F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))
    loss = (per * parts.loss_weight[t]).mean()
    parts.opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(parts.params, 1.0)
    parts.opt.step()
    return loss


@torch.no_grad()
def update_ema(parts: DiffusionParts, step: int, ema: float) -> None:
    """Step 6b: the shipped weights are an EMA; its decay ramps up so early averages don't keep the random init."""
    decay = min(ema, (1 + step) / (10 + step))
    for pe, p in zip(parts.ema_params, parts.params):
        pe.lerp_(p, 1 - decay)


def save_checkpoint(run: Run, parts: DiffusionParts, steps_done: int, t_unet: float) -> None:
    """Step 6c: rewrite the EMA weights and training.json, so an interrupted run still leaves a usable prior."""
    run.info["steps_done"] = steps_done
    run.timings["train_unet"] = time.perf_counter() - t_unet
    save_models(run.out, parts.ema_text_encoder, parts.ema_unet, run.info)
    log.info("saved checkpoint at step %d to %s", steps_done, run.out)


def colour_check(run: Run, parts: DiffusionParts, steps_done: int) -> None:
    """Step 6d: sample the EMA prior and record its colour accuracy, to watch training converge."""
    tc = time.perf_counter()
    prior = Prior(parts.ema_unet, parts.vae, parts.ema_text_encoder, parts.tokenizer, parts.sched,
                  PriorMetadata.from_dict(C.prior_metadata()))
    acc = quick_colour_check(prior, run.args.seed)
    run.info["colour_checks"].append({"step": steps_done, "colour_acc_bare_20ddim": acc})
    log.info("colour check at step %d: %.1f%% (%.0fs)", steps_done, 100 * acc, time.perf_counter() - tc)


def train_unet(run: Run, parts: DiffusionParts, data: Dataset, latents: torch.Tensor, t_unet: float) -> int:
    """Step 6: train text encoder + U-Net jointly with checkpoints and colour checks; under --budget-min the
    step count is re-estimated at fixed steps to fit. Returns the number of steps run."""
    args = run.args
    run.info["colour_checks"] = []
    parts.unet.train()
    parts.text_encoder.train()
    t_loop = time.perf_counter()
    total, step = args.steps, 0
    # leave time for the final save and colour check
    unet_deadline = None if run.deadline is None else run.deadline - 60
    while step < total:
        if step in (20, 100) or (step > 0 and step % 100 == 0):
            total = _fit_steps(step, args.steps, time.perf_counter() - t_loop, unet_deadline)
        lr = cosine_lr(step, total, args.warmup, args.lr)
        for g in parts.opt.param_groups:
            g["lr"] = lr
        loss = train_step(parts, *draw_batch(run, data, latents, parts.sched))
        update_ema(parts, step, args.ema)
        if step % 50 == 0 or step == total - 1:
            el = time.perf_counter() - t_loop
            log.info("unet step %d/%d loss %.4f lr %.2e %.2fs/step eta %.1f min", step, total, loss.item(),
                     lr, el / (step + 1), el / (step + 1) * (total - step - 1) / 60)
        last = step == total - 1
        if (step + 1) % args.save_every == 0 or last:
            save_checkpoint(run, parts, step + 1, t_unet)
        if (step + 1) % args.check_every == 0 or last:
            colour_check(run, parts, step + 1)
        step += 1
    return total


def finish(run: Run, parts: DiffusionParts, total: int, t_unet: float) -> None:
    """Step 7: record the step counts actually run (and the command that pins them), write the final
    weights and training.json, and print a summary."""
    args = run.args
    run.info["unet_steps"] = total
    run.info["retrain_command"] = (
        f"python -m primitive_world.train --seed {args.seed} --out {args.out} "
        f"--cameras-per-shape {args.cameras_per_shape} --vae-steps {run.info['vae']['steps']} --steps {total}")
    run.timings["train_unet"] = time.perf_counter() - t_unet
    run.timings["total"] = time.perf_counter() - run.t_all
    save_models(run.out, parts.ema_text_encoder, parts.ema_unet, run.info)
    log.info("done: %s", json.dumps(run.timings))
    print(json.dumps({"out": str(run.out), "timings_s": run.timings}, indent=2))


def main(argv=None) -> None:
    args = parse_args(argv)
    run = start_run(args)
    data = build_dataset(run)  # 1. render (or load) the geometry, split train/validation
    vae = fit_vae(run, data)  # 2. train the VAE
    latents = encode_dataset(run, vae, data)  # 3. cache the scaled latents of every image
    tokenizer = write_static_parts(run, vae)  # 4. write tokenizer, VAE, scheduler, metadata
    t_unet = time.perf_counter()
    parts = build_models(run, tokenizer, vae)  # 5. text encoder + U-Net, EMA copies, optimiser
    total = train_unet(run, parts, data, latents, t_unet)  # 6. train them, checkpointing
    finish(run, parts, total, t_unet)  # 7. final weights, training.json, summary


if __name__ == "__main__":
    main()
