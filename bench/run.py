"""Dreamsmith's whole benchmark (issue #7) in one command, on the embedded prior.

Run from the repository root (``pip install -e ".[bench]"`` first, for matplotlib)::

    python -m bench --quick                 # a fixed subset; about 10 minutes on a 2-core CPU
    python -m bench --full                  # all 49 colour x shape prompts x 3 seeds; about an hour
    python -m bench --quick --out DIR [--threads N]

It writes ``DIR/results.json`` (every number, the machine and the settings), ``DIR/REPORT.md``
with its PNG plots, and the assets it judged (default DIR: ``out/bench/quick`` or ``out/bench/full``).

Sections, each reusing the project's single-purpose benchmark where one exists:

* quality -- text-to-3D on the prompt set: ``generate`` with default settings, the GLB written and
  judged by ``bench/text_to_3d_quality.judge`` (shape from 16 silhouettes, colour from the median
  texel); house runs also get ``bench/paint_quality.judge_door`` (door pixels at the contract's front
  and back views) for the Janus rate; every asset is also judged against the contract's exact shape
  by ``bench/fidelity.judge`` (chamfer, normal error, volume IoU, albedo error, blotched share, door
  albedo) and its handles counted (``bench/fidelity.topology``), outside the timed part; the report
  draws a contact sheet of the judged assets beside the exact shapes;
* paint, sketch -- issue #15's cases through ``bench/paint_quality.run_case`` and
  ``bench/sketch_quality.run_case``: each asset written, read back and judged by ``bench/fidelity.judge``
  against the contract's exact shape (a scaled sketch's asset scaled back first), houses' doors seen
  from the contract's front and back cameras; the verdicts come from each script's ``TARGETS``; quick
  mode paints a blue sphere and a house and sketches the house box and the blockout, seed 0;
* speed -- per-asset and per-phase times from the quality runs, the SDS/U-Net overhead ratio
  (``bench/sds_step.py``), time per step against grid resolution and total time against step count;
* server -- ``bench/server_bench.py`` (submit round trip, progress latency, 100 status requests/s);
* contention -- ``bench/contention.py``: engine processes alone, beside a busy thread, two side by side;
* ray -- ``bench/ray_bench.py``: the front's overhead on the Ray backend against the local one, and
  jobs/hour with 1 and 2 local actors on the draft preset; skipped, with the reason, without Ray;
* gpu -- only where CUDA is available: the same speed figures on CUDA and an SD-1.5-sized random
  U-Net; otherwise the report says there was no GPU and gives no numbers.

A failing section is recorded (its error goes into the JSON and the report) and the others still run;
the exit code is 1 when any section failed, 0 otherwise, whether or not the targets are met.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import importlib.util
import json
import logging
import os
import platform
import shlex
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

from engine.cpu_sharing import default_threads
from primitive_world import contract

from .report import SECTIONS, value_summary

log = logging.getLogger("bench")

QUICK_PROMPTS = ["a red cube", "a blue sphere", "a green house", "a yellow cone"]
FULL_PROMPTS = [f"a {colour} {shape}" for shape in contract.SHAPES for colour in contract.COLOUR_NAMES]
SCALING_PROMPT = "a red cube"  # the steps-scaling runs reuse the quality run of this prompt, seed 0

MODES = {
    "quick": dict(prompts=QUICK_PROMPTS, seeds=[0],
                  paint_cases=["sphere-blue", "house"], paint_seeds=[0], sketch_cases=["house-box", "blockout"],
                  sketch_seeds=[0],
                  grids=[16, 32, 48, 64], grid_repeats=8, sds_repeats=10, sds_rounds=3,
                  steps_factors=[0.25, 0.5, 1.0],
                  server=dict(rounds=1, steps=200, submits=10), gpu_prompts=QUICK_PROMPTS[:2],
                  sd_pipeline={"steps": 300}, contention_preset="draft",
                  ray=dict(jobs=2, actors=(1, 2), preset="draft", rounds=1, steps=50, submits=10)),
    "full": dict(prompts=FULL_PROMPTS, seeds=[0, 1, 2],
                 paint_cases=None, paint_seeds=[0, 1, 2],
                 sketch_cases=None, sketch_seeds=[0, 1, 2],
                 grids=[16, 32, 48, 64], grid_repeats=30, sds_repeats=30, sds_rounds=5,
                 steps_factors=[0.25, 0.5, 1.0, 2.0],
                 server=dict(rounds=6, steps=200, submits=50), gpu_prompts=QUICK_PROMPTS,
                 sd_pipeline={}, contention_preset="standard",
                 ray=dict(jobs=6, actors=(1, 2), preset="draft", rounds=3, steps=200, submits=50)),
}
# The paint timing case is one 12k-face job whose bar is its time; repeating it per seed adds minutes
# and no information.
# Case lists of None run every case (bench/paint_quality.CASES, bench/sketch_quality.cases).
PAINT_ONCE = {"timing"}
# SD 1.5's U-Net (runwayml/stable-diffusion-v1-5 unet/config.json), written out so no download is needed.
SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, center_input_sample=False, flip_sin_to_cos=True, freq_shift=0,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, downsample_padding=1, mid_block_scale_factor=1,
    act_fn="silu", norm_num_groups=32, norm_eps=1e-5, cross_attention_dim=768, attention_head_dim=8,
)
SD15_TOKENS = 77


# --------------------------------------------------------------------------------------- helpers
def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".strip()


def task_config(task: str, seed: int, overrides: list[str], timing: bool = False):
    """The default ("standard") config of a task with ``overrides``: every config the runner uses is built here.

    Args:
        task: "generate", "paint" or "sketch".
        seed: the config's seed.
        overrides: "FIELD=VALUE" assignments on top of the default.
        timing: generate only: steps set high so that every timed step is early in the schedule, as in
            bench/sds_step.py.
    """
    # Imported per task: paint_quality is still being tuned, and its import must not cost the other sections.
    if task == "paint":
        from . import paint_quality

        return paint_quality.configure("standard", seed, overrides)
    if task == "sketch":
        from . import sketch_quality

        return sketch_quality.configure(list(overrides), seed)
    from . import text_to_3d_quality

    return text_to_3d_quality.configure("standard", seed, [*overrides, *(["steps=10000"] if timing else [])])


def _folder(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(threads: int) -> dict:
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpu_count": os.cpu_count(), "cpus_usable": affinity, "cpu_model": _cpu_model(),
        "torch": torch.__version__, "torch_threads": threads, "python": platform.python_version(),
        "platform": platform.platform(), "device": "cpu",
        "cuda_available": torch.cuda.is_available(),
    }


# --------------------------------------------------------------------------------------- quality
# The fidelity judge's settings: bench/fidelity.py's default sample count, one fixed sampling seed
# (the judge's, not the generation's), so the same asset always gets the same measures.
FIDELITY_SAMPLES = 20_000
FIDELITY_SEED = 0
FIDELITY_MEASURES = ("chamfer_pct", "normal_error_deg", "volume_iou", "albedo_error", "blotched_share")


def expected_handles(shape_word: str) -> int:
    """Handles the contract's shape has: one through a torus, none through the others."""
    return 1 if shape_word == "torus" else 0


