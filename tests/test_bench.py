"""The benchmark's report writer on synthetic results: no generation, a few seconds.

Needs matplotlib (the ``bench`` extra); it fails rather than skips without it, so a missing plot
library cannot pass unnoticed.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # bench/ is not an installed package; plain `pytest` does not put the root first
    sys.path.insert(0, str(ROOT))

from bench import report  # noqa: E402
from bench.run import summarise_quality, summarise_speed, wilson_interval  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _run(prompt, seed, shape, colour, seconds, **extra):
    _, colour_word, shape_word = prompt.split()
    optimise = seconds * 0.6
    return {"prompt": prompt, "colour_word": colour_word, "shape_word": shape_word, "seed": seed, "steps": 600,
            "seconds": seconds, "timings": {"optimise_s": optimise, "colour_s": seconds * 0.25,
                                            "mesh_s": seconds * 0.1, "write_s": seconds * 0.05},
            "sds_its_per_s": 600 / optimise, "shape": shape, "shape_ok": shape == shape_word,
            "iou_true": 0.8, "iou_margin": 0.1 if shape == shape_word else -0.05,
            "colour": colour, "colour_ok": colour == colour_word, "colour_distance": 0.05, **extra}


def synthetic_results() -> dict:
    runs = [
        _run("a red cube", 0, "cube", "red", 22.0),
        _run("a blue sphere", 0, "sphere", "blue", 24.0),
        _run("a green house", 0, "cube", "green", 30.0, door_pixels_front=40, door_pixels_back=3,
             door_front=True, janus=False),
        _run("a yellow cone", 0, "cone", "white", 70.0),
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
        "sections": {name: {"seconds": 1.0} for name in ("quality", "paint", "sketch", "speed", "server", "gpu")},
        "quality": {"prompts": [r["prompt"] for r in runs], "seeds": [0], "runs": runs, **summarise_quality(runs)},
        "paint": {"cases": [{"case": "house", "seed": 0, "prompt": "a green house", "colour": "green",
                             "door_pixels_front": 35, "door_pixels_back": 0, "seconds": 20.0,
                             "checks": {"colour": True, "door_front": True, "no_door_back": True}, "passed": True}],
                  "passed": {"k": 1, "n": 1}},
        "sketch": {"cases": [{"case": "cube-as-house", "seed": 0, "prompt": "a red house", "iou": 0.81,
                              "min_iou": 0.7, "colour": "red", "colour_wanted": "red", "seconds": 30.0,
                              "passed": True}],
                   "iou": {"median": 0.81, "mean": 0.81, "min": 0.81, "max": 0.81, "n": 1},
                   "passed": {"k": 1, "n": 1}},
        "speed": {**summarise_speed(runs),
                  "overhead": {"prior": "primitive-world-v1", "unet_parameters": 4_000_000, "latent_size": 16,
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
        "gpu": {"available": False, "reason": "torch.cuda.is_available() is False"},
    }
    results["targets"] = report.evaluate_targets(results)
    results["other_bars"] = report.evaluate_other_bars(results)
    return results


def test_targets_are_judged_with_margins():
    targets = {t["key"]: t for t in synthetic_results()["targets"]}
    assert targets["shape_top1"]["value"] == 0.75 and targets["shape_top1"]["met"] is False  # the failed run is out
    assert abs(targets["shape_top1"]["margin"] - (-0.15)) < 1e-9
    assert targets["colour"]["met"] is False
    assert targets["janus"]["value"] == 0.0 and targets["janus"]["met"] is True
    assert targets["time_per_prop"]["value"] == 27.0 and targets["time_per_prop"]["met"] is True
    assert targets["overhead_ratio"]["met"] is False and abs(targets["overhead_ratio"]["margin"] + 0.05) < 1e-9


def test_report_has_the_targets_table_and_writes_the_plots(tmp_path):
    results = synthetic_results()
    written = report.write_report(results, tmp_path)
    text = (tmp_path / "REPORT.md").read_text()
    assert "## Targets (issue #7)" in text
    assert "| target | goal | measured | verdict | margin | basis |" in text
    for label in ("Shape top-1 accuracy", "Colour accuracy", "House Janus rate", "Median time per textured prop",
                  "Overhead ratio"):
        assert label in text
    assert "missed by 15.0 pp" in text and "met by 33.0 s" in text and "missed by 0.05×" in text
    assert "No GPU was available" in text and "python -m bench --quick" in text
    assert "subset" in text  # quick mode must say its accuracy is on a subset
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
    results["targets"] = report.evaluate_targets(results)
    assert all(t["met"] is None for t in results["targets"])
    written = report.write_report(results, tmp_path)
    text = written["report"].read_text()
    assert text.count("not measured") >= 5
    assert "RuntimeError: no prior" in text and "--skip speed" in text
    assert "quality" not in written and not (tmp_path / report.PLOTS["quality"]).exists()


def test_wilson_interval_brackets_the_rate():
    low, high = wilson_interval(3, 4)
    assert 0 < low < 0.75 < high < 1
    assert wilson_interval(0, 0) is None


def test_overhead_measurement_times_both_and_reports_their_ratio():
    from bench import sds_step
    from engine.prior import Prior
    from engine.tasks.generate import preset_config
    from engine.testing import tiny_components, tiny_metadata

    calls = {"forward": 0}
    prior = Prior(*tiny_components(), metadata=tiny_metadata())
    forward = prior.unet.forward

    def counted(*args, **kwargs):
        calls["forward"] += 1
        return forward(*args, **kwargs)

    prior.unet.forward = counted
    figures = sds_step.measure(prior, preset_config("draft", grid_resolution=16, steps=10_000), repeats=2, rounds=2)
    # 5 warm-up pairs, then 2 rounds of 2 calls each of the bare forward and of the SDS step
    assert calls["forward"] == 2 * (5 + 2 * 2)
    assert figures["unet_cfg_forward_ms"] > 0 and figures["sds_step_ms"] > 0
    assert abs(figures["ratio"] - figures["sds_step_ms"] / figures["unet_cfg_forward_ms"]) < 1e-12
    assert figures["grid_resolution"] == 16 and figures["prior"] == prior.metadata.name
