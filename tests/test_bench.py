"""The benchmark: its report writer on synthetic results, and each section's direct call into its bench
script on the tiny random prior with the smallest settings (no full run).

Needs matplotlib (the ``bench`` extra); it fails rather than skips without it, so a missing plot
library cannot pass unnoticed.
"""

from __future__ import annotations

import copy
import json
import statistics
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # bench/ is not an installed package; plain `pytest` does not put the root first
    sys.path.insert(0, str(ROOT))

from bench import report, run  # noqa: E402
from bench.run import summarise_cases, summarise_quality, wilson_interval  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# The smallest settings that still run every stage on the tiny prior; the override names in one place.
# The scripts are imported in the tests that use them, so that an engine change breaking one script's
# config cannot stop the report tests from being collected.
SMALL_SKETCH = ["steps=4", "field.grid_resolution=16", "surface.mesh_resolution=32", "field.samples_per_ray=16",
                "colour.texture_size=512", "colour.view_azimuths=2"]
SMALL_GENERATE = [*SMALL_SKETCH, "surface.silhouette_fit_steps=4"]
SMALL_PAINT = ["steps=4", "texture.size=16", "texture.view_pool=6", "texture.init_views=4",
               "texture.init_iterations=10",
               "colour.view_azimuths=2", "colour.texture_size=512"]


def _run(prompt, seed, shape, colour, seconds, **extra):
    _, colour_word, shape_word = prompt.split()
    optimise = seconds * 0.6
    return {"prompt": prompt, "colour_word": colour_word, "shape_word": shape_word, "seed": seed, "steps": 600,
            "seconds": seconds, "timings": {"optimise_s": optimise, "colour_s": seconds * 0.25,
                                            "mesh_s": seconds * 0.1, "write_s": seconds * 0.05},
            "sds_its_per_s": 600 / optimise, "shape": shape, "shape_ok": shape == shape_word,
            "iou_true": 0.8, "iou_margin": 0.1 if shape == shape_word else -0.05,
            "colour": colour, "colour_ok": colour == colour_word, "colour_distance": 0.05, **extra}


def _fidelity(chamfer, normal, iou, albedo, blotched, door=None, handles=0, expected=0):
    """A run record's fidelity keys, as bench/run.judge_fidelity writes them."""
    return {"fidelity": {"chamfer_pct": chamfer, "normal_error_deg": normal, "volume_iou": iou, "albedo_error": albedo,
                         "blotched_share": blotched, "door_albedo_error": door, "asset_to_exact_pct": chamfer,
                         "exact_to_asset_pct": chamfer, "samples": 20_000, "seed": 0, "judge_s": 0.5},
            "topology": {"handles": handles, "components": 1, "boundary_loops": 0, "euler": 2 - 2 * handles,
                         "manifold": True, "handles_expected": expected},
            "handles_ok": handles == expected}


def task_targets(task: str) -> list:
    """The task's TARGETS, imported here so that a broken script cannot stop the other tests' collection."""
    from bench import paint_quality, sketch_quality

    return paint_quality.TARGETS if task == "paint" else sketch_quality.TARGETS


def _case(task, case, group, seed, colour, shape, chamfer, normal, iou, albedo, blotched, seconds=30.0, **extra):
    """A paint or sketch run record as bench/paint_quality.run_case and bench/sketch_quality.run_case write it,
    its checks from the task's targets."""
    from bench.targets import run_checks

    record = {"case": case, "group": group, "seed": seed, "prompt": f"a {colour} {shape}", "colour": colour,
              "exact_shape": shape, "glb": f"out/bench/quick/{task}/{case}_seed{seed}.glb", "seconds": seconds,
              "fidelity": {"chamfer_pct": chamfer, "normal_error_deg": normal, "volume_iou": iou,
                           "albedo_error": albedo, "blotched_share": blotched}, **extra}
    record["checks"] = run_checks(record, task_targets(task))
    record["passed"] = all(record["checks"].values())
    return record


def _door(front, back, iou):
    return {"door_pixels_front": front, "door_pixels_back": back, "door_iou": iou, "door_front": front >= 20,
            "no_door_back": back < 20}


def paint_records() -> list[dict]:
    # Shapes: albedo medians 0.04 (within), blotched 6 % (missed); the house's door IoU 0.5 misses 0.6;
    # the timing run's 40 s is within 45 s; one run failed.
    return [
        _case("paint", "sphere-blue", "shapes", 0, "blue", "sphere", 0.1, 2.0, 0.99, 0.03, 0.04, faces=20480,
              geometry_unchanged=True),
        _case("paint", "cube-red", "shapes", 0, "red", "cube", 0.0, 0.0, 1.0, 0.05, 0.08, faces=12288,
              geometry_unchanged=True),
        _case("paint", "house", "house", 0, "green", "house", 0.0, 0.0, 1.0, 0.05, 0.03, faces=256,
              geometry_unchanged=True, **_door(60, 3, 0.5)),
        _case("paint", "timing", "timing", 0, "red", "cube", 0.0, 0.0, 1.0, 0.2, 0.5, seconds=40.0, faces=12288,
              geometry_unchanged=False),
        {"case": "torus-green", "seed": 0, "error": "RuntimeError: boom"},
    ]


def sketch_records() -> list[dict]:
    # House boxes: chamfer median 1.8 % (within 2 %), IoU 0.84 (missed), doors 2/3 (missed 80 %).
    return [
        _case("sketch", "house-box", "house-box", 0, "green", "house", 1.5, 9.0, 0.86, 0.05, 0.05, scale=1.0,
              iou_sketch=0.9, colour_ok=True, **_door(40, 0, 0.7)),
        _case("sketch", "house-box-0.9", "house-box", 0, "green", "house", 1.8, 9.0, 0.84, 0.05, 0.05, scale=0.9,
              iou_sketch=0.9, colour_ok=True, **_door(30, 0, 0.6)),
        _case("sketch", "house-box-1.1", "house-box", 0, "green", "house", 2.4, 9.0, 0.80, 0.05, 0.05, scale=1.1,
              iou_sketch=0.9, colour_ok=True, **_door(5, 0, 0.1)),
        _case("sketch", "blockout", "blockout", 0, "green", "house", 1.2, 7.0, 0.93, 0.05, 0.05, scale=1.0,
              iou_sketch=0.9, colour_ok=True, **_door(40, 0, 0.7)),
        _case("sketch", "sphere-as-cube", "sphere", 0, "blue", "cube", 3.0, 30.0, 0.7, 0.05, 0.05, scale=1.0,
              iou_sketch=0.8, colour_ok=True),
    ]


def synthetic_results() -> dict:
    # Fidelity medians over the four judged runs: chamfer 0.85 %, normal 6.75 deg, IoU 0.92, albedo 0.035,
    # blotched 2.5 %; every shape within its own bars; every handle count right.
    runs = [
        _run("a red cube", 0, "cube", "red", 22.0, **_fidelity(0.5, 4.0, 0.95, 0.02, 0.01)),
        _run("a blue sphere", 0, "sphere", "blue", 24.0, **_fidelity(0.8, 6.5, 0.93, 0.03, 0.02)),
        _run("a green house", 0, "cube", "green", 30.0, door_pixels_front=40, door_pixels_back=3,
             door_front=True, janus=False, **_fidelity(1.5, 7.0, 0.88, 0.04, 0.03, door=0.3)),
        _run("a yellow cone", 0, "cone", "white", 70.0, **_fidelity(0.9, 8.0, 0.91, 0.08, 0.10)),
        {"prompt": "a purple torus", "seed": 0, "error": "RuntimeError: boom"},
    ]
    results = {
        "schema": 1, "mode": "quick", "command": "python -m bench --quick", "duration_s": 250.0,
        "started": "2026-01-01T00:00:00+00:00", "finished": "2026-01-01T00:04:10+00:00",
        "machine": {"cpu_count": 2, "cpus_usable": 2, "cpu_model": "test CPU", "torch": "2.13.0",
                    "torch_threads": 2, "python": "3.11", "platform": "Linux", "device": "cpu",
                    "cuda_available": False, "load_average_start": [0.5, 0.4, 0.3],
                    "load_average_end": [1.9, 1.0, 0.5]},
        "settings": {"prompts": [r["prompt"] for r in runs], "seeds": [0], "full_prompt_set_runs": 147,
                     "subset": True, "overrides": [], "non_standard": {}},
        "sections": {name: {"seconds": 1.0} for name in ("quality", "paint", "sketch", "speed", "server", "contention",
                                                                 "gpu")},
        "quality": {"prompts": [r["prompt"] for r in runs], "seeds": [0], "runs": runs, **summarise_quality(runs)},
        "paint": summarise_cases(paint_records(), ["shapes", "house", "timing"], task_targets("paint")),
        "sketch": summarise_cases(sketch_records(), ["house-box", "blockout", "sphere"], task_targets("sketch")),
        "speed": {"overhead": {"prior": "primitive-world-v1", "unet_parameters": 4_000_000, "latent_size": 16,
                               "unet_cfg_forward_ms": 20.0, "sds_step_ms": 27.0, "ratio": 1.35,
                               "cpu_time_ratio": 1.3},
                  "grid_scaling": [{"grid_resolution": g, "step_ms": 20 + g / 4, "steps_per_s": 1000 / (20 + g / 4)}
                                   for g in (16, 32, 48, 64)],
                  "steps_scaling": [{"steps": n, "seconds": 7 + n / 40, "timings": {"optimise_s": n / 40},
                                     "sds_its_per_s": 40.0, "reused_quality_run": n == 600}
                                    for n in (150, 300, 600)]},
        "server": {"submit_to_accepted_ms": {"idle_median": 0.8, "busy_median": 0.9, "n": 10},
                   "status_requests_per_s_achieved": 100.0, "slowdown_percent": 2.0,
                   "progress_latency_ms": {"without_load": {"median": 0.5, "p95": 0.8},
                                           "with_status_load": {"median": 0.6, "p95": 0.9}},
                   "setup": {"model": "/tmp/x/tiny-prior", "steps": 200, "rounds": 1, "server_threads": 1}},
        "contention": {"prompt": "a blue cube", "preset": "draft", "seed": 3, "wait_policy": "engine default",
                       "cpus": 2, "alone_s": 10.0, "beside_busy_thread_s": 19.0, "two_side_by_side_s": [14.0, 15.0],
                       "beside_busy_thread_ratio": 1.9, "two_side_by_side_ratio": 1.5},
        "gpu": {"available": False, "reason": "torch.cuda.is_available() is False"},
    }
    results["targets"] = report.evaluate_targets(results)
    results["other_bars"] = report.evaluate_other_bars(results)
    return results


