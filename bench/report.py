"""Turns the benchmark's results dict (``bench/run.py``) into targets, ``REPORT.md`` and PNG plots.

Kept apart from the measurements so the report can be rewritten from a saved ``results.json``, or
written from runs that each measured some of the sections (``--skip`` the others), e.g. side by side::

    python -m bench.report out/bench/quick/results.json
    python -m bench.report --merge OUT_DIR PART/results.json PART/results.json ...
    python -m bench.report --merge OUT_DIR --newer-wins OLD/results.json RERUN/results.json

``--newer-wins`` takes a section that several parts measured from the part that finished last, so one
section re-run after a change replaces its older numbers.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import logging
import shlex
import statistics
import sys
from pathlib import Path

from .targets import target_row

log = logging.getLogger(__name__)

# The fidelity targets (bench/fidelity.judge's measures): medians over every judged asset.
# measure: (comparison, goal); bench/run.summarise_fidelity counts the runs within each as well.
FIDELITY_GOALS = {
    "chamfer_pct": ("<=", 1.0),
    "normal_error_deg": ("<=", 6.0),
    "volume_iou": (">=", 0.90),
    "albedo_error": ("<=", 0.05),
    "blotched_share": ("<=", 0.05),
}
# Each shape's own medians: at most twice the chamfer, normal and albedo targets, IoU at least 0.8.
PER_SHAPE_GOALS = {
    "chamfer_pct": ("<=", 2 * FIDELITY_GOALS["chamfer_pct"][1]),
    "normal_error_deg": ("<=", 2 * FIDELITY_GOALS["normal_error_deg"][1]),
    "volume_iou": (">=", 0.80),
    "albedo_error": ("<=", 2 * FIDELITY_GOALS["albedo_error"][1]),
}
# measure: (short name, unit) in the report's tables.
FIDELITY_NAMES = {"chamfer_pct": ("chamfer", "percent"), "normal_error_deg": ("normal error", "degrees"),
                  "volume_iou": ("volume IoU", "score"), "albedo_error": ("albedo error", "score"),
                  "blotched_share": ("blotched", "fraction"), "door_albedo_error": ("door albedo error", "score")}
# The targets: (key, label, comparison, goal, unit).
TARGETS = [
    ("shape_top1", "Shape top-1 accuracy (text-to-3D)", ">=", 0.95, "fraction"),
    ("colour", "Colour accuracy (text-to-3D)", ">=", 1.0, "fraction"),
    ("door_front", "House front door visible", ">=", 0.80, "fraction"),
    ("janus", "House Janus rate (door seen from the back)", "<=", 0.05, "fraction"),
    ("chamfer", "Chamfer to the exact shape (median, % of bbox diagonal)", *FIDELITY_GOALS["chamfer_pct"],
     "percent"),
    ("normal_error", "Normal error (median)", *FIDELITY_GOALS["normal_error_deg"], "degrees"),
    ("volume_iou", "Volume IoU with the exact shape (median)", *FIDELITY_GOALS["volume_iou"], "score"),
    ("albedo_error", "Albedo error (median)", *FIDELITY_GOALS["albedo_error"], "score"),
    ("blotched", "Blotched share of the surface (median)", *FIDELITY_GOALS["blotched_share"], "fraction"),
    ("fidelity_per_shape", "Every shape's medians: ≤ 2× the chamfer, normal, albedo targets; IoU ≥ 0.8", ">=",
     1.0, "fraction"),
    ("handles", "Handles right: a torus has exactly one handle, the others none", ">=", 1.0, "fraction"),
    ("time_per_prop", "Median time per prop, 2-core CPU", "<=", 45.0, "seconds"),
    ("overhead_ratio", "Overhead ratio (SDS step / U-Net CFG forward)", "<=", 1.3, "ratio"),
    ("contention_pair", "Two engine processes side by side, the slower one ÷ alone", "<=", 1.5, "ratio"),
    ("contention_busy", "A prop beside one busy thread ÷ alone", "<=", 1.8, "ratio"),
]
GOALS = {key: goal for key, _, _, goal, _ in TARGETS}
# The benchmark's sections, in the order bench/run.py runs them.
SECTIONS = ("quality", "paint", "sketch", "speed", "server", "contention", "ray", "gpu")
SERVER_SLOWDOWN_GOAL_PERCENT = 5.0  # bench/server_bench.py's goal under 100 status requests/s
PHASES = [("optimise_s", "optimisation"), ("colour_s", "colour stage"), ("mesh_s", "mesh + UVs"),
          ("write_s", "file export")]
PLOTS = {"quality": "quality.png", "speed": "speed.png", "scaling": "scaling.png"}
SHEET = "fidelity_sheet.png"
TASK_SHEETS = {"paint": "paint_sheet.png", "sketch": "sketch_sheet.png"}
SHEET_ALL_MAX = 16  # up to this many judged assets the contact sheet shows every one
SHEET_TILE = 128  # pixels per view on the contact sheet
NOT_MEASURED = "not measured in this run"


# ------------------------------------------------------------------------------------- formatting
def _fmt(value, unit: str) -> str:
    if value is None:
        return "–"
    if unit == "fraction":
        return f"{100 * value:.1f} %"
    if unit == "seconds":
        return f"{value:.1f} s"
    if unit == "ratio":
        return f"{value:.2f}×"
    if unit == "pp":
        return f"{100 * value:.1f} pp"
    if unit == "percent":  # a value already in per cent
        return f"{value:.2f} %"
    if unit == "degrees":
        return f"{value:.1f}°"
    if unit == "score":
        return f"{value:.3f}"
    return f"{value:g}"


def _margin_text(margin: float, unit: str) -> str:
    amount = _fmt(abs(margin), "pp" if unit == "fraction" else unit)
    return f"met by {amount}" if margin >= 0 else f"missed by {amount}"


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _get(data, *keys):
    """Nested lookup that gives None for a missing, skipped or failed section."""
    for key in keys:
        if not isinstance(data, (dict, list)):
            return None
        try:
            data = data[key]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _ok(flag: bool) -> str:
    return "yes" if flag else "**no**"


# ---------------------------------------------------------------------------------------- targets
def shape_fidelity_misses(medians: dict) -> list[str]:
    """The per-shape goals one shape's medians (``quality.fidelity.by_shape[shape]``) miss, as text."""
    misses = []
    for measure, (op, goal) in PER_SHAPE_GOALS.items():
        value = medians.get(measure)
        if value is None or (value < goal if op == ">=" else value > goal):
            name, unit = FIDELITY_NAMES[measure]
            misses.append(f"{name} {_fmt(value, unit)}")
    return misses


def _fidelity_values(quality: dict, subset: str) -> dict:
    """Values and bases of the fidelity targets; (None, NOT_MEASURED) for a run without fidelity data."""
    fidelity = quality.get("fidelity")
    keys = {"chamfer": "chamfer_pct", "normal_error": "normal_error_deg", "volume_iou": "volume_iou",
            "albedo_error": "albedo_error", "blotched": "blotched_share"}
    if not fidelity:
        return {key: (None, NOT_MEASURED) for key in (*keys, "fidelity_per_shape", "handles")}
    values = {}
    for key, measure in keys.items():
        summary, within = fidelity["overall"].get(measure), fidelity["within_target"].get(measure) or {}
        values[key] = (summary["median"] if summary else None,
                       f"median of {fidelity['n']} asset(s){subset}; {within.get('k', 0)}/{within.get('n', 0)} "
                       "assets within" if summary else NOT_MEASURED)
    by_shape = fidelity.get("by_shape") or {}
    missed = {shape: shape_fidelity_misses(m) for shape, m in by_shape.items()}
    missed = {shape: m for shape, m in missed.items() if m}
    basis = f"{len(by_shape) - len(missed)}/{len(by_shape)} shapes"
    if missed:
        basis += "; " + "; ".join(f"{shape}: {', '.join(m)}" for shape, m in missed.items())
    values["fidelity_per_shape"] = ((len(by_shape) - len(missed)) / len(by_shape) if by_shape else None, basis)
    handles = fidelity.get("handles") or {}
    basis = f"{handles.get('correct', 0)}/{handles.get('n', 0)} runs"
    if handles.get("misses"):
        basis += "; " + ", ".join(f"{m['prompt']} s{m['seed']}: {m['handles']}" for m in handles["misses"][:6])
        basis += " …" if len(handles["misses"]) > 6 else ""
    values["handles"] = (handles.get("rate"), basis if handles.get("n") else NOT_MEASURED)
    return values


