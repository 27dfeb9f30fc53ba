"""The README's pictures, made from real runs on the embedded prior:

    python -m scripts.readme_pictures --out docs/images

writes, each a small PNG:

* ``presets_grid.png``: for each prompt (rows), the prop each quality preset (columns: draft, standard,
  high) makes, seen from the front right and the back left (the engine's turntable cameras).
* ``paint_before_after.png``: Latent-Paint's bench case, the Primitive World house mesh before and
  after ``paint`` with "a green house".
* ``sketch_before_after.png``: Sketch-Shape's first bench case, the house's bounding box before and
  after ``sketch`` with "a green house".
* ``blender_cycles_render.png``: the first prompt's standard prop, stored the way the server stores a
  result, imported by the add-on's importer and rendered with Cycles on the CPU by
  ``scripts/blender_render_prop.py`` in the Blender environment (``python -m scripts.blender_venv``).

It takes about five minutes on a 2-core CPU, most of it the high preset. Every run uses seed 0, so the
pictures can be made again.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from bench.paint_quality import CASES as PAINT_CASES
from bench.sketch_quality import cases as sketch_cases
from engine import MeshInput, TexturedMesh, load_prior, preset_config
from engine.cpu_sharing import default_threads
from engine.export import preview_cameras
from engine.raster import Lighting, render_textured
from engine.tasks import TASKS
from primitive_world.meshes import contract_mesh
from scripts import blender_venv
from server.results import JobOutput, ResultStore

log = logging.getLogger("scripts.readme_pictures")

ROOT = Path(__file__).resolve().parents[1]
PRESETS_GRID, PAINT_BEFORE_AFTER, SKETCH_BEFORE_AFTER, BLENDER_RENDER = (
    "presets_grid.png", "paint_before_after.png", "sketch_before_after.png", "blender_cycles_render.png")
PICTURES = (PRESETS_GRID, PAINT_BEFORE_AFTER, SKETCH_BEFORE_AFTER, BLENDER_RENDER)
PROMPTS = ("a purple torus", "a green house")
PRESETS = ("draft", "standard", "high")
SEED = 0
TILE_PX = 150
# Indices into the engine's 8 turntable cameras (export.preview_cameras): azimuth 45° shows the
# front and right side, 225° the back and left side, so a door on the wrong side shows.
TURNTABLE_VIEWS = 8
FRONT_RIGHT, BACK_LEFT = 1, 5
LABEL_WIDTH_PX = 150
HEADER_PX = 26
FONT_PX = 15
UNTEXTURED_GREY = 200  # how a mesh that has no texture yet is shown
# Each view's light: from behind the camera, a little above and to the left of it.
CAMERA_LIGHT_UP, CAMERA_LIGHT_LEFT, CAMERA_LIGHT_AMBIENT = 0.6, 0.4, 0.45
BLENDER_RENDER_TIMEOUT_S = 600
BLENDER_SIZE = (480, 360)
BLENDER_SAMPLES = 32
SUMMARY_MARKER = "@@prop@@"  # blender_render_prop.py's summary line (that script imports bpy: not importable here)


@dataclass
class Row:
    """One row of a picture grid: its label and, per column, the tiles shown side by side."""

    label: str
    cells: list[list[np.ndarray]]


# -- drawing


def font(size: int = FONT_PX) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def camera_light(camera) -> Lighting:
    """A light above and left of ``camera``, so every view shows its side of the prop lit, not in shadow."""
    right, up, backward = (camera.c2w[:3, axis] for axis in range(3))
    direction = backward + CAMERA_LIGHT_UP * up - CAMERA_LIGHT_LEFT * right
    return Lighting(tuple(direction.tolist()), CAMERA_LIGHT_AMBIENT, 1.0 - CAMERA_LIGHT_AMBIENT)


def tiles_of(mesh: TexturedMesh, cameras) -> list[np.ndarray]:
    """``mesh`` from each camera on white, its albedo texture lit by a light by the camera (every
    task's texture is albedo on the embedded prior, which knows its light)."""
    return [render_textured(mesh.vertices, mesh.faces, mesh.uvs, mesh.texture, camera, TILE_PX, TILE_PX,
                            shading=camera_light(camera), ssaa=2)[0] for camera in cameras]


def two_views(vertices: np.ndarray):
    """The front-right and back-left turntable cameras framing ``vertices``."""
    cameras = preview_cameras(vertices, TURNTABLE_VIEWS)
    return [cameras[FRONT_RIGHT], cameras[BACK_LEFT]]


def untextured(mesh: MeshInput) -> TexturedMesh:
    """A user's mesh as it is before a task: one plain grey all over."""
    vertices = np.asarray(mesh.vertices, dtype=np.float32)
    return TexturedMesh(vertices, np.asarray(mesh.faces, dtype=np.int32), np.zeros((len(vertices), 2), np.float32),
                        np.full((4, 4, 3), UNTEXTURED_GREY, np.uint8))


def grid_picture(column_labels: list[str], rows: list[Row]) -> Image.Image:
    """A white sheet: column labels on top, each row's label on the left, its cells' tiles beside it."""
    tiles_per_cell = len(rows[0].cells[0])
    cell_px = tiles_per_cell * TILE_PX
    sheet = Image.new("RGB", (LABEL_WIDTH_PX + len(column_labels) * cell_px, HEADER_PX + len(rows) * TILE_PX),
                      "white")
    draw = ImageDraw.Draw(sheet)
    for column, text in enumerate(column_labels):
        draw.text((LABEL_WIDTH_PX + column * cell_px + 6, 5), text, fill="black", font=font())
    for index, row in enumerate(rows):
        top = HEADER_PX + index * TILE_PX
        draw.text((6, top + TILE_PX // 2 - FONT_PX), row.label, fill="black", font=font())
        for column, tiles in enumerate(row.cells):
            for k, tile in enumerate(tiles):
                left = LABEL_WIDTH_PX + column * cell_px + k * TILE_PX
                sheet.paste(Image.fromarray(np.round(np.clip(tile, 0, 1) * 255).astype(np.uint8)), (left, top))
        if index:
            draw.line([(0, top), (sheet.width, top)], fill=(225, 225, 225))
    return sheet


def save_small_png(picture: Image.Image, path: Path) -> None:
    """A palette PNG: renders on white need few colours, and the README's pictures stay small."""
    picture.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)
    log.info("wrote %s (%.0f KB)", path, path.stat().st_size / 1024)


# -- the runs


def timed_run(task: str, prompt: str, prior, preset: str, steps: int | None, mesh: MeshInput | None = None):
    """One engine run with ``preset``'s settings (seed 0); its result."""
    overrides = {"seed": SEED, **({"steps": steps} if steps else {})}
    config = preset_config(task, preset, overrides)
    inputs = (mesh,) if mesh is not None else ()
    started = time.perf_counter()
    result = TASKS[task].run(*inputs, prompt, prior, config)
    log.info("%s %r, %s preset (%d steps): %.1f s", task, prompt, preset, config.steps,
             time.perf_counter() - started)
    return result


def presets_grid(prior, prompts: list[str], presets: list[str], steps: int | None, out: Path) -> dict:
    """Generate every prompt with every preset and draw the grid; the results by (prompt, preset)."""
    results, rows = {}, []
    for prompt in prompts:
        cells = []
        for preset in presets:
            result = timed_run("generate", prompt, prior, preset, steps)
            results[prompt, preset] = result
            cells.append(tiles_of(result.mesh, two_views(result.mesh.vertices)))
        rows.append(Row(prompt, cells))
    labels = [f"{preset}: {steps or preset_config('generate', preset).steps} steps" for preset in presets]
    save_small_png(grid_picture(labels, rows), out / PRESETS_GRID)
    return results


def before_after(task: str, mesh: MeshInput, prompt: str, prior, steps: int | None, path: Path) -> None:
    """The mesh before and after ``task`` with ``prompt``, seen by the same two cameras."""
    result = timed_run(task, prompt, prior, "standard", steps, mesh)
    cameras = two_views(np.asarray(mesh.vertices))
    row = Row(f'"{prompt}"', [tiles_of(untextured(mesh), cameras), tiles_of(result.mesh, cameras)])
    save_small_png(grid_picture(["your mesh", f"after {task} (standard preset)"], [row]), path)


def paint_picture(prior, steps: int | None, out: Path) -> None:
    """Latent-Paint's house case from the benchmark (bench/paint_quality.py)."""
    case = PAINT_CASES["house"]
    shape = contract_mesh(case["shape"], case["subdivisions"])
    mesh = MeshInput(np.asarray(shape.vertices, dtype=np.float64), np.asarray(shape.faces, dtype=np.int64))
    before_after("paint", mesh, case["prompt"], prior, steps, path=out / PAINT_BEFORE_AFTER)


def sketch_picture(prior, steps: int | None, out: Path) -> None:
    """Sketch-Shape's box-as-house case from the benchmark (bench/sketch_quality.py)."""
    case = sketch_cases()[0]
    mesh = MeshInput(np.asarray(case["mesh"].vertices, dtype=np.float64), np.asarray(case["mesh"].faces))
    before_after("sketch", mesh, case["prompt"], prior, steps, path=out / SKETCH_BEFORE_AFTER)


def blender_picture(result, prompt: str, out: Path) -> None:
    """``result`` stored as the server stores it, then imported and rendered in the Blender environment."""
    python = blender_venv.blender_python()
    if python is None:
        raise SystemExit(f"no Blender environment at {blender_venv.VENV_DIR}: make it with python -m "
                         "scripts.blender_venv")
    with tempfile.TemporaryDirectory() as scratch:
        job_id = "0" * 32
        results = Path(scratch) / "results"
        results.mkdir()
        ResultStore(results).commit(job_id, JobOutput(result.mesh, result.preview))
        env = {**os.environ, "BLENDER_USER_RESOURCES": str(Path(scratch) / "blender-user")}  # not the user's
        command = [str(python), str(ROOT / "scripts" / "blender_render_prop.py"), "--result", str(results / job_id),
                   "--label", prompt, "--out", str(out / BLENDER_RENDER),
                   "--width", str(BLENDER_SIZE[0]), "--height", str(BLENDER_SIZE[1]),
                   "--samples", str(BLENDER_SAMPLES)]
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=BLENDER_RENDER_TIMEOUT_S)
    if done.returncode != 0:
        raise SystemExit(f"the Blender render failed (exit {done.returncode}):\n{done.stdout[-2000:]}"
                         f"{done.stderr[-4000:]}")
    summary = next(line for line in done.stdout.splitlines() if line.startswith(SUMMARY_MARKER))
    log.info("Blender render in %.1f s: %s", time.perf_counter() - started, json.loads(summary[len(SUMMARY_MARKER):]))
    rendered = out / BLENDER_RENDER
    save_small_png(Image.open(rendered).convert("RGB"), rendered)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images", help="where the PNGs go")
    parser.add_argument("--prompts", nargs="+", default=list(PROMPTS), help="the grid's rows (default: %(default)s)")
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), help="the grid's columns")
    parser.add_argument("--steps", type=int, help="every run's step count instead of its preset's (only to try "
                        "the script out quickly; the README's pictures use the presets' own)")
    parser.add_argument("--threads", type=int, default=default_threads(), help="torch threads")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    prior = load_prior()
    results = presets_grid(prior, args.prompts, args.presets, args.steps, args.out)
    paint_picture(prior, args.steps, args.out)
    sketch_picture(prior, args.steps, args.out)
    blender_preset = "standard" if "standard" in args.presets else args.presets[0]
    blender_picture(results[args.prompts[0], blender_preset], args.prompts[0], args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