def judge_fidelity(mesh, shape_word: str, colour_word: str, samples: int = FIDELITY_SAMPLES,
                   seed: int = FIDELITY_SEED) -> dict:
    """The run-record keys of one asset's fidelity: ``fidelity`` (``bench/fidelity.judge``'s measures,
    the judge's settings and its own time, ``judge_s``), ``topology`` (``bench/fidelity.topology`` of
    the position-welded mesh plus ``handles_expected``) and ``handles_ok``."""
    from . import fidelity

    began = time.perf_counter()
    measures = fidelity.judge(mesh, shape_word, colour_word, samples=samples, seed=seed)
    shape = fidelity.topology(mesh.vertices, mesh.faces)
    expected = expected_handles(shape_word)
    return {"fidelity": {**measures, "samples": samples, "seed": seed, "judge_s": time.perf_counter() - began},
            "topology": {**shape, "handles_expected": expected}, "handles_ok": shape["handles"] == expected}


def quality_run(prior, prompt: str, seed: int, overrides: list[str], workdir: Path, fidelity: bool = True) -> dict:
    """One text-to-3D asset, timed and judged exactly as bench/text_to_3d_quality.py does, plus the
    door check on houses and (``fidelity``) the fidelity judge and handle count of ``judge_fidelity``.

    Both extra judges read the GLB back after ``run_prompt`` has returned, so neither adds to the
    record's ``seconds`` or ``timings``."""
    from engine.export import load_glb

    from . import text_to_3d_quality as ttq

    row = ttq.run_prompt(prior, prompt, task_config("generate", seed, overrides), workdir)
    shape_word, glb = row["shape_word"], Path(row["glb"])
    mesh = load_glb(glb)  # the asset as delivered: texture, UVs, Blender axes
    if fidelity:
        try:  # a judge failure is recorded, and the run keeps its other verdicts
            row.update(judge_fidelity(mesh, shape_word, row["colour_word"]))
        except Exception as exc:
            log.exception("the fidelity judge of %s failed", glb)
            row["fidelity_error"] = _error(exc)
    if shape_word == "house":
        try:  # paint_quality is still being tuned; a broken import must not cost this run's other verdicts
            from . import paint_quality as pq

            door, _ = pq.judge_door(mesh)
            row.update(door)
            row["door_front"] = door["door_pixels_front"] >= pq.DOOR_VISIBLE
            row["janus"] = door["door_pixels_back"] >= pq.DOOR_VISIBLE
            # Information, not the target: the texture is albedo, judged as it is above; lit by the
            # contract's light, the back sits in shadow, where dark-red and door-brown pixels blur.
            row["door_pixels_back_lit"] = pq.back_door_pixels(mesh, shading=True)
            row["janus_lit"] = row["door_pixels_back_lit"] >= pq.DOOR_VISIBLE
        except Exception as exc:
            log.exception("the door check of %s failed", glb)
            row["door_error"] = _error(exc)
    # The GLB carries the texture; the OBJ copy would triple the size of a full run's folder.
    for extra in (".obj", ".mtl", ".png"):  # write_obj puts its MTL and texture PNG beside the OBJ
        glb.with_suffix(extra).unlink(missing_ok=True)
    return row


