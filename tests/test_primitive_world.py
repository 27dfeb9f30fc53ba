"""Primitive World: renderer and prompts follow the contract; the shipped prior folder is sane."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from primitive_world import contract as C
from primitive_world.classify import (
    classify_colour,
    classify_image_colour,
    classify_shape,
    classify_shape_in_view,
    object_mask,
)
from primitive_world.meshes import contract_mesh
from primitive_world.render import colourise, contract_camera, render, render_geometry, render_silhouette

PRIOR = Path(__file__).resolve().parents[1] / "engine" / "priors" / "primitive-world"


# ---- renderer --------------------------------------------------------------------------------
def test_background_is_white_and_object_centred():
    r = render("sphere", "blue", contract_camera(0.0, 20.0))
    assert r.rgb.shape == (64, 64, 3) and r.mask.shape == (64, 64)
    assert np.all(r.rgb[0] == 1.0) and np.all(r.rgb[:, 0] == 1.0)
    assert r.mask[32, 32] == 1.0 and r.mask[0, 0] == 0.0
    # sphere of radius 0.45 at distance 2.2, fov 40: angular radius asin(0.45/2.2) -> ~18.2 px
    focal = 32 / math.tan(math.radians(20))
    radius_px = focal * math.tan(math.asin(0.45 / 2.2))
    assert r.mask.sum() == pytest.approx(math.pi * radius_px**2, rel=0.03)


def test_lit_cube_face_is_albedo_times_shading():
    r = render("cube", "red", contract_camera(0.0, 0.0))  # straight at the front face (normal -Y)
    expected = C.shaded_colour(C.COLOURS["red"], (0, -1, 0))
    n_dot_l = 0.6 / math.sqrt(0.4**2 + 0.6**2 + 0.7**2)
    assert expected == pytest.approx(np.array(C.COLOURS["red"]) * (0.4 + 0.6 * n_dot_l))
    np.testing.assert_allclose(r.rgb[32, 32], expected, atol=1e-5)
    top = render("cube", "red", contract_camera(0.0, 50.0)).rgb[22, 32]  # upper part shows the top face
    np.testing.assert_allclose(top, C.shaded_colour(C.COLOURS["red"], (0, 0, 1)), atol=1e-5)


def test_light_comes_from_front_right_above():
    # seen from the front, the sphere's right half (+X) is brighter than its left half
    r = render("sphere", "white", contract_camera(0.0, 0.0)).rgb.mean(-1)
    cam = contract_camera(0.0, 0.0)
    assert np.allclose(cam.c2w[:3, 0], (1, 0, 0))  # image right is +X
    assert r[28, 42] > r[28, 22]


def test_house_door_on_front_only():
    front = render("house", "white", contract_camera(0.0, 10.0))
    back = render("house", "white", contract_camera(180.0, 10.0))
    assert front.door.sum() > 50
    assert back.door.sum() == 0
    # the door's pixels are dark brown (shaded door albedo), the rest of the front wall white
    row, col = np.unravel_index(np.argmax(front.door), front.door.shape)
    assert front.door[row, col] == 1.0
    expected_door = np.array(C.DOOR_RGB) * C.shading(float(np.array([0, -1, 0]) @ C.light_dir()))
    np.testing.assert_allclose(front.rgb[row, col], expected_door, atol=1e-5)
    dark_back = (back.rgb.max(-1) < 0.2).sum()
    assert dark_back == 0


def test_colourise_is_exact_for_every_colour():
    g = render_geometry("torus", [contract_camera(30.0, 35.0)])
    for colour in C.COLOUR_NAMES:
        img = colourise(g, colour)[0]
        assert img.min() >= 0 and img.max() <= 1.0 + 1e-6
        assert classify_image_colour(img)[0] == colour


def test_torus_has_a_hole_from_above():
    m = render_silhouette("torus", contract_camera(0.0, 50.0))
    assert m[32, 32] < 0.5 and m.sum() > 300


# ---- prompts ---------------------------------------------------------------------------------
@pytest.mark.parametrize("az, el, view", [
    (0.0, 0.0, "front"), (44.9, 10.0, "front"), (45.0, 10.0, "side"), (134.9, 0.0, "side"),
    (135.0, 0.0, "back"), (224.9, 39.9, "back"), (225.0, 0.0, "side"), (314.9, 0.0, "side"),
    (315.0, 0.0, "front"), (359.9, 0.0, "front"), (180.0, 40.0, "overhead"), (0.0, 50.0, "overhead"),
    (90.0, 39.99, "side"),
])
def test_view_suffix_rules(az, el, view):
    assert C.view_of(az, el) == view


def test_prompt_grammar_and_mix():
    assert C.view_prompt("red", "cube", "front") == "a red cube, front view"
    assert C.training_prompt("red", "cube", 0.0, 45.0, 0.1) == "a red cube, overhead view"
    assert C.training_prompt("red", "cube", 0.0, 45.0, 0.8) == "a red cube"
    assert C.training_prompt("red", "cube", 0.0, 45.0, 0.95) == ""
    rng = np.random.default_rng(0)
    prompts = [C.training_prompt("blue", "cone", 100.0, 10.0, u) for u in rng.random(20000)]
    frac_suffix = np.mean([p.endswith("view") for p in prompts])
    frac_bare = np.mean([p == "a blue cone" for p in prompts])
    frac_empty = np.mean([p == "" for p in prompts])
    assert frac_suffix == pytest.approx(0.70, abs=0.015)
    assert frac_bare == pytest.approx(0.20, abs=0.015)
    assert frac_empty == pytest.approx(0.10, abs=0.015)


def test_metadata_schema():
    meta = C.prior_metadata()
    assert meta == {
        "name": "primitive-world-v1", "image_size": 64, "latent_size": 16,
        "camera": {"distance": [2.2, 2.2], "fov_y_deg": [40.0, 40.0], "elevation_deg": [0.0, 50.0],
                   "azimuth_deg": [0.0, 360.0], "overhead_elevation_deg": 40.0},
        "view_prompt": "{prompt}, {view} view", "scene_bound": 0.75, "background_rgb": [1.0, 1.0, 1.0],
        "lighting": {"direction": pytest.approx([0.3980, -0.5970, 0.6965], abs=1e-4), "ambient": 0.4, "diffuse": 0.6},
    }


# ---- classifiers -----------------------------------------------------------------------------
def test_classify_colour_handles_shadow():
    white_in_shadow = np.array(C.COLOURS["white"]) * 0.45
    assert classify_colour(np.tile(white_in_shadow, (10, 1)))[0] == "white"
    assert classify_colour([[0.8, 0.1, 0.1]])[0] == "red"


def test_classify_shape_from_known_cameras():
    cams = [contract_camera(az, el) for el in (10.0, 35.0) for az in range(0, 360, 90)]
    masks = [render_silhouette("cone", c) > 0.5 for c in cams]
    best, scores = classify_shape(masks, cams)
    assert best == "cone" and scores["cone"] > 0.99
    img = render("pyramid", "green", contract_camera(100.0, 20.0)).rgb
    assert classify_shape_in_view(object_mask(img), "side", az_step=15.0, el_step=10.0)[0] == "pyramid"


# ---- tokenizer and the shipped prior ----------------------------------------------------------
def test_tokenizer_roundtrip(tmp_path):
    from transformers import AutoTokenizer

    from primitive_world.tokenizer import encode, save_tokenizer

    save_tokenizer(tmp_path)
    tok = AutoTokenizer.from_pretrained(str(tmp_path))
    ids = encode(tok, ["a Red cube, front view", "", "a zebra cube"])
    assert ids.shape == (3, 16)
    toks = tok.convert_ids_to_tokens(ids[0].tolist())
    assert toks[:8] == [tok.bos_token, "a", "red", "cube", ",", "front", "view", tok.eos_token]
    assert tok.unk_token_id in ids[2].tolist()
    for word in C.VOCABULARY:
        assert tok.convert_tokens_to_ids(word) != tok.unk_token_id


@pytest.mark.skipif(not (PRIOR / "dreamsmith_prior.json").exists(), reason="prior not built")
def test_shipped_prior_folder():
    size = sum(p.stat().st_size for p in PRIOR.rglob("*") if p.is_file())
    assert size <= 25 * 1024 * 1024
    assert json.loads((PRIOR / "dreamsmith_prior.json").read_text()) == C.prior_metadata()
    index = json.loads((PRIOR / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (PRIOR / sub).is_dir()
    assert list(PRIOR.glob("unet/*.safetensors")) and list(PRIOR.glob("vae/*.safetensors"))
    vae_cfg = json.loads((PRIOR / "vae" / "config.json").read_text())
    assert vae_cfg["latent_channels"] == 4 and len(vae_cfg["block_out_channels"]) == 3
    assert 0 < vae_cfg["scaling_factor"] != 0.18215


def test_cameras_match_engine_convention():
    cameras = pytest.importorskip("engine.cameras")
    for az, el in ((0.0, 0.0), (90.0, 20.0), (200.0, 45.0)):
        ours = contract_camera(az, el)
        theirs = cameras.orbit_camera(az, el, C.CAMERA_DISTANCE, C.FOV_Y_DEG)
        np.testing.assert_allclose(ours.c2w, theirs.c2w, atol=1e-12)
        assert cameras.view_label(az, el, C.OVERHEAD_ELEVATION_DEG) == C.view_of(az, el)


# ---- model card ---------------------------------------------------------------------------------
def _fake_card_inputs(folder: Path, with_eval: bool) -> None:
    train = {
        "recipe": {"cameras_per_shape": 17, "vae_batch": 5, "vae_lr": 0.0031, "kl_weight": 2e-06, "batch": 9,
                   "lr": 0.0007, "warmup": 13, "min_snr_gamma": 4.5, "ema": 0.998},
        "timings_s": {"render_dataset": 1.0, "train_vae": 600.0, "cache_latents": 30.0, "train_unet": 1200.0},
        "unet_config": {"block_out_channels": [8, 16, 16]},
        "vae_config": {"block_out_channels": [4, 8, 12]},
        "dataset": {"geometries": 119, "images": 833},
        "vae": {"steps": 321, "val_psnr_db": 31.44, "scaling_factor": 0.54321},
        "params": {"unet": 1_234_567, "text_encoder": 98_765, "vae": 456_789},
        "steps_done": 77,
        "render_dataset_uncached_s": 90.0,
        "render_dataset_note": "rendered from a cache",
    }
    (folder / "training.json").write_text(json.dumps(train))
    if with_eval:
        acc = {"colour_acc": 0.5, "shape_acc": 0.25}
        ev = {
            "unet_batch2_forward": {"median_ms": 12.34, "min_ms": 11.11},
            "ground_truth_classifier_baseline": {"colour_acc": 1.0, "shape_acc": 0.875, "n": 42},
            "sampler": {"steps": 23, "guidance_scale": 6.5, "samples_per_prompt": 3, "seed": 8},
            "n_samples": 588, "colour_acc": 0.9731, "shape_acc": 0.9412,
            "per_view": {"front": acc, "overhead": acc}, "per_shape": {"torus": acc},
            "house_door_visible_rate": {"front": 0.625},
        }
        (folder / "eval.json").write_text(json.dumps(ev))


def test_model_card_template_renders_every_section(tmp_path):
    from primitive_world.model_card import render_card

    _fake_card_inputs(tmp_path, with_eval=True)
    card = render_card(tmp_path)
    headings = [f"# {C.NAME}: the embedded Primitive World prior", "## Components", "## Training data", "## Recipe",
                "## Timing", "## Quality", "## Samples", "## Limitations"]
    positions = [card.index("\n" + h if i else h) for i, h in enumerate(headings)]
    assert positions == sorted(positions)
    for expected in (
        "| unet | `UNet2DConditionModel` (blocks (8, 16, 16)", "| 1.23 M params |", "scaling_factor 0.5432",
        "- 119 geometry renders (17 uniformly", "→ 833 images", "1. VAE: 321 AdamW steps, batch 5, lr 0.0031",
        "validation PSNR 31.4 dB", "3. Text encoder + U-Net jointly: 77 AdamW steps, batch 9, lr 0.0007 (warm-up 13",
        "min-SNR-γ=4.5", "EMA 0.998", "--seed 0 --out engine/priors/primitive-world\n```",
        "| render dataset | 1.5 min (90 s) (¹) |", "| total | 30.5 min (1831 s) |",
        "(¹) rendered from a cache; the shipped run's total excludes it.\n\n",
        "median 12.3 ms, best 11.1 ms", "DDIM 23 steps, guidance 6.5, 3 samples", "(588 samples, seed 8)",
        "| colour accuracy | **97.3 %** |", "| shape accuracy | **94.1 %** |", "shape 87.5 % (n=42)",
        "| view | colour | shape |\n| --- | --- | --- |\n| front | 50.0 % | 25.0 % |\n| overhead |",
        "| shape | colour | shape |\n| --- | --- | --- |\n| torus | 50.0 % | 25.0 % |\n\nHouse door",
        "front only: front 62.5 %.\n\n## Samples", "![samples](samples.png)\n\n## Limitations",
    ):
        assert expected in card, expected
    assert "$" not in card and "\n\n\n" not in card and card.endswith("light.\n")


def test_model_card_without_eval_has_no_quality_section(tmp_path):
    from primitive_world.model_card import render_card

    _fake_card_inputs(tmp_path, with_eval=False)
    card = render_card(tmp_path)
    assert "## Quality" not in card and "## Samples" not in card
    assert "| total | 30.5 min (1831 s) |\n\n(¹) rendered from a cache; the shipped run's total excludes it.\n\n" \
           "## Limitations\n" in card
    assert "$" not in card and "\n\n\n" not in card


def test_the_shipped_model_card_is_its_template_rendered_and_describes_the_world_itself():
    from primitive_world.model_card import render_card, shape_geometry

    card = (PRIOR / "README.md").read_text(encoding="utf-8")
    assert render_card(PRIOR) == card  # python -m primitive_world.model_card rewrites it byte for byte
    # Nothing the card needs lies outside the repository: no absolute paths, no climbing out of it.
    assert not re.search(r"(?<![\w.])/(work|home|root|tmp|opt)/|\.\./", card)
    world = card[card.index("## Primitive World"):card.index("## Components")]
    for shape in C.SHAPES:
        assert f"| {shape} | {shape_geometry()[shape]} |" in world
    for colour, albedo in C.COLOURS.items():
        assert f"| {colour} | ({', '.join(f'{v:.2f}' for v in albedo)}) |" in world
    for expected in ("distance 2.2", "field\nof view 40°", "64×64 pixels", "(0.40 + 0.60·max(0, n·l))",
                     "normalize(0.4, -0.6, 0.7)", "pure white (1, 1, 1)", "`a {colour} {shape}`",
                     "- `, front view`: azimuth [315°, 360°) ∪ [0°, 45°), elevation [0°, 40°)",
                     "- `, overhead view`: azimuth [0°, 360°), elevation [40°, 50°]"):
        assert expected in world, expected
    # The geometry in words is the geometry the meshes are built from.
    assert shape_geometry()["cube"] == f"axis-aligned box, side {C.CUBE_SIDE:.2f}"
    assert np.allclose(np.ptp(contract_mesh("cube").vertices, axis=0), C.CUBE_SIDE)