def evaluate_targets(results: dict) -> list[dict]:
    """The targets (``TARGETS``), each met / not met with the margin (positive: headroom)."""
    quality = results.get("quality") or {}
    settings = results.get("settings") or {}
    full_runs = settings.get("full_prompt_set_runs", 147)
    subset = f" (a subset; the target is over all {full_runs})" if settings.get("subset") else ""
    shape, colour, janus = quality.get("shape") or {}, quality.get("colour") or {}, quality.get("janus") or {}
    per_asset = speed_figures(results).get("per_asset_s")
    overhead = _get(results, "speed", "overhead")
    overhead = overhead if isinstance(overhead, dict) and "ratio" in overhead else None
    threads = _get(results, "machine", "torch_threads")
    values = {
        "shape_top1": (shape.get("rate"), f"{shape.get('correct', 0)}/{shape.get('n', 0)} runs{subset}"),
        "colour": (colour.get("rate"), f"{colour.get('correct', 0)}/{colour.get('n', 0)} runs{subset}"),
        "door_front": (janus["door_in_front"] / janus["n"] if janus.get("n") else None,
                       f"{janus.get('door_in_front', 0)}/{janus.get('n', 0)} house runs"),
        "janus": (janus.get("rate"), f"{janus.get('correct', 0)}/{janus.get('n', 0)} house runs"),
        **(_fidelity_values(quality, subset) if quality else {}),
        "time_per_prop": (per_asset["median"] if per_asset else None,
                          f"median of {per_asset['n']} asset(s), {threads} torch thread(s)" if per_asset else ""),
        "overhead_ratio": (overhead["ratio"] if overhead else None,
                           f"{overhead['sds_step_ms']:.1f} ms / {overhead['unet_cfg_forward_ms']:.1f} ms, "
                           f"bench/sds_step.py" if overhead else ""),
        **_contention_values(results.get("contention")),
    }
    return [target_row(key, label, op, goal, unit, *values.get(key, (None, "")))
            for key, label, op, goal, unit in TARGETS]


def _contention_values(contention: dict | None) -> dict:
    if not contention:
        return {}
    how = f"{contention['preset']} preset, alone {contention['alone_s']:.1f} s, bench/contention.py"
    pair = ", ".join(f"{t:.1f}" for t in contention["two_side_by_side_s"])
    return {"contention_pair": (contention["two_side_by_side_ratio"], f"{pair} s; {how}"),
            "contention_busy": (contention["beside_busy_thread_ratio"],
                                f"{contention['beside_busy_thread_s']:.1f} s; {how}")}


def evaluate_other_bars(results: dict) -> list[dict]:
    """Bars from elsewhere that this benchmark also measures: issue #15's paint and sketch targets (the
    verdicts ``bench/run.summarise_cases`` stored), or, for a run from before them, issue #6's
    cases passed; and the server's."""
    rows = []
    for key, name in (("paint", "Latent-Paint cases passing issue #6's checks"),
                      ("sketch", "Sketch-Shape cases passing issue #6's checks")):
        targets, passed = _get(results, key, "targets"), _get(results, key, "passed")
        if targets is not None:
            rows += targets
        elif passed and passed["n"]:
            rows.append(target_row(key, name, ">=", 1.0, "fraction", passed["k"] / passed["n"],
                                   f"{passed['k']}/{passed['n']} cases"))
    slowdown = _get(results, "server", "slowdown_percent")
    if slowdown is not None:
        rows.append(target_row("server_slowdown", "Server slowdown under 100 status requests/s", "<=",
                               SERVER_SLOWDOWN_GOAL_PERCENT / 100, "fraction", slowdown / 100,
                               "engine steps/s with vs without the load"))
    return rows


def _target_rows(targets: list[dict]) -> list[list]:
    rows = []
    for t in targets:
        if t["op"] == ">=" and t["unit"] == "fraction" and t["goal"] == 1.0:
            goal = "= 100 %"  # nothing can exceed it
        else:
            goal = f"{'≥' if t['op'] == '>=' else '≤'} {_fmt(t['goal'], t['unit'])}"
        if t["met"] is None:
            verdict, margin = "not measured", "–"
        else:
            verdict, margin = ("**met**" if t["met"] else "**not met**"), _margin_text(t["margin"], t["unit"])
        rows.append([t["label"], goal, _fmt(t["value"], t["unit"]), verdict, margin, t["basis"]])
    return rows


# ------------------------------------------------------------------------------------------ plots
def _plot_quality(results: dict, path: Path) -> bool:
    import matplotlib.pyplot as plt

    by_shape, by_colour = _get(results, "quality", "by_shape"), _get(results, "quality", "by_colour")
    if not by_shape and not by_colour:
        return False
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.6), constrained_layout=True)
    for ax, table, goal, title in ((axes[0], by_shape or {}, GOALS["shape_top1"], "Shape top-1 by shape"),
                                   (axes[1], by_colour or {}, GOALS["colour"], "Colour accuracy by colour")):
        names = list(table)
        rates = [100 * (table[n]["rate"] or 0) for n in names]
        bars = ax.bar(names, rates, color="#4c72b0")
        for bar, name in zip(bars, names):
            ax.annotate(f"{table[name]['correct']}/{table[name]['n']}", (bar.get_x() + bar.get_width() / 2,
                        bar.get_height()), ha="center", va="bottom", fontsize=8)
        ax.axhline(100 * goal, color="#c44e52", linestyle="--")
        ax.set_ylim(0, 110)
        ax.set_xlim(-0.75, max(len(names), 4) - 0.25)  # a lone bar would otherwise fill the panel
        ax.set_ylabel("% of runs")
        ax.set_title(f"{title} (dashed: target {100 * goal:.0f} %)", fontsize=10)
        ax.tick_params(axis="x", labelrotation=30)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def _plot_speed(results: dict, path: Path) -> bool:
    import matplotlib.pyplot as plt

    runs = [r for r in (_get(results, "quality", "runs") or []) if "error" not in r]
    if not runs:
        return False
    figure, ax = plt.subplots(figsize=(10, 3.8), constrained_layout=True)
    if len(runs) <= 24:  # one stacked bar per asset stays legible up to about two dozen
        labels = [f"{r['prompt'][2:]} s{r['seed']}" for r in runs]
        bottom = [0.0] * len(runs)
        for key, name in PHASES:
            heights = [r["timings"].get(key, 0.0) for r in runs]
            ax.bar(labels, heights, bottom=bottom, label=name)
            bottom = [b + h for b, h in zip(bottom, heights)]
        ax.set_ylabel("seconds per asset")
        ax.set_xlim(-0.75, max(len(runs), 4) - 0.25)
        ax.tick_params(axis="x", labelrotation=30)
        ax.axhline(GOALS["time_per_prop"], color="#c44e52", linestyle="--",
                   label=f"target: median ≤ {GOALS['time_per_prop']:g} s")
    else:
        ax.hist([r["seconds"] for r in runs], bins=20, color="#4c72b0")
        ax.axvline(GOALS["time_per_prop"], color="#c44e52", linestyle="--",
                   label=f"target: median ≤ {GOALS['time_per_prop']:g} s")
        ax.set_xlabel("seconds per asset")
        ax.set_ylabel("assets")
    ax.set_title("Wall time per textured asset")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def _plot_scaling(results: dict, path: Path) -> bool:
    import matplotlib.pyplot as plt

    grid, steps = _get(results, "speed", "grid_scaling"), _get(results, "speed", "steps_scaling")
    grid = grid if isinstance(grid, list) and grid else None
    steps = steps if isinstance(steps, list) and steps else None
    if not grid and not steps:
        return False
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.6), constrained_layout=True)
    if grid:
        xs = [r["grid_resolution"] for r in grid]
        axes[0].plot(xs, [r["step_ms"] for r in grid], marker="o")
        axes[0].set_xticks(xs)
        axes[0].set_xlabel("voxel grid resolution R (R³ voxels)")
        axes[0].set_ylabel("ms per SDS step (median)")
        axes[0].set_ylim(bottom=0)  # from zero, so noise does not pass for growth
        axes[0].set_title("Step time vs grid resolution")
    else:
        axes[0].set_axis_off()
    if steps:
        xs = [r["steps"] for r in steps]
        axes[1].plot(xs, [r["seconds"] for r in steps], marker="o", label="end to end")
        axes[1].plot(xs, [r["timings"]["optimise_s"] for r in steps], marker="s", label="optimisation")
        axes[1].plot(xs, [r["seconds"] - r["timings"]["optimise_s"] for r in steps], marker="^",
                     label="colour + mesh + export")
        axes[1].set_xticks(xs)
        axes[1].set_xlabel("optimisation steps")
        axes[1].set_ylabel("seconds")
        axes[1].set_ylim(bottom=0)
        axes[1].set_title("Time per asset vs step count")
        axes[1].legend(fontsize=8)
    else:
        axes[1].set_axis_off()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


