#!/usr/bin/env python
"""Build the Dreamsmith Blender extension: ``python build_addon.py`` -> ``dist/dreamsmith-VERSION.zip``.

1. Downloads the pyzmq and msgpack wheels for every platform and Blender Python the add-on supports
   into ``blender_addon/dreamsmith/wheels/``. That folder is a cache: a wheel already there is not
   fetched again, so a second build works offline.
2. Writes their paths into the manifest's ``wheels = [...]`` list (the list is committed).
3. Zips the extension, with ``server/protocol.py`` and ``server/client.py`` copied into
   ``_vendor/`` so the installed add-on speaks the one protocol the server defines.
4. Validates the zip with Blender's own ``extension validate`` command, run by a ``blender``
   executable (``--blender``, or on the PATH) or else by the ``bpy`` module of a Python that has it
   (``--bpy-python``, this Python, or the Blender environment ``python -m scripts.blender_venv`` makes).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import tomllib

log = logging.getLogger("build_addon")

ROOT = Path(__file__).resolve().parent
ADDON_SOURCE = ROOT / "blender_addon" / "dreamsmith"
MANIFEST = ADDON_SOURCE / "blender_manifest.toml"
WHEEL_CACHE = ADDON_SOURCE / "wheels"
WHEEL_INDEX = WHEEL_CACHE / "index.json"  # which cached file serves which (requirement, Python, platform)

# Pinned so that the committed manifest names exactly the files a build downloads.
REQUIREMENTS = ("pyzmq==27.3.0", "msgpack==1.2.4")
# Blender 4.2 to 5.0 bundle Python 3.11; 5.1 and later bundle 3.13 (pyzmq serves it an abi3 wheel).
PYTHON_VERSIONS = ("3.11", "3.13")
# Manifest platform -> the pip platform tag to ask for; pip also accepts older compatible tags
# (older manylinux and macOS versions, universal2).
PLATFORMS = {
    "windows-x64": "win_amd64",
    "linux-x64": "manylinux_2_28_x86_64",
    "macos-arm64": "macosx_11_0_arm64",
    "macos-x64": "macosx_11_0_x86_64",
}
# Copied verbatim into the zip: the add-on must never carry a second protocol implementation.
VENDORED = {
    "protocol.py": ROOT / "server" / "protocol.py",
    "client.py": ROOT / "server" / "client.py",
}

WHEELS_LIST = re.compile(r"^wheels = \[.*?\]", re.MULTILINE | re.DOTALL)

# The handler behind ``blender --command extension``, reached through the bpy module.
VALIDATE_WITH_BPY = (
    "import sys, bpy\n"
    "from bl_pkg import bl_extension_cli\n"
    "sys.exit(bl_extension_cli.cli_extension_handler(['validate', sys.argv[1]]))\n"
)


class BuildError(RuntimeError):
    """A build step that cannot go on; its message is meant for the person running the build."""


def download_wheel(requirement: str, python: str, pip_platform: str, cache: Path) -> str:
    """pip-download one wheel into ``cache``; returns its file name."""
    with tempfile.TemporaryDirectory() as scratch:
        # A fresh folder per target shows which file pip chose (a macOS universal2 wheel serves two).
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                   "--platform", pip_platform, "--python-version", python, "--dest", scratch, requirement]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise BuildError(f"pip could not download {requirement} for Python {python} on {pip_platform}:\n"
                             f"{result.stderr.strip()}")
        (wheel,) = Path(scratch).glob("*.whl")
        shutil.move(wheel, cache / wheel.name)
        return wheel.name


def fetch_wheels(cache: Path = WHEEL_CACHE) -> list[str]:
    """The wheel file names for every supported target, downloading only those not cached yet."""
    cache.mkdir(parents=True, exist_ok=True)
    index_path = cache / WHEEL_INDEX.name
    index = json.loads(index_path.read_text()) if index_path.exists() else {}
    wanted = set()
    for requirement in REQUIREMENTS:
        for python in PYTHON_VERSIONS:
            for platform, pip_platform in PLATFORMS.items():
                key = f"{requirement} python{python} {platform}"
                if key not in index or not (cache / index[key]).exists():
                    log.info("downloading %s for Python %s, %s", requirement, python, platform)
                    index[key] = download_wheel(requirement, python, pip_platform, cache)
                    index_path.write_text(json.dumps(index, indent=1, sort_keys=True) + "\n")
                wanted.add(index[key])
    return sorted(wanted)


def write_manifest_wheels(wheels: list[str], manifest: Path = MANIFEST) -> None:
    text = manifest.read_text(encoding="utf-8")
    if not WHEELS_LIST.search(text):
        raise BuildError(f"{manifest} has no 'wheels = [...]' list to fill in")
    listing = "wheels = [\n" + "".join(f'  "./wheels/{name}",\n' for name in wheels) + "]"
    updated = WHEELS_LIST.sub(lambda _: listing, text, count=1)
    if updated != text:
        manifest.write_text(updated, encoding="utf-8")
        log.info("updated the wheel list in %s", manifest.relative_to(ROOT))


def extension_files(source: Path = ADDON_SOURCE) -> list[Path]:
    """The add-on's own files; the wheel cache and bytecode stay out (wheels are added by name)."""
    return sorted(path for path in source.rglob("*")
                  if path.is_file() and "__pycache__" not in path.parts
                  and path.relative_to(source).parts[0] != WHEEL_CACHE.name)


