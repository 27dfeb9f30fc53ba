"""``FIELD=VALUE`` strings applied to a task config, for scripts and benchmarks that take overrides."""

from __future__ import annotations


def apply_overrides(config, assignments: list[str]):
    """Set each ``field=value`` on ``config`` (dots reach nested configs: ``guidance.guidance_scale``),
    parsed as the field's current type; tuples take comma-separated numbers. Returns ``config``."""
    for assignment in assignments:
        key, value = assignment.split("=", 1)
        target = config
        while "." in key:
            part, key = key.split(".", 1)
            target = getattr(target, part)
        current = getattr(target, key)
        if isinstance(current, bool):
            parsed = value == "true"
        elif isinstance(current, tuple):
            parsed = tuple(float(v) for v in value.split(","))
        else:
            parsed = type(current)(value)
        setattr(target, key, parsed)
    return config