# ---------------------------------------------------------------------------------------- sections
def _section_status(results: dict, name: str) -> str | None:
    """A line for a section that has no figures, or None when it has some."""
    status = _get(results, "sections", name) or {}
    if status.get("skipped"):
        return f"_Skipped (`--skip {name}`)._"
    if status.get("error"):
        return f"_Not measured: the section failed with `{status['error']}` (traceback in results.json)._"
    if results.get(name) is None:
        return "_Not measured._"
    return None


def _section(results: dict, name: str, title: str, body) -> list[str]:
    """A report section: its heading, then ``body()`` when the run has its figures, else why not."""
    missing = _section_status(results, name)
    return [f"## {title}", ""] + ([missing, ""] if missing else body())


def _quality_md(results: dict, plots: dict) -> list[str]:
    out = []
    q, settings = results["quality"], results.get("settings") or {}
    out.append(
        f"{q['runs_completed']} assets ({len(q['prompts'])} prompts × seed(s) {', '.join(map(str, q['seeds']))}), "
        "each generated with default settings, exported as GLB and read back. **Shape**: silhouettes of the "
        "textured mesh from 16 views (8 azimuths × elevations 10° and 35°, the contract camera) against the 7 "
        "analytic shapes; the best mean IoU wins. **Colour**: the median colour of the texels the mesh uses, "
        "nearest shaded palette colour. **Janus**: a house whose back view (azimuth 180°, elevation 15°) shows "
        "20 or more door-coloured pixels, as `bench/paint_quality.py` counts them, in an unlit render of the "
        "texture: text-to-3D textures are albedo (the prior's light divided out). The same count on a render lit "
        "by the contract's light is given for information: there the back is in shadow at 0.4 × albedo, where "
        "the classifier, which allows any shading from 0.4 to 1 for every colour, takes dark-red specks for a "
        "lit door.")
    if settings.get("subset"):
        out += ["", f"> Quick mode: accuracy is on this subset only, not on the full "
                    f"{settings.get('full_prompt_set_runs', 147)}-run prompt set the targets are defined over. "
                    "The 95 % intervals below show how little a handful of runs can say."]
    if q["runs_failed"]:
        out += ["", f"**{q['runs_failed']} run(s) failed** and are left out of the rates (errors in results.json)."]
    rows = []
    for key, label in (("shape", "shape top-1"), ("colour", "colour")):
        r = q[key]
        if r["n"]:
            lo, hi = r["wilson95"]
            rows.append([label, f"{r['correct']}/{r['n']}", _fmt(r["rate"], "fraction"),
                         f"{100 * lo:.0f}–{100 * hi:.0f} %"])
    janus = q["janus"]
    if janus["n"]:
        lo, hi = janus["wilson95"]
        rows.append(["Janus (door at the back)", f"{janus['correct']}/{janus['n']}",
                     _fmt(janus["rate"], "fraction"), f"{100 * lo:.0f}–{100 * hi:.0f} %"])
        rows.append(["door visible in front (house)", f"{janus['door_in_front']}/{janus['n']}",
                     _fmt(janus["door_in_front"] / janus["n"], "fraction"), ""])
        lit = janus.get("lit") or {}
        if lit.get("n"):
            lo, hi = lit["wilson95"]
            rows.append(["Janus, texture lit by the contract's light (information)", f"{lit['correct']}/{lit['n']}",
                         _fmt(lit["rate"], "fraction"), f"{100 * lo:.0f}–{100 * hi:.0f} %"])
    out += ["", _table(["measure", "runs", "rate", "95 % interval"], rows), ""]
    runs = [r for r in q["runs"] if "error" not in r]
    misses = [r for r in runs if not (r["shape_ok"] and r["colour_ok"] and not r.get("janus", False))]
    listed = runs if len(runs) <= 12 else misses
    judged = bool(q.get("fidelity"))
    if listed:
        heading = ("Every run:" if listed is runs
                   else f"The {len(misses)} runs with a miss (all runs are in results.json):")
        header = ["prompt", "seed", "judged shape", "IoU margin", "judged colour", "back-door px", "time"]
        out += [heading,
                "", _table(header + (["chamfer", "volume IoU", "albedo error", "handles"] if judged else []),
                           [[r["prompt"], r["seed"], r["shape"] if r["shape_ok"] else f"**{r['shape']}**",
                             f"{r['iou_margin']:+.3f}", r["colour"] if r["colour_ok"] else f"**{r['colour']}**",
                             r.get("door_pixels_back", "–"), _fmt(r["seconds"], "seconds")]
                            + (_run_fidelity_cells(r) if judged else []) for r in listed]), ""]
    if "quality" in plots:
        out += [f"![accuracy by shape and colour]({plots['quality']})", ""]
    return out + _fidelity_md(q, plots)


def _run_fidelity_cells(r: dict) -> list[str]:
    f, topology = r.get("fidelity"), r.get("topology")
    if not f:
        return ["–"] * 3 + [_fmt(topology["handles"], "") if topology else "–"]
    handles = "–"
    if topology:
        handles = str(topology["handles"]) if r.get("handles_ok") else f"**{topology['handles']}**"
    return [_fmt(f["chamfer_pct"], "percent"), _fmt(f["volume_iou"], "score"), _fmt(f["albedo_error"], "score"),
            handles]


def _fidelity_md(q: dict, plots: dict) -> list[str]:
    """The quality section's fidelity part: medians per shape and overall, shares within target, the sheet."""
    f = q.get("fidelity")
    if not f:
        return [f"**Fidelity to the exact shape** (`bench/fidelity.py`): {NOT_MEASURED}.", ""]
    out = [f"**Fidelity to the exact shape** (`bench/fidelity.py`): each GLB read back and judged in the "
           f"contract's frame against the exact shape and albedo ({f.get('samples') or 0:,} samples per side, sampling "
           f"seed {f.get('seed')}), after the timed part, so no time above includes it. Chamfer: mean "
           "surface-to-surface distance both ways, in % of the exact shape's bounding-box diagonal; normal error: "
           "median angle to the exact surface's normal; volume IoU on a 64³ lattice; albedo error: median "
           "largest-channel error against the exact albedo; blotched: share of the surface with an error above "
           "0.15; door albedo error: the same median over the house's door. Handles: genus from the Euler "
           "characteristic of the mesh welded by position (UV seams split it), per connected component; right "
           "means one for a torus and none for the others. Medians per shape and over every judged asset:", ""]
    measures = list(FIDELITY_NAMES)
    rows = []
    for shape, medians in f["by_shape"].items():
        missed = shape_fidelity_misses(medians)
        rows.append([shape, medians["n"]] + [_fmt(medians.get(m), FIDELITY_NAMES[m][1]) for m in measures]
                    + [f"{medians.get('handles_ok', 0)}/{medians['n']}",
                       "yes" if not missed else "**no**: " + ", ".join(missed)])
    handles = f.get("handles") or {}
    rows.append(["**all**", f["n"]] + [_fmt((f["overall"].get(m) or {}).get("median"), FIDELITY_NAMES[m][1])
                                       for m in measures]
                + [f"{handles.get('correct', 0)}/{handles.get('n', 0)}", ""])
    out += [_table(["shape", "assets"] + [FIDELITY_NAMES[m][0] for m in measures]
                   + ["handles right", "within the per-shape bars"], rows), ""]
    within = f.get("within_target") or {}
    if within:
        out += ["Assets within each target on their own: " + "; ".join(
            f"{FIDELITY_NAMES[m][0]} {'≥' if w['op'] == '>=' else '≤'} {_fmt(w['goal'], FIDELITY_NAMES[m][1])}: "
            f"{w['k']}/{w['n']} ({_fmt(w['rate'], 'fraction')})" for m, w in within.items()) + ".", ""]
    if handles.get("misses"):
        out += ["Wrong handle counts: " + ", ".join(f"{m['prompt']} seed {m['seed']}: {m['handles']} (want "
                                                     f"{m['expected']})" for m in handles["misses"]) + ".", ""]
    if f.get("not_judged"):
        errors = f.get("errors") or []
        out += [f"{f['not_judged']} completed run(s) were not judged" + (f" (first error: `{errors[0]['error']}`)"
                                                                          if errors else "") + ".", ""]
    if "fidelity_sheet" in plots:
        out += [f"Contact sheet ({plots.get('fidelity_sheet_rows', '')}): each asset from the front, side, back "
                "and above, lit by the contract's light, then the exact shape the same way; the label gives the "
                "prompt, seed and measures.", "", f"![fidelity contact sheet]({plots['fidelity_sheet']})", ""]
    elif plots.get("fidelity_sheet_note"):
        out += [f"Contact sheet: {plots['fidelity_sheet_note']}.", ""]
    return out