def test_targets_are_judged_with_margins():
    targets = {t["key"]: t for t in synthetic_results()["targets"]}
    assert targets["shape_top1"]["goal"] == 0.95
    assert targets["shape_top1"]["value"] == 0.75 and targets["shape_top1"]["met"] is False  # the failed run is out
    assert abs(targets["shape_top1"]["margin"] - (-0.20)) < 1e-9
    assert targets["colour"]["goal"] == 1.0 and targets["colour"]["met"] is False
    assert targets["door_front"]["goal"] == 0.80 and targets["door_front"]["value"] == 1.0  # 1/1 house run
    assert targets["janus"]["goal"] == 0.05 and targets["janus"]["value"] == 0.0 and targets["janus"]["met"] is True
    assert targets["time_per_prop"]["goal"] == 45.0 and targets["time_per_prop"]["label"] == \
        "Median time per prop, 2-core CPU"
    assert targets["time_per_prop"]["value"] == 27.0 and abs(targets["time_per_prop"]["margin"] - 18.0) < 1e-9
    assert targets["overhead_ratio"]["met"] is False and abs(targets["overhead_ratio"]["margin"] + 0.05) < 1e-9


def test_fidelity_targets_are_the_medians_over_every_judged_asset_against_their_goals():
    targets = {t["key"]: t for t in synthetic_results()["targets"]}
    expected = {"chamfer": ("<=", 1.0, 0.85, True), "normal_error": ("<=", 6.0, 6.75, False),
                "volume_iou": (">=", 0.90, 0.92, True), "albedo_error": ("<=", 0.05, 0.035, True),
                "blotched": ("<=", 0.05, 0.025, True)}
    for key, (op, goal, value, met) in expected.items():
        t = targets[key]
        assert (t["op"], t["goal"], t["met"]) == (op, goal, met), key
        assert abs(t["value"] - value) < 1e-9, key
    assert abs(targets["normal_error"]["margin"] + 0.75) < 1e-9  # missed by 0.75 deg
    assert targets["chamfer"]["basis"].startswith("median of 4 asset(s)")
    assert targets["fidelity_per_shape"]["value"] == 1.0 and targets["fidelity_per_shape"]["met"] is True
    assert targets["handles"]["value"] == 1.0 and targets["handles"]["met"] is True


def test_a_shape_past_its_own_bar_or_a_wrong_handle_count_misses_its_target(tmp_path):
    results = copy.deepcopy(synthetic_results())
    runs = results["quality"]["runs"]
    runs[3]["fidelity"]["volume_iou"] = 0.70  # the cone alone: below the per-shape IoU bar of 0.8
    runs[1].update(_fidelity(0.8, 6.5, 0.93, 0.03, 0.02, handles=1))  # a sphere with a handle
    results["quality"].update(summarise_quality(runs))
    results["targets"] = report.evaluate_targets(results)
    targets = {t["key"]: t for t in results["targets"]}
    per_shape = targets["fidelity_per_shape"]
    assert per_shape["value"] == 3 / 4 and per_shape["met"] is False  # cube, sphere, house and cone judged
    assert "cone: volume IoU 0.700" in per_shape["basis"]
    assert targets["handles"]["value"] == 0.75 and targets["handles"]["met"] is False
    assert "a blue sphere s0: 1" in targets["handles"]["basis"]
    assert targets["volume_iou"]["met"] is True  # the median over all four assets is still 0.905
    text = report.write_report(results, tmp_path)["report"].read_text()
    row = next(line for line in text.splitlines() if line.startswith("| Handles right"))
    assert "| **not met** |" in row and "missed by 25.0 pp" in row


def test_report_has_the_targets_table_and_writes_the_plots(tmp_path):
    results = synthetic_results()
    written = report.write_report(results, tmp_path)
    text = (tmp_path / "REPORT.md").read_text()
    assert "## Targets (issue #7)" in text
    assert "| target | goal | measured | verdict | margin | basis |" in text
    for label in ("Shape top-1 accuracy", "Colour accuracy", "House front door visible", "House Janus rate",
                  "Chamfer to the exact shape", "Normal error", "Volume IoU", "Albedo error", "Blotched share",
                  "Every shape's medians", "Handles right", "Median time per prop, 2-core CPU", "Overhead ratio"):
        assert label in text
    assert "missed by 20.0 pp" in text and "met by 18.0 s" in text and "missed by 0.05×" in text
    assert "| ≤ 45.0 s |" in text and "| = 100 % |" in text
    assert "No GPU was available" in text and "python -m bench --quick" in text
    assert "subset" in text  # quick mode must say its accuracy is on a subset
    assert "## Sharing a busy CPU" in text and "| two side by side (each) | 14.0 s / 15.0 s |" in text
    for name in ("quality", "speed", "scaling"):
        path = tmp_path / report.PLOTS[name]
        assert written[name] == path and path.read_bytes()[:8] == PNG_MAGIC
        assert f"]({path.name})" in text
    json.dumps(results)  # the dict the harness saves stays JSON-serialisable


def test_missing_and_failed_sections_are_reported_not_guessed(tmp_path):
    results = copy.deepcopy(synthetic_results())
    results["quality"] = None
    results["sections"]["quality"] = {"seconds": 1.0, "error": "RuntimeError: no prior"}
    results["speed"] = None
    results["sections"]["speed"] = {"skipped": True}
    results["contention"] = None
    results["sections"]["contention"] = {"skipped": True}
    results["targets"] = report.evaluate_targets(results)
    assert all(t["met"] is None for t in results["targets"])
    written = report.write_report(results, tmp_path)
    text = written["report"].read_text()
    assert text.count("not measured") >= 5
    assert "RuntimeError: no prior" in text and "--skip speed" in text
    assert "quality" not in written and not (tmp_path / report.PLOTS["quality"]).exists()


def _front(idle_ms, busy_ms, latency_ms):
    return {"submit_to_accepted_ms": {"idle_median": idle_ms, "busy_median": busy_ms, "n": 10},
            "progress_latency_ms": {"without_load": {"median": latency_ms, "p95": 2 * latency_ms},
                                    "with_status_load": {"median": latency_ms, "p95": 2 * latency_ms}}}


def _batch(backend, actors, wall_s, dispatch_s, hand_back_s, server_cpu_s=0.12):
    return {"backend": backend, "actors": actors, "jobs": 4, "wall_s": wall_s, "jobs_per_hour": 4 / wall_s * 3600,
            "median_seconds": 9.5, "median_dispatch_s": dispatch_s, "median_hand_back_s": hand_back_s,
            "server_cpu_s_per_job": server_cpu_s}


def test_ray_section_reports_the_fronts_overhead_per_backend_the_jobs_per_hour_and_the_cost_per_job(tmp_path):
    results = copy.deepcopy(synthetic_results())
    results["sections"]["ray"] = {"seconds": 1.0}
    results["ray"] = {
        "available": True, "front": {"local": _front(0.8, 0.9, 0.5), "ray": _front(0.9, 1.1, 2.5)},
        "throughput": [_batch("local", 1, 40.0, 0.30, 0.05, None), _batch("ray", 1, 41.0, 0.33, 0.07),
                       _batch("ray", 2, 24.0, 0.40, 0.08)],
        "ray_cost_per_job": {"added_s": 0.05, "job_s": 9.5, "share_of_job": 0.00526},
        "setup": {"jobs": 4, "preset": "draft", "model": "/x/engine/priors/primitive-world", "threads_per_job": 1}}
    text = report.write_report(results, tmp_path)["report"].read_text()
    ray = text[text.index("## Ray backend"):text.index("## GPU")]
    assert "on the embedded prior, 1 torch thread(s) per job" in ray
    assert "| measure | local | ray |" in ray and "| progress event latency, median / p95 | 0.50 / 1.00 ms | " \
                                                  "2.50 / 5.00 ms |" in ray
    assert "| ray | 2 | 24.0 s | 600 | 9.50 s | 400 ms | 80 ms | 120 ms |" in ray
    assert "| local | 1 | 40.0 s | 360 | 9.50 s | 300 ms | 50 ms | – |" in ray
    assert "One Ray actor adds 50 ms to a 9.5 s job (0.5 %) against the local backend." in ray


