"""Text-to-3D on the embedded prior, judged the way issue #3 asks.

For each prompt, run ``generate`` with default settings, write the GLB, read it back, and classify
it: shape by the silhouettes of the textured mesh from 16 views (8 azimuths x elevations 10 and 35
degrees, the contract's distance 2.2 and fov 40) against the 7 analytic shapes (mean IoU), colour by
the nearest (shaded) palette colour to the median colour of the texels the mesh uses.

Usage: python bench/text_to_3d_quality.py [--prompts "a red cube" ...] [--seed 0] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from engine import generate, load_prior, orbit_camera, write_outputs
from engine.cli import config_or_exit
from engine.cpu_sharing import default_threads
from engine.export import load_glb, texel_surface_points
from engine.raster import render_silhouette
from engine.tasks import preset_config
from primitive_world import contract
from primitive_world.classify import classify_colour, classify_shape

log = logging.getLogger("bench.text_to_3d_quality")

DEFAULT_PROMPTS = ["a red cube", "a blue sphere", "a yellow cone", "a green torus", "a purple cylinder"]
JUDGE_CAMERAS = [orbit_camera(az, el, contract.CAMERA_DISTANCE, contract.FOV_Y_DEG)
                 for el in (10.0, 35.0) for az in range(0, 360, 45)]


def judge(glb_path: Path, size: int = 64) -> dict:
    mesh = load_glb(glb_path)
    masks = [render_silhouette(mesh.vertices, mesh.faces, camera, size, size, ssaa=2) > 0.5
             for camera in JUDGE_CAMERAS]
    shape, ious = classify_shape(masks, JUDGE_CAMERAS)
    rows, cols, *_ = texel_surface_points(mesh.vertices, mesh.faces, mesh.uvs, mesh.texture.shape[0])
    colour, colour_distance = classify_colour(mesh.texture[rows, cols] / 255.0)
    return {"shape": shape, "ious": ious, "colour": colour, "colour_distance": colour_distance}


def configure(preset: str, seed: int, assignments: list[str]):
    return preset_config("generate", preset, {"seed": seed}, assignments)


def run_prompt(prior, prompt: str, config, workdir: Path) -> dict:
    """Generate ``prompt`` ("a {colour} {shape}"), write its GLB into ``workdir`` and judge it."""
    _, colour_word, shape_word = prompt.split()
    started = time.perf_counter()
    result = generate(prompt, prior, config)
    generated = time.perf_counter()
    glb = write_outputs(result.mesh, workdir / f"{prompt.replace(' ', '_')}_seed{config.seed}.glb")[0]
    seconds = time.perf_counter() - started
    verdict = judge(glb)
    others = [v for k, v in verdict["ious"].items() if k != shape_word]
    return {
        "prompt": prompt, "colour_word": colour_word, "shape_word": shape_word, "seed": config.seed,
        "steps": config.steps, "grid_resolution": config.field.grid_resolution, "device": str(prior.device),
        "seconds": seconds, "timings": {**result.timings, "write_s": time.perf_counter() - generated},
        "sds_its_per_s": config.steps / result.timings["optimise_s"],
        "shape": verdict["shape"], "shape_ok": verdict["shape"] == shape_word,
        "iou_true": verdict["ious"][shape_word], "iou_margin": verdict["ious"][shape_word] - max(others),
        "colour": verdict["colour"], "colour_ok": verdict["colour"] == colour_word,
        "colour_distance": verdict["colour_distance"], "colour_error_vs_decoded_views": result.colour_error,
        "faces": int(len(result.mesh.faces)), "glb": str(glb),
    }


def run_prompts(prior, prompts: list[str], seed: int, preset: str, assignments: list[str], workdir: Path) -> dict:
    """Every prompt generated, written and judged; the script's summary with one row per prompt.

    Args:
        prior: the loaded prior (``engine.load_prior``).
        prompts: "a {colour} {shape}" prompts of Primitive World.
        seed: the seed of every run.
        preset: the GenerateConfig preset, e.g. "standard".
        assignments: "FIELD=VALUE" overrides on top of the preset.
        workdir: an existing folder for the GLBs.
    """
    results = []
    for prompt in prompts:
        results.append(run_prompt(prior, prompt, configure(preset, seed, assignments), workdir))
        log.info("%s", json.dumps(_rounded(results[-1])))
    return {
        "shape_correct": sum(r["shape_ok"] for r in results), "colour_correct": sum(r["colour_ok"] for r in results),
        "runs": len(results), "max_seconds": max(r["seconds"] for r in results), "results": results,
    }


def _rounded(row: dict) -> dict:
    return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prompts", nargs="+", default=DEFAULT_PROMPTS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", default="standard")
    parser.add_argument("--model", help="prior folder (default: the embedded prior)")
    parser.add_argument("--workdir", default="out/quality")
    parser.add_argument("--threads", type=int, default=default_threads(), help="torch CPU threads")
    parser.add_argument("--out", default="out/quality/text_to_3d.json")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                        help="override GenerateConfig fields (guidance.X, colour_refine.X for nested configs)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    log.setLevel(logging.INFO)  # one line per prompt as it finishes; the engine's own INFO stays quiet
    torch.set_num_threads(args.threads)

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    config_or_exit(parser, lambda: configure(args.preset, args.seed, args.set))
    summary = run_prompts(load_prior(args.model), args.prompts, args.seed, args.preset, args.set, workdir)
    Path(args.out).write_text(json.dumps(summary, indent=2))
    for row in summary["results"]:
        print(json.dumps(_rounded(row)))
    print(json.dumps({k: v for k, v in summary.items() if k != "results"}))


if __name__ == "__main__":
    main()
