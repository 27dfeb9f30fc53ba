"""Latent-Paint on the embedded prior, judged by the fidelity judge (issue #15's paint cases).

Cases, all with the standard PaintConfig (or --preset / --set overrides while tuning):

* ``{shape}-{colour}``: the contract's sphere, cube, cylinder and torus as meshes of 12k-20k faces
  (``dense_mesh``), each painted in two colours (``SHAPE_COLOURS``: two per shape, different across
  shapes, all seven palette colours between them).  Bars: albedo error <= 0.05 and blotched share
  <= 5 % (``bench/fidelity.judge`` against the exact shape in the prompt's colour), and the geometry
  unchanged: the output's vertices are the input's (through ``PaintResult.source_vertex``) and its
  face count is the input's.
* ``house``: the contract's house mesh (256 faces, no door geometry) painted "a {colour} house", the
  colour picked by the seed (``HOUSE_COLOURS``).  Bars: albedo error <= 0.06; the door a dark
  rectangle on the front: the door-coloured pixels of an unlit 64x64 render from the contract's front
  camera (azimuth 0, elevation 15) have IoU >= 0.6 with the contract's exact door region in that view
  (``primitive_world.render.render(...).door > 0.5``, not dilated); no door at the back: fewer than
  20 door pixels from azimuth 180.  Door-coloured means ``primitive_world.evaluate_samples.door_pixels``'
  test, per pixel (``door_mask``): nearer the shaded door colour than any shaded palette colour.
* ``timing``: the contract cube refined to 12,288 faces painted "a red cube" within 45 s end to end.

Every case writes its GLB, reads it back and judges it (chamfer, normal error, volume IoU, albedo
error, blotched share); the numbers the bars do not use are recorded too.  ``TARGETS`` holds the
bars once: each run's ``checks`` and the benchmark's verdicts over many runs both come from it.

Usage: python bench/paint_quality.py [--threads N] [--cases sphere-blue house timing ...] [--seed 0]
       [--preset standard] [--workdir out/quality/paint] [--out FILE.json] [--set FIELD=VALUE ...]
Prints a table, writes the JSON (per case: verdicts, numbers, timings, threads, load average) and
the GLBs next to it, and exits 1 when a bar fails.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import trimesh

from engine import load_prior, orbit_camera
from engine.cli import config_or_exit
from engine.cpu_sharing import default_threads
from engine.export import load_glb, write_glb
from engine.meshes import MeshInput
from engine.raster import render_textured
from engine.tasks import preset_config
from engine.tasks.paint import paint
from primitive_world import contract
from primitive_world.classify import object_mask
from primitive_world.meshes import contract_mesh
from primitive_world.render import render as contract_render

if __package__:
    from . import fidelity
    from .targets import Target, run_checks
else:  # run as ``python bench/paint_quality.py``: bench/ itself is on sys.path
    import fidelity
    from targets import Target, run_checks

log = logging.getLogger("bench.paint_quality")

DOOR_ELEVATION = 15.0
DOOR_FRONT_CAMERA = orbit_camera(0.0, DOOR_ELEVATION, contract.CAMERA_DISTANCE, contract.FOV_Y_DEG)
DOOR_BACK_CAMERA = orbit_camera(180.0, DOOR_ELEVATION, contract.CAMERA_DISTANCE, contract.FOV_Y_DEG)
DOOR_VISIBLE = 20  # pixels, as primitive_world.evaluate_samples counts a visible door
# Two colours per shape, different across shapes, covering the palette (red twice).
SHAPE_COLOURS = {"sphere": ("blue", "yellow"), "cube": ("red", "white"), "cylinder": ("orange", "purple"),
                 "torus": ("green", "red")}
# The house's colour cycles with the seed: seed 0 green, 1 blue, 2 white.
HOUSE_COLOURS = ("green", "blue", "white")
# Refinement levels that give every shape case at least 10k faces (``dense_mesh``).
DENSE_LEVELS = {"sphere": 5, "cube": 5, "cylinder": 3, "torus": 1}
CASES = {
    **{f"{shape}-{colour}": dict(group="shapes", shape=shape, subdivisions=DENSE_LEVELS[shape],
                                 prompt=f"a {colour} {shape}")
       for shape, colours in SHAPE_COLOURS.items() for colour in colours},
    "house": dict(group="house", shape="house", subdivisions=2, prompt=f"a {HOUSE_COLOURS[0]} house"),
    "timing": dict(group="timing", shape="cube", subdivisions=5, prompt="a red cube"),
}
GROUPS = {"shapes": "sphere, cube, cylinder, torus", "house": "house", "timing": "12k-face cube"}
TARGETS = [
    Target("paint_albedo", "Latent-Paint: albedo error on sphere, cube, cylinder, torus (median)", ("shapes",),
           "fidelity.albedo_error", "median", "<=", 0.05, "score"),
    Target("paint_blotched", "Latent-Paint: blotched share on sphere, cube, cylinder, torus (median)", ("shapes",),
           "fidelity.blotched_share", "median", "<=", 0.05, "fraction"),
    Target("paint_geometry", "Latent-Paint: geometry unchanged (vertices and face count)",
           ("shapes", "house", "timing"), "geometry_unchanged", "share", ">=", 1.0, "fraction"),
    Target("paint_house_albedo", "Latent-Paint: house albedo error (median)", ("house",),
           "fidelity.albedo_error", "median", "<=", 0.06, "score"),
    Target("paint_door_iou", "Latent-Paint: house door IoU with the contract's door, front view (median)",
           ("house",), "door_iou", "median", ">=", 0.6, "score"),
    Target("paint_no_back_door", "Latent-Paint: house runs without a door on the back", ("house",),
           "no_door_back", "share", ">=", 1.0, "fraction"),
    Target("paint_time", "Latent-Paint: a 12,288-face mesh, 2-core CPU", ("timing",), "seconds", "max", "<=",
           45.0, "seconds"),
]


def case_prompt(name: str, seed: int) -> str:
    """The prompt of case ``name`` with ``seed``: the house's colour cycles through ``HOUSE_COLOURS``.

    Args:
        name: a key of ``CASES``.
        seed: the run's seed.
    """
    if name == "house":
        return f"a {HOUSE_COLOURS[seed % len(HOUSE_COLOURS)]} house"
    return CASES[name]["prompt"]


def dense_mesh(shape: str, subdivisions: int) -> trimesh.Trimesh:
    """The contract's ``shape`` refined ``subdivisions`` times (the sphere: its icosphere level).

    The cylinder and torus have a fixed tessellation in ``contract_mesh``; splitting every triangle
    in four keeps their shape and multiplies their faces.

    Args:
        shape: a contract shape word.
        subdivisions: refinement level.
    """
    if shape in ("cylinder", "cone", "torus"):
        mesh = contract_mesh(shape)
        for _ in range(subdivisions):
            mesh = mesh.subdivide()
        return mesh
    return contract_mesh(shape, subdivisions)


def render(mesh, camera, size: int = contract.IMAGE_SIZE, shading: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The texture as it is, unlit by default (an albedo texture shows its albedo). ``shading``: lit by
    the contract's light, as Primitive World's images are."""
    return render_textured(mesh.vertices, mesh.faces, mesh.uvs, mesh.texture, camera, size, size,
                           shading=shading, ssaa=contract.SUPERSAMPLE)