# ---------------------------------------------------------------------------------- contact sheet
def _badness(run: dict) -> float:
    """How far a run's worst fidelity measure is past its target: value / goal (IoU: (1 − IoU) / (1 − goal));
    at most 1 when every measure is within."""
    f = run["fidelity"]
    return max((1 - f[m]) / (1 - goal) if op == ">=" else f[m] / goal for m, (op, goal) in FIDELITY_GOALS.items())


def sheet_selection(runs: list[dict]) -> tuple[list[tuple[str, dict]], str]:
    """The runs the contact sheet shows, each with its tag ("", "best" or "worst"), and a line saying which.

    Every judged run up to ``SHEET_ALL_MAX`` of them; beyond, the best and the worst of each shape,
    ranked by ``_badness`` (the measure furthest past its target)."""
    judged = [r for r in runs if "error" not in r and r.get("fidelity")]
    if len(judged) <= SHEET_ALL_MAX:
        return [("", r) for r in judged], f"all {len(judged)} judged asset(s)"
    picks = []
    for shape in dict.fromkeys(r["shape_word"] for r in judged):
        ranked = sorted((r for r in judged if r["shape_word"] == shape), key=_badness)
        picks += [("best", ranked[0])] + ([("worst", ranked[-1])] if len(ranked) > 1 else [])
    iou_goal = FIDELITY_GOALS["volume_iou"][1]
    return picks, (f"of the {len(judged)} judged assets, the best and the worst of each shape, ranked by the "
                   f"measure furthest past its target: value / target, for IoU (1 − IoU) / (1 − {iou_goal:g})")


def _sheet_label(tag: str, r: dict) -> str:
    f, topology = r["fidelity"], r.get("topology") or {}
    lines = [f"{r['prompt']}, seed {r['seed']}" + (f" ({tag})" if tag else ""),
             f"chamfer {f['chamfer_pct']:.2f}% IoU {f['volume_iou']:.3f}",
             f"normal {f['normal_error_deg']:.1f} deg" + (f", handles {topology['handles']}" if topology else ""),
             f"albedo {f['albedo_error']:.3f} blotch {100 * f['blotched_share']:.1f}%"]
    if f.get("door_albedo_error") is not None:
        lines.append(f"door albedo {f['door_albedo_error']:.3f}")
    return "\n".join(lines)


def _asset_path(glb: str | None, out_dir: Path, folder: str = "assets") -> Path | None:
    """A run's GLB: at its recorded path (relative to where the run started) or in ``out_dir/folder``."""
    if not glb:
        return None
    for candidate in (Path(glb), out_dir / folder / Path(glb).name):
        if candidate.is_file():
            return candidate
    return None


def write_sheet(results: dict, out_dir: Path, size: int = SHEET_TILE) -> tuple[Path | None, str]:
    """Draw ``out_dir/fidelity_sheet.png`` (``bench/fidelity.contact_sheet``) of ``sheet_selection``'s runs.

    Returns (the PNG or None, which rows it shows or why it was not drawn)."""
    picks, which = sheet_selection(_get(results, "quality", "runs") or [])
    if not picks:
        return None, ""
    from engine.export import load_glb

    from . import fidelity

    rows, missing = [], []
    for tag, r in picks:
        path = _asset_path(r.get("glb"), out_dir)
        if path is None:
            missing.append(f"{r['prompt']} seed {r['seed']}")
            continue
        rows.append(fidelity.SheetRow(_sheet_label(tag, r), load_glb(path), r["shape_word"], r["colour_word"]))
    if not rows:
        return _kept_sheet(out_dir / SHEET, len(picks), "assets/")
    path = out_dir / SHEET
    fidelity.contact_sheet(rows, path, size)
    if missing:
        which += f"; left out, GLB not found: {', '.join(missing)}"
    return path, which


def _kept_sheet(path: Path, judged: int, folder: str) -> tuple[Path | None, str]:
    """A contact sheet that cannot be redrawn (no GLB at hand, as when merging a committed report):
    the one already at ``path`` is kept, drawn when the assets were judged; otherwise none."""
    if path.is_file():
        return path, (f"kept as drawn when the assets were judged: the {judged} GLB(s) are neither at their "
                      f"recorded paths nor in {folder}, so it is not redrawn")
    return None, f"not drawn: the {judged} judged GLB(s) are neither at their recorded paths nor in {folder}"


def task_sheet_selection(records: list[dict]) -> tuple[list[dict], str]:
    """The paint or sketch runs a contact sheet shows and a line saying which: every judged run up to
    ``SHEET_ALL_MAX`` of them, beyond that the first seed's run of each case."""
    judged = [r for r in records if "error" not in r and r.get("fidelity") and r.get("glb")]
    if len(judged) <= SHEET_ALL_MAX:
        return judged, f"all {len(judged)} judged run(s)"
    first: dict[str, dict] = {}
    for r in judged:
        first.setdefault(r["case"], r)
    return list(first.values()), (f"the first seed's run of each of the {len(first)} cases, of {len(judged)} judged "
                                  "runs (every run is in the tables)")


def _task_sheet_label(r: dict) -> str:
    f = r["fidelity"]
    lines = [f"{r['case']}, seed {r['seed']}", r["prompt"] + (f", scale {r['scale']:g}" if r.get("scale", 1) != 1
                                                               else ""),
             f"chamfer {f['chamfer_pct']:.2f}% IoU {f['volume_iou']:.3f}",
             f"normal {f['normal_error_deg']:.1f} deg", f"albedo {f['albedo_error']:.3f} blotch "
                                                        f"{100 * f['blotched_share']:.1f}%"]
    if "door_iou" in r:
        lines.append(f"door IoU {r['door_iou']:.2f} px {r['door_pixels_front']}/{r['door_pixels_back']}")
    return "\n".join(lines)


def write_task_sheet(results: dict, out_dir: Path, task: str, size: int = SHEET_TILE) -> tuple[Path | None, str]:
    """Draw ``out_dir/TASK_sheet.png`` (``bench/fidelity.contact_sheet``) of a paint or sketch section's runs:
    each asset (a scaled sketch's scaled back by 1/s, as judged) beside its exact shape in the prompt's colour.

    Returns (the PNG or None, which rows it shows or why it was not drawn).

    Args:
        results: the benchmark's results.
        out_dir: the report's folder; GLBs not at their recorded paths are looked for in ``out_dir/TASK``.
        task: "paint" or "sketch".
        size: side of one view tile in pixels.
    """
    picks, which = task_sheet_selection(_get(results, task, "cases") or [])
    if not picks:
        return None, ""
    from engine.export import TexturedMesh, load_glb

    from . import fidelity

    rows, missing = [], []
    for r in picks:
        path = _asset_path(r["glb"], out_dir, task)
        if path is None:
            missing.append(f"{r['case']} seed {r['seed']}")
            continue
        mesh, scale = load_glb(path), r.get("scale", 1.0)
        mesh = TexturedMesh(mesh.vertices / scale, mesh.faces, mesh.uvs, mesh.texture)
        rows.append(fidelity.SheetRow(_task_sheet_label(r), mesh, r["exact_shape"], r["colour"]))
    if not rows:
        return _kept_sheet(out_dir / TASK_SHEETS[task], len(picks), f"{task}/")
    path = out_dir / TASK_SHEETS[task]
    fidelity.contact_sheet(rows, path, size)
    if missing:
        which += f"; left out, GLB not found: {', '.join(missing)}"
    return path, which


