"""Primitive World v1, the world the embedded prior was trained on: its constants and rules.

Everything that generates data for, or measures, the embedded prior reads its numbers from
here, so the world is defined in exactly one place; the prior's model card
(primitive_world.model_card) describes it from these same constants.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import numpy as np

from engine.cameras import view_label

NAME = "primitive-world-v1"

# ---- shapes: metres, Blender axes (+Z up, front -Y), centred on the origin ------------------
# primitive_world.render ray-casts them exactly; primitive_world.meshes tessellates them.
SHAPES: tuple[str, ...] = ("cube", "sphere", "cylinder", "cone", "torus", "pyramid", "house")
CUBE_SIDE = 0.70  # axis-aligned
SPHERE_RADIUS = 0.45
CYLINDER = dict(radius=0.35, z=(-0.40, 0.40))  # axis Z
CONE = dict(radius=0.45, z=(-0.40, 0.40))  # axis Z: base radius at z[0], apex at z[1]
TORUS = dict(major=0.32, minor=0.12)  # lying in the XY plane
PYRAMID = dict(side=0.80, z=(-0.35, 0.35))  # square base at z[0], edges along X and Y; apex at z[1]
HOUSE_BODY = dict(x=(-0.35, 0.35), y=(-0.30, 0.30), z=(-0.45, 0.10))  # a box
HOUSE_RIDGE_Z = 0.45  # gable roof from the body's top to a ridge along X at y = 0
# The door: painted on the front face (y = HOUSE_BODY["y"][0]) only, so a door at the back is a Janus failure.
HOUSE_DOOR = dict(x=(-0.10, 0.10), z=(-0.45, -0.10))

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
LIGHT_TOWARDS = (0.4, -0.6, 0.7)  # towards the light: from the front (-Y), the right (+X) and above
LIGHT_DIR = tuple((np.array(LIGHT_TOWARDS) / np.linalg.norm(LIGHT_TOWARDS)).tolist())
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
