"""Measure the Primitive World prior: colour and shape accuracy of text-to-image samples.

    python -m primitive_world.evaluate_samples --model engine/priors/primitive-world

For every colour × shape (49) × view suffix (front, side, back, overhead) it draws several DDIM
samples with classifier-free guidance from ``"a {colour} {shape}, {view} view"`` and checks
- colour: nearest palette colour (under the contract's shading) to the median colour of the
  object pixels equals the prompt's colour;
- shape: among the 7 analytic shapes, the one whose silhouette best matches (max IoU over a grid
  of cameras inside the view suffix's range) is the prompt's shape.
The same classifiers are run on ground-truth renders as a sanity baseline. Bar: colour ≥ 95 %,
shape ≥ 90 %. Writes ``eval.json`` and ``samples.png`` into the model folder (or --out-dir).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from engine.prior import load_prior

from . import contract as C
from .classify import classify_image_colour, classify_shape_in_view, colour_distances, object_mask
from .render import colourise, contract_camera, render_geometry
from .sampling import sample

log = logging.getLogger("primitive_world.evaluate")

COLOUR_BAR = 0.95
SHAPE_BAR = 0.90


def door_pixels(rgb: np.ndarray) -> int:
    """Object pixels closer to the shaded door colour than to any shaded palette colour."""
    mask = object_mask(rgb, largest_component=False)
    door = np.asarray(C.DOOR_RGB)
    n = 0
    for px in np.asarray(rgb)[mask]:
        d = colour_distances(px)
        s = np.clip(px @ door / (door @ door), C.AMBIENT, C.AMBIENT + C.DIFFUSE)
        if np.linalg.norm(px - s * door) < min(d.values()):
            n += 1
    return n


def unet_forward_ms(unet, text_hidden: int, runs: int = 50) -> dict:
    """Wall time of one batch-2 (CFG pair) U-Net forward pass."""
    size = unet.config.sample_size
    x = torch.randn(2, unet.config.in_channels, size, size)
    ctx = torch.randn(2, 16, text_hidden)
    t = torch.tensor([500, 500])
    times = []
    with torch.no_grad():
        for i in range(runs + 5):
            t0 = time.perf_counter()
            unet(x, t, ctx)
            if i >= 5:
                times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return {"median_ms": times[len(times) // 2], "min_ms": times[0], "runs": runs,
            "threads": torch.get_num_threads()}


def sample_view_angles(view: str, rng: np.random.Generator) -> tuple[float, float]:
    pieces = C.view_angle_ranges(view)
    (a0, a1), (e0, e1) = pieces[rng.integers(len(pieces))]
    return float(rng.uniform(a0, a1) % 360.0), float(rng.uniform(e0, e1))


def ground_truth_baseline(per_combo: int, seed: int) -> dict:
    """The classifiers on exact renders from random cameras in each view's range."""
    rng = np.random.default_rng(seed)
    ok_c, ok_s = [], []
    for view in C.VIEWS:
        for shape in C.SHAPES:
            angles = [sample_view_angles(view, rng) for _ in range(per_combo)]
            g = render_geometry(shape, [contract_camera(a, e) for a, e in angles])
            for colour in C.COLOUR_NAMES:
                for img in colourise(g, colour):
                    ok_c.append(classify_image_colour(img)[0] == colour)
                    ok_s.append(classify_shape_in_view(object_mask(img), view)[0] == shape)
    return {"colour_acc": float(np.mean(ok_c)), "shape_acc": float(np.mean(ok_s)), "n": len(ok_c)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="engine/priors/primitive-world")
    ap.add_argument("--samples", type=int, default=4, help="samples per colour × shape × view")
    ap.add_argument("--steps", type=int, default=30, help="DDIM steps (≤ 50)")
    ap.add_argument("--guidance", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=98)
    ap.add_argument("--gt-per-combo", type=int, default=1)
    ap.add_argument("--out-dir", default=None, help="where eval.json / samples.png go (default: --model)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    if args.steps > 50:
        ap.error("--steps must be ≤ 50")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    out_dir = Path(args.out_dir or args.model)
    out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    prior = load_prior(args.model)
    fwd = unet_forward_ms(prior.unet, prior.text_encoder.config.hidden_size)
    log.info("U-Net batch-2 forward: median %.1f ms, min %.1f ms", fwd["median_ms"], fwd["min_ms"])

    t0 = time.perf_counter()
    gt = ground_truth_baseline(args.gt_per_combo, args.seed)
    log.info("classifiers on ground-truth renders: colour %.1f%% shape %.1f%% (%.0fs)",
             100 * gt["colour_acc"], 100 * gt["shape_acc"], time.perf_counter() - t0)

    jobs = [(v, c, s, k) for v in C.VIEWS for c in C.COLOUR_NAMES for s in C.SHAPES for k in range(args.samples)]
    prompts = [C.view_prompt(c, s, v) for v, c, s, _ in jobs]
    gen = torch.Generator().manual_seed(args.seed)
    t0 = time.perf_counter()
    images = []
    for start in range(0, len(prompts), args.batch):
        images.append(sample(prior, prompts[start:start + args.batch], steps=args.steps, guidance=args.guidance,
                                   generator=gen, batch=args.batch))
        log.info("sampled %d/%d (%.0fs)", start + len(images[-1]), len(prompts), time.perf_counter() - t0)
    images = torch.cat(images).permute(0, 2, 3, 1).numpy()
    sample_s = time.perf_counter() - t0

    per_view = defaultdict(lambda: [0, 0, 0])
    per_shape = defaultdict(lambda: [0, 0, 0])
    per_colour = defaultdict(lambda: [0, 0, 0])
    shape_confusion = defaultdict(lambda: defaultdict(int))
    colour_confusion = defaultdict(lambda: defaultdict(int))
    house_doors = defaultdict(list)
    ok_c_all, ok_s_all = [], []
    for (view, colour, shape, _), img in zip(jobs, images):
        pred_c, _ = classify_image_colour(img)
        pred_s, _ = classify_shape_in_view(object_mask(img), view)
        ok_c, ok_s = pred_c == colour, pred_s == shape
        ok_c_all.append(ok_c)
        ok_s_all.append(ok_s)
        for table, key in ((per_view, view), (per_shape, shape), (per_colour, colour)):
            table[key][0] += ok_c
            table[key][1] += ok_s
            table[key][2] += 1
        shape_confusion[shape][pred_s] += 1
        colour_confusion[colour][pred_c] += 1
        if shape == "house":
            house_doors[view].append(door_pixels(img) >= 20)

    def rates(table):
        return {k: {"colour_acc": v[0] / v[2], "shape_acc": v[1] / v[2], "n": v[2]} for k, v in table.items()}

    result = {
        "model": str(args.model),
        "sampler": {"name": "DDIMScheduler", "steps": args.steps, "guidance_scale": args.guidance,
                    "samples_per_prompt": args.samples, "seed": args.seed,
                    "prompt": "a {colour} {shape}, {view} view"},
        "n_samples": len(jobs),
        "colour_acc": float(np.mean(ok_c_all)),
        "shape_acc": float(np.mean(ok_s_all)),
        "bar": {"colour": COLOUR_BAR, "shape": SHAPE_BAR},
        "per_view": rates(per_view),
        "per_shape": rates(per_shape),
        "per_colour": rates(per_colour),
        "shape_confusion": {k: dict(v) for k, v in shape_confusion.items()},
        "colour_confusion": {k: dict(v) for k, v in colour_confusion.items()},
        "house_door_visible_rate": {v: float(np.mean(x)) for v, x in house_doors.items()},
        "ground_truth_classifier_baseline": gt,
        "unet_batch2_forward": fwd,
        "timings_s": {"sampling": sample_s, "total": time.perf_counter() - t_start},
    }
    result["meets_bar"] = result["colour_acc"] >= COLOUR_BAR and result["shape_acc"] >= SHAPE_BAR
    (out_dir / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    write_grid(images, jobs, args.samples, out_dir / "samples.png")
    summary = (f"colour {100 * result['colour_acc']:.1f}% (bar {100 * COLOUR_BAR:.0f}%), "
               f"shape {100 * result['shape_acc']:.1f}% (bar {100 * SHAPE_BAR:.0f}%), "
               f"n={len(jobs)}, meets_bar={result['meets_bar']}")
    log.info("%s", summary)
    print(summary)


def write_grid(images: np.ndarray, jobs, samples: int, path: Path) -> None:
    """Rows: shapes; columns: colours × views (first sample of each), 64 px cells."""
    size = images.shape[1]
    index = {(v, c, s): i for i, (v, c, s, k) in enumerate(jobs) if k == 0}
    rows = []
    for shape in C.SHAPES:
        cells = []
        for colour in C.COLOUR_NAMES:
            for view in C.VIEWS:
                cells.append(images[index[(view, colour, shape)]])
            cells.append(np.ones((size, 4, 3), dtype=np.float32) * 0.5)  # separator between colours
        rows.append(np.concatenate(cells[:-1], axis=1))
    grid = np.concatenate(rows, axis=0)
    Image.fromarray((grid * 255).round().clip(0, 255).astype(np.uint8)).save(path, optimize=True)


if __name__ == "__main__":
    main()