def test_ray_section_without_ray_installed_says_why_and_gives_no_numbers(tmp_path):
    results = copy.deepcopy(synthetic_results())
    results["sections"]["ray"] = {"seconds": 0.0}
    results["ray"] = {"available": False, "reason": 'Ray is not installed here (pip install -e ".[ray]")'}
    text = report.write_report(results, tmp_path)["report"].read_text()
    assert '## Ray backend\n\n_Not measured: Ray is not installed here (pip install -e ".[ray]")._' in text


def test_ray_bench_rows_give_jobs_per_hour_and_what_one_actor_adds_to_each_job():
    from bench import ray_bench

    timings = ray_bench.job_timings({"started": 100.0, "finished": 110.0}, [100.25, 105.0, 109.9])
    assert timings == {"seconds": 10.0, "dispatch_s": 0.25, "hand_back_s": pytest.approx(0.1)}
    cost = ray_bench.ray_cost_per_job([_batch("local", 1, 40.0, 0.30, 0.05), _batch("ray", 1, 41.0, 0.33, 0.07)])
    assert cost == {"added_s": 0.05, "job_s": 9.5, "share_of_job": pytest.approx(0.00526, abs=1e-5)}
    assert ray_bench.ray_cost_per_job([_batch("ray", 2, 24.0, 0.40, 0.08)]) is None


def test_fidelity_summary_gives_each_shapes_medians_the_overall_medians_and_the_shares_within_target():
    runs = [
        _run("a red cube", 0, "cube", "red", 20.0, **_fidelity(0.4, 3.0, 0.96, 0.01, 0.00)),
        _run("a red cube", 1, "cube", "red", 20.0, **_fidelity(0.6, 5.0, 0.92, 0.03, 0.04)),
        _run("a blue cube", 0, "cube", "blue", 20.0, **_fidelity(1.4, 9.0, 0.85, 0.07, 0.20)),
        _run("a green torus", 0, "torus", "green", 20.0, **_fidelity(2.0, 10.0, 0.80, 0.04, 0.02, expected=1)),
        _run("a white house", 0, "house", "white", 20.0, **_fidelity(0.9, 5.5, 0.91, 0.02, 0.01, door=0.25)),
        _run("a red cone", 0, "cone", "red", 20.0, fidelity_error="ValueError: judge broke"),
        {"prompt": "a red sphere", "seed": 0, "error": "RuntimeError: boom"},
    ]
    f = summarise_quality(runs)["fidelity"]
    assert (f["n"], f["not_judged"], f["samples"], f["seed"]) == (5, 1, 20_000, 0)
    assert f["errors"] == [{"prompt": "a red cone", "seed": 0, "error": "ValueError: judge broke"}]
    assert list(f["by_shape"]) == ["cube", "torus", "house"]  # contract order; no cone or sphere medians
    cube = f["by_shape"]["cube"]
    assert (cube["chamfer_pct"], cube["normal_error_deg"], cube["volume_iou"], cube["albedo_error"],
            cube["blotched_share"], cube["door_albedo_error"], cube["handles_ok"], cube["n"]) == \
        (0.6, 5.0, 0.92, 0.03, 0.04, None, 3, 3)
    assert f["by_shape"]["torus"]["chamfer_pct"] == 2.0 and f["by_shape"]["torus"]["handles_ok"] == 0
    assert f["by_shape"]["house"]["door_albedo_error"] == 0.25
    assert f["overall"]["chamfer_pct"]["median"] == 0.9 and f["overall"]["chamfer_pct"]["n"] == 5
    assert f["overall"]["volume_iou"]["median"] == 0.91 and f["overall"]["volume_iou"]["min"] == 0.80
    assert f["overall"]["door_albedo_error"]["n"] == 1  # houses only
    within = f["within_target"]
    assert (within["chamfer_pct"]["k"], within["volume_iou"]["k"], within["blotched_share"]["k"]) == (3, 3, 4)
    assert within["blotched_share"]["n"] == 5 and within["blotched_share"]["rate"] == 0.8
    assert (f["handles"]["correct"], f["handles"]["n"]) == (4, 5)
    assert f["handles"]["misses"] == [{"prompt": "a green torus", "seed": 0, "handles": 0, "expected": 1}]
    assert summarise_quality(runs[-2:])["fidelity"] is None  # nothing judged: no figures, not zeros


def test_handles_are_counted_on_the_position_welded_mesh_so_uv_seams_do_not_hide_a_torus_hole():
    import numpy as np
    import trimesh

    from bench import fidelity
    from engine.export import unwrap
    from primitive_world.meshes import contract_mesh

    torus = contract_mesh("torus")
    blurred_torus = fidelity.blurred_reference("torus", resolution=32)  # marching cubes, as the engine meshes
    for name, (vertices, faces), handles in (("torus", (torus.vertices, torus.faces), 1),
                                              ("marching-cubes torus", blurred_torus, 1),
                                              ("sphere", (contract_mesh("sphere").vertices,
                                                          contract_mesh("sphere").faces), 0)):
        v, f, _ = unwrap(np.asarray(vertices, np.float32), np.asarray(faces, np.int32), 256)
        assert len(v) > len(np.unique(v, axis=0)), name  # xatlas split the vertices along its seams
        assert trimesh.Trimesh(v, f, process=False).euler_number != 2 - 2 * handles, name  # unwelded: misleading
        counted = fidelity.topology(v, f)
        assert counted["handles"] == handles, (name, counted)
        assert (counted["components"], counted["boundary_loops"], counted["manifold"]) == (1, 0, True), name
    assert [run.expected_handles(s) for s in ("torus", "sphere", "house")] == [1, 0, 0]


def test_handles_are_summed_over_components_and_a_hole_is_a_boundary_not_a_handle():
    import trimesh

    from bench import fidelity
    from primitive_world.meshes import contract_mesh

    torus, sphere = contract_mesh("torus"), contract_mesh("sphere").apply_translation([2.0, 0.0, 0.0])
    both = trimesh.util.concatenate([torus, sphere])
    assert {k: fidelity.topology(both.vertices, both.faces)[k] for k in ("handles", "components")} == \
        {"handles": 1, "components": 2}
    cube = contract_mesh("cube")
    open_cube = fidelity.topology(cube.vertices, cube.faces[1:])  # one triangle missing
    assert (open_cube["handles"], open_cube["boundary_loops"]) == (0, 1)


def _with_judged_glbs(results: dict, folder: Path) -> list[dict]:
    """Each judged quality run of ``results`` given a GLB of its exact shape in ``folder``; those runs."""
    from bench import fidelity
    from engine.export import write_glb

    folder.mkdir()
    judged = [r for r in results["quality"]["runs"] if "fidelity" in r]
    for r in judged:
        path = folder / f"{r['prompt'].replace(' ', '_')}_seed{r['seed']}.glb"
        write_glb(path, fidelity.exact_textured(r["shape_word"], r["colour_word"], size=64))
        r["glb"] = str(path)
    return judged


def test_report_writes_the_fidelity_contact_sheet_of_the_judged_assets_and_links_it(tmp_path):
    from PIL import Image

    from bench import fidelity

    results = copy.deepcopy(synthetic_results())
    judged = _with_judged_glbs(results, tmp_path / "assets")
    judged[0]["glb"] = "out/bench/elsewhere/assets/" + Path(judged[0]["glb"]).name  # found in out_dir/assets
    written = report.write_report(results, tmp_path, sheet_size=32)
    sheet = tmp_path / report.SHEET
    assert written["fidelity_sheet"] == sheet and sheet.read_bytes()[:8] == PNG_MAGIC
    assert Image.open(sheet).size[1] == fidelity.SHEET_HEADER + len(judged) * 32  # one row per judged asset
    text = written["report"].read_text()
    assert f"![fidelity contact sheet]({report.SHEET})" in text and "all 4 judged asset(s)" in text
    house = next(r for r in judged if r["shape_word"] == "house")
    label = report._sheet_label("", house)
    assert label.startswith("a green house, seed 0") and "chamfer 1.50%" in label and "door albedo 0.300" in label


def test_without_the_judged_glbs_the_report_says_the_sheet_was_not_drawn(tmp_path):
    written = report.write_report(synthetic_results(), tmp_path)  # synthetic runs name no GLB
    assert "fidelity_sheet" not in written and not (tmp_path / report.SHEET).exists()
    assert "Contact sheet: not drawn" in written["report"].read_text()


