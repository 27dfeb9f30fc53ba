"""Write the prior's model card (README.md) from its training.json and eval.json.

    python -m primitive_world.model_card --model engine/priors/primitive-world
"""

from __future__ import annotations

import argparse
import json
import logging
from importlib import resources
from pathlib import Path
from string import Template

from . import contract as C

log = logging.getLogger("primitive_world.model_card")

# the card's text; the functions below compute the values for their ${...} placeholders
CARD_TEMPLATE = "model_card_template.md"
QUALITY_TEMPLATE = "model_card_quality_template.md"  # only when eval.json exists


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def _minutes(s: float) -> str:
    return f"{s / 60:.1f} min ({s:.0f} s)"


def _mparams(n: int) -> str:
    return f"{n / 1e6:.2f}"


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def load_template(name: str) -> Template:
    """A card template shipped beside this module (package data, so it also works when installed)."""
    return Template(resources.files(__package__).joinpath(name).read_text(encoding="utf-8"))


def markdown_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    """A pipe table, one line per row, each line ending in a newline."""
    lines = [header, ("---",) * len(header), *rows]
    return "".join("| " + " | ".join(cells) + " |\n" for cells in lines)


def accuracy_table(first_column: str, groups: dict) -> str:
    """Colour and shape accuracy per group (view or shape) of the evaluation."""
    rows = [(k, _pct(r["colour_acc"]), _pct(r["shape_acc"])) for k, r in groups.items()]
    return markdown_table((first_column, "colour", "shape"), rows)


def component_values(train: dict, folder: Path) -> dict:
    """The Components table and the folder size."""
    params = train.get("params", {})
    return {
        "name": C.NAME,
        "vocabulary_size": len(C.VOCABULARY),
        "text_encoder_mparams": _mparams(params.get("text_encoder", 0)),
        "unet_mparams": _mparams(params.get("unet", 0)),
        "vae_mparams": _mparams(params.get("vae", 0)),
        "unet_blocks": tuple(train["unet_config"]["block_out_channels"]),
        "vae_blocks": tuple(train["vae_config"]["block_out_channels"]),
        "scaling_factor": f"{train['vae']['scaling_factor']:.4f}",
        "folder_mib": f"{folder_size(folder) / 2**20:.1f}",
    }


def training_data_values(train: dict) -> dict:
    """The Training data section."""
    return {
        "geometries": train["dataset"]["geometries"],
        "cameras_per_shape": train["recipe"]["cameras_per_shape"],
        "images": train["dataset"]["images"],
    }


def recipe_values(train: dict) -> dict:
    """The Recipe section, with the command that retrains this folder."""
    recipe = train["recipe"]
    return {
        "vae_steps": train["vae"]["steps"],
        "vae_batch": recipe["vae_batch"],
        "vae_lr": recipe["vae_lr"],
        "kl_weight": recipe["kl_weight"],
        "vae_psnr_db": f"{train['vae']['val_psnr_db']:.1f}",
        "unet_steps": train.get("unet_steps", train.get("steps_done")),
        "batch": recipe["batch"],
        "lr": recipe["lr"],
        "warmup": recipe["warmup"],
        "min_snr_gamma": recipe["min_snr_gamma"],
        "ema": recipe["ema"],
        "retrain_command": train.get(
            "retrain_command", "python -m primitive_world.train --seed 0 --out engine/priors/primitive-world"),
    }


def timing_values(train: dict) -> dict:
    """The Timing table; a cached dataset render reports the uncached time, marked (¹)."""
    t = train["timings_s"]
    render_s = train.get("render_dataset_uncached_s", t["render_dataset"])
    marker = " (¹)" if "render_dataset_uncached_s" in train else ""
    return {
        "render_dataset_time": _minutes(render_s) + marker,
        "train_vae_time": _minutes(t["train_vae"]),
        "cache_latents_time": _minutes(t["cache_latents"]),
        "train_unet_time": _minutes(t["train_unet"]),
        "total_time": _minutes(t.get("total", sum(t.values()))),
    }


def render_dataset_note(train: dict) -> str | None:
    """The footnote (¹) of the Timing table, when training.json carries one."""
    if "render_dataset_note" not in train:
        return None
    return f"(¹) {train['render_dataset_note']}; the shipped run's total excludes it.\n"


def house_door_paragraph(ev: dict) -> str:
    """How often the house's front-only door shows, per view suffix; empty when not measured."""
    doors = ev.get("house_door_visible_rate", {})
    if not doors:
        return ""
    rates = ", ".join(f"{v} {_pct(r)}" for v, r in doors.items())
    return ("House door visible (≥ 20 door-coloured pixels) by view suffix — the door is on the front only: "
            f"{rates}.\n\n")


def quality_values(ev: dict) -> dict:
    """The speed, Quality and Samples sections, from eval.json."""
    fwd, s, gt = ev["unet_batch2_forward"], ev["sampler"], ev["ground_truth_classifier_baseline"]
    return {
        "forward_median_ms": f"{fwd['median_ms']:.1f}",
        "forward_min_ms": f"{fwd['min_ms']:.1f}",
        "sampler_steps": s["steps"],
        "guidance_scale": s["guidance_scale"],
        "samples_per_prompt": s["samples_per_prompt"],
        "n_samples": ev["n_samples"],
        "sampler_seed": s["seed"],
        "colour_acc": _pct(ev["colour_acc"]),
        "shape_acc": _pct(ev["shape_acc"]),
        "baseline_colour_acc": _pct(gt["colour_acc"]),
        "baseline_shape_acc": _pct(gt["shape_acc"]),
        "baseline_n": gt["n"],
        "per_view_table": accuracy_table("view", ev["per_view"]),
        "per_shape_table": accuracy_table("shape", ev["per_shape"]),
        "house_door_paragraph": house_door_paragraph(ev),
    }


def optional_sections(train: dict, ev: dict | None) -> str:
    """The blocks between the Timing table and Limitations, each followed by a blank line."""
    blocks = [render_dataset_note(train)]
    if ev:
        blocks.append(load_template(QUALITY_TEMPLATE).substitute(quality_values(ev)))
    return "".join(block + "\n" for block in blocks if block)


def render_card(folder: Path) -> str:
    train = json.loads((folder / "training.json").read_text())
    ev = json.loads((folder / "eval.json").read_text()) if (folder / "eval.json").exists() else None
    values = {
        **component_values(train, folder),
        **training_data_values(train),
        **recipe_values(train),
        **timing_values(train),
        "optional_sections": optional_sections(train, ev),
    }
    return load_template(CARD_TEMPLATE).substitute(values)


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