TASK_INTROS = {
    "paint": ("Latent-Paint (`bench/paint_quality.py`): the contract's sphere, cube, cylinder and torus as meshes of "
              "12k–20k faces, each painted in two colours; the contract's house mesh painted `a {colour} house` "
              "(the colour changes with the seed); a 12,288-face cube timed. Each GLB is read back and judged by "
              "`bench/fidelity.judge` against the exact shape in the prompt's colour. Geometry unchanged: the "
              "painted vertices are the input's and the face count is kept. Door: pixels of an unlit 64² render "
              "from the contract's front camera (azimuth 0°, elevation 15°) nearer the shaded door colour than any "
              "shaded palette colour (`primitive_world.evaluate_samples.door_pixels`' test, per pixel); door IoU "
              "with the contract's exact door region in that view; the back view (azimuth 180°) must show fewer "
              "than 20 such pixels."),
    "sketch": ("Sketch-Shape (`bench/sketch_quality.py`): the contract house's bounding box (scaled 1, 0.9 and "
               "1.1) and a box-and-wedge blockout jittered by 3 % of its size, sketched as `a {colour} house`; a "
               "sphere sketched as `a {colour} cube`. Each GLB is read back and judged by `bench/fidelity.judge` "
               "against the exact shape the prompt names; a scaled sketch's asset is scaled back by 1/s first and "
               "judged against the unscaled house, so chamfer (% of the diagonal), normal error and IoU do not "
               "depend on the scale. IoU with the sketch: both voxelised on one lattice (96³) over their joint "
               "box. Door: as for Latent-Paint, on the scaled-back asset; visible with 20 pixels or more."),
}
CASE_HEADER = ["seed", "colour", "chamfer", "normal", "IoU", "albedo", "blotched", "door IoU", "door px front/back",
               "time", "verdict"]
GROUP_MEASURES = ("chamfer_pct", "normal_error_deg", "volume_iou", "albedo_error", "blotched_share")


def _verdict(r: dict) -> str:
    failed = [k for k, v in (r.get("checks") or {}).items() if not v]
    return "pass" if r.get("passed") else "**fail**" + (": " + ", ".join(failed) if failed else "")


def _case_row(r: dict, task: str) -> list:
    """One run of a paint or sketch case; a record from before the fidelity judge shows – for its gaps."""
    if "error" in r:
        return [r["seed"]] + ["–"] * (len(CASE_HEADER) - 2 + (task == "sketch")) + [f"error: {r['error']}"]
    f = r.get("fidelity") or {}
    door = (f"{r['door_pixels_front']}/{r['door_pixels_back']}" if "door_pixels_front" in r else "–")
    cells = [r["seed"], r.get("colour", "–")] + [_fmt(f.get(m), FIDELITY_NAMES[m][1]) for m in GROUP_MEASURES]
    cells += [_fmt(r.get("door_iou"), "score"), door]
    if task == "sketch":
        cells.append(_fmt(r.get("iou_sketch", r.get("iou")), "score"))
    return cells + [_fmt(r.get("seconds"), "seconds"), _verdict(r)]


def _case_tables(records: list[dict], task: str) -> list[str]:
    """One table per case, a row per seed."""
    header = CASE_HEADER[:-2] + (["IoU with the sketch"] if task == "sketch" else []) + CASE_HEADER[-2:]
    out = []
    for case in dict.fromkeys(r["case"] for r in records):
        runs = [r for r in records if r["case"] == case]
        done = next((r for r in runs if "error" not in r), {})
        about = ", ".join(x for x in (f"`{done['prompt']}`" if "prompt" in done and len(runs) == 1 else "",
                                      f"{done['faces']:,} faces" if "faces" in done and task == "paint" else "",
                                      f"scale {done['scale']:g}" if done.get("scale", 1.0) != 1.0 else "") if x)
        out += [f"**{case}**" + (f" ({about})" if about else "") + ":", "",
                _table(header, [_case_row(r, task) for r in runs]), ""]
    return out


def _group_table(groups: dict) -> list[str]:
    """Each case group's medians and door rates."""
    rows = []
    for name, g in groups.items():
        front, back = g.get("door_front"), g.get("door_back")
        rows.append([name, g["n"]] + [_fmt(g[m], FIDELITY_NAMES[m][1]) for m in GROUP_MEASURES]
                    + [_fmt(g.get("door_iou"), "score"),
                       f"{front['correct']}/{front['n']}" if front else "–",
                       f"{back['with_door_back']}/{back['n']}" if back else "–"])
    return ["Medians per case group:", "",
            _table(["group", "runs", "chamfer", "normal", "IoU", "albedo", "blotched", "door IoU",
                    "door visible in front", "door on the back"], rows), ""]


def _task_md(results: dict, task: str, plots: dict) -> list[str]:
    missing = _section_status(results, task)
    title = "Latent-Paint" if task == "paint" else "Sketch-Shape"
    if missing:
        return [f"### {title}", "", missing, ""]
    section = results[task]
    out = [f"### {title}", "", TASK_INTROS[task], ""] + _case_tables(section["cases"], task)
    if section.get("groups"):
        out += _group_table(section["groups"])
    if f"{task}_sheet" in plots:
        what = ("the painted asset" if task == "paint"
                else "the asset scaled back by 1/s (what the judge compared)")
        out += [f"Contact sheet ({plots[f'{task}_sheet_rows']}): {what} from the front, side, back and above, lit "
                "by the contract's light, then the exact shape in the prompt's colour the same way.", "",
                f"![{task} contact sheet]({plots[f'{task}_sheet']})", ""]
    elif plots.get(f"{task}_sheet_note"):
        out += [f"Contact sheet: {plots[f'{task}_sheet_note']}.", ""]
    return out


def _paint_sketch_md(results: dict, plots: dict) -> list[str]:
    return (["## Latent-Paint and Sketch-Shape (issue #15's cases)", "",
             "Verdicts are in the targets' table above (\"Other bars\"); the standard preset throughout.", ""]
            + _task_md(results, "paint", plots) + _task_md(results, "sketch", plots))