def test_a_sheet_whose_glbs_are_gone_is_kept_and_linked_not_redrawn(tmp_path):
    """A merged or re-rendered committed report has the sheets but not the GLBs they were drawn from."""
    results = copy.deepcopy(synthetic_results())
    _with_judged_glbs(results, tmp_path / "assets")
    drawn = report.write_report(results, tmp_path, sheet_size=32)["fidelity_sheet"].read_bytes()
    for glb in (tmp_path / "assets").iterdir():
        glb.unlink()
    written = report.write_report(results, tmp_path, sheet_size=32)
    assert written["fidelity_sheet"].read_bytes() == drawn
    text = written["report"].read_text()
    assert f"![fidelity contact sheet]({report.SHEET})" in text and "kept as drawn when the assets were judged" in text


def test_sheet_of_a_large_run_shows_the_best_and_the_worst_asset_of_each_shape():
    runs = [_run("a red cube", k, "cube", "red", 20.0, **_fidelity(0.1 * (k + 1), 1.0, 0.99, 0.01, 0.0))
            for k in range(10)]
    # The tori differ in albedo only: the worst is the one furthest past the albedo target.
    runs += [_run("a red torus", k, "torus", "red", 20.0, **_fidelity(0.2, 1.0, 0.99, 0.02 + 0.01 * (7 * k % 10),
                                                                      0.0, handles=1, expected=1))
             for k in range(10)]
    picks, which = report.sheet_selection(runs)
    assert [(tag, r["shape_word"], r["seed"]) for tag, r in picks] == [
        ("best", "cube", 0), ("worst", "cube", 9), ("best", "torus", 0), ("worst", "torus", 7)]
    assert "best and the worst of each shape" in which and "20 judged" in which
    few, which = report.sheet_selection(runs[:report.SHEET_ALL_MAX])
    assert len(few) == report.SHEET_ALL_MAX and all(tag == "" for tag, _ in few)


def test_committed_reports_from_before_the_fidelity_judge_still_render(tmp_path):
    for mode in ("all-prompts-seed0",):  # measured before the judge existed
        folder = tmp_path / mode
        folder.mkdir()
        (folder / "results.json").write_bytes((ROOT / "bench" / "reports" / mode / "results.json").read_bytes())
        assert report.main([str(folder / "results.json")]) == 0
        text = (folder / "REPORT.md").read_text()
        assert "**Fidelity to the exact shape** (`bench/fidelity.py`): not measured in this run." in text
        chamfer = next(line for line in text.splitlines() if line.startswith("| Chamfer to the exact shape"))
        assert "| not measured |" in chamfer
        assert "| Median time per prop, 2-core CPU | ≤ 45.0 s |" in text
        assert not (folder / report.SHEET).exists()


def test_wilson_interval_brackets_the_rate():
    low, high = wilson_interval(3, 4)
    assert 0 < low < 0.75 < high < 1
    assert wilson_interval(0, 0) is None


def test_overhead_measurement_times_both_and_reports_their_ratio():
    from bench import sds_step
    from engine.prior import Prior
    from engine.tasks import preset_config
    from engine.testing import tiny_components, tiny_metadata

    calls = {"forward": 0}
    prior = Prior(*tiny_components(), metadata=tiny_metadata())
    forward = prior.unet.forward

    def counted(*args, **kwargs):
        calls["forward"] += 1
        return forward(*args, **kwargs)

    prior.unet.forward = counted
    config = preset_config("generate", "draft", {"field.grid_resolution": 16, "steps": 10_000})
    figures = sds_step.measure(prior, config, repeats=2, rounds=2)
    # 5 warm-up pairs, then 2 rounds of 2 calls each of the bare forward and of the SDS step
    assert calls["forward"] == 2 * (5 + 2 * 2)
    assert figures["unet_cfg_forward_ms"] > 0 and figures["sds_step_ms"] > 0
    assert abs(figures["ratio"] - figures["sds_step_ms"] / figures["unet_cfg_forward_ms"]) < 1e-12
    assert figures["grid_resolution"] == 16 and figures["prior"] == prior.metadata.name


# ----------------------------------------------------------------- the runner's direct calls, on the tiny prior
def test_task_config_builds_each_task_with_the_overrides():
    from engine.tasks.generate import GenerateConfig
    from engine.tasks.paint import PaintConfig
    from engine.tasks.sketch import SketchConfig

    generate = run.task_config("generate", 3, ["steps=7"])
    assert type(generate) is GenerateConfig and generate.seed == 3 and generate.steps == 7
    assert run.task_config("generate", 0, ["steps=7"], timing=True).steps == 10_000
    paint = run.task_config("paint", 1, ["steps=5"])
    assert type(paint) is PaintConfig and paint.seed == 1 and paint.steps == 5
    sketch = run.task_config("sketch", 2, ["steps=5"])
    assert type(sketch) is SketchConfig and sketch.seed == 2 and sketch.steps == 5
    assert run.ttq_default_steps(["steps=9"]) == 9


def test_quality_run_generates_judges_and_checks_the_door_of_a_house(tiny, tmp_path):
    row = run.quality_run(tiny, "a green house", 1, SMALL_GENERATE, tmp_path)
    assert "door_error" not in row, row.get("door_error")
    assert (row["prompt"], row["seed"], row["steps"], row["shape_word"]) == ("a green house", 1, 4, "house")
    assert {"shape_ok", "colour_ok", "iou_margin", "janus", "janus_lit", "door_front"} <= row.keys()
    assert row["seconds"] > 0 and {"optimise_s", "write_s"} <= row["timings"].keys()
    glb = Path(row["glb"])
    assert glb.parent == tmp_path and glb.exists() and not glb.with_suffix(".obj").exists()
    assert summarise_quality([row])["janus"]["n"] == 1


def test_quality_run_record_carries_the_fidelity_measures_judged_outside_the_timing(tiny, tmp_path, monkeypatch):
    from bench import fidelity, text_to_3d_quality
    from engine.export import load_glb

    events, timed = [], {}
    real_run_prompt, real_judge = text_to_3d_quality.run_prompt, fidelity.judge

    def run_prompt(*args, **kwargs):
        row = real_run_prompt(*args, **kwargs)
        timed.update(seconds=row["seconds"], timings=dict(row["timings"]))
        events.append("generated and timed")
        return row

    def judge(*args, **kwargs):
        events.append("judged")
        return real_judge(*args, **kwargs)

    monkeypatch.setattr(text_to_3d_quality, "run_prompt", run_prompt)
    monkeypatch.setattr(fidelity, "judge", judge)
    row = run.quality_run(tiny, "a red torus", 0, SMALL_GENERATE, tmp_path)
    assert "fidelity_error" not in row, row.get("fidelity_error")
    assert events == ["generated and timed", "judged"]
    assert row["seconds"] == timed["seconds"] and row["timings"] == timed["timings"]  # no judging time added
    mesh = load_glb(row["glb"])
    again = real_judge(mesh, "torus", "red", samples=run.FIDELITY_SAMPLES, seed=run.FIDELITY_SEED)
    assert {k: row["fidelity"][k] for k in again} == again  # the GLB as written, judged reproducibly
    assert (row["fidelity"]["samples"], row["fidelity"]["seed"]) == (run.FIDELITY_SAMPLES, run.FIDELITY_SEED)
    assert set(run.FIDELITY_MEASURES) <= row["fidelity"].keys()
    assert row["topology"]["handles"] == fidelity.topology(mesh.vertices, mesh.faces)["handles"]
    assert row["topology"]["handles_expected"] == 1 and row["handles_ok"] == (row["topology"]["handles"] == 1)


def test_steps_scaling_runs_are_not_judged_for_fidelity(tiny, tmp_path, monkeypatch):
    from bench import fidelity

    judged = []
    monkeypatch.setattr(fidelity, "judge", lambda *args, **kwargs: judged.append(args))
    rows = run.steps_scaling(tiny, 4, [1.0], SMALL_GENERATE, [], tmp_path)
    assert rows[0]["steps"] == 4 and rows[0]["reused_quality_run"] is False
    assert judged == []


def test_paint_section_paints_writes_and_judges_the_house_and_gives_every_target_a_verdict(tiny, tmp_path):
    from bench import paint_quality

    section = run.run_paint(tiny, ["house"], [1], SMALL_PAINT, tmp_path)
    (record,) = section["cases"]
    assert "error" not in record, record.get("error")
    assert (record["case"], record["seed"], record["prompt"], record["group"]) == ("house", 1, "a blue house", "house")
    assert set(record["checks"]) == {"paint_geometry", "paint_house_albedo", "paint_door_iou", "paint_no_back_door"}
    assert record["geometry_unchanged"] is True and record["faces"] == 256
    assert set(run.FIDELITY_MEASURES) <= record["fidelity"].keys() and 0.0 <= record["door_iou"] <= 1.0
    assert Path(record["glb"]) == tmp_path / "paint" / "house_seed1.glb" and Path(record["glb"]).exists()
    assert [t["key"] for t in section["targets"]] == [t.key for t in paint_quality.TARGETS]
    measured = {t["key"] for t in section["targets"] if t["value"] is not None}
    assert measured == {"paint_geometry", "paint_house_albedo", "paint_door_iou", "paint_no_back_door"}
    assert section["groups"]["house"]["n"] == 1 and section["groups"]["house"]["door_back"]["n"] == 1
    assert section["passed"]["n"] == 1