def _segment_distance(pixels: np.ndarray, albedos: np.ndarray) -> np.ndarray:
    """(N, K) distance of each pixel to each albedo's shaded segment s * albedo, s in [0.4, 1]."""
    scale = np.clip(pixels @ albedos.T / (albedos * albedos).sum(axis=1), contract.AMBIENT,
                    contract.AMBIENT + contract.DIFFUSE)
    return np.linalg.norm(pixels[:, None, :] - scale[..., None] * albedos[None], axis=-1)


def door_mask(rgb: np.ndarray) -> np.ndarray:
    """(H, W) bool: object pixels nearer the shaded door colour than any shaded palette colour, the test
    ``primitive_world.evaluate_samples.door_pixels`` counts, per pixel.

    Args:
        rgb: (H, W, 3) image in [0, 1] on a white background.
    """
    rgb = np.asarray(rgb, dtype=np.float64)
    mask = object_mask(rgb, largest_component=False)
    pixels = rgb[mask]
    palette = np.array([contract.COLOURS[c] for c in contract.COLOUR_NAMES], dtype=np.float64)
    door = _segment_distance(pixels, np.array([contract.DOOR_RGB], dtype=np.float64))[:, 0]
    out = np.zeros(mask.shape, dtype=bool)
    out[mask] = door < _segment_distance(pixels, palette).min(axis=1)
    return out