def _rate(rows: list[dict], key: str) -> dict:
    n = len(rows)
    k = sum(bool(r[key]) for r in rows)
    return {"correct": k, "n": n, "rate": k / n if n else None, "wilson95": wilson_interval(k, n)}


def wilson_interval(k: int, n: int, z: float = 1.96) -> list[float] | None:
    """95 % interval of a proportion; honest about how little a handful of runs says."""
    if n == 0:
        return None
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    return [max(0.0, centre - half), min(1.0, centre + half)]


def _medians(rows: list[dict]) -> dict:
    """Median of each fidelity measure over ``rows`` (door albedo over the rows that have one) and n."""
    out = {m: statistics.median(r["fidelity"][m] for r in rows) for m in FIDELITY_MEASURES}
    doors = [r["fidelity"]["door_albedo_error"] for r in rows if r["fidelity"].get("door_albedo_error") is not None]
    out["door_albedo_error"] = statistics.median(doors) if doors else None
    out["handles_ok"] = sum(bool(r.get("handles_ok")) for r in rows)
    out["n"] = len(rows)
    return out


def summarise_fidelity(runs: list[dict]) -> dict | None:
    """Fidelity over the judged runs: ``overall`` (median, mean, min, max, n of each measure over every
    judged run), ``by_shape`` (each shape's medians), ``within_target`` (per measure, the runs whose own
    value meets the overall target of bench/report.FIDELITY_GOALS) and ``handles`` (the runs whose
    handle count is the shape's: one for a torus, none otherwise). None when no run was judged."""
    from .report import FIDELITY_GOALS

    ok = [r for r in runs if "error" not in r]
    judged = [r for r in ok if r.get("fidelity")]
    if not judged:
        return None
    overall = {m: value_summary([r["fidelity"][m] for r in judged]) for m in FIDELITY_MEASURES}
    overall["door_albedo_error"] = value_summary([r["fidelity"]["door_albedo_error"] for r in judged
                                                  if r["fidelity"].get("door_albedo_error") is not None])
    within = {}
    for measure, (op, goal) in FIDELITY_GOALS.items():
        k = sum((r["fidelity"][measure] >= goal) if op == ">=" else (r["fidelity"][measure] <= goal) for r in judged)
        within[measure] = {"op": op, "goal": goal, "k": k, "n": len(judged), "rate": k / len(judged)}
    counted = [r for r in judged if "handles_ok" in r]
    return {
        "n": len(judged), "not_judged": len(ok) - len(judged),
        "errors": [{"prompt": r["prompt"], "seed": r["seed"], "error": r["fidelity_error"]}
                   for r in ok if "fidelity_error" in r],
        "samples": judged[0]["fidelity"].get("samples"), "seed": judged[0]["fidelity"].get("seed"),
        "overall": overall,
        "by_shape": {s: _medians([r for r in judged if r["shape_word"] == s])
                     for s in contract.SHAPES if any(r["shape_word"] == s for r in judged)},
        "within_target": within,
        "handles": {**_rate(counted, "handles_ok"),
                    "misses": [{"prompt": r["prompt"], "seed": r["seed"], "handles": r["topology"]["handles"],
                                "expected": r["topology"]["handles_expected"]}
                               for r in counted if not r["handles_ok"]]},
    }


