"""The engine's tasks, registered once for the CLI, the server and the bench.

Each task is a function ``run([mesh,] prompt, prior, config, on_progress=, cancel=, rig=)`` with a
frozen config dataclass and named presets (dotted overrides on the config's defaults).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from ..config import apply_assignments, config_from_preset
from . import generate, paint, sketch

PRESET_NAMES = ("draft", "standard", "high", "sd")


@dataclass(frozen=True)
class Task:
    """One task: its entry point, config class and presets, and whether it starts from a mesh."""

    name: str
    help: str
    run: Callable[..., Any]
    config_class: type
    presets: Mapping[str, Mapping[str, Any]]
    takes_mesh: bool

    def config(self, preset: str = "standard", overrides: Mapping[str, Any] | None = None,
               assignments: Sequence[str] = ()):
        """The config of ``preset`` with ``overrides`` on top, validated group by group.

        Args:
            preset: a name in ``PRESET_NAMES``.
            overrides: settings by (dotted) name, e.g. ``{"seed": 1, "surface.mesh_resolution": 96}``.
            assignments: ``"FIELD=VALUE"`` strings as scripts take them, applied last.

        Raises:
            ValueError: an unknown preset or setting, or a value its group refuses.
        """
        config = config_from_preset(self.config_class, self.presets, preset, overrides)
        return apply_assignments(config, assignments)


TASKS = {task.name: task for task in (
    Task("generate", "text to a UV-textured GLB", generate.generate, generate.GenerateConfig, generate.PRESETS,
         takes_mesh=False),
    Task("paint", "paint a texture onto a mesh from the prompt, keeping its shape (Latent-Paint)", paint.paint,
         paint.PaintConfig, paint.PRESETS, takes_mesh=True),
    Task("sketch", "refine a rough mesh into a textured prop from the prompt (Sketch-Shape)", sketch.sketch,
         sketch.SketchConfig, sketch.PRESETS, takes_mesh=True),
)}


def preset_config(task: str, preset: str = "standard", overrides: Mapping[str, Any] | None = None,
                  assignments: Sequence[str] = ()):
    """``TASKS[task].config(preset, overrides, assignments)``."""
    return TASKS[task].config(preset, overrides, assignments)
