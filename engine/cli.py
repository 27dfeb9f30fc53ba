"""Command line: ``python -m engine generate "PROMPT" [-o OUT.glb] [options]``, and ``paint`` / ``sketch``
with a mesh file before the prompt."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import sys
import tempfile
import time
import unicodedata
from pathlib import Path
from typing import Callable, TypeVar

from .config import with_overrides
from .guidance import METHODS
from .tasks import PRESET_NAMES, TASKS, Task

Config = TypeVar("Config")
DEVICES = ("cpu", "cuda")
# The command-line option that sets each config setting, for error messages.
OPTIONS = {"seed": "--seed", "negative_prompt": "--negative", "steps": "--steps",
           "guidance.method": "--method", "guidance.guidance_scale": "--guidance", "strict_prompt": "--strict",
           "colour.delight": "--shaded"}
# Leading words left out of a file name made from the prompt: "a red cube" -> red_cube.glb.
ARTICLES = ("a", "an", "the")
MAX_NAME_CHARS = 60


class OneLineErrorParser(argparse.ArgumentParser):
    """Bad arguments get one line on stderr and exit code 2, not a usage dump."""

    def error(self, message: str):  # noqa: D401 - argparse's API
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")


def add_common_options(command: argparse.ArgumentParser, task: Task) -> None:
    """The output and the options every task shares; the help gives the task's own defaults."""
    steps = ", ".join(f"{name} {task.config(name).steps}" for name in PRESET_NAMES)
    guidance = ", ".join(f"{name} {task.config(name).guidance.guidance_scale:g}" for name in PRESET_NAMES)
    command.add_argument("-o", "--output", help="the .glb to write (replaced if it exists); .obj/.mtl/.png and "
                         "a _preview.png go beside it (default: a name made from the prompt, in the current "
                         'folder: "a red cube" writes red_cube.glb)')
    command.add_argument("--model", help="diffusers Stable Diffusion folder or cached Hugging Face id "
                         "(default: the embedded Primitive World prior)")
    command.add_argument("--preset", default="standard",
                         help="draft, standard or high (default standard); sd for a Stable Diffusion model")
    command.add_argument("--steps", type=int, help=f"optimisation steps (default: the preset's: {steps})")
    command.add_argument("--seed", type=int, default=0, help="random seed; same seed, same asset (default 0)")
    command.add_argument("--guidance", type=float, help=f"classifier-free guidance scale (default: the preset's: "
                         f"{guidance})")
    command.add_argument("--negative", default="", help="negative prompt")
    command.add_argument("--strict", action="store_true", help="refuse a prompt with words the prior does not "
                         "know (default: warn, name them and run)")
    command.add_argument("--shaded", action="store_true", help="keep the prior's shading in the texture "
                         "(default: an albedo texture, the prior's light divided out, when the prior knows it)")
    command.add_argument("--method", default="sds", help=f"score estimator: {' or '.join(METHODS)} (default sds)")
    command.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    command.add_argument("-v", "--verbose", action="store_true", help="log what the engine does")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="python -m engine", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for task in TASKS.values():
        command = commands.add_parser(task.name, help=task.help)
        if task.takes_mesh:
            command.add_argument("mesh", help="the mesh file (glb, gltf, obj, ply, stl or off), in Blender "
                                 "axes except glTF, which is Y-up")
        command.add_argument("prompt", help='what to make, e.g. "a red cube"')
        add_common_options(command, task)
    return parser


def output_from_prompt(prompt: str) -> str:
    """A file name in the current folder made from the prompt: its ASCII letters and digits (accents
    dropped), words joined by "_", a leading article left out ("a red cube" -> "red_cube.glb").

    Args:
        prompt: the prompt as given on the command line.
    """
    ascii_text = unicodedata.normalize("NFKD", prompt).encode("ascii", "ignore").decode()
    words = re.findall(r"[a-z0-9]+", ascii_text.lower())
    if len(words) > 1 and words[0] in ARTICLES:
        words = words[1:]
    return ("_".join(words)[:MAX_NAME_CHARS].strip("_") or "dreamsmith") + ".glb"


def _check_output(parser: argparse.ArgumentParser, output: str) -> Path:
    path = Path(output).expanduser()
    if path.suffix.lower() != ".glb":
        parser.error(f"the output must be a .glb file, got {output!r}")
    if path.is_dir():
        parser.error(f"the output {output!r} is a folder")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        parser.error(f"cannot write {output!r}: the folder {str(folder)!r} does not exist")
    try:  # actually try: permission bits say nothing for root, read-only mounts or /proc
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".dreamsmith-write-test-"):
            pass
        if path.exists() and not os.access(path, os.W_OK):
            raise PermissionError
    except OSError as error:
        parser.error(f"cannot write {output!r}: {error.strerror or 'permission denied'}")
    return path