def test_sketch_section_judges_a_house_box_against_the_exact_house_and_looks_for_its_door(tiny, tmp_path):
    from bench import sketch_quality

    section = run.run_sketch(tiny, ["house-box-0.9"], [2], SMALL_SKETCH, tmp_path)
    (row,) = section["cases"]
    assert "error" not in row, row.get("error")
    assert (row["case"], row["seed"], row["prompt"], row["scale"]) == ("house-box-0.9", 2, "a white house", 0.9)
    assert set(row["checks"]) == {"sketch_box_chamfer", "sketch_box_iou", "sketch_box_door"}
    assert 0.0 <= row["iou_sketch"] <= 1.0 and {"door_pixels_front", "door_iou", "door_front"} <= row.keys()
    assert (tmp_path / "sketch" / "house-box-0.9_seed2.glb").exists()
    assert [t["key"] for t in section["targets"]] == [t.key for t in sketch_quality.TARGETS]
    assert section["groups"]["house-box"]["n"] == 1 and section["passed"]["n"] == 1


def test_quick_mode_paints_a_sphere_and_the_house_and_sketches_the_house_box_and_the_blockout_full_mode_all():
    from bench import paint_quality, sketch_quality

    quick, full = run.MODES["quick"], run.MODES["full"]
    assert quick["paint_cases"] == ["sphere-blue", "house"] and quick["paint_seeds"] == [0]
    assert quick["sketch_cases"] == ["house-box", "blockout"] and quick["sketch_seeds"] == [0]
    assert set(quick["paint_cases"]) <= set(paint_quality.CASES)
    assert set(quick["sketch_cases"]) <= {c["name"] for c in sketch_quality.cases()}
    assert full["paint_cases"] is None and full["sketch_cases"] is None
    assert full["paint_seeds"] == full["sketch_seeds"] == [0, 1, 2] and run.PAINT_ONCE == {"timing"}


def test_contention_targets_judge_the_slower_of_the_pair_and_the_prop_beside_a_busy_thread():
    targets = {t["key"]: t for t in synthetic_results()["targets"]}
    assert targets["contention_pair"]["met"] and targets["contention_pair"]["value"] == 1.5
    assert not targets["contention_busy"]["met"]  # 1.9x beside a busy thread misses 1.8x


def test_contention_bench_times_real_engine_processes_in_each_case(monkeypatch):
    from bench import contention

    started = []

    def fake_run_together(commands, env):
        started.append((len(commands), env.get("OMP_WAIT_POLICY")))
        assert all(c[1:4] == ["-m", "engine", "generate"] for c in commands)
        return [2.0 * len(started)] * len(commands)

    monkeypatch.setattr(contention, "_run_together", fake_run_together)
    result = contention.measure(preset="draft", wait_policy="ACTIVE")
    assert started == [(1, "ACTIVE"), (1, "ACTIVE"), (2, "ACTIVE")]
    assert result["beside_busy_thread_ratio"] == 2.0 and result["two_side_by_side_ratio"] == 3.0


def test_grid_scaling_times_one_step_per_grid(tiny):
    rows = run.grid_scaling(tiny, [16, 24], 1, ["field.samples_per_ray=16"])
    assert [r["grid_resolution"] for r in rows] == [16, 24]
    assert all(r["step_ms"] > 0 and abs(r["steps_per_s"] * r["step_ms"] - 1000) < 1e-9 for r in rows)


def test_the_sd15_sized_prior_decodes_its_64x64_latents_to_its_512_px_images(monkeypatch):
    # The U-Net shrunk to test size; the VAE and metadata are what is checked.
    monkeypatch.setattr(run, "SD15_UNET", {**run.SD15_UNET, "block_out_channels": (32, 32, 32, 32),
                                           "layers_per_block": 1})
    prior = run.sd15_sized_prior("cpu")
    images = prior.decode(torch.zeros(1, 4, 64, 64))
    assert prior.metadata.latent_size == 64 and images.shape[-1] == prior.metadata.image_size == 512


def test_sd_pipeline_times_a_whole_sd_preset_run_by_phase(tiny, tmp_path):
    # The sd preset's stages at SD's sizes are tested in test_generate; here the timing around them.
    small = {"steps": 2, "field.grid_resolution": 16, "surface.mesh_resolution": 32, "colour.texture_size": 512,
             "colour.view_azimuths": 2, "colour.view_rings": 1}
    timing = run.sd_pipeline_times(tiny, small, tmp_path)
    assert timing["steps"] == 2 and timing["seconds"] > 0 and (tmp_path / "sd_pipeline.glb").exists()
    assert "optimise_s" in timing["phases"] and sum(timing["phases"].values()) <= timing["seconds"]


def test_concurrent_jobs_run_side_by_side_through_one_batched_forward_and_give_a_rate(tiny):
    rate = run.concurrent_jobs_rate(tiny, 2, SMALL_GENERATE)
    assert rate["jobs"] == 2 and rate["seconds"] > 0
    assert abs(rate["jobs_per_hour"] - 7200 / rate["seconds"]) < 1e-6


def test_gpu_report_shows_the_cuda_graphs_overhead_the_concurrent_jobs_and_the_sd_pipeline():
    results = synthetic_results()
    overhead = {"unet_parameters": 4e6, "latent_size": 16, "unet_cfg_forward_ms": 14.0, "sds_step_ms": 23.0,
                "ratio": 1.64}
    results["gpu"] = {
        "available": True, "device_name": "H200", "cuda": "13.0", "overhead_embedded": overhead,
        "overhead_embedded_cuda_graphs": {**overhead, "unet_cfg_forward_ms": 2.0, "sds_step_ms": 9.0, "ratio": 4.5},
        "concurrent_jobs": [{"jobs": 1, "seconds": 10.0, "jobs_per_hour": 360.0},
                            {"jobs": 4, "seconds": 12.0, "jobs_per_hour": 1200.0}],
        "sd_pipeline_sd15_sized": {"steps": 300, "seconds": 50.0, "phases": {"optimise_s": 30.0, "colour_s": 15.0}},
    }
    text = "\n".join(report._gpu_md(results))
    assert "| embedded prior, CUDA graphs | 4 M | 16² | 2.00 ms | 9.00 ms | 4.500 |" in text
    assert "| 4 | 12.0 s | 1200 | 3.33× |" in text
    assert "300 steps: 50.0 s (optimise_s 30.0 s, colour_s 15.0 s)" in text


def test_server_section_measures_a_real_server_and_keeps_its_json(tmp_path):
    figures = run.run_server({"rounds": 1, "steps": 20, "submits": 2}, tmp_path)
    assert figures["submit_to_accepted_ms"]["n"] == 2 and figures["submit_to_accepted_ms"]["idle_median"] > 0
    assert (figures["setup"]["rounds"], figures["setup"]["steps"]) == (1, 20)
    assert len(figures["steps_per_s_with_status_load"]) == 1 and "slowdown_percent" in figures
    assert json.loads((tmp_path / "server_bench.json").read_text()) == figures


def test_median_ms_syncs_around_each_call_and_returns_wall_and_cpu_medians():
    import time

    from bench import sds_step

    events = []

    def nap():
        events.append("call")
        time.sleep(0.02)

    wall, cpu = sds_step.median_ms(nap, 3, lambda: events.append("sync"))
    assert events == ["sync", "call", "sync"] * 3
    assert wall >= 20 and 0 <= cpu < wall  # sleeping costs wall time, not CPU time


# ------------------------------------------------------- each script's CLI: parse, call the function, print
def test_text_to_3d_quality_cli_prints_the_summary_of_run_prompts(monkeypatch, tmp_path, capsys):
    from bench import text_to_3d_quality

    calls, prior = [], object()
    summary = {"shape_correct": 1, "colour_correct": 0, "runs": 1, "max_seconds": 1.23456,
               "results": [{"prompt": "a red cube", "seconds": 1.23456}]}
    monkeypatch.setattr(text_to_3d_quality, "load_prior", lambda model: prior)
    monkeypatch.setattr(text_to_3d_quality, "run_prompts", lambda *args: calls.append(args) or summary)
    text_to_3d_quality.main(["--prompts", "a red cube", "--seed", "3", "--preset", "draft", "--workdir",
                             str(tmp_path / "w"), "--out", str(tmp_path / "s.json"), "--set", "steps=2"])
    assert calls == [(prior, ["a red cube"], 3, "draft", ["steps=2"], tmp_path / "w")]
    assert capsys.readouterr().out.splitlines() == [
        '{"prompt": "a red cube", "seconds": 1.235}',
        '{"shape_correct": 1, "colour_correct": 0, "runs": 1, "max_seconds": 1.23456}']
    assert json.loads((tmp_path / "s.json").read_text()) == summary