def _speed_md(results: dict, plots: dict) -> list[str]:
    out = []
    s = speed_figures(results)
    threads = _get(results, "machine", "torch_threads")
    if s.get("per_asset_s"):
        a = s["per_asset_s"]
        out += [f"Wall time per textured asset (generate + GLB/OBJ export), {threads} torch thread(s): median "
                f"**{a['median']:.1f} s**, range {a['min']:.1f}–{a['max']:.1f} s over {a['n']} asset(s).", ""]
        rows = [[name, f"{s['phases'][key]['median']:.2f} s", f"{s['phases'][key]['min']:.2f}–"
                 f"{s['phases'][key]['max']:.2f} s"] for key, name in PHASES if s["phases"].get(key)]
        out += [_table(["phase", "median", "range"], rows), ""]
        if s.get("sds_its_per_s"):
            out += [f"SDS iterations per second during optimisation: median {s['sds_its_per_s']['median']:.1f}.", ""]
        if "speed" in plots:
            out += [f"![time per asset by phase]({plots['speed']})", ""]
    overhead = s.get("overhead")
    if isinstance(overhead, dict) and "ratio" in overhead:
        out += ["Overhead ratio (`bench/sds_step.py`: one SDS step, i.e. render + U-Net + backward + Adam, against "
                "the U-Net's batch-2 CFG forward alone, interleaved in one process):", "",
                _table(["prior", "U-Net params", "latents", "U-Net CFG forward", "SDS step", "ratio",
                        "ratio by CPU time"],
                       [[overhead["prior"], f"{overhead['unet_parameters'] / 1e6:.1f} M",
                         f"{overhead['latent_size']}²", f"{overhead['unet_cfg_forward_ms']:.1f} ms",
                         f"{overhead['sds_step_ms']:.1f} ms", f"{overhead['ratio']:.3f}",
                         f"{overhead.get('cpu_time_ratio', float('nan')):.3f}"]]), ""]
    elif isinstance(overhead, dict) and "error" in overhead:
        out += [f"Overhead ratio: not measured (`{overhead['error']}`).", ""]
    grid, steps = s.get("grid_scaling"), s.get("steps_scaling")
    if isinstance(grid, list) and grid:
        out += ["Time per SDS step against the voxel grid's resolution (default 32):", "",
                _table(["grid", "ms per step", "steps/s"],
                       [[f"{r['grid_resolution']}³", f"{r['step_ms']:.1f}", f"{r['steps_per_s']:.1f}"] for r in grid]),
                ""]
    elif isinstance(grid, dict):
        out += [f"Grid scaling: not measured (`{grid.get('error')}`).", ""]
    if isinstance(steps, list) and steps:
        out += ["End-to-end time of one asset (`a red cube`, seed 0) against the step count (default 600):", "",
                _table(["steps", "end to end", "optimisation", "rest", "note"],
                       [[r["steps"], _fmt(r["seconds"], "seconds"), _fmt(r["timings"]["optimise_s"], "seconds"),
                         _fmt(r["seconds"] - r["timings"]["optimise_s"], "seconds"),
                         "the quality run" if r["reused_quality_run"] else ""] for r in steps]), ""]
    elif isinstance(steps, dict):
        out += [f"Steps scaling: not measured (`{steps.get('error')}`).", ""]
    if "scaling" in plots:
        out += [f"![scaling with grid resolution and step count]({plots['scaling']})", ""]
    return out


def _server_model(setup: dict) -> str:
    if "tiny" in str(setup.get("model", "")):
        return "the tiny random test prior, so the server’s own cost shows at its largest"
    return str(setup.get("model"))


def _server_md(results: dict) -> list[str]:
    out = []
    s = results["server"]
    setup = s.get("setup", {})
    lat = s["progress_latency_ms"]
    out += [f"`bench/server_bench.py` against a real server process on a loopback port (prior: "
            f"{_server_model(setup)}; "
            f"{setup.get('rounds')} round(s) of a {setup.get('steps')}-step job, server with "
            f"{setup.get('server_threads')} thread(s)).", "",
            _table(["measure", "value"], [
                ["submit → accepted, worker idle (median)", f"{s['submit_to_accepted_ms']['idle_median']:.2f} ms"],
                ["submit → accepted, worker busy (median)", f"{s['submit_to_accepted_ms']['busy_median']:.2f} ms"],
                ["progress event latency, median / p95", f"{lat['without_load']['median']:.2f} / "
                                                         f"{lat['without_load']['p95']:.2f} ms"],
                ["… under 100 status requests/s", f"{lat['with_status_load']['median']:.2f} / "
                                                  f"{lat['with_status_load']['p95']:.2f} ms"],
                ["status requests/s achieved", f"{s['status_requests_per_s_achieved']:.0f}"],
                ["slowdown of the worker under that load", _slowdown_text(s["slowdown_percent"])],
            ]), ""]
    return out


def _contention_md(results: dict) -> list[str]:
    c = results["contention"]
    return [f"`bench/contention.py`: `python -m engine generate \"{c['prompt']}\" --seed {c['seed']} --preset "
            f"{c['preset']}` as separate processes on {c['cpus']} CPUs, OpenMP wait policy: {c['wait_policy']}.", "",
            _table(["case", "wall time", "÷ alone"], [
                ["alone", f"{c['alone_s']:.1f} s", "1.00×"],
                ["beside a busy single-thread loop", f"{c['beside_busy_thread_s']:.1f} s",
                 f"{c['beside_busy_thread_ratio']:.2f}×"],
                ["two side by side (each)", " / ".join(f"{t:.1f} s" for t in c["two_side_by_side_s"]),
                 f"{c['two_side_by_side_ratio']:.2f}× (the slower)"],
            ]), ""]


def _ray_md(results: dict) -> list[str]:
    r = results["ray"]
    if not r.get("available"):
        return [f"_Not measured: {r.get('reason', 'Ray is not available')}._", ""]
    setup = r.get("setup", {})
    model = "the embedded prior" if Path(str(setup.get("model"))).name == "primitive-world" else _server_model(setup)
    out = [f"`bench/ray_bench.py`: one server per row on {model}, {setup.get('threads_per_job')} "
           "torch thread(s) per job; each Ray row on a local Ray with one CPU per actor.", ""]
    front = r.get("front") or {}
    if front:
        backends = [name for name in ("local", "ray") if name in front]

        def cells(pick) -> list[str]:
            return [pick(front[name]) for name in backends]

        out += ["The front's overhead (`bench/server_bench.py` against the same servers):", "",
                _table(["measure", *backends], [
                    ["submit → accepted, idle (median)",
                     *cells(lambda f: f"{f['submit_to_accepted_ms']['idle_median']:.2f} ms")],
                    ["submit → accepted, a job running (median)",
                     *cells(lambda f: f"{f['submit_to_accepted_ms']['busy_median']:.2f} ms")],
                    ["progress event latency, median / p95",
                     *cells(lambda f: f"{f['progress_latency_ms']['without_load']['median']:.2f} / "
                                      f"{f['progress_latency_ms']['without_load']['p95']:.2f} ms")],
                ]), ""]
    rows = r.get("throughput") or []
    if rows:
        out += [f"Throughput: {setup.get('jobs')} `{setup.get('preset')}` jobs submitted at once; per job, by the "
                "server's clocks: running → the engine's first step (dispatch), its last step → done (result "
                "back, written, recorded); and the server process's CPU time per job (on Ray the front's whole "
                "share; on the local backend it includes the engine):", "",
                _table(["backend", "actors", "wall", "jobs/hour", "job (median)", "dispatch", "hand-back",
                        "server CPU per job"],
                       [[row["backend"], row["actors"], f"{row['wall_s']:.1f} s", f"{row['jobs_per_hour']:.0f}",
                         f"{row['median_seconds']:.2f} s", f"{row['median_dispatch_s'] * 1000:.0f} ms",
                         f"{row['median_hand_back_s'] * 1000:.0f} ms", _cpu_cell(row.get("server_cpu_s_per_job"))]
                        for row in rows]), ""]
    cost = r.get("ray_cost_per_job")
    if cost:
        out += [f"One Ray actor adds {cost['added_s'] * 1000:.0f} ms to a {cost['job_s']:.1f} s job "
                f"({cost['share_of_job'] * 100:.1f} %) against the local backend.", ""]
    return out


def _cpu_cell(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds * 1000:.0f} ms"


def _slowdown_text(percent: float) -> str:
    goal = f"(goal ≤ {SERVER_SLOWDOWN_GOAL_PERCENT:g} %)"
    if percent < 0:  # faster with the load than without: the run-to-run noise is larger than the cost
        return f"none measurable: {percent:.1f} %, i.e. faster with the load, within run-to-run noise {goal}"
    return f"{percent:.1f} % {goal}"


