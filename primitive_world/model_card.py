"""Write the prior's model card (README.md) from its training.json and eval.json.

    python -m primitive_world.model_card --model engine/priors/primitive-world
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from . import contract as C

log = logging.getLogger("primitive_world.model_card")


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def _minutes(s: float) -> str:
    return f"{s / 60:.1f} min ({s:.0f} s)"


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def render_card(folder: Path) -> str:
    train = json.loads((folder / "training.json").read_text())
    ev = json.loads((folder / "eval.json").read_text()) if (folder / "eval.json").exists() else None
    recipe = train["recipe"]
    t = train["timings_s"]
    params = train.get("params", {})
    unet_cfg = train["unet_config"]
    vae_cfg = train["vae_config"]
    lines = [
        f"# {C.NAME}: the embedded Primitive World prior",
        "",
        "A small text-to-image latent diffusion model in Stable Diffusion's diffusers folder layout",
        "(`model_index.json`, `tokenizer/`, `text_encoder/`, `unet/`, `vae/`, `scheduler/`), trained from",
        "scratch on synthetic images of *Primitive World* (the contract `/work/shared/primitive-world.md`:",
        "7 shapes × 7 colours, white background, fixed light, orbit cameras at distance 2.2, fov 40°).",
        "The engine loads it through the same code path as a real SD checkpoint; `dreamsmith_prior.json`",
        "tells it this world's camera convention, view-prompt grammar and light (text-to-3D divides the",
        "light out of its textures, so they are albedo).",
        "",
        "## Components",
        "",
        "| part | class | size |",
        "| --- | --- | --- |",
        f"| tokenizer | `PreTrainedTokenizerFast` (WordLevel, {len(C.VOCABULARY)} words + 4 specials, max length 16) | – |",
        f"| text_encoder | `CLIPTextModel` (hidden 64, 2 layers, 2 heads) | {params.get('text_encoder', 0) / 1e6:.2f} M params |",
        f"| unet | `UNet2DConditionModel` (blocks {tuple(unet_cfg['block_out_channels'])}, 1 layer/block, "
        f"cross-attention at 8×8 and 4×4, latents 4×16×16) | {params.get('unet', 0) / 1e6:.2f} M params |",
        f"| vae | `AutoencoderKL` (blocks {tuple(vae_cfg['block_out_channels'])}, 64×64×3 ↔ 16×16×4, "
        f"scaling_factor {train['vae']['scaling_factor']:.4f}) | {params.get('vae', 0) / 1e6:.2f} M params |",
        "| scheduler | `DDPMScheduler` (ε prediction, 1000 steps, scaled_linear 0.00085–0.012) | – |",
        "",
        f"Folder size: {folder_size(folder) / 2**20:.1f} MiB (fp32 safetensors).",
        "",
        "Prompts are encoded exactly like `StableDiffusionPipeline`: `tokenizer(prompts, padding=\"max_length\",",
        "max_length=16, truncation=True).input_ids` → `text_encoder(ids)[0]`, no attention mask; the",
        "unconditional embedding is the empty prompt `\"\"`.",
        "",
        "## Training data",
        "",
        f"- {train['dataset']['geometries']} geometry renders ({recipe['cameras_per_shape']} uniformly drawn contract cameras",
        "  per shape: elevation U[0°, 50°], azimuth U[0°, 360°)), each colourised exactly in all 7 colours",
        f"  → {train['dataset']['images']} images of 64×64 (4×4 supersampled ray casting of the analytic shapes,",
        "  box-filtered; Lambert shading `albedo·(0.40 + 0.60·max(0, n·l))`). No flips or other augmentation",
        "  (they would break the fixed light and the house's front door).",
        "- Prompt mix per sample: 70 % `a {colour} {shape}, {view} view`, 20 % `a {colour} {shape}`,",
        "  10 % empty (classifier-free guidance dropout). View: `overhead` when elevation ≥ 40°, else",
        "  front [315°, 45°), side [45°, 135°) ∪ [225°, 315°), back [135°, 225°).",
        "",
        "## Recipe",
        "",
        f"1. VAE: {train['vae']['steps']} AdamW steps, batch {recipe['vae_batch']}, lr {recipe['vae_lr']} (cosine), "
        f"(MSE + 0.5·L1) reconstruction with object pixels weighted ×3 + {recipe['kl_weight']}·KL; GroupNorm with "
        f"a single group (keeps colour); validation PSNR {train['vae']['val_psnr_db']:.1f} dB.",
        "2. Cache posterior-mean latents of every image; `scaling_factor` = 1 / std of the training latents.",
        f"3. Text encoder + U-Net jointly: {train.get('unet_steps', train.get('steps_done'))} AdamW steps, batch {recipe['batch']}, "
        f"lr {recipe['lr']} (warm-up {recipe['warmup']}, cosine to 5 %), weight decay 0.01, min-SNR-γ={recipe['min_snr_gamma']} "
        f"loss weighting, EMA {recipe['ema']} (the EMA weights are shipped).",
        "",
        "Retrain from scratch (seeded; writes this folder):",
        "",
        "```",
        train.get("retrain_command", "python -m primitive_world.train --seed 0 --out engine/priors/primitive-world"),
        "```",
        "",
        "(The shipped run was launched with `--budget-min`, which only chooses how many steps fit in the wall-clock",
        "budget; the command above pins the step counts it chose. Because the budgeted run re-estimated the",
        "length of its cosine schedules every 100 steps, the pinned command reproduces the recipe and is itself",
        "deterministic for a seed, but its weights are not bit-identical to the shipped ones.)",
        "",
        "## Timing (2-core CPU, no GPU was available in this session)",
        "",
        "Training ran on 2 CPU threads while other jobs shared the same 2 cores, so the times are pessimistic.",
        "",
        "| phase | wall time |",
        "| --- | --- |",
        f"| render dataset | {_minutes(train.get('render_dataset_uncached_s', t['render_dataset']))}"
        + (" (¹)" if "render_dataset_uncached_s" in train else "") + " |",
        f"| train VAE | {_minutes(t['train_vae'])} |",
        f"| cache latents | {_minutes(t['cache_latents'])} |",
        f"| train text encoder + U-Net | {_minutes(t['train_unet'])} |",
        f"| total | {_minutes(t.get('total', sum(t.values())))} |",
        "",
    ]
    if "render_dataset_note" in train:
        lines += [f"(¹) {train['render_dataset_note']}; the shipped run's total excludes it.", ""]
    if ev:
        fwd = ev["unet_batch2_forward"]
        gt = ev["ground_truth_classifier_baseline"]
        s = ev["sampler"]
        lines += [
            f"U-Net forward, batch 2 (one CFG pair), 2 threads: median {fwd['median_ms']:.1f} ms, "
            f"best {fwd['min_ms']:.1f} ms.",
            "",
            "## Quality",
            "",
            f"`python -m primitive_world.evaluate_samples --model engine/priors/primitive-world` — "
            f"DDIM {s['steps']} steps, guidance {s['guidance_scale']}, {s['samples_per_prompt']} samples for each of",
            f"49 colour × shape prompts × 4 view suffixes ({ev['n_samples']} samples, seed {s['seed']}).",
            "",
            "- colour correct: nearest palette colour (allowing the contract's shading factor 0.4–1.0) to the",
            "  median colour of the object pixels equals the prompt's colour;",
            "- shape correct: among the 7 analytic shapes, the best silhouette IoU (max over a camera grid",
            "  inside the view suffix's azimuth/elevation range) is the prompt's shape.",
            "",
            "| metric | measured | bar |",
            "| --- | --- | --- |",
            f"| colour accuracy | **{_pct(ev['colour_acc'])}** | ≥ 95 % |",
            f"| shape accuracy | **{_pct(ev['shape_acc'])}** | ≥ 90 % |",
            "",
            f"Same classifiers on exact renders (sanity baseline): colour {_pct(gt['colour_acc'])}, "
            f"shape {_pct(gt['shape_acc'])} (n={gt['n']}).",
            "",
            "| view | colour | shape |",
            "| --- | --- | --- |",
        ]
        for v, r in ev["per_view"].items():
            lines.append(f"| {v} | {_pct(r['colour_acc'])} | {_pct(r['shape_acc'])} |")
        lines += ["", "| shape | colour | shape |", "| --- | --- | --- |"]
        for k, r in ev["per_shape"].items():
            lines.append(f"| {k} | {_pct(r['colour_acc'])} | {_pct(r['shape_acc'])} |")
        doors = ev.get("house_door_visible_rate", {})
        if doors:
            lines += [
                "",
                "House door visible (≥ 20 door-coloured pixels) by view suffix — the door is on the front only: "
                + ", ".join(f"{v} {_pct(r)}" for v, r in doors.items()) + ".",
            ]
        lines += [
            "",
            "## Samples",
            "",
            "Rows: cube, sphere, cylinder, cone, torus, pyramid, house. Column groups: red, orange, yellow, green,",
            "blue, purple, white; within a group the front, side, back and overhead view prompts.",
            "",
            "![samples](samples.png)",
            "",
        ]
    lines += [
        "## Limitations",
        "",
        "- Knows only Primitive World: 7 shapes, 7 colours, the view suffixes; any other word maps to `[UNK]`.",
        "- 64×64 images; one object centred at the origin under one fixed light.",
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="engine/priors/primitive-world")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    folder = Path(args.model)
    (folder / "README.md").write_text(render_card(folder))
    log.info("wrote %s", folder / "README.md")


if __name__ == "__main__":
    main()
