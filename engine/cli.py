"""Command line: ``python -m engine generate "PROMPT" -o OUT.glb [options]``."""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import tempfile
from pathlib import Path

from .guidance import METHODS
from .tasks.generate import PRESETS

DEVICES = ("cpu", "cuda")


class OneLineErrorParser(argparse.ArgumentParser):
    """Bad arguments get one line on stderr and exit code 2, not a usage dump."""

    def error(self, message: str):  # noqa: D401 - argparse's API
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="python -m engine", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    generate = commands.add_parser("generate", help="text to a UV-textured GLB")
    generate.add_argument("prompt", help='what to make, e.g. "a red cube"')
    generate.add_argument("-o", "--output", required=True, help="the .glb to write; .obj/.mtl/.png and "
                          "a _preview.png go beside it")
    generate.add_argument("--model", help="diffusers Stable Diffusion folder or cached Hugging Face id "
                          "(default: the embedded Primitive World prior)")
    generate.add_argument("--preset", default="standard", help="draft, standard or high (default standard)")
    generate.add_argument("--steps", type=int, help="optimisation steps (default: the preset's)")
    generate.add_argument("--seed", type=int, default=0, help="random seed; same seed, same asset (default 0)")
    generate.add_argument("--guidance", type=float, help="classifier-free guidance scale (default 100)")
    generate.add_argument("--negative", default="", help="negative prompt")
    generate.add_argument("--method", default="sds", help=f"score estimator: {' or '.join(METHODS)}")
    generate.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    generate.add_argument("-v", "--verbose", action="store_true", help="log what the engine does")
    return parser


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
    """Everything that can be checked before minutes of optimisation is checked here."""
    import torch

    if not args.prompt.strip():
        parser.error("the prompt is empty")
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps must be a positive number of steps, got {args.steps}")
    if args.guidance is not None and not (math.isfinite(args.guidance) and args.guidance > 0):
        parser.error(f"--guidance must be a positive number, got {args.guidance}")
    if args.preset not in PRESETS:
        parser.error(f"unknown --preset {args.preset!r}; use {', '.join(PRESETS)}")
    if args.method not in METHODS:
        parser.error(f"unknown --method {args.method!r}; use {' or '.join(METHODS)}")
    if args.device not in DEVICES:
        parser.error(f"unknown --device {args.device!r}; use cpu or cuda")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda was asked for, but this machine has no usable CUDA GPU")
    args.output = _check_output(parser, args.output)


def run_generate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .outputs import write_outputs
    from .prior import PriorError, load_prior
    from .progress import Progress
    from .tasks.generate import generate, preset_config

    try:
        prior = load_prior(args.model, device=args.device)
    except PriorError as error:
        parser.error(str(error))
    config = preset_config(args.preset, seed=args.seed, negative_prompt=args.negative,
                           **({"steps": args.steps} if args.steps is not None else {}))
    config.guidance.method = args.method
    if args.guidance is not None:
        config.guidance.guidance_scale = args.guidance

    bar = tqdm(total=config.steps, desc="optimising", unit="step", file=sys.stderr)

    def on_progress(event: Progress) -> None:
        if event.phase == "optimise":
            bar.update(event.step - bar.n)
            bar.set_postfix(loss=f"{event.loss:.3g}")
        else:
            bar.set_description(event.phase)

    result = generate(args.prompt, prior, config, on_progress=on_progress)
    bar.close()
    written = write_outputs(result.mesh, args.output)
    print(f"wrote {', '.join(str(p) for p in written)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    validate(parser, args)
    return run_generate(parser, args)