def build_zip(wheels: list[str], dist: Path) -> Path:
    missing = [str(origin.relative_to(ROOT)) for origin in VENDORED.values() if not origin.exists()]
    if missing:
        raise BuildError(f"cannot vendor {', '.join(missing)}: the file does not exist")
    manifest = tomllib.loads(MANIFEST.read_text(encoding="utf-8"))
    dist.mkdir(parents=True, exist_ok=True)
    output = dist / f"{manifest['id']}-{manifest['version']}.zip"
    with zipfile.ZipFile(output, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in extension_files():
            archive.write(path, path.relative_to(ADDON_SOURCE).as_posix())
        for name in wheels:
            archive.write(WHEEL_CACHE / name, f"{WHEEL_CACHE.name}/{name}")
        for name, origin in VENDORED.items():
            archive.write(origin, f"_vendor/{name}")
    return output


def repository_bpy_python() -> Path | None:
    """The Blender environment's python (scripts/blender_venv.py), when it has been made."""
    from scripts.blender_venv import blender_python  # imported late: that script imports REQUIREMENTS from here

    return blender_python()


def validator_command(blender: str | None, bpy_python: str | Path | None = None) -> list[str] | None:
    """The command that validates an extension zip given as its last argument, or None without a Blender.

    Args:
        blender: a Blender executable; else ``blender`` on the PATH.
        bpy_python: a Python with the bpy module, used when there is no Blender executable; else this
            Python if it has bpy, else the repository's Blender environment.
    """
    blender = blender or shutil.which("blender")
    if blender:
        return [blender, "--factory-startup", "--command", "extension", "validate"]
    if bpy_python is None and importlib.util.find_spec("bpy") is not None:
        bpy_python = sys.executable
    bpy_python = bpy_python or repository_bpy_python()
    if bpy_python is not None:
        return [str(bpy_python), "-c", VALIDATE_WITH_BPY]
    return None


def validate(archive: Path, blender: str | None, required: bool, bpy_python: str | Path | None = None) -> bool:
    """Blender's verdict on the zip; False when no Blender could be found (an error if ``required``).

    Args:
        archive: the extension zip.
        blender, bpy_python: what validates it (``validator_command``).
        required: raise BuildError rather than warn when nothing can validate it.
    """
    command = validator_command(blender, bpy_python)
    if command is None:
        message = ("no Blender to validate with: pass --blender PATH or --bpy-python PATH, put blender on the PATH "
                   "or make the Blender environment: python -m scripts.blender_venv")
        if required:
            raise BuildError(message)
        log.warning("%s; %s was NOT validated", message, archive.name)
        return False
    result = subprocess.run(command + [str(archive)], capture_output=True, text=True)
    if result.returncode != 0:
        raise BuildError(f"Blender's extension validator rejected {archive}:\n{result.stdout}{result.stderr}")
    log.info("Blender's extension validator accepted %s", archive.name)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dist", type=Path, default=ROOT / "dist", help="where the zip goes (default: dist/)")
    parser.add_argument("--blender", help="the Blender executable to validate with (default: blender on the "
                                          "PATH, else the bpy module)")
    parser.add_argument("--bpy-python", type=Path, help="a Python with the bpy module to validate with when there "
                        "is no Blender executable (default: this Python if it has bpy, else .venv-blender's)")
    parser.add_argument("--require-validation", action="store_true",
                        help="fail when no Blender can validate the zip instead of warning")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        wheels = fetch_wheels()
        write_manifest_wheels(wheels)
        archive = build_zip(wheels, args.dist)
        validate(archive, args.blender, args.require_validation, args.bpy_python)
    except BuildError as error:
        log.error("build_addon: %s", error)
        return 1
    print(archive)
    return 0


if __name__ == "__main__":
    sys.exit(main())