def summarise_quality(runs: list[dict]) -> dict:
    ok = [r for r in runs if "error" not in r]
    houses = [r for r in ok if r["shape_word"] == "house" and "janus" in r]
    by_shape = {s: _rate([r for r in ok if r["shape_word"] == s], "shape_ok")
                for s in contract.SHAPES if any(r["shape_word"] == s for r in ok)}
    by_colour = {c: _rate([r for r in ok if r["colour_word"] == c], "colour_ok")
                 for c in contract.COLOUR_NAMES if any(r["colour_word"] == c for r in ok)}
    return {
        "runs_completed": len(ok), "runs_failed": len(runs) - len(ok),
        "shape": _rate(ok, "shape_ok"), "colour": _rate(ok, "colour_ok"),
        "janus": {**_rate(houses, "janus"), "door_in_front": sum(r["door_front"] for r in houses),
                  "lit": _rate([r for r in houses if "janus_lit" in r], "janus_lit")},
        "by_shape": by_shape, "by_colour": by_colour,
        "fidelity": summarise_fidelity(runs),
    }


def run_quality(prior, prompts, seeds, overrides, out_dir: Path) -> dict:
    workdir = out_dir / "assets"
    workdir.mkdir(parents=True, exist_ok=True)
    runs, total = [], len(prompts) * len(seeds)
    for seed in seeds:
        for prompt in prompts:
            try:
                row = quality_run(prior, prompt, seed, overrides, workdir)
                log.info("quality %d/%d %-20s seed %d: %5.1f s  shape %-8s %s  colour %-6s %s%s%s", len(runs) + 1,
                         total, prompt, seed, row["seconds"], row["shape"], "ok" if row["shape_ok"] else "MISS",
                         row["colour"], "ok" if row["colour_ok"] else "MISS",
                         f"  back-door px {row['door_pixels_back']}" if "janus" in row else "",
                         "  chamfer {chamfer_pct:.2f} %  IoU {volume_iou:.3f}  albedo {albedo_error:.3f}".format(
                             **row["fidelity"]) + f"  handles {row['topology']['handles']}"
                         if "fidelity" in row else "")
            except Exception as exc:  # one broken run must not cost the other 146
                log.exception("quality run %r seed %d failed", prompt, seed)
                row = {"prompt": prompt, "seed": seed, "error": _error(exc)}
            runs.append(row)
    return {"prompts": list(prompts), "seeds": list(seeds), "runs": runs, **summarise_quality(runs)}


# ---------------------------------------------------------------------------------- paint, sketch
def summarise_cases(records: list[dict], groups: list[str], targets) -> dict:
    """A paint or sketch section's summary: per case group the fidelity medians and door rates, the
    targets' verdicts (``bench/targets.evaluate``) and how many runs pass every check of their own.

    Args:
        records: run records (``run_case``'s, or ``{case, seed, error}`` for a failed run).
        groups: the case groups in report order.
        targets: the task's ``TARGETS``.
    """
    from .targets import evaluate

    ok = [r for r in records if "error" not in r]
    by_group = {}
    for group in groups:
        runs = [r for r in ok if r["group"] == group]
        if not runs:
            continue
        summary = {m: statistics.median(r["fidelity"][m] for r in runs) for m in FIDELITY_MEASURES}
        summary["n"] = len(runs)
        houses = [r for r in runs if "door_pixels_front" in r]
        if houses:
            summary["door_iou"] = statistics.median(r["door_iou"] for r in houses)
            summary["door_front"] = _rate(houses, "door_front")
            summary["door_back"] = {"with_door_back": sum(not r["no_door_back"] for r in houses), "n": len(houses)}
        by_group[group] = summary
    return {"cases": records, "groups": by_group, "targets": evaluate(records, targets),
            "passed": {"k": sum(r["passed"] for r in ok), "n": len(records)}}


def _paint_case_line(record: dict) -> str:
    f = record["fidelity"]
    door = f"  door IoU {record['door_iou']:.2f} px {record['door_pixels_front']}/{record['door_pixels_back']}" \
        if "door_iou" in record else ""
    return (f"paint {record['case']:16} seed {record['seed']}: {record['seconds']:5.1f} s  albedo "
            f"{f['albedo_error']:.3f}  blotched {100 * f['blotched_share']:.1f} %{door}  "
            + ("pass" if record["passed"] else "FAIL " + ",".join(k for k, v in record["checks"].items() if not v)))


def run_paint(prior, cases: list[str] | None, seeds: list[int], overrides: list[str], out_dir: Path) -> dict:
    """Latent-Paint's cases (``bench/paint_quality.CASES``; None: all) with every seed, the timing case
    once; each run written, judged and summarised (``summarise_cases``).

    Args:
        prior: the loaded prior.
        cases: case names, or None for every case.
        seeds: the seeds.
        overrides: "FIELD=VALUE" settings over the standard preset.
        out_dir: the benchmark's folder; the GLBs go to ``out_dir/paint``.
    """
    from . import paint_quality as pq

    workdir = _folder(out_dir / "paint")
    records = []
    for seed in seeds:
        for name in cases or list(pq.CASES):
            if name in PAINT_ONCE and seed != seeds[0]:
                continue
            try:
                record = pq.run_case(name, prior, task_config("paint", seed, overrides), workdir)
                log.info("%s", _paint_case_line(record))
            except Exception as exc:
                log.exception("paint case %s seed %d failed", name, seed)
                record = {"case": name, "seed": seed, "error": _error(exc)}
            records.append(record)
    return summarise_cases(records, list(pq.GROUPS), pq.TARGETS)


