"""The two environments the README's commands make: the main one (the project, its tests) and the
Blender one (``.venv-blender/``, ``python -m scripts.blender_venv``). bpy pins NumPy below 2, so it
must stay out of the main environment, and making the Blender one must leave the main one as it was.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # scripts/ is not an installed package; plain `pytest` does not put the root first
    sys.path.insert(0, str(ROOT))

from scripts import blender_venv  # noqa: E402

BLENDER_ONLY = {"bpy"}  # what the main environment's requirements must never name


def main_requirements() -> dict[str, list[Requirement]]:
    """The project's dependencies and each extra's, by group name, as pyproject.toml lists them."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    groups = {"dependencies": project["dependencies"], **project.get("optional-dependencies", {})}
    return {group: [Requirement(line) for line in lines] for group, lines in groups.items()}


def readme_test_command() -> str:
    """The line after the README's test-command marker, as .ci/run reads it."""
    match = re.search(r"<!-- test-command -->\n    (.+)\n", (ROOT / "README.md").read_text(encoding="utf-8"))
    assert match, "README.md has no indented command after <!-- test-command -->"
    return match.group(1)


def installed_distributions() -> dict[str, str]:
    """name -> version of every distribution this interpreter sees, read from disk now."""
    return {dist.metadata["Name"].lower(): dist.version for dist in metadata.distributions()}


def test_the_main_environments_requirements_neither_pull_bpy_nor_cap_numpy_below_2():
    groups = main_requirements()
    assert {"dependencies", "test", "bench"} <= set(groups)
    for group, requirements in groups.items():
        names = {requirement.name.lower() for requirement in requirements}
        assert not names & BLENDER_ONLY, f"pyproject's {group} pulls {names & BLENDER_ONLY}: it belongs in " \
                                         "scripts/blender_venv.py's environment"
        for requirement in requirements:
            if requirement.name.lower() == "numpy":
                assert requirement.specifier.contains(Version("2.1.0")), f"{group}: {requirement} refuses NumPy 2"
    assert blender_venv.BPY_REQUIREMENT in blender_venv.REQUIREMENTS


def test_the_readme_test_command_makes_the_blender_environment_before_pytest_runs():
    command = readme_test_command()
    assert "python -m scripts.blender_venv" in command
    assert command.index("python -m scripts.blender_venv") < command.index("python -m pytest")
    assert "bpy" not in command.replace("scripts.blender_venv", "")


def test_the_readme_test_command_installs_the_ray_extra_so_ci_runs_the_ray_backend_tests():
    assert [requirement.name for requirement in main_requirements()["ray"]] == ["ray"]
    assert re.search(r'pip install -e "\.\[[^\]]*\bray\b[^\]]*\]"', readme_test_command())


@pytest.mark.skipif(blender_venv.find_bpy_python() is None,
                    reason="the bpy module exists for Python 3.11 only, and there is none here")
def test_making_the_blender_environment_again_leaves_this_one_alone_and_keeps_bpy_apart():
    python = blender_venv.blender_python()
    if python is None:
        pytest.fail(f"no Blender environment at {blender_venv.VENV_DIR}: python -m scripts.blender_venv makes it")
    before = installed_distributions()
    done = subprocess.run([sys.executable, "-m", "scripts.blender_venv"], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    assert installed_distributions() == before  # not one package of this environment added, removed or changed
    probe = ("import importlib.util, json, sys, numpy; "
             "print(json.dumps({'prefix': sys.prefix, 'numpy': numpy.__file__, 'numpy_version': numpy.__version__, "
             "'bpy': importlib.util.find_spec('bpy').origin, 'zmq': importlib.util.find_spec('zmq') is not None}))")
    seen = json.loads(subprocess.run([str(python), "-c", probe], capture_output=True, text=True, check=True,
                                     timeout=120).stdout)
    venv_dir = blender_venv.VENV_DIR.resolve()
    assert Path(seen["prefix"]).resolve() == venv_dir != Path(sys.prefix).resolve()
    for module in ("bpy", "numpy"):  # from the Blender environment's own site-packages, not this one's
        assert venv_dir in Path(seen[module]).resolve().parents, seen[module]
    assert Version(seen["numpy_version"]) < Version("2") and seen["zmq"]
    assert "include-system-site-packages = false" in (venv_dir / "pyvenv.cfg").read_text()