def test_run_prompts_configures_each_prompt_and_summarises(monkeypatch, tmp_path):
    from bench import text_to_3d_quality

    seen = []

    def fake_run_prompt(prior, prompt, config, workdir):
        seen.append((prompt, config.seed, config.steps, workdir))
        return {"prompt": prompt, "shape_ok": prompt.endswith("cube"), "colour_ok": True, "seconds": len(prompt)}

    monkeypatch.setattr(text_to_3d_quality, "run_prompt", fake_run_prompt)
    summary = text_to_3d_quality.run_prompts(None, ["a red cube", "a blue sphere"], 4, "draft", ["steps=3"], tmp_path)
    assert seen == [("a red cube", 4, 3, tmp_path), ("a blue sphere", 4, 3, tmp_path)]
    counts = (summary["shape_correct"], summary["colour_correct"], summary["runs"], summary["max_seconds"])
    assert counts == (1, 2, 2, 13)


def _paint_record(name: str, passed: bool) -> dict:
    return {"case": name, "prompt": "a red cube", "faces": 12, "seconds": 2.0, "load_1min": [0.5, 0.6],
            "fidelity": {"albedo_error": 0.04, "blotched_share": 0.02, "chamfer_pct": 0.0},
            "checks": {"paint_albedo": passed}, "passed": passed}


def test_paint_quality_cli_prints_the_table_of_run_cases_and_fails_on_a_failed_bar(monkeypatch, tmp_path, capsys):
    from bench import paint_quality

    calls, prior = [], object()
    summary = {"cases": [_paint_record("cube", False)], "passed": False}
    monkeypatch.setattr(paint_quality, "load_prior", lambda model: prior)
    monkeypatch.setattr(paint_quality, "run_cases", lambda *args: calls.append(args) or summary)
    code = paint_quality.main(["--cases", "cube-red", "--seed", "2", "--workdir", str(tmp_path), "--set",
                               "steps=2"])
    assert code == 1 and calls == [(prior, ["cube-red"], 2, "standard", ["steps=2"], tmp_path)]
    out = capsys.readouterr().out.splitlines()
    assert out == [paint_quality.case_line(summary["cases"][0]), f"FAIL: wrote {tmp_path / 'paint_quality.json'}"]
    assert "FAIL paint_albedo" in out[0] and json.loads((tmp_path / "paint_quality.json").read_text()) == summary


def test_paint_run_cases_configures_each_case(monkeypatch, tmp_path):
    from bench import paint_quality

    seen = []

    def fake_run_case(name, prior, config, workdir):
        seen.append((name, config.seed, config.steps, workdir))
        return _paint_record(name, name == "sphere-blue")

    monkeypatch.setattr(paint_quality, "run_case", fake_run_case)
    summary = paint_quality.run_cases(None, ["sphere-blue", "cube-red"], 5, "draft", ["steps=3"], tmp_path)
    assert seen == [("sphere-blue", 5, 3, tmp_path), ("cube-red", 5, 3, tmp_path)]
    assert summary["passed"] is False and [r["case"] for r in summary["cases"]] == ["sphere-blue", "cube-red"]
    assert (summary["seed"], summary["preset"], summary["overrides"]) == (5, "draft", ["steps=3"])


def test_sketch_quality_cli_prints_the_table_of_run_cases(monkeypatch, tmp_path, capsys):
    from bench import sketch_quality

    calls, prior = [], object()
    row = {"case": "house-box", "seed": 1, "prompt": "a blue house", "iou_sketch": 0.9, "seconds": 3.0,
           "fidelity": {"chamfer_pct": 1.5, "normal_error_deg": 7.0, "volume_iou": 0.9, "albedo_error": 0.05},
           "door_pixels_front": 30, "door_pixels_back": 0, "checks": {"sketch_box_iou": True}, "passed": True}
    summary = {"passed": True, "overrides": [], "cpu_count": 2, "results": [row]}
    monkeypatch.setattr(sketch_quality, "load_prior", lambda model: prior)
    monkeypatch.setattr(sketch_quality, "run_cases", lambda *args: calls.append(args) or summary)
    out_json = tmp_path / "s.json"
    code = sketch_quality.main(["--seeds", "1", "--cases", "house-box", "--workdir", str(tmp_path),
                                "--out", str(out_json)])
    assert code == 0 and calls == [(prior, [1], ["house-box"], [], tmp_path)]
    out = capsys.readouterr().out.splitlines()
    assert out == [*sketch_quality.table([row]).splitlines(), f"all bars hold; wrote {out_json}"]
    assert out[1].startswith("house-box") and "30/0" in out[1] and out[1].endswith("yes")
    assert json.loads(out_json.read_text()) == summary


def test_sketch_run_cases_filters_cases_and_configures_each_seed(monkeypatch, tmp_path):
    from bench import sketch_quality

    seen = []

    def fake_run_case(case, prior, config, workdir):
        seen.append((case["name"], config.seed, config.steps))
        return {"case": case["name"], "passed": config.seed == 0}

    monkeypatch.setattr(sketch_quality, "run_case", fake_run_case)
    summary = sketch_quality.run_cases(None, [0, 1], ["sphere-as-cube"], ["steps=3"], tmp_path)
    assert seen == [("sphere-as-cube", 0, 3), ("sphere-as-cube", 1, 3)] and summary["passed"] is False
    assert len(sketch_quality.run_cases(None, [0], None, [], tmp_path)["results"]) == len(sketch_quality.cases())


def test_sds_step_cli_prints_its_measurement(tiny_folder, capsys):
    from bench import sds_step

    sds_step.main(["--model", str(tiny_folder), "--preset", "draft", "--method", "sjc", "--repeats", "1",
                   "--rounds", "1", "--threads", "2"])
    figures = json.loads(capsys.readouterr().out)
    assert (figures["method"], figures["repeats"], figures["rounds"]) == ("sjc", 1, 1)
    assert figures["sds_step_ms"] > 0 and figures["ratio"] > 0


def test_server_bench_cli_passes_its_arguments_to_measure_and_writes_the_json(monkeypatch, tmp_path, capsys):
    from bench import server_bench

    calls = []
    monkeypatch.setattr(server_bench, "measure", lambda *args: calls.append(args) or {"slowdown_percent": 1.5})
    server_bench.main(["--rounds", "2", "--steps", "30", "--submits", "4", "--json", str(tmp_path / "s.json")])
    assert calls == [(2, 30, 4, 1, None, "local")]
    assert json.loads(capsys.readouterr().out) == {"slowdown_percent": 1.5}
    assert json.loads((tmp_path / "s.json").read_text()) == {"slowdown_percent": 1.5}


# ------------------------------------------------- issue #15's paint and sketch cases, their judges and targets
def test_door_mask_marks_exactly_the_pixels_door_pixels_counts():
    import numpy as np

    from bench import paint_quality
    from primitive_world.evaluate_samples import door_pixels
    from primitive_world.render import render

    house = render("house", "red", paint_quality.DOOR_FRONT_CAMERA).rgb  # dark red is the door's nearest rival
    noisy = np.clip(house + np.random.default_rng(0).normal(0.0, 0.1, house.shape), 0.0, 1.0)
    for image in (house, noisy):
        assert paint_quality.door_mask(image).sum() == door_pixels(image) > 0


def test_the_exact_house_has_its_door_where_the_contract_says_and_a_doorless_one_has_none():
    from bench import fidelity, paint_quality

    exact, _ = paint_quality.judge_door(fidelity.exact_textured("house", "green", size=128))
    assert exact["door_iou"] == 1.0 and exact["door_pixels_front"] == paint_quality.contract_door_region().sum()
    assert exact["door_pixels_back"] == 0
    house = fidelity.M.contract_mesh("house")
    doorless, _ = paint_quality.judge_door(fidelity.texture_exact(house.vertices, house.faces, "house", "green",
                                                                  size=128, door=False))
    assert doorless["door_iou"] == 0.0 and doorless["door_pixels_front"] == 0


def test_paint_shape_cases_are_four_shapes_of_10k_faces_or_more_in_two_colours_covering_the_palette():
    from bench import paint_quality
    from primitive_world import contract

    shape_cases = {name: case for name, case in paint_quality.CASES.items() if case["group"] == "shapes"}
    shapes = [case["shape"] for case in shape_cases.values()]
    assert sorted(set(shapes)) == ["cube", "cylinder", "sphere", "torus"] and all(shapes.count(s) == 2 for s in shapes)
    colours = [case["prompt"].split()[1] for case in shape_cases.values()]
    assert set(colours) == set(contract.COLOUR_NAMES)
    for shape in set(shapes):
        mesh = paint_quality.dense_mesh(shape, paint_quality.DENSE_LEVELS[shape])
        assert len(mesh.faces) >= 10_000 and mesh.is_watertight, shape
    timing = paint_quality.CASES["timing"]
    assert len(paint_quality.dense_mesh(timing["shape"], timing["subdivisions"]).faces) == 12_288


def test_the_painted_house_changes_colour_with_the_seed_and_the_other_cases_keep_theirs():
    from bench import paint_quality

    assert [paint_quality.case_prompt("house", seed) for seed in (0, 1, 2, 3)] == [
        "a green house", "a blue house", "a white house", "a green house"]
    assert paint_quality.case_prompt("house", 0) == paint_quality.CASES["house"]["prompt"]
    assert paint_quality.case_prompt("torus-green", 2) == "a green torus"