def _sketch_case_line(row: dict) -> str:
    f = row["fidelity"]
    door = f"  door px {row['door_pixels_front']}/{row['door_pixels_back']}" if "door_pixels_front" in row else ""
    return (f"sketch {row['case']:15} seed {row['seed']}: {row['seconds']:5.1f} s  chamfer {f['chamfer_pct']:.2f} %  "
            f"normal {f['normal_error_deg']:.1f} deg  IoU {f['volume_iou']:.3f}  albedo {f['albedo_error']:.3f}  "
            f"IoU with the sketch {row['iou_sketch']:.3f}{door}  "
            + ("pass" if row["passed"] else "FAIL " + ",".join(k for k, v in row["checks"].items() if not v)))


def run_sketch(prior, cases: list[str] | None, seeds: list[int], overrides: list[str], out_dir: Path) -> dict:
    """Sketch-Shape's cases (``bench/sketch_quality.cases``; None: all) with every seed, each run written,
    judged and summarised (``summarise_cases``).

    Args:
        prior: the loaded prior.
        cases: case names, or None for every case.
        seeds: the seeds.
        overrides: "FIELD=VALUE" settings over the standard preset.
        out_dir: the benchmark's folder; the GLBs go to ``out_dir/sketch``.
    """
    from . import sketch_quality as sq

    workdir = _folder(out_dir / "sketch")
    rows = []
    for seed in seeds:
        config = task_config("sketch", seed, overrides)
        for case in sq.cases(seed):
            if cases and case["name"] not in cases:
                continue
            try:
                row = sq.run_case(case, prior, config, workdir)
                log.info("%s", _sketch_case_line(row))
            except Exception as exc:
                log.exception("sketch case %s seed %d failed", case["name"], seed)
                row = {"case": case["name"], "seed": seed, "error": _error(exc)}
            rows.append(row)
    return summarise_cases(rows, list(sq.GROUPS), sq.TARGETS)


# ------------------------------------------------------------------------------------------ speed
def overhead(prior, mode: dict, overrides: list[str]) -> dict:
    from . import sds_step

    config = task_config("generate", 0, overrides, timing=True)
    return sds_step.measure(prior, config, mode["sds_repeats"], mode["sds_rounds"], SCALING_PROMPT)


def grid_scaling(prior, grids: list[int], repeats: int, overrides: list[str]) -> list[dict]:
    """Median time of one SDS step at each voxel-grid resolution (the field's cost grows as R^3)."""
    from engine.tasks.latent_field import FieldOptimisation

    from . import sds_step

    sync = sds_step.device_sync(prior.device)
    rows = []
    for grid in grids:
        config = task_config("generate", 0, [*overrides, f"field.grid_resolution={grid}"], timing=True)
        run = FieldOptimisation(SCALING_PROMPT, prior, config, torch.Generator().manual_seed(0))
        counter = iter(range(10**9))
        for _ in range(3):
            run.step(next(counter))
        step_ms = sds_step.median_ms(lambda run=run, counter=counter: run.step(next(counter)), repeats, sync)[0]
        rows.append({"grid_resolution": grid, "step_ms": step_ms, "steps_per_s": 1000 / step_ms,
                     "repeats": repeats})
        log.info("grid %3d: %.1f ms per SDS step", grid, step_ms)
    return rows


def steps_scaling(prior, base_steps: int, factors: list[float], overrides: list[str], quality_runs: list[dict],
                  out_dir: Path) -> list[dict]:
    """End-to-end time of one asset against the step count; the point at the default step count is
    the quality run of the same prompt and seed when there is one (the same work, measured once)."""
    workdir = out_dir / "assets" / "steps_scaling"
    workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for factor in factors:
        steps = max(1, round(base_steps * factor))
        reused = next((r for r in quality_runs if "error" not in r and r["prompt"] == SCALING_PROMPT
                       and r["seed"] == 0 and r["steps"] == steps), None)
        run = reused or quality_run(prior, SCALING_PROMPT, 0, [*overrides, f"steps={steps}"],
                                    _folder(workdir / f"steps{steps}"), fidelity=False)
        rows.append({"steps": steps, "seconds": run["seconds"], "timings": run["timings"],
                     "sds_its_per_s": run["sds_its_per_s"], "reused_quality_run": reused is not None})
        log.info("steps %5d: %.1f s end to end%s", steps, run["seconds"], " (the quality run)" if reused else "")
    return rows