def _gpu_md(results: dict) -> list[str]:
    out = []
    g = results["gpu"]
    if not g.get("available"):
        return out + [f"**No GPU was available for this run**: {g.get('reason', 'CUDA is not available')}. "
                      "No GPU numbers are reported, and none are estimated. On a CUDA machine the same command "
                      "adds CUDA timings of the embedded prior and the overhead ratio of an SD-1.5-sized random "
                      "U-Net (64×64 latents, batch-2 CFG forward).", ""]
    out.append(f"Device: {g['device_name']} (CUDA {g['cuda']}), fp16.")
    if g.get("error"):
        return out + ["", f"Not measured: `{g['error']}`.", ""]
    speed = summarise_speed(g.get("quality_runs") or [])
    if speed.get("per_asset_s"):
        a = speed["per_asset_s"]
        out += ["", f"Embedded prior on CUDA: median {a['median']:.1f} s per asset over {a['n']} assets "
                    f"(optimisation median {speed['phases']['optimise_s']['median']:.1f} s, "
                    f"{speed['sds_its_per_s']['median']:.0f} SDS it/s)."]
    failed = [r for r in g.get("quality_runs", []) if "error" in r]
    if failed:
        out += ["", f"{len(failed)} CUDA generate run(s) failed: `{failed[0]['error']}`."]
    rows = []
    for key, name in (("overhead_embedded", "embedded prior"),
                      ("overhead_embedded_cuda_graphs", "embedded prior, CUDA graphs"),
                      ("overhead_sd15_sized", "SD-1.5-sized random U-Net")):
        o = g.get(key) or {}
        if "ratio" in o:
            rows.append([name, f"{o['unet_parameters'] / 1e6:.0f} M", f"{o['latent_size']}²",
                         f"{o['unet_cfg_forward_ms']:.2f} ms", f"{o['sds_step_ms']:.2f} ms", f"{o['ratio']:.3f}"])
        elif o:
            rows.append([name, "–", "–", "–", "–", f"error: {o.get('error')}"])
    if rows:
        out += ["", "Overhead ratio on CUDA (timed with device syncs):", "",
                _table(["U-Net", "params", "latents", "CFG forward", "SDS step", "ratio"], rows)]
    concurrent = g.get("concurrent_jobs")
    if isinstance(concurrent, list) and concurrent:
        single = concurrent[0]["jobs_per_hour"]
        out += ["", "Jobs side by side on one GPU, U-Net calls batched (embedded prior):", "",
                _table(["jobs at once", "wall time", "jobs/hour", "÷ one job's rate"],
                       [[c["jobs"], f"{c['seconds']:.1f} s", f"{c['jobs_per_hour']:.0f}",
                         f"{c['jobs_per_hour'] / single:.2f}×"] for c in concurrent])]
    pipeline = g.get("sd_pipeline_sd15_sized") or {}
    if "seconds" in pipeline:
        phases = ", ".join(f"{name} {value:.1f} s" for name, value in pipeline["phases"].items())
        out += ["", f"`sd` preset, prompt → GLB on the SD-1.5-sized random prior (8× VAE), {pipeline['steps']} "
                    f"steps: {pipeline['seconds']:.1f} s ({phases})."]
    return out + [""]


def _machine_md(results: dict) -> list[str]:
    m = results.get("machine") or {}
    load_start, load_end = m.get("load_average_start"), m.get("load_average_end")
    rows = [["CPU", f"{m.get('cpu_model')} — {m.get('cpu_count')} logical CPUs ({m.get('cpus_usable')} usable)"],
            ["torch", f"{m.get('torch')}, torch threads: {m.get('torch_threads')}"],
            ["Python / OS", f"{m.get('python')} / {m.get('platform')}"],
            ["load average (1, 5, 15 min)", f"start {load_start}, end {load_end}"],
            ["started / finished", f"{results.get('started')} / {results.get('finished')}"],
            ["duration (wall)", _fmt(results.get("duration_s"), "seconds")]]
    if results.get("cpu_time_s") is not None:
        rows.append(["CPU time used (user + system, this process and its children)",
                     _fmt(results["cpu_time_s"], "seconds")])
    out = ["## Machine", "", _table(["", ""], rows), ""]
    busy = [x[0] for x in (load_start, load_end) if x]
    if busy and m.get("cpu_count") and max(busy) > 0.75 * m["cpu_count"]:
        out += [f"The machine was shared while this ran (1-minute load up to {max(busy):.1f} on "
                f"{m['cpu_count']} CPUs), so wall times are pessimistic. The overhead ratio, timed interleaved in "
                "one process, suffers least; the server slowdown compares separate runs and moves with the load.",
                ""]
    return out


def _provenance_md(results: dict) -> list[str]:
    """How the run was made: one command, or the parts ``merge_results`` put together."""
    cpus, duration = _get(results, "machine", "cpu_count"), _fmt(results.get("duration_s"), "seconds")
    parts = results.get("parts")
    if not parts:
        return [f"Everything below ran on the embedded Primitive World prior in one command, "
                f"`{results.get('command')}`, on {cpus} CPUs ({duration} in all). All numbers are in `results.json`."]
    out = [f"Everything below ran on the embedded Primitive World prior on {cpus} CPUs in {len(parts)} processes "
           f"({duration} from the first start to the last finish), their results merged by "
           "`python -m bench.report --merge`; together they measure what "
           f"`{results.get('command')}` measures. All numbers are in `results.json`.", "",
           _table(["process", "sections", "started", "finished", "wall time"],
                  [[f"`{p['command']}`", ", ".join(p["sections"]) or "none", p["started"], p["finished"],
                    _fmt(p.get("duration_s"), "seconds")] for p in parts])]
    if parts_overlap(parts):
        out += ["", "Some of the processes ran at the same time, sharing the CPUs: their wall times (time per "
                    "prop, paint's timing case) are longer than either would take alone."]
    return out


def render_markdown(results: dict, plots: dict[str, str]) -> str:
    settings = results.get("settings") or {}
    mode = results.get("mode", "?")
    lines = [f"# Dreamsmith benchmark — {mode} mode", ""] + _provenance_md(results)
    if settings.get("non_standard"):
        lines += ["", "> **Non-standard settings** (development run): "
                      + ", ".join(f"`{k}={v}`" for k, v in settings["non_standard"].items())
                      + ". These numbers are not comparable with the targets."]
    lines += ["", "## Targets (issue #7)", "",
              _table(["target", "goal", "measured", "verdict", "margin", "basis"],
                     _target_rows(results.get("targets") or evaluate_targets(results))), ""]
    other = results.get("other_bars") or evaluate_other_bars(results)
    if other:
        lines += ["Other bars this run measures:", "",
                  _table(["bar", "goal", "measured", "verdict", "margin", "basis"], _target_rows(other)), ""]
    lines += _section(results, "quality", "Text-to-3D quality", lambda: _quality_md(results, plots))
    lines += _paint_sketch_md(results, plots)
    lines += _section(results, "speed", "Speed", lambda: _speed_md(results, plots))
    lines += _section(results, "server", "Server", lambda: _server_md(results))
    lines += _section(results, "contention", "Sharing a busy CPU", lambda: _contention_md(results))
    lines += _section(results, "ray", "Ray backend", lambda: _ray_md(results))
    lines += _section(results, "gpu", "GPU", lambda: _gpu_md(results))
    lines += _machine_md(results)
    lines += ["## Reproduce", "", "From the repository root:", "",
              '    pip install -e ".[bench]"', f"    {results.get('command')}", "",
              "`--quick` runs a fixed subset in about 10 minutes on a 2-core CPU; "
              "`--full` runs all 49 prompts × 3 seeds "
              "and every issue-#15 paint and sketch case (about an hour). `--out DIR` picks the folder, "
              "`--threads N` the torch threads. "
              "Wall times depend on what else the machine is doing; the load average is recorded above.", ""]
    return "\n".join(lines)


