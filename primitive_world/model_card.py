"""Write the prior's model card (README.md) from its training.json and eval.json, and describe the world
it was trained on from primitive_world.contract.

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


def _metres(x: float) -> str:
    """A length in metres as the world's tables give it: two decimals."""
    return f"{x:.2f}"


def _span(interval: tuple[float, float]) -> str:
    return f"[{_metres(interval[0])}, {_metres(interval[1])}]"


def _triple(values, digits: int = 2) -> str:
    return "(" + ", ".join(f"{v:.{digits}f}" for v in values) + ")"


def _degrees(x: float) -> str:
    return f"{x:g}"


def shape_geometry() -> dict[str, str]:
    """Each shape's geometry in words, from the contract's numbers."""
    house, door = C.HOUSE_BODY, C.HOUSE_DOOR
    return {
        "cube": f"axis-aligned box, side {_metres(C.CUBE_SIDE)}",
        "sphere": f"radius {_metres(C.SPHERE_RADIUS)}",
        "cylinder": f"axis Z, radius {_metres(C.CYLINDER['radius'])}, from z = {_metres(C.CYLINDER['z'][0])} to "
                    f"z = {_metres(C.CYLINDER['z'][1])}",
        "cone": f"axis Z, base radius {_metres(C.CONE['radius'])} at z = {_metres(C.CONE['z'][0])}, apex at "
                f"z = {_metres(C.CONE['z'][1])}",
        "torus": f"lying in the XY plane (axis Z), major radius {_metres(C.TORUS['major'])}, minor radius "
                 f"{_metres(C.TORUS['minor'])}",
        "pyramid": f"square base of side {_metres(C.PYRAMID['side'])}, edges along X and Y, at z = "
                   f"{_metres(C.PYRAMID['z'][0])}; apex at z = {_metres(C.PYRAMID['z'][1])}",
        "house": f"body: box x ∈ {_span(house['x'])}, y ∈ {_span(house['y'])}, z ∈ {_span(house['z'])}; gable "
                 f"roof: a triangular prism over the body from z = {_metres(house['z'][1])} to a ridge along X "
                 f"at y = 0, z = {_metres(C.HOUSE_RIDGE_Z)}; door: the rectangle x ∈ {_span(door['x'])}, "
                 f"z ∈ {_span(door['z'])} on the front face (y = {_metres(house['y'][0])}) only, dark brown "
                 f"{_triple(C.DOOR_RGB)}",
    }


def view_suffix_list() -> str:
    """One bullet per view suffix: the camera angles that get it (contract.view_angle_ranges)."""
    lines = []
    for view in C.VIEWS:
        pieces = C.view_angle_ranges(view)
        (elevation_lo, elevation_hi) = pieces[0][1]
        azimuths = " ∪ ".join(f"[{_degrees(lo)}°, {_degrees(hi)}°)" for (lo, hi), _ in pieces)
        closing = "]" if elevation_hi == C.ELEVATION_RANGE_DEG[1] else ")"
        elevation = f"[{_degrees(elevation_lo)}°, {_degrees(elevation_hi)}°{closing}"
        suffix = C.VIEW_PROMPT.format(prompt="", view=view)
        lines.append(f"- `{suffix}`: azimuth {azimuths}, elevation {elevation}\n")
    return "".join(lines)


def world_values() -> dict:
    """The Primitive World section: shapes, colours, camera, shading, background and prompts."""
    return {
        "shapes_table": markdown_table(("word", "geometry"), list(shape_geometry().items())),
        "colours_table": markdown_table(("word", "albedo"), [(c, _triple(rgb)) for c, rgb in C.COLOURS.items()]),
        "camera_distance": f"{C.CAMERA_DISTANCE:g}",
        "fov_y_deg": _degrees(C.FOV_Y_DEG),
        "image_size": C.IMAGE_SIZE,
        "elevation_min": _degrees(C.ELEVATION_RANGE_DEG[0]),
        "elevation_max": _degrees(C.ELEVATION_RANGE_DEG[1]),
        "azimuth_min": _degrees(C.AZIMUTH_RANGE_DEG[0]),
        "azimuth_max": _degrees(C.AZIMUTH_RANGE_DEG[1]),
        "ambient": f"{C.AMBIENT:.2f}",
        "diffuse": f"{C.DIFFUSE:.2f}",
        "light_towards": _triple(C.LIGHT_TOWARDS, 1),
        "light_dir": _triple(C.LIGHT_DIR, 3),
        "background_rgb": _triple(C.BACKGROUND_RGB, 0),
        "supersample": C.SUPERSAMPLE,
        "view_prompt": C.VIEW_PROMPT,
        "view_suffix_list": view_suffix_list(),
        "vocabulary_size": len(C.VOCABULARY),
        "vocabulary": ", ".join(f"`{word}`" for word in C.VOCABULARY),
        "mix_suffix": f"{100 * C.PROMPT_MIX['suffix']:.0f} %",
        "mix_bare": f"{100 * C.PROMPT_MIX['bare']:.0f} %",
        "mix_empty": f"{100 * C.PROMPT_MIX['empty']:.0f} %",
    }


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
        **world_values(),
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
