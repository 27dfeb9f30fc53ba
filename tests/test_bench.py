"""The benchmark: its report writer on synthetic results, and each section's direct call into its bench
script on the tiny random prior with the smallest settings (no full run).

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

from bench import report, run  # noqa: E402
from bench.run import summarise_quality, summarise_speed, wilson_interval  # noqa: E402

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


def test_paint_section_runs_a_case_through_paint_quality(tiny, tmp_path):
    section = run.run_paint(tiny, ["house"], [0], SMALL_PAINT, tmp_path)
    (record,) = section["cases"]
    assert "error" not in record, record.get("error")
    assert record["case"] == "house" and record["seed"] == 0 and record["colour_ok"] == record["checks"]["colour"]
    assert set(record["checks"]) == {"colour", "door_front", "no_door_back"}
    assert (tmp_path / "paint" / "seed0" / "house.glb").exists()
    assert (tmp_path / "paint" / "seed0" / "house_views.png").read_bytes()[:8] == PNG_MAGIC
    assert section["passed"]["n"] == 1 and section["door_back"]["n"] == 1


def test_sketch_section_runs_a_case_through_sketch_quality(tiny, tmp_path):
    section = run.run_sketch(tiny, ["cube-as-house"], [2], SMALL_SKETCH, tmp_path)
    (row,) = section["cases"]
    assert "error" not in row, row.get("error")
    assert row["case"] == "cube-as-house" and row["seed"] == 2 and 0.0 <= row["iou"] <= 1.0
    assert (tmp_path / "sketch" / "cube-as-house_seed2.glb").exists()
    assert section["iou"]["n"] == 1 and section["passed"]["n"] == 1


def test_grid_scaling_times_one_step_per_grid(tiny):
    rows = run.grid_scaling(tiny, [16, 24], 1, ["field.samples_per_ray=16"])
    assert [r["grid_resolution"] for r in rows] == [16, 24]
    assert all(r["step_ms"] > 0 and abs(r["steps_per_s"] * r["step_ms"] - 1000) < 1e-9 for r in rows)


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
    return {"case": name, "prompt": "a red cube", "faces": 12, "colour": "red", "colour_distance": 0.01,
            "seconds": 2.0, "load_1min": [0.5, 0.6], "checks": {"colour": passed}, "passed": passed}


def test_paint_quality_cli_prints_the_table_of_run_cases_and_fails_on_a_failed_bar(monkeypatch, tmp_path, capsys):
    from bench import paint_quality

    calls, prior = [], object()
    summary = {"cases": [_paint_record("cube", False)], "passed": False}
    monkeypatch.setattr(paint_quality, "load_prior", lambda model: prior)
    monkeypatch.setattr(paint_quality, "run_cases", lambda *args: calls.append(args) or summary)
    code = paint_quality.main(["--cases", "cube", "--seed", "2", "--workdir", str(tmp_path), "--set", "steps=2"])
    assert code == 1 and calls == [(prior, ["cube"], 2, "standard", ["steps=2"], tmp_path)]
    out = capsys.readouterr().out.splitlines()
    assert out == [paint_quality.case_line(summary["cases"][0]), f"FAIL: wrote {tmp_path / 'paint_quality.json'}"]
    assert "FAIL colour" in out[0] and json.loads((tmp_path / "paint_quality.json").read_text()) == summary


def test_paint_run_cases_configures_each_case(monkeypatch, tmp_path):
    from bench import paint_quality

    seen = []

    def fake_run_case(name, prior, config, workdir):
        seen.append((name, config.seed, config.steps, workdir))
        return _paint_record(name, name == "sphere")

    monkeypatch.setattr(paint_quality, "run_case", fake_run_case)
    summary = paint_quality.run_cases(None, ["sphere", "cube"], 5, "draft", ["steps=3"], tmp_path)
    assert seen == [("sphere", 5, 3, tmp_path), ("cube", 5, 3, tmp_path)]
    assert summary["passed"] is False and [r["case"] for r in summary["cases"]] == ["sphere", "cube"]
    assert (summary["seed"], summary["preset"], summary["overrides"]) == (5, "draft", ["steps=3"])


def test_sketch_quality_cli_prints_the_table_of_run_cases(monkeypatch, tmp_path, capsys):
    from bench import sketch_quality

    calls, prior = [], object()
    row = {"case": "cube-as-house", "seed": 1, "iou": 0.9, "min_iou": 0.7, "colour": "red", "colour_wanted": "red",
           "seconds": 3.0, "threads": 1, "load_after": 0.5, "passed": True}
    summary = {"passed": True, "overrides": [], "cpu_count": 2, "results": [row]}
    monkeypatch.setattr(sketch_quality, "load_prior", lambda model: prior)
    monkeypatch.setattr(sketch_quality, "run_cases", lambda *args: calls.append(args) or summary)
    out_json = tmp_path / "s.json"
    code = sketch_quality.main(["--seeds", "1", "--cases", "cube-as-house", "--workdir", str(tmp_path),
                                "--out", str(out_json)])
    assert code == 0 and calls == [(prior, [1], ["cube-as-house"], [], tmp_path)]
    out = capsys.readouterr().out.splitlines()
    assert out == [*sketch_quality.table([row]).splitlines(), f"all bars hold; wrote {out_json}"]
    assert out[1].startswith("cube-as-house") and out[1].endswith("yes")
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
    assert calls == [(2, 30, 4, 1, None)]
    assert json.loads(capsys.readouterr().out) == {"slowdown_percent": 1.5}
    assert json.loads((tmp_path / "s.json").read_text()) == {"slowdown_percent": 1.5}