def write_report(results: dict, out_dir: Path, sheet_size: int = SHEET_TILE) -> dict[str, Path]:
    """Write REPORT.md, its plots and the fidelity contact sheet (``write_sheet``, views of
    ``sheet_size`` pixels) into ``out_dir``; returns what was written by name."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a headless benchmark machine
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written, plots = {}, {}
    for name, draw in (("quality", _plot_quality), ("speed", _plot_speed), ("scaling", _plot_scaling)):
        path = out_dir / PLOTS[name]
        try:
            drawn = draw(results, path)
        except Exception:  # a plot must not cost the report
            log.exception("the %s plot failed", name)
            drawn = False
        if drawn:
            written[name] = path
            plots[name] = path.name
    sheets = {"fidelity": lambda: write_sheet(results, out_dir, sheet_size),
              **{task: (lambda task=task: write_task_sheet(results, out_dir, task, sheet_size))
                 for task in TASK_SHEETS}}
    for name, draw_sheet in sheets.items():
        try:
            sheet, note = draw_sheet()
        except Exception as exc:  # nor must a contact sheet
            log.exception("the %s contact sheet failed", name)
            sheet, note = None, f"not drawn: `{type(exc).__name__}: {exc}`"
        if sheet:
            written[f"{name}_sheet"] = sheet
            plots.update({f"{name}_sheet": sheet.name, f"{name}_sheet_rows": note})
        elif note:
            plots[f"{name}_sheet_note"] = note
    report = out_dir / "REPORT.md"
    report.write_text(render_markdown(results, plots))
    written["report"] = report
    return written


def value_summary(values: list[float]) -> dict | None:
    """Median, mean, min, max and count of ``values``; None when there are none."""
    if not values:
        return None
    return {"median": statistics.median(values), "mean": statistics.fmean(values),
            "min": min(values), "max": max(values), "n": len(values)}


def summarise_speed(quality_runs: list[dict]) -> dict:
    """The figures the quality runs give the speed section: time per prop, per phase, SDS steps/s."""
    ok = [r for r in quality_runs if "error" not in r]
    phases = {}
    for key, _ in PHASES:
        phases[key] = value_summary([r["timings"][key] for r in ok if key in r["timings"]])
    return {"per_asset_s": value_summary([r["seconds"] for r in ok]), "phases": phases,
            "sds_its_per_s": value_summary([r["sds_its_per_s"] for r in ok])}


def speed_figures(results: dict) -> dict:
    """The speed section's own measurements with the per-prop figures of the quality runs
    (``summarise_speed``), which are never stored: a merged report may take its quality runs from
    another process than its speed section."""
    measured = results.get("speed")
    if not measured:  # a run that skipped the speed section reports no time per prop
        return {}
    runs = _get(results, "quality", "runs") or []
    return {**measured, **(summarise_speed(runs) if runs else {})}


def merge_results(parts: list[dict], newer_wins: bool = False) -> dict:
    """One run's results from ``parts``, runs of one mode and settings that each measured some sections.

    Each section comes from the one part that measured it; a section measured by two parts, or parts of
    different modes or settings, raise ``ValueError``. The merged results keep each part's command,
    times, load and sections under ``parts``; the wall time is from the first start to the last finish.

    Args:
        parts: ``results.json`` dicts written by ``bench/run.py``.
        newer_wins: a section measured by several parts comes from the one that finished last (a
            section re-run after a change), and the older parts are listed without it.
    """
    if not parts:
        raise ValueError("nothing to merge")
    if any(_what_was_run(p) != _what_was_run(parts[0]) for p in parts[1:]):
        raise ValueError("the parts ran with different modes or settings; their numbers do not add up to one run")
    merged = copy.deepcopy(parts[0])
    source: dict[str, int] = {}  # section -> index of the part it comes from
    for name in SECTIONS:
        measured = [k for k, p in enumerate(parts) if _measured(p, name)]
        if len(measured) > 1 and not newer_wins:
            raise ValueError(f"section {name!r} was measured by {len(measured)} parts; --skip it in all but one")
        if measured:
            source[name] = max(measured, key=lambda k: dt.datetime.fromisoformat(parts[k]["finished"]))
            merged[name] = copy.deepcopy(parts[source[name]].get(name))
            merged["sections"][name] = copy.deepcopy(parts[source[name]]["sections"][name])
        else:
            merged[name] = None
            merged["sections"][name] = {"skipped": True}
    skipped = [name for name in SECTIONS if merged["sections"][name].get("skipped")]
    non_standard = merged["settings"].setdefault("non_standard", {})
    non_standard.pop("skip", None)
    if skipped:
        non_standard["skip"] = skipped
    used = [p for k, p in enumerate(parts) if k in source.values()] or parts[:1]
    started = min(used, key=lambda p: dt.datetime.fromisoformat(p["started"]))
    finished = max(used, key=lambda p: dt.datetime.fromisoformat(p["finished"]))
    merged["started"], merged["finished"] = started["started"], finished["finished"]
    merged["duration_s"] = (dt.datetime.fromisoformat(merged["finished"])
                            - dt.datetime.fromisoformat(merged["started"])).total_seconds()
    merged["cpu_time_s"] = sum(p.get("cpu_time_s") or 0.0 for p in used)
    merged["machine"]["load_average_start"] = started["machine"].get("load_average_start")
    merged["machine"]["load_average_end"] = finished["machine"].get("load_average_end")
    # A part that is itself a merge brings its own processes, so merging again keeps every command.
    processes = [
        {**process, "sections": [n for n in process["sections"] if source.get(n) == k]}
        for k, p in enumerate(parts) for process in p.get("parts") or [
            {"command": p.get("command"), "started": p.get("started"), "finished": p.get("finished"),
             "duration_s": p.get("duration_s"), "sections": [n for n in SECTIONS if _measured(p, n)]}]]
    merged["parts"] = [process for process in processes if process["sections"]]
    merged["command"] = _command_without_skip(parts[0].get("command") or "python -m bench", skipped)
    merged["targets"], merged["other_bars"] = evaluate_targets(merged), evaluate_other_bars(merged)
    return merged


def _what_was_run(part: dict) -> dict:
    """A part's mode and settings, leaving out which sections it skipped."""
    settings = dict(part.get("settings") or {})
    settings["non_standard"] = {k: v for k, v in (settings.get("non_standard") or {}).items() if k != "skip"}
    return {"mode": part.get("mode"), **settings}


def _measured(part: dict, section: str) -> bool:
    """Whether ``part`` ran ``section`` (a part interrupted before it did not)."""
    status = _get(part, "sections", section)
    return status is not None and not status.get("skipped")


def _command_without_skip(command: str, skipped: list[str]) -> str:
    """``command`` with its ``--skip`` list replaced by ``skipped`` (dropped when empty)."""
    words, kept, in_skip = shlex.split(command), [], False
    for word in words:
        if word == "--skip":
            in_skip = True
        elif in_skip and not word.startswith("--"):
            continue
        else:
            in_skip = False
            kept.append(word)
    if skipped:
        kept += ["--skip", *skipped]
    return " ".join(map(shlex.quote, kept))


def parts_overlap(parts: list[dict]) -> bool:
    """Whether any two of the merged ``parts`` ran at the same time (their wall times then overstate)."""
    spans = sorted((dt.datetime.fromisoformat(p["started"]), dt.datetime.fromisoformat(p["finished"]))
                   for p in parts if p.get("started") and p.get("finished"))
    return any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:]))


def console_summary(results: dict) -> str:
    lines = [f"Dreamsmith benchmark ({results.get('mode')} mode, {_fmt(results.get('duration_s'), 'seconds')}):"]
    for t in (results.get("targets") or []) + (results.get("other_bars") or []):
        verdict = "not measured" if t["met"] is None else ("MET" if t["met"] else "NOT MET") + \
            f" ({_margin_text(t['margin'], t['unit'])})"
        lines.append(f"  {t['label']:<60} {_fmt(t['value'], t['unit']):>9}  {verdict}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 1 and not argv[0].startswith("--"):
        path = Path(argv[0])
        results = json.loads(path.read_text())
        results["targets"], results["other_bars"] = evaluate_targets(results), evaluate_other_bars(results)
        out_dir = path.parent
    elif len(argv) >= 3 and argv[0] == "--merge":
        newer_wins = "--newer-wins" in argv
        argv = [arg for arg in argv if arg != "--newer-wins"]
        out_dir, part_paths = Path(argv[1]), [Path(part) for part in argv[2:]]
        if any(path.resolve() == (out_dir / "results.json").resolve() for path in part_paths):
            print(f"cannot merge: {out_dir / 'results.json'} is one of the parts; pick another OUT_DIR",
                  file=sys.stderr)
            return 2
        try:
            results = merge_results([json.loads(path.read_text()) for path in part_paths], newer_wins)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            # json's decode error is a ValueError; a KeyError etc. means a file that is not a results.json
            print(f"cannot merge: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 2
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(f"wrote {out_dir / 'results.json'}")
    else:
        print("usage: python -m bench.report RESULTS.json\n"
              "       python -m bench.report --merge OUT_DIR [--newer-wins] PART/results.json PART/results.json ...",
              file=sys.stderr)
        return 2
    for written in write_report(results, out_dir).values():
        print(f"wrote {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
