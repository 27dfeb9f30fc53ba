"""Primitive World v1: the constants and rules of /work/shared/primitive-world.md, in code.

Everything that generates data for, or measures, the embedded prior reads its numbers from
here, so the contract lives in exactly one place on the Python side.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import numpy as np

from engine.cameras import view_label

NAME = "primitive-world-v1"

# ---- shapes (geometry lives in primitive_world.render) ----------------------------------
SHAPES: tuple[str, ...] = ("cube", "sphere", "cylinder", "cone", "torus", "pyramid", "house")

# ---- colours: albedo in [0, 1] sRGB ------------------------------------------------------
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.80, 0.10, 0.10),
    "orange": (0.95, 0.50, 0.05),
    "yellow": (0.95, 0.85, 0.10),
    "green": (0.10, 0.65, 0.15),
    "blue": (0.10, 0.25, 0.85),
    "purple": (0.50, 0.15, 0.70),
    "white": (0.92, 0.92, 0.92),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
DOOR_RGB: tuple[float, float, float] = (0.25, 0.12, 0.05)

# ---- camera -------------------------------------------------------------------------------
CAMERA_DISTANCE = 2.2
FOV_Y_DEG = 40.0
IMAGE_SIZE = 64
LATENT_SIZE = 16
SUPERSAMPLE = 4
ELEVATION_RANGE_DEG = (0.0, 50.0)
AZIMUTH_RANGE_DEG = (0.0, 360.0)
OVERHEAD_ELEVATION_DEG = 40.0
SCENE_BOUND = 0.75

# ---- shading ------------------------------------------------------------------------------
LIGHT_DIR = tuple((np.array([0.4, -0.6, 0.7]) / np.linalg.norm([0.4, -0.6, 0.7])).tolist())
AMBIENT = 0.40
DIFFUSE = 0.60
BACKGROUND_RGB = (1.0, 1.0, 1.0)

# ---- prompts ------------------------------------------------------------------------------
VIEWS: tuple[str, ...] = ("front", "side", "back", "overhead")
VIEW_PROMPT = "{prompt}, {view} view"
PROMPT_MIX = {"suffix": 0.70, "bare": 0.20, "empty": 0.10}
VOCABULARY: tuple[str, ...] = ("a",) + COLOUR_NAMES + SHAPES + VIEWS + ("view", ",")


def shading(n_dot_l):
    """Lambert factor 0.40 + 0.60·max(0, n·l) (numpy or torch input)."""
    if isinstance(n_dot_l, np.ndarray) or np.isscalar(n_dot_l):
        return AMBIENT + DIFFUSE * np.maximum(0.0, n_dot_l)
    return AMBIENT + DIFFUSE * n_dot_l.clamp(min=0.0)


def shaded_colour(albedo: Sequence[float], normal: Sequence[float]) -> np.ndarray:
    """The contract's shaded colour of a surface with this albedo and (outward) normal."""
    n = np.asarray(normal, dtype=np.float64)
    n = n / np.linalg.norm(n)
    return np.asarray(albedo, dtype=np.float64) * shading(float(n @ np.asarray(LIGHT_DIR)))


def view_of(azimuth_deg: float, elevation_deg: float) -> str:
    """front / side / back / overhead by the contract's rules (the engine's, with its threshold)."""
    return view_label(azimuth_deg, elevation_deg, OVERHEAD_ELEVATION_DEG)


def bare_prompt(colour: str, shape: str) -> str:
    if colour not in COLOURS:
        raise ValueError(f"unknown colour {colour!r}")
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}")
    return f"a {colour} {shape}"


def view_prompt(colour: str, shape: str, view: str) -> str:
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}")
    return VIEW_PROMPT.format(prompt=bare_prompt(colour, shape), view=view)


def training_prompt(colour: str, shape: str, azimuth_deg: float, elevation_deg: float, u: float) -> str:
    """The prompt of one training sample; ``u`` uniform in [0, 1) picks the mix's branch.

    [0, 0.70): with the view suffix; [0.70, 0.90): bare prompt; [0.90, 1): empty prompt.
    """
    if u < PROMPT_MIX["suffix"]:
        return view_prompt(colour, shape, view_of(azimuth_deg, elevation_deg))
    if u < PROMPT_MIX["suffix"] + PROMPT_MIX["bare"]:
        return bare_prompt(colour, shape)
    return ""


def sample_camera_angles(rng: random.Random | np.random.Generator, n: int) -> np.ndarray:
    """(n, 2) array of (azimuth, elevation) in degrees drawn from the contract's ranges."""
    if isinstance(rng, random.Random):
        rng = np.random.default_rng(rng.getrandbits(63))
    az = rng.uniform(*AZIMUTH_RANGE_DEG, size=n) % 360.0
    el = rng.uniform(*ELEVATION_RANGE_DEG, size=n)
    return np.stack([az, el], axis=1)


def view_angle_ranges(view: str) -> list[tuple[tuple[float, float], tuple[float, float]]]:
    """The (azimuth range, elevation range) pieces, in degrees, that a view suffix covers."""
    lo, hi = ELEVATION_RANGE_DEG
    ov = OVERHEAD_ELEVATION_DEG
    if view == "overhead":
        return [((0.0, 360.0), (ov, hi))]
    if view == "front":
        return [((315.0, 360.0), (lo, ov)), ((0.0, 45.0), (lo, ov))]
    if view == "side":
        return [((45.0, 135.0), (lo, ov)), ((225.0, 315.0), (lo, ov))]
    if view == "back":
        return [((135.0, 225.0), (lo, ov))]
    raise ValueError(f"unknown view {view!r}")


def prior_metadata() -> dict:
    """The engine's dreamsmith_prior.json for the shipped prior."""
    return {
        "name": NAME,
        "image_size": IMAGE_SIZE,
        "latent_size": LATENT_SIZE,
        "camera": {
            "distance": [CAMERA_DISTANCE, CAMERA_DISTANCE],
            "fov_y_deg": [FOV_Y_DEG, FOV_Y_DEG],
            "elevation_deg": list(ELEVATION_RANGE_DEG),
            "azimuth_deg": list(AZIMUTH_RANGE_DEG),
            "overhead_elevation_deg": OVERHEAD_ELEVATION_DEG,
        },
        "view_prompt": VIEW_PROMPT,
        "scene_bound": SCENE_BOUND,
        "background_rgb": list(BACKGROUND_RGB),
        "lighting": {"direction": list(LIGHT_DIR), "ambient": AMBIENT, "diffuse": DIFFUSE},
    }


def light_dir() -> np.ndarray:
    return np.asarray(LIGHT_DIR, dtype=np.float64)


assert math.isclose(float(np.linalg.norm(LIGHT_DIR)), 1.0, rel_tol=1e-9)