def test_geometry_is_unchanged_only_when_every_vertex_and_the_face_count_are_kept():
    from types import SimpleNamespace

    import numpy as np

    from bench import paint_quality
    from engine.export import TexturedMesh
    from engine.meshes import MeshInput

    cube = paint_quality.dense_mesh("cube", 1)
    source = MeshInput(np.asarray(cube.vertices, np.float64), np.asarray(cube.faces, np.int64))
    seams = np.concatenate([np.arange(len(cube.vertices)), [0, 3]])  # two vertices split at a UV seam

    def result(vertices, faces):
        mesh = TexturedMesh(vertices.astype(np.float32), faces, np.zeros((len(vertices), 2), np.float32), None)
        return SimpleNamespace(mesh=mesh, source_vertex=seams)

    kept = source.vertices[seams]
    assert paint_quality.geometry_unchanged(source, result(kept, source.faces))
    moved = kept.copy()
    moved[5, 2] += 1e-3
    assert not paint_quality.geometry_unchanged(source, result(moved, source.faces))
    assert not paint_quality.geometry_unchanged(source, result(kept, source.faces[1:]))


def test_house_box_sketches_are_the_houses_bounding_box_scaled_about_the_origin():
    import numpy as np

    from bench import sketch_quality

    boxes = {c["name"]: c for c in sketch_quality.cases(0) if c["group"] == "house-box"}
    assert list(boxes) == ["house-box", "house-box-0.9", "house-box-1.1"]
    for case in boxes.values():
        expected = case["scale"] * np.array([[-0.35, -0.30, -0.45], [0.35, 0.30, 0.45]])
        assert np.allclose(case["mesh"].bounds, expected) and case["prompt"] == "a green house"
        assert case["exact_shape"] == "house"


def test_a_house_box_that_stays_a_box_misses_the_house_targets_while_the_exact_house_meets_them_at_any_scale():
    from bench import fidelity, sketch_quality
    from bench.targets import run_checks

    box = sketch_quality.house_box(1.0)
    as_box = fidelity.judge(fidelity.texture_exact(box.vertices, box.faces, "house", "green", 64), "house", "green",
                            samples=4000)
    assert as_box["chamfer_pct"] > 2.0 and as_box["volume_iou"] < 0.85
    exact = fidelity.exact_textured("house", "green", size=64)
    scaled = sketch_quality.unscaled(exact, 1 / 1.1)  # the exact house at the 1.1 sketch's size
    judged = fidelity.judge(sketch_quality.unscaled(scaled, 1.1), "house", "green", samples=4000)
    record = {"group": "house-box", "fidelity": judged, "door_front": True}
    assert all(run_checks(record, sketch_quality.TARGETS).values())


def test_the_blockout_is_a_box_and_a_wedge_jittered_by_at_most_3_percent_the_same_for_a_seed():
    import numpy as np

    from bench import sketch_quality

    first, again, other = (sketch_quality.blockout(seed) for seed in (0, 0, 1))
    assert np.array_equal(first.vertices, again.vertices) and not np.array_equal(first.vertices, other.vertices)
    assert len(first.split(only_watertight=True)) == 2  # the box and the wedge, each closed
    (x0, x1), (y0, y1), (z0, z1) = (-0.35, 0.35), (-0.30, 0.30), (-0.45, 0.10)
    box = [(x, y, z) for x in (x0, x1) for y in (y0, y1) for z in (z0, z1)]
    wedge = [(x, y, z) for x in (x0, x1) for y, z in ((y0, z1), (y1, z1), (0.0, 0.45))]
    nearest = np.abs(first.vertices[:, None] - np.array(box + wedge)[None]).max(axis=2).min(axis=1)
    assert nearest.max() <= 0.03 * 0.9 + 1e-12 and nearest.max() > 0.01  # moved, by at most 3 % of 0.9 m
    sphere = next(c for c in sketch_quality.cases(1) if c["name"] == "sphere-as-cube")
    assert sphere["prompt"] == "a orange cube" and sphere["exact_shape"] == "cube"


def test_targets_take_the_median_the_max_or_the_share_over_their_groups_and_each_run_its_own_check():
    from bench.targets import Target, evaluate, run_checks

    targets = [Target("albedo", "albedo", ("a",), "fidelity.albedo_error", "median", "<=", 0.05, "score"),
               Target("door", "door", ("b",), "door_front", "share", ">=", 0.8, "fraction"),
               Target("time", "time", ("a", "b"), "seconds", "max", "<=", 45.0, "seconds")]
    records = [{"group": "a", "fidelity": {"albedo_error": e}, "seconds": t} for e, t in ((0.04, 30), (0.06, 50),
                                                                                          (0.05, 20))]
    records += [{"group": "b", "door_front": d, "seconds": 10} for d in (True, True, False)]
    records.append({"group": "a", "error": "RuntimeError: boom"})
    rows = {row["key"]: row for row in evaluate(records, targets)}
    assert (rows["albedo"]["value"], rows["albedo"]["met"], rows["albedo"]["basis"]) == \
        (0.05, True, "median of 3 run(s); 2/3 within")
    assert rows["door"]["value"] == 2 / 3 and rows["door"]["met"] is False and rows["door"]["basis"] == "2/3 runs"
    assert rows["time"]["value"] == 50 and rows["time"]["met"] is False
    assert run_checks(records[1], targets) == {"albedo": False, "time": False}
    assert run_checks(records[5], targets) == {"door": False, "time": True}
    assert evaluate([], targets)[0]["met"] is None


def test_report_lists_every_paint_and_sketch_target_among_the_other_bars_with_a_verdict(tmp_path):
    from bench import paint_quality, sketch_quality

    results = synthetic_results()
    bars = {t["key"]: t for t in results["other_bars"]}
    assert set(bars) == {t.key for t in paint_quality.TARGETS} | {t.key for t in sketch_quality.TARGETS} | \
        {"server_slowdown"}
    assert bars["paint_albedo"]["value"] == 0.04 and bars["paint_albedo"]["met"] is True
    assert bars["paint_blotched"]["value"] == 0.06 and bars["paint_blotched"]["met"] is False
    assert bars["paint_geometry"]["value"] == 0.75 and bars["paint_door_iou"]["met"] is False
    assert bars["paint_time"]["value"] == 40.0 and bars["paint_time"]["met"] is True
    assert bars["sketch_box_chamfer"]["value"] == 1.8 and bars["sketch_box_chamfer"]["met"] is True
    assert bars["sketch_box_iou"]["met"] is False and bars["sketch_box_door"]["basis"] == "2/3 runs"
    text = report.write_report(results, tmp_path)["report"].read_text()
    row = next(line for line in text.splitlines() if line.startswith("| Latent-Paint: house door IoU"))
    assert "| ≥ 0.600 | 0.500 | **not met** |" in row and "median of 1 run(s); 0/1 within" in row


def test_report_shows_a_table_per_paint_and_sketch_case_and_each_groups_medians(tmp_path):
    text = report.write_report(synthetic_results(), tmp_path)["report"].read_text()
    paint = text[text.index("### Latent-Paint"):text.index("### Sketch-Shape")]
    sketch = text[text.index("### Sketch-Shape"):text.index("## Speed")]
    assert "**house** (`a green house`, 256 faces):" in paint
    assert "| 0 | green | 0.00 % | 0.0° | 1.000 | 0.050 | 3.0 % | 0.500 | 60/3 | 30.0 s | **fail**: " \
           "paint_door_iou |" in paint
    assert "**torus-green**:" in paint and "error: RuntimeError: boom" in paint
    assert "| house | 1 |" in paint and "| 1/1 | 0/1 |" in paint  # door in front, none at the back
    assert "**house-box-1.1** (`a green house`, scale 1.1):" in sketch and "IoU with the sketch" in sketch
    assert "| 0 | green | 2.40 % | 9.0° | 0.800 | 0.050 | 5.0 % | 0.100 | 5/0 | 0.900 | 30.0 s | **fail**: " \
           "sketch_box_chamfer, sketch_box_iou, sketch_box_door |" in sketch
    assert "scaled back by 1/s first and judged against the unscaled house" in sketch
    assert "Contact sheet: not drawn" in paint  # the synthetic runs' GLBs do not exist


def test_report_draws_the_paint_and_sketch_contact_sheets_with_scaled_sketches_scaled_back(tmp_path, monkeypatch):
    import numpy as np

    from bench import fidelity
    from engine.export import write_glb

    results = copy.deepcopy(synthetic_results())
    shown = []
    real_sheet = fidelity.contact_sheet
    monkeypatch.setattr(fidelity, "contact_sheet", lambda rows, path, size: shown.extend(rows) or
                        real_sheet(rows, path, size))
    for task in ("paint", "sketch"):
        (tmp_path / task).mkdir()
        for r in results[task]["cases"]:
            if "error" not in r:  # found in out_dir/TASK, as a moved report finds them
                mesh = fidelity.exact_textured(r["exact_shape"], r["colour"], size=32)
                mesh.vertices = mesh.vertices * r.get("scale", 1.0)
                write_glb(tmp_path / task / Path(r["glb"]).name, mesh)
    written = report.write_report(results, tmp_path, sheet_size=24)
    for task in ("paint", "sketch"):
        assert written[f"{task}_sheet"].read_bytes()[:8] == PNG_MAGIC
        assert f"![{task} contact sheet]({report.TASK_SHEETS[task]})" in written["report"].read_text()
    box = next(row for row in shown if row.label.startswith("house-box-1.1"))
    assert np.allclose(box.mesh.vertices.max(axis=0), [0.35, 0.30, 0.45], atol=1e-5)  # judged size, not 1.1x
    assert len(shown) == 9 and "all 4 judged run(s)" in written["report"].read_text()