# ----------------------------------------------------------------------------------------- server
def run_server(settings: dict, out_dir: Path) -> dict:
    """bench/server_bench.py's figures with the mode's ``settings`` (rounds, steps, submits), also
    written to ``out_dir/server_bench.json`` as the script writes them."""
    from . import server_bench

    figures = server_bench.measure(rounds=settings["rounds"], steps=settings["steps"], submits=settings["submits"])
    (out_dir / "server_bench.json").write_text(json.dumps(figures, indent=2) + "\n")
    return figures


# -------------------------------------------------------------------------------------------- ray
def run_ray(settings: dict, out_dir: Path) -> dict:
    """bench/ray_bench.py's figures with the mode's ``settings``, also written to ``out_dir/ray_bench.json``;
    without Ray installed, why there are none."""
    if importlib.util.find_spec("ray") is None:
        return {"available": False, "reason": 'Ray is not installed here (pip install -e ".[ray]")'}
    from . import ray_bench

    figures = ray_bench.measure(**settings)
    (out_dir / "ray_bench.json").write_text(json.dumps(figures, indent=2) + "\n")
    return {"available": True, **figures}


# -------------------------------------------------------------------------------------------- gpu
def sd15_sized_prior(device: str):
    """A random-weight prior whose U-Net is SD 1.5's (860 M parameters, 64x64 latents, 77 text
    tokens of width 768) and whose VAE decodes 8x like SD's, into 512-px images; the text encoder and
    VAE are tiny: the U-Net is what costs."""
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from engine.prior import Prior, PriorMetadata
    from engine.testing import tiny_tokenizer, tiny_vae

    with torch.random.fork_rng(devices=[]):  # seeded weights, the caller's RNG left as it was
        torch.manual_seed(0)
        tokenizer = tiny_tokenizer(max_length=SD15_TOKENS)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=SD15_UNET["cross_attention_dim"], intermediate_size=256,
            num_hidden_layers=1, num_attention_heads=12, max_position_embeddings=SD15_TOKENS,
            pad_token_id=0, bos_token_id=2, eos_token_id=3))
        vae = tiny_vae(latent_size=64, vae_scale=8)
        unet = UNet2DConditionModel(**SD15_UNET)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                              beta_end=0.012, prediction_type="epsilon")
    metadata = PriorMetadata(name="sd15-sized-random", image_size=512, latent_size=64)
    return Prior(unet, vae, text_encoder, tokenizer, scheduler, metadata, device=device)


def sd_pipeline_times(prior, overrides: dict, out_dir: Path) -> dict:
    """Prompt -> GLB with the ``sd`` preset: wall time and the pipeline's own per-phase times, for a
    prior with Stable Diffusion's 64x64 latents.

    Args:
        prior: the prior (an SD-1.5-sized random one on the GPU bench).
        overrides: dotted settings over the preset, e.g. {"steps": 300}; empty for the preset as is.
        out_dir: where the GLB is written.
    """
    from engine.outputs import write_outputs
    from engine.tasks import preset_config
    from engine.tasks.generate import generate

    config = preset_config("generate", "sd", overrides)
    began = time.perf_counter()
    result = generate(SCALING_PROMPT, prior, config)
    write_outputs(result.mesh, out_dir / "sd_pipeline.glb")
    return {"steps": config.steps, "seconds": time.perf_counter() - began,
            "phases": {name: round(value, 3) for name, value in result.timings.items()}}