def validate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """What the command line alone decides is checked here, before any work; the task's settings
    are checked by its config (``task_config``), as the server's are."""
    import torch

    if not args.prompt.strip():
        parser.error("the prompt is empty")
    if args.device not in DEVICES:
        parser.error(f"unknown --device {args.device!r}; use cpu or cuda")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda was asked for, but this machine has no usable CUDA GPU")
    args.output = _check_output(parser, args.output or output_from_prompt(args.prompt))


def load_input_mesh(parser: argparse.ArgumentParser, path: str):
    """The mesh file as an engine MeshInput; a file the engine cannot use is a bad argument."""
    from .meshes import MeshError, load_mesh

    try:
        return load_mesh(Path(path).expanduser())
    except MeshError as error:  # its message names the file only when reading it failed
        parser.error(str(error) if Path(path).name in str(error) else f"{path}: {error}")


def config_or_exit(parser: argparse.ArgumentParser, build: Callable[[], Config]) -> Config:
    """``build()``'s config, or the command stops with one line on stderr (exit 2) before any work
    when its settings are refused (an unknown preset or setting, a bad value)."""
    try:
        return build()
    except ValueError as error:
        parser.error(str(error))


def task_config(parser: argparse.ArgumentParser, args: argparse.Namespace, task: Task):
    """The task's preset with the command line's settings; a value the config refuses is a bad
    argument, named by its option."""
    config = config_or_exit(parser, lambda: task.config(args.preset))
    settings = {"seed": args.seed, "negative_prompt": args.negative, "guidance.method": args.method,
                "steps": args.steps, "guidance.guidance_scale": args.guidance, "strict_prompt": args.strict,
                "colour.delight": False if args.shaded else None}
    for key, value in settings.items():
        if value is None:
            continue
        try:
            config = with_overrides(config, {key: value})
        except ValueError as error:
            parser.error(f"{OPTIONS[key]}: {error}")
    return config


class ProgressBars:
    """Engine progress on stderr, phase by phase (engine.progress.Progress): a phase that counts its
    work gets a tqdm bar of its own, opened at its first event and closed at its last, so what is
    logged before the first step stays above every bar; a phase that reports only its end (1 of 1)
    gets one line with its time, counted from the event before it."""

    LABELS = {"optimise": "optimising"}
    UNITS = {"optimise": "step", "colour": "view"}  # Latent-Paint's colour stage counts its views

    def __init__(self):
        self.bar, self.phase = None, None
        self.last_event = time.monotonic()

    def __call__(self, event) -> None:
        from tqdm import tqdm

        label = self.LABELS.get(event.phase, event.phase)
        if event.phase != self.phase:
            self.close()
            self.phase = event.phase
            if event.step >= event.total:
                tqdm.write(f"{label}: done in {time.monotonic() - self.last_event:.1f} s", file=sys.stderr)
            else:
                self.bar = tqdm(total=event.total, desc=label, unit=self.UNITS.get(event.phase, "it"),
                                file=sys.stderr)
        if self.bar is not None:
            if event.phase == "optimise" and event.loss is not None:
                self.bar.set_postfix(loss=f"{event.loss:.3g}", refresh=False)  # drawn by the update
            self.bar.update(event.step - self.bar.n)
            if event.step >= event.total:  # now, so the bar's time is the phase's own
                self.close()
        self.last_event = time.monotonic()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


@contextlib.contextmanager
def progress_bars():
    """ProgressBars for a task's ``on_progress``, with log records written through tqdm meanwhile,
    so a warning gets its own line instead of landing inside a bar."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    bars = ProgressBars()
    try:
        with logging_redirect_tqdm():
            yield bars
    finally:
        bars.close()


def run_task(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from .outputs import write_outputs
    from .prior import PriorError, load_prior
    from .prompts import PromptError

    task = TASKS[args.command]
    config = task_config(parser, args, task)
    inputs = [load_input_mesh(parser, args.mesh)] if task.takes_mesh else []  # before minutes of model loading
    try:
        prior = load_prior(args.model, device=args.device)
    except PriorError as error:
        parser.error(str(error))
    with progress_bars() as bars:
        try:
            result = task.run(*inputs, args.prompt, prior, config, on_progress=bars)
        except PromptError as error:  # raised before any work: unknown words under --strict
            parser.error(str(error))
    written = write_outputs(result.mesh, args.output)
    print(f"wrote {', '.join(str(p) for p in written)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    validate(parser, args)
    return run_task(parser, args)