def _part(results: dict, measured: set[str], command: str, started: str, finished: str) -> dict:
    """``results`` as one process that ran only ``measured`` and skipped the other sections."""
    part = copy.deepcopy(results)
    skipped = [name for name in report.SECTIONS if name not in measured]
    for name in skipped:
        part[name] = None
        part["sections"][name] = {"skipped": True}
    for name in measured:
        part["sections"].setdefault(name, {"seconds": 1.0})
    part["settings"]["non_standard"] = {"skip": skipped}
    part.update(command=f"{command} --skip {' '.join(skipped)}", started=started, finished=finished,
                duration_s=100.0, cpu_time_s=90.0)
    return part


def test_runs_of_some_sections_each_merge_into_one_report_that_says_how_it_was_run(tmp_path):
    whole = synthetic_results()
    quality = _part(whole, {"quality"}, "python -m bench --quick", "2026-01-01T00:00:00+00:00",
                    "2026-01-01T00:02:00+00:00")
    beside = _part(whole, {"paint", "sketch"}, "python -m bench --quick", "2026-01-01T00:00:30+00:00",
                   "2026-01-01T00:01:30+00:00")
    rest = _part(whole, {"speed", "server", "contention", "gpu"}, "python -m bench --quick",
                 "2026-01-01T00:03:00+00:00", "2026-01-01T00:04:00+00:00")
    merged = report.merge_results([quality, beside, rest])
    for name in ("quality", "paint", "sketch", "speed", "contention"):
        assert merged[name] == whole[name] and not merged["sections"][name].get("skipped")
    assert merged["sections"]["ray"] == {"skipped": True}  # no part ran it
    assert merged["settings"]["non_standard"] == {"skip": ["ray"]}
    assert merged["command"] == "python -m bench --quick --skip ray"
    assert merged["duration_s"] == 240.0 and merged["cpu_time_s"] == 270.0
    assert [t["met"] for t in merged["targets"]] == [t["met"] for t in whole["targets"]]
    assert [p["sections"] for p in merged["parts"]] == [["quality"], ["paint", "sketch"],
                                                        ["speed", "server", "contention", "gpu"]]
    text = report.write_report(merged, tmp_path)["report"].read_text()
    assert "in 3 processes" in text and "Some of the processes ran at the same time" in text
    assert "python -m bench --quick --skip paint sketch speed server contention ray gpu" in text


def test_a_speed_part_without_quality_runs_gets_its_time_per_prop_from_the_merged_quality_runs():
    whole = synthetic_results()
    quality = _part(whole, {"quality"}, "python -m bench --quick", "2026-01-01T00:00:00+00:00",
                    "2026-01-01T00:02:00+00:00")
    rest = _part(whole, {"speed"}, "python -m bench --quick", "2026-01-01T00:03:00+00:00", "2026-01-01T00:04:00+00:00")
    assert report.speed_figures(rest).get("per_asset_s") is None  # no quality runs of its own
    merged = report.merge_results([quality, rest])
    seconds = [r["seconds"] for r in whole["quality"]["runs"] if "error" not in r]
    assert report.speed_figures(merged)["per_asset_s"]["median"] == statistics.median(seconds)
    assert "per_asset_s" not in merged["speed"]  # derived when read, never stored
    assert merged["speed"]["overhead"] == whole["speed"]["overhead"]  # the speed part's own figures stay
    time_per_prop = next(t for t in merged["targets"] if t["key"] == "time_per_prop")
    assert time_per_prop["value"] == statistics.median(seconds)


def test_merging_refuses_a_section_measured_twice_or_parts_with_different_settings():
    whole = synthetic_results()
    one = _part(whole, {"quality", "paint"}, "python -m bench --quick", "2026-01-01T00:00:00+00:00",
                "2026-01-01T00:01:00+00:00")
    two = _part(whole, {"paint"}, "python -m bench --quick", "2026-01-01T00:01:00+00:00", "2026-01-01T00:02:00+00:00")
    with pytest.raises(ValueError, match="'paint' was measured by 2 parts"):
        report.merge_results([one, two])
    other_seeds = _part(whole, {"sketch"}, "python -m bench --quick", "2026-01-01T00:01:00+00:00",
                        "2026-01-01T00:02:00+00:00")
    other_seeds["settings"]["seeds"] = [0, 1]
    with pytest.raises(ValueError, match="different modes or settings"):
        report.merge_results([one, other_seeds])


def test_report_cli_merges_parts_into_a_folder_and_refuses_what_does_not_add_up(tmp_path, capsys):
    whole = synthetic_results()
    paths = []
    for i, measured in enumerate(({"quality"}, {"paint", "sketch", "speed", "server", "contention", "ray", "gpu"})):
        path = tmp_path / f"part{i}" / "results.json"
        path.parent.mkdir()
        path.write_text(json.dumps(_part(whole, measured, "python -m bench --quick", f"2026-01-01T00:0{i}:00+00:00",
                                         f"2026-01-01T00:0{i}:50+00:00")))
        paths.append(str(path))
    assert report.main(["--merge", str(tmp_path / "merged"), *paths]) == 0
    merged = json.loads((tmp_path / "merged" / "results.json").read_text())
    assert merged["command"] == "python -m bench --quick" and merged["settings"]["non_standard"] == {}
    text = (tmp_path / "merged" / "REPORT.md").read_text()
    assert "in 2 processes" in text and "ran at the same time" not in text and "Non-standard" not in text
    assert report.main(["--merge", str(tmp_path / "again"), paths[0], paths[0]]) == 2
    assert "cannot merge" in capsys.readouterr().err


def test_report_cli_merge_refuses_a_missing_or_broken_part_or_writing_over_a_part_in_one_line(tmp_path, capsys):
    part = tmp_path / "part" / "results.json"
    part.parent.mkdir()
    part.write_text(json.dumps(synthetic_results()))
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    for args in ([str(tmp_path / "out"), str(tmp_path / "missing.json")], [str(tmp_path / "out"), str(broken)],
                 [str(tmp_path / "out"), str(broken.parent / "part" / ".." / "broken.json"), str(part)],
                 [str(part.parent), str(part)]):
        assert report.main(["--merge", *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("cannot merge: ") and err.count("\n") == 1
    assert json.loads(part.read_text()) == json.loads(json.dumps(synthetic_results()))  # the part is untouched
    assert not (tmp_path / "out").exists()


def _quality_beside_paint_and_sketch(whole: dict) -> dict:
    """``whole`` as quality in one process and paint and sketch beside it, merged."""
    return report.merge_results([
        _part(whole, {"quality"}, "python -m bench --quick", "2026-01-01T00:00:00+00:00", "2026-01-01T00:02:00+00:00"),
        _part(whole, {"paint", "sketch"}, "python -m bench --quick", "2026-01-01T00:00:30+00:00",
              "2026-01-01T00:01:30+00:00")])


def test_a_merged_run_merges_again_with_a_later_part_keeping_every_process():
    whole = synthetic_results()
    first = _quality_beside_paint_and_sketch(whole)
    later = _part(whole, {"speed", "server", "contention", "ray", "gpu"}, "python -m bench --quick",
                  "2026-01-01T00:03:00+00:00", "2026-01-01T00:04:00+00:00")
    merged = report.merge_results([first, later])
    assert [p["sections"] for p in merged["parts"]] == [["quality"], ["paint", "sketch"],
                                                        ["speed", "server", "contention", "ray", "gpu"]]
    assert merged["command"] == "python -m bench --quick" and merged["duration_s"] == 240.0


def test_a_section_run_again_replaces_the_older_parts_one_when_the_newer_wins():
    whole = synthetic_results()
    first = _quality_beside_paint_and_sketch(whole)
    rerun = _part(whole, {"sketch"}, "python -m bench --quick", "2026-01-02T00:00:00+00:00",
                  "2026-01-02T00:10:00+00:00")
    rerun["sketch"]["cases"] = rerun["sketch"]["cases"][:1]
    with pytest.raises(ValueError, match="'sketch' was measured by 2 parts"):
        report.merge_results([first, rerun])
    merged = report.merge_results([first, rerun], newer_wins=True)
    assert merged["sketch"] == rerun["sketch"] and merged["paint"] == whole["paint"]
    assert [p["sections"] for p in merged["parts"]] == [["quality"], ["paint"], ["sketch"]]
    assert merged["finished"] == "2026-01-02T00:10:00+00:00"
    assert report.merge_results([rerun, first], newer_wins=True)["sketch"] == rerun["sketch"]  # by time, not order
