"""Task configs: validation helpers, the limits every front end shares, presets and overrides.

A task's config is a frozen dataclass of small groups (field, guidance, surface, colour, ...), each
validating itself in ``__post_init__``. Every change goes through ``dataclasses.replace``
(``with_overrides``), so no value reaches a task unchecked.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import typing
from typing import Any, Mapping, Sequence

# The one place the limits live: the CLI and the engine refuse what the server refuses
# (server/protocol.py repeats them for the add-on, which cannot import the engine; a test keeps them equal).
MAX_STEPS = 20_000
MAX_SEED = 2**32 - 1
GUIDANCE_SCALE_RANGE = (1.0, 1000.0)
TEXTURE_SIZE_RANGE = (512, 4096)
GRID_RESOLUTION_RANGE = (8, 128)
MESH_RESOLUTION_RANGE = (8, 256)


def check_int(name: str, value: Any, low: int, high: int | None = None) -> None:
    """Refuse anything but an integer (bools excluded) in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"at least {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {bound}, got {value}")


def check_number(name: str, value: Any, low: float = -math.inf, high: float = math.inf,
                 low_open: bool = False) -> None:
    """Refuse anything but a finite real number in [low, high] (or (low, high] with ``low_open``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value < low or value > high or (low_open and value == low):
        left = "(" if low_open else "["
        raise ValueError(f"{name} must lie in {left}{low:g}, {high:g}], got {value:g}")


def check_bool(name: str, value: Any, allow_none: bool = False) -> None:
    """Refuse anything but True or False (or None with ``allow_none``): "false" is text, not a bool."""
    if not isinstance(value, bool) and not (allow_none and value is None):
        allowed = "true, false or unset" if allow_none else "true or false"
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


def check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; expected one of {', '.join(choices)}")


def check_steps(steps: Any) -> None:
    check_int("steps", steps, 1, MAX_STEPS)


@dataclasses.dataclass(frozen=True)
class TaskConfig:
    """The settings every task has; each task adds its own groups."""

    steps: int = 600
    seed: int = 0
    negative_prompt: str = ""
    # Refuse a prompt with words the prior does not know instead of warning (prompts.check_words).
    strict_prompt: bool = False
    view_dependent_prompts: bool = True
    preview_every: int = 0  # steps between preview pictures; 0 picks about 20 per run

    def __post_init__(self) -> None:
        check_steps(self.steps)
        check_int("seed", self.seed, 0, MAX_SEED)
        check_int("preview_every", self.preview_every, 0)
        if not isinstance(self.negative_prompt, str):
            raise ValueError("negative_prompt must be text")
        check_bool("strict_prompt", self.strict_prompt)
        check_bool("view_dependent_prompts", self.view_dependent_prompts)


def with_overrides(config, overrides: Mapping[str, Any]):
    """``config`` with ``overrides`` applied: keys are field names, dotted to reach into groups
    (``"surface.mesh_resolution"``), and a group's own name replaces the whole group. Every group
    on the way is rebuilt with ``dataclasses.replace``, so its validation runs.

    Raises:
        ValueError: an unknown key or a value its group refuses.
    """
    for key, value in overrides.items():
        config = _replace_path(config, key.split("."), value, key)
    return config


def _replace_path(config, path: list[str], value: Any, key: str):
    names = {f.name for f in dataclasses.fields(config)}
    if path[0] not in names:
        raise ValueError(f"unknown setting {key!r}; {type(config).__name__} has {', '.join(sorted(names))}")
    if len(path) > 1:
        value = _replace_path(getattr(config, path[0]), path[1:], value, key)
    return dataclasses.replace(config, **{path[0]: value})


def parse_assignments(config, assignments: Sequence[str]) -> dict[str, Any]:
    """``["field=value", "group.field=value"]`` as overrides for ``config``, each value parsed as
    the field's current type (``true``/``false`` for flags, comma-separated numbers for tuples); an
    optional setting left unset is read as its declared type, or ``none``."""
    overrides = {}
    for assignment in assignments:
        key, separator, text = assignment.partition("=")
        if not separator:
            raise ValueError(f"an override must read FIELD=VALUE, got {assignment!r}")
        current = config
        for part in key.split("."):
            if not dataclasses.is_dataclass(current) or part not in {f.name for f in dataclasses.fields(current)}:
                raise ValueError(f"unknown setting {key!r}")
            owner, current = current, getattr(current, part)
        if current is None:  # an optional setting left unset: read as its declared type, or "none"
            if text == "none":
                overrides[key] = None
                continue
            declared = typing.get_type_hints(type(owner))[part]
            current = next(kind for kind in typing.get_args(declared) if kind is not type(None))()
        overrides[key] = _parse_like(current, text, key)
    return overrides


def _parse_like(current: Any, text: str, key: str) -> Any:
    try:
        if isinstance(current, bool):
            if text not in ("true", "false"):
                raise ValueError
            return text == "true"
        if isinstance(current, tuple):
            return tuple(float(v) for v in text.split(",")) if text else ()
        return type(current)(text)
    except ValueError:
        raise ValueError(f"{key}: cannot read {text!r} as {type(current).__name__}") from None


def config_from_preset(config_class, presets: Mapping[str, Mapping[str, Any]], preset: str,
                       overrides: Mapping[str, Any] | None = None):
    """``config_class()`` with a named preset's overrides and then ``overrides`` applied.

    Raises:
        ValueError: an unknown preset, an unknown setting or a value its group refuses.
    """
    if preset not in presets:
        raise ValueError(f"unknown preset {preset!r}; expected one of {', '.join(presets)}")
    # Copied: a preset's group values must not be shared by the configs built from it.
    config = with_overrides(config_class(), copy.deepcopy(dict(presets[preset])))
    return with_overrides(config, overrides or {})


def apply_assignments(config, assignments: Sequence[str]):
    """``config`` with ``["field=value", "group.field=value"]`` applied (``parse_assignments``)."""
    return with_overrides(config, parse_assignments(config, assignments))