def concurrent_jobs_rate(prior, jobs: int, overrides: list[str], prompt: str = SCALING_PROMPT) -> dict:
    """Jobs per hour with ``jobs`` generate jobs running side by side on one prior, their U-Net calls
    batched as the server's ``--jobs`` does (``engine.batching``); each job has its own seed.

    Args:
        prior: the shared prior.
        jobs: how many jobs run at once.
        overrides: "FIELD=VALUE" settings of every job.
        prompt: what every job makes.
    """
    import threading

    from engine.batching import BatchedPrior, SharedForward
    from engine.tasks.generate import generate

    shared = SharedForward(prior.unet_forward)
    errors: list[BaseException] = []

    def one_job(seed: int) -> None:
        try:
            with BatchedPrior(prior, shared.join()) as job_prior:
                generate(prompt, job_prior, task_config("generate", seed, overrides))
        except BaseException as exc:  # reported below; a thread must not die silently
            errors.append(exc)

    threads = [threading.Thread(target=one_job, args=(seed,)) for seed in range(jobs)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - began
    if errors:
        raise errors[0]
    return {"jobs": jobs, "seconds": seconds, "jobs_per_hour": 3600.0 * jobs / seconds}


def run_gpu(model: str | None, mode: dict, overrides: list[str], out_dir: Path) -> dict:
    if not torch.cuda.is_available():
        return {"available": False,
                "reason": f"torch.cuda.is_available() is False on this machine (torch {torch.__version__}, "
                          f"CUDA build: {torch.version.cuda or 'none'})"}
    from engine import load_prior

    section = {"available": True, "device_name": torch.cuda.get_device_name(0), "cuda": torch.version.cuda}
    try:
        prior = load_prior(model, device="cuda")
    except Exception as exc:
        log.exception("loading the prior on CUDA failed")
        return {**section, "error": _error(exc)}
    workdir = out_dir / "assets" / "cuda"
    workdir.mkdir(parents=True, exist_ok=True)
    runs = []
    for prompt in mode["gpu_prompts"]:
        try:
            runs.append(quality_run(prior, prompt, 0, overrides, workdir))
            log.info("cuda %s: %.1f s", prompt, runs[-1]["seconds"])
        except Exception as exc:
            log.exception("CUDA generate %r failed", prompt)
            runs.append({"prompt": prompt, "seed": 0, "error": _error(exc)})
    section["quality_runs"] = runs
    section["quality"] = summarise_quality(runs)
    try:
        section["overhead_embedded"] = overhead(prior, mode, overrides)
    except Exception as exc:
        log.exception("CUDA overhead on the embedded prior failed")
        section["overhead_embedded"] = {"error": _error(exc)}
    try:
        section["concurrent_jobs"] = [concurrent_jobs_rate(prior, jobs, overrides) for jobs in (1, 4, 8)]
    except Exception as exc:
        log.exception("CUDA concurrent jobs failed")
        section["concurrent_jobs"] = {"error": _error(exc)}
    try:
        section["overhead_embedded_cuda_graphs"] = overhead(load_prior(model, device="cuda", cuda_graphs=True),
                                                            mode, overrides)
    except Exception as exc:
        log.exception("CUDA overhead with CUDA graphs failed")
        section["overhead_embedded_cuda_graphs"] = {"error": _error(exc)}
    prior = None  # an 860 M-parameter U-Net comes next
    gc.collect()
    torch.cuda.empty_cache()
    try:
        sd15 = sd15_sized_prior("cuda")
        section["overhead_sd15_sized"] = overhead(sd15, mode, [])
        section["sd_pipeline_sd15_sized"] = sd_pipeline_times(sd15, mode["sd_pipeline"], workdir)
    except Exception as exc:
        log.exception("CUDA runs on the SD-1.5-sized U-Net failed")
        section["overhead_sd15_sized"] = {"error": _error(exc)}
    sd15 = None
    gc.collect()
    torch.cuda.empty_cache()
    return section


# ------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--quick", action="store_const", dest="mode", const="quick",
                       help="a fixed subset, about 10 minutes on a 2-core CPU (the default)")
    which.add_argument("--full", action="store_const", dest="mode", const="full",
                       help="all 49 prompts x 3 seeds and every issue-#15 paint and sketch case; about an hour")
    parser.add_argument("--out", type=Path, help="output folder (default: out/bench/MODE)")
    parser.add_argument("--threads", type=int, default=default_threads(),
                        help=f"torch CPU threads (default: the engine's, {default_threads()} here)")
    parser.add_argument("--model", help="prior folder or HF id (default: the embedded prior)")
    dev = parser.add_argument_group("development (the report flags any of these as non-standard)")
    dev.add_argument("--prompts", nargs="+", help="replace the mode's prompt set")
    dev.add_argument("--seeds", type=int, nargs="+", help="replace the mode's seeds")
    dev.add_argument("--steps", type=int, help="optimisation steps for every job instead of the defaults")
    dev.add_argument("--skip", nargs="+", default=[], help="sections to leave out",
                     choices=SECTIONS)
    args = parser.parse_args(argv)
    args.mode = args.mode or "quick"
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    if args.steps is not None and args.steps < 1:
        parser.error("--steps must be at least 1")
    if args.prompts:
        for prompt in args.prompts:
            words = prompt.split()
            if len(words) != 3 or words[1] not in contract.COLOUR_NAMES or words[2] not in contract.SHAPES:
                parser.error(f"prompt {prompt!r} is not 'a COLOUR SHAPE' of Primitive World")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import matplotlib  # noqa: F401  -- checked now, not after an hour of measurements
    except ImportError:
        print('matplotlib is missing: pip install -e ".[bench]"', file=sys.stderr)
        return 2
    from . import contention, report

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    for noisy in ("engine", "primitive_world", "server"):  # their INFO lines would bury the progress
        logging.getLogger(noisy).setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    mode = dict(MODES[args.mode])
    out_dir = args.out or Path("out") / "bench" / args.mode
    out_dir.mkdir(parents=True, exist_ok=True)
    prompts = args.prompts or mode["prompts"]
    seeds = args.seeds or mode["seeds"]
    overrides = [f"steps={args.steps}"] if args.steps else []
    non_standard = {k: v for k, v in (("prompts", args.prompts), ("seeds", args.seeds), ("steps", args.steps),
                                      ("skip", args.skip), ("model", args.model)) if v}

    results: dict = {
        "schema": 1, "mode": args.mode,
        "command": " ".join(["python -m bench", *map(shlex.quote, argv if argv is not None else sys.argv[1:])]),
        "started": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": {**machine_info(args.threads), "load_average_start": _load_average()},
        "settings": {"prompts": prompts, "seeds": seeds, "full_prompt_set_runs": len(FULL_PROMPTS) * 3,
                     "subset": set(prompts) != set(FULL_PROMPTS) or len(seeds) < 3,
                     "overrides": overrides, "non_standard": non_standard,
                     **{k: v for k, v in mode.items() if k not in ("prompts", "seeds")}},
        "sections": {},
    }
    started = time.perf_counter()
    prior = None

    results_path = out_dir / "results.json"

    def section(name: str, fn):
        if name in args.skip:
            results["sections"][name] = {"skipped": True}
            return None
        log.info("--- %s", name)
        began = time.perf_counter()
        try:
            value = fn()
            results["sections"][name] = {"seconds": time.perf_counter() - began}
        except Exception as exc:
            log.exception("section %s failed", name)
            results["sections"][name] = {"seconds": time.perf_counter() - began, "error": _error(exc),
                                         "traceback": traceback.format_exc()}
            value = None
        # Saved after every section: an interrupted hour-long run keeps what it measured.
        results_path.write_text(json.dumps({**results, name: value}, indent=2, default=str) + "\n")
        return value

    def loaded_prior():
        nonlocal prior
        if prior is None:
            from engine import load_prior

            prior = load_prior(args.model)
        return prior

    results["quality"] = section("quality", lambda: run_quality(loaded_prior(), prompts, seeds, overrides, out_dir))
    results["paint"] = section("paint", lambda: run_paint(loaded_prior(), mode["paint_cases"], seeds if args.seeds
                                                          else mode["paint_seeds"], overrides, out_dir))
    results["sketch"] = section("sketch", lambda: run_sketch(loaded_prior(), mode["sketch_cases"], seeds
                                                             if args.seeds else mode["sketch_seeds"], overrides,
                                                             out_dir))

    def speed() -> dict:
        quality_runs = (results["quality"] or {}).get("runs", [])
        figures = {}  # its per-prop figures come from the quality runs (report.speed_figures)
        for key, fn in (
            ("overhead", lambda: overhead(loaded_prior(), mode, overrides)),
            ("grid_scaling", lambda: grid_scaling(loaded_prior(), mode["grids"], mode["grid_repeats"], overrides)),
            ("steps_scaling", lambda: steps_scaling(loaded_prior(), ttq_default_steps(overrides),
                                                    mode["steps_factors"], overrides, quality_runs, out_dir)),
        ):
            try:
                figures[key] = fn()
            except Exception as exc:
                log.exception("speed: %s failed", key)
                figures[key] = {"error": _error(exc)}
        return figures

    results["speed"] = section("speed", speed)
    results["server"] = section("server", lambda: run_server(mode["server"], out_dir))
    results["contention"] = section("contention", lambda: contention.measure(preset=mode["contention_preset"]))
    results["ray"] = section("ray", lambda: run_ray(mode["ray"], out_dir))
    prior = None  # the GPU section loads its own copy; free this one's memory first
    gc.collect()
    results["gpu"] = section("gpu", lambda: run_gpu(args.model, mode, overrides, out_dir))

    results["duration_s"] = time.perf_counter() - started
    # On a shared machine wall time overstates the work; CPU time shows what the run itself cost.
    times = os.times()
    results["cpu_time_s"] = times.user + times.system + times.children_user + times.children_system
    results["finished"] = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    results["machine"]["load_average_end"] = _load_average()
    results["targets"] = report.evaluate_targets(results)
    results["other_bars"] = report.evaluate_other_bars(results)
    results_path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    files = report.write_report(results, out_dir)

    print(report.console_summary(results))
    print(f"wrote {results_path}, " + ", ".join(str(p) for p in files.values()))
    failed = [name for name, s in results["sections"].items() if s.get("error")]
    if failed:
        print(f"sections that failed: {', '.join(failed)} (errors in results.json)", file=sys.stderr)
    return 1 if failed else 0


def ttq_default_steps(overrides: list[str]) -> int:
    return task_config("generate", 0, overrides).steps


if __name__ == "__main__":
    sys.exit(main())
