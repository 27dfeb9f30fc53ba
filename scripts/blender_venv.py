"""The Blender virtual environment: ``python -m scripts.blender_venv`` makes (or reuses) ``.venv-blender/``.

The ``bpy`` module (Blender as a Python module) pins NumPy below 2 and exists for Python 3.11 only,
so it gets an environment of its own instead of the one the run command installs the project into.
That environment holds only what code running inside Blender needs: bpy (with the NumPy it pins)
and the pyzmq and msgpack releases the add-on bundles. The add-on's tests, ``build_addon.py``'s
validation and the README's Blender picture run their Blender parts with its Python, in a subprocess.

Running it again reuses the environment: pip only installs what is missing. Without a Python 3.11 it
says so and exits 0, and the Blender tests skip, as they always have on other Pythons.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from build_addon import REQUIREMENTS as ADDON_REQUIREMENTS

log = logging.getLogger("scripts.blender_venv")

ROOT = Path(__file__).resolve().parents[1]
VENV_DIR = ROOT / ".venv-blender"
BPY_REQUIREMENT = "bpy==5.0.1"
BPY_PYTHON = (3, 11)  # the one Python the bpy 5.0.1 wheels are built for
# The releases of pyzmq and msgpack the add-on bundles as wheels: inside Blender it runs on these.
REQUIREMENTS = (BPY_REQUIREMENT, *ADDON_REQUIREMENTS)


def venv_python(venv_dir: Path = VENV_DIR) -> Path:
    """The interpreter of the environment at ``venv_dir`` (which may not exist yet).

    Args:
        venv_dir: the environment's folder.
    """
    if os.name == "nt":
        return venv_dir / "Scripts" / "python.exe"
    return venv_dir / "bin" / "python"


def python_version(executable: str | Path) -> tuple[int, int] | None:
    """(major, minor) of the Python at ``executable``, or None when it does not run."""
    try:
        done = subprocess.run([str(executable), "-c", "import sys; print(*sys.version_info[:2])"],
                              capture_output=True, text=True, timeout=60)
    except OSError:
        return None
    if done.returncode != 0:
        return None
    major, minor = done.stdout.split()
    return int(major), int(minor)


def find_bpy_python() -> str | None:
    """A Python 3.11 to base the environment on: this one when it is 3.11, else ``python3.11`` on the PATH."""
    if sys.version_info[:2] == BPY_PYTHON:
        return sys.executable
    candidate = shutil.which("python{}.{}".format(*BPY_PYTHON))
    if candidate and python_version(candidate) == BPY_PYTHON:
        return candidate
    return None


def blender_python(venv_dir: Path = VENV_DIR) -> Path | None:
    """The environment's interpreter once it has been made, else None.

    Args:
        venv_dir: the environment's folder.
    """
    python = venv_python(venv_dir)
    return python if python.exists() else None


def make_venv(base_python: str, venv_dir: Path) -> None:
    """A plain environment (no system site-packages, with pip) made by ``base_python``."""
    log.info("making %s with %s", venv_dir, base_python)
    subprocess.run([base_python, "-m", "venv", "--clear", str(venv_dir)], check=True)


def install_requirements(venv_dir: Path, requirements: tuple[str, ...] = REQUIREMENTS) -> None:
    """pip-install ``requirements`` with the environment's own pip (never this interpreter's)."""
    command = [str(venv_python(venv_dir)), "-m", "pip", "install", "--quiet", *requirements]
    log.info("installing %s into %s", " ".join(requirements), venv_dir)
    subprocess.run(command, check=True)


def ensure_venv(venv_dir: Path = VENV_DIR) -> Path | None:
    """Make the environment if it is missing or broken, install what it lacks; its interpreter.

    Args:
        venv_dir: the environment's folder.

    Returns:
        The environment's python, or None when no Python 3.11 exists here to make it with.
    """
    python = venv_python(venv_dir)
    if python_version(python) != BPY_PYTHON:  # missing, half-made, or its base Python gone
        base = find_bpy_python()
        if base is None:
            return None
        make_venv(base, venv_dir)
    install_requirements(venv_dir)
    return python


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, default=VENV_DIR, help="the environment's folder (default: .venv-blender)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    started = time.monotonic()
    python = ensure_venv(args.venv)
    if python is None:
        log.warning("no Python %d.%d here (bpy %s needs it): the Blender tests will be skipped",
                    *BPY_PYTHON, BPY_REQUIREMENT.split("==")[1])
        return 0
    log.info("Blender environment ready in %.1f s: %s", time.monotonic() - started, python)
    return 0


if __name__ == "__main__":
    sys.exit(main())