@functools.cache
def contract_door_region() -> np.ndarray:
    """(64, 64) bool: where the contract's door is in the front door view (its coverage > 1/2)."""
    return contract_render("house", "white", DOOR_FRONT_CAMERA).door > 0.5


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boolean masks; 0 when both are empty."""
    union = np.count_nonzero(a | b)
    return float(np.count_nonzero(a & b) / union) if union else 0.0


def back_door_pixels(mesh, shading: bool = False) -> int:
    """Door-coloured pixels in the back door view (a Janus door when DOOR_VISIBLE or more)."""
    return int(door_mask(render(mesh, DOOR_BACK_CAMERA, shading=shading)[0]).sum())


def judge_door(mesh) -> tuple[dict, list[np.ndarray]]:
    """Door pixels in the unlit front and back door views, and the front's IoU with the contract's door.

    Returns ({door_pixels_front, door_pixels_back, door_iou}, [front render, back render]).

    Args:
        mesh: the textured house, Blender axes, in the contract's frame.
    """
    front, _ = render(mesh, DOOR_FRONT_CAMERA)
    back, _ = render(mesh, DOOR_BACK_CAMERA)
    front_door = door_mask(front)
    counts = {"door_pixels_front": int(front_door.sum()), "door_pixels_back": int(door_mask(back).sum()),
              "door_iou": round(mask_iou(front_door, contract_door_region()), 4)}
    return counts, [front, back]


def configure(preset: str, seed: int, assignments: list[str]):
    return preset_config("paint", preset, {"seed": seed}, assignments)


def geometry_unchanged(mesh_input: MeshInput, result) -> bool:
    """The painted mesh's vertices are the input's (through ``source_vertex``) and its face count is kept."""
    kept = mesh_input.vertices[result.source_vertex].astype(np.float32)
    return bool(np.array_equal(result.mesh.vertices, kept) and len(result.mesh.faces) == len(mesh_input.faces))


def run_case(name: str, prior, config, workdir: Path) -> dict:
    """Paint one of ``CASES``, write its GLB, read it back and judge it; the run's record.

    Args:
        name: a key of ``CASES``.
        prior: the loaded prior (``engine.load_prior``).
        config: the PaintConfig (see ``configure``); its seed picks the house's colour.
        workdir: an existing folder for ``NAME_seedS.glb``.
    """
    case = CASES[name]
    prompt = case_prompt(name, config.seed)
    colour = prompt.split()[1]
    shape = dense_mesh(case["shape"], case["subdivisions"])
    mesh_input = MeshInput(np.asarray(shape.vertices, dtype=np.float64), np.asarray(shape.faces, dtype=np.int64))
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    result = paint(mesh_input, prompt, prior, config)
    seconds = time.perf_counter() - started
    load_after = os.getloadavg()[0]
    glb = workdir / f"{name}_seed{config.seed}.glb"
    write_glb(glb, result.mesh)
    asset = load_glb(glb)  # judged as delivered: texture, UVs, Blender axes
    record = {"case": name, "group": case["group"], "seed": config.seed, "prompt": prompt, "colour": colour,
              "exact_shape": case["shape"], "faces": int(len(shape.faces)), "glb": str(glb),
              "seconds": round(seconds, 2), "timings": {k: round(v, 2) for k, v in result.timings.items()},
              "threads": torch.get_num_threads(), "load_1min": [round(load_before, 2), round(load_after, 2)],
              "colour_error": round(result.colour_error, 4), "final_loss": result.final_loss,
              "geometry_unchanged": geometry_unchanged(mesh_input, result),
              "fidelity": fidelity.judge(asset, case["shape"], colour)}
    if case["shape"] == "house":
        door, _ = judge_door(asset)
        record.update(door, door_front=door["door_pixels_front"] >= DOOR_VISIBLE,
                      no_door_back=door["door_pixels_back"] < DOOR_VISIBLE)
    record["checks"] = run_checks(record, TARGETS)
    record["passed"] = all(record["checks"].values())
    return record


def run_cases(prior, names: list[str], seed: int, preset: str, assignments: list[str], workdir: Path) -> dict:
    """Every case in ``names`` painted and judged; the script's summary.

    Args:
        prior: the loaded prior (``engine.load_prior``).
        names: keys of ``CASES``.
        seed: the seed of every case.
        preset: the PaintConfig preset, e.g. "standard".
        assignments: "FIELD=VALUE" overrides on top of the preset.
        workdir: an existing folder for the GLBs.
    """
    records = []
    for name in names:
        records.append(run_case(name, prior, configure(preset, seed, assignments), workdir))
        log.info("%s", case_line(records[-1]))
    return {"threads": torch.get_num_threads(), "seed": seed, "preset": preset, "overrides": assignments,
            "cpu_count": os.cpu_count(), "cases": records, "passed": all(r["passed"] for r in records)}


def case_line(r: dict) -> str:
    """One table row of a ``run_case`` record."""
    f = r["fidelity"]
    door = (f"{r['door_iou']:.2f} {r['door_pixels_front']:>4}/{r['door_pixels_back']:<4}"
            if "door_iou" in r else f"{'-':^14}")
    return (f"{r['case']:16} {r['prompt']:16} {r['faces']:6} faces  albedo {f['albedo_error']:.3f}"
            f"  blotched {100 * f['blotched_share']:5.1f} %  chamfer {f['chamfer_pct']:.2f} %"
            f"  door IoU f/b {door}  {r['seconds']:6.1f} s  load {r['load_1min'][0]:.2f}->{r['load_1min'][1]:.2f}"
            f"  {'PASS' if r['passed'] else 'FAIL ' + ','.join(k for k, v in r['checks'].items() if not v)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", default="standard")
    parser.add_argument("--model", help="prior folder (default: the embedded prior)")
    parser.add_argument("--threads", type=int, default=default_threads(), help="torch CPU threads")
    parser.add_argument("--workdir", default="out/quality/paint")
    parser.add_argument("--out", default=None, help="JSON file (default: WORKDIR/paint_quality.json)")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                        help="override PaintConfig fields (guidance.X for the guidance config)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    log.setLevel(logging.INFO)  # one line per case as it finishes; the engine's own INFO stays quiet
    torch.set_num_threads(args.threads)
    Path(args.workdir).mkdir(parents=True, exist_ok=True)

    config_or_exit(parser, lambda: configure(args.preset, args.seed, args.set))
    summary = run_cases(load_prior(args.model), args.cases, args.seed, args.preset, args.set, Path(args.workdir))
    out = Path(args.out or Path(args.workdir) / "paint_quality.json")
    out.write_text(json.dumps(summary, indent=2) + "\n")
    for record in summary["cases"]:
        print(case_line(record))
    print(f"{'PASS' if summary['passed'] else 'FAIL'}: wrote {out}")
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
