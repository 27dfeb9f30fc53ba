import re
import subprocess
import sys

import numpy as np
import pytest
import trimesh

from engine.cli import ProgressBars, main, output_from_prompt
from engine.meshes import MAX_FACES
from engine.progress import Progress


def run_cli(capsys, *args, command="generate"):
    with pytest.raises(SystemExit) as exit_info:
        main([command, *args])
    captured = capsys.readouterr()
    return exit_info.value.code, captured.err


@pytest.mark.parametrize("args, message", [
    (["", "-o", "{tmp}/a.glb"], "the prompt is empty"),
    (["   ", "-o", "{tmp}/a.glb"], "the prompt is empty"),
    (["a red cube", "-o", "{tmp}/a.glb", "--steps", "-5"], "--steps: steps must be in [1, 20000]"),
    (["a red cube", "-o", "{tmp}/a.glb", "--steps", "many"], "invalid int value"),
    (["a red cube", "-o", "{tmp}/a.glb", "--device", "tpu"], "unknown --device 'tpu'"),
    (["a red cube", "-o", "{tmp}/a.glb", "--method", "magic"], "--method: unknown guidance method 'magic'"),
    (["a red cube", "-o", "{tmp}/a.glb", "--guidance", "nan"], "--guidance: guidance_scale must be a finite number"),
    (["a red cube", "-o", "{tmp}/missing/a.glb"], "does not exist"),
    (["a red cube", "-o", "/proc/a.glb"], "cannot write '/proc/a.glb'"),
    (["a red cube", "-o", "{tmp}"], "must be a .glb"),
    (["a red cube", "-o", "{tmp}/a.glb", "--model", "{tmp}/no-such-model"], "no model at"),
])
def test_bad_arguments_get_one_line_and_exit_2(capsys, tmp_path, args, message):
    code, err = run_cli(capsys, *[a.format(tmp=tmp_path) for a in args])
    assert code == 2
    assert message in err
    assert err.count("\n") == 1, err


def test_cuda_on_a_machine_without_it(capsys, tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, err = run_cli(capsys, "a red cube", "-o", str(tmp_path / "a.glb"), "--device", "cuda")
    assert code == 2 and "no usable CUDA GPU" in err


def test_generate_writes_glb_obj_and_preview_and_warns_on_long_prompts(tmp_path, tiny_folder):
    out = tmp_path / "cube.glb"
    long_prompt = "a red cube " * 10
    result = subprocess.run(
        [sys.executable, "-m", "engine", "generate", long_prompt, "-o", str(out), "--model", str(tiny_folder),
         "--preset", "draft", "--steps", "3", "--seed", "1"],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "tokens" in result.stderr and "dropped" in result.stderr  # the truncation warning
    assert result.stdout.count("\n") == 1 and str(out) in result.stdout
    for path in (out, out.with_suffix(".obj"), out.with_suffix(".mtl"), tmp_path / "cube_preview.png"):
        assert path.is_file() and path.stat().st_size > 0, path
    loaded = trimesh.load(out, force="mesh")
    assert len(loaded.faces) > 0 and loaded.visual.uv is not None


def screen_lines(stderr: str) -> list[str]:
    """Each line as a terminal would end up showing it: a carriage return redraws the line."""
    return [line.split("\r")[-1] for line in stderr.split("\n") if line]


def test_without_o_the_output_is_named_after_the_prompt_and_every_written_file_is_listed(tmp_path, tiny_folder):
    """Also: an unknown word is warned about on its own line, above the first progress bar."""
    result = subprocess.run(
        [sys.executable, "-m", "engine", "generate", "A wooden red cube.", "--model", str(tiny_folder),
         "--preset", "draft", "--steps", "3", "--seed", "1"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (wrote,) = result.stdout.splitlines()
    assert wrote.startswith("wrote ")
    written = [tmp_path / name for name in wrote.removeprefix("wrote ").split(", ")]
    assert [path.name for path in written[:3]] == ["wooden_red_cube.glb", "wooden_red_cube.obj", "wooden_red_cube.mtl"]
    assert written[-1].name == "wooden_red_cube_preview.png"
    assert len(written) == 5 and written[3].suffix == ".png"  # the OBJ's texture
    assert sorted(written) == sorted(tmp_path.iterdir())
    (warning,) = [line for line in result.stderr.split("\n") if "wooden" in line]
    assert warning.startswith("WARNING") and "%|" not in warning and "\r" not in warning
    assert "the prior does not know" in warning and ": wooden." in warning and "It knows: a, an, of, red" in warning
    assert result.stderr.index(warning) < result.stderr.index("optimising")
    bars = screen_lines(result.stderr)
    assert any(line.startswith("optimising: 100%") and "3/3" in line and "loss=" in line for line in bars)
    assert any(re.fullmatch(r"mesh: done in \d+\.\d s", line) for line in bars), bars
    assert any(re.fullmatch(r"colour: done in \d+\.\d s", line) for line in bars), bars


@pytest.mark.parametrize("prompt, name", [
    ("a red cube", "red_cube.glb"),
    ("A big red cube.", "big_red_cube.glb"),
    ("The Über-chair, front view!", "uber_chair_front_view.glb"),
    ("a", "a.glb"),
    ("红色立方体", "dreamsmith.glb"),
    ("a " + "long " * 40, "long_" * 11 + "long.glb"),
])
def test_the_default_output_name_is_made_of_the_prompts_safe_characters(prompt, name):
    assert output_from_prompt(prompt) == name


def test_each_phase_gets_a_bar_or_a_line_of_its_own_and_only_optimisation_shows_the_loss(capsys):
    bars = ProgressBars()
    for step in (1, 2, 3):
        bars(Progress("optimise", step, 3, loss=0.5))
    bars(Progress("mesh", 1, 1, loss=0.5))  # reports only its end
    for done in (0, 4, 8):  # Latent-Paint's colour stage counts views
        bars(Progress("colour", done, 8, loss=0.5))
    bars.close()
    lines = screen_lines(capsys.readouterr().err)
    assert len(lines) == 3, lines
    optimise, mesh, colour = lines
    assert optimise.startswith("optimising: 100%") and " 3/3 " in optimise and "step/s, loss=0.5]" in optimise
    assert re.fullmatch(r"mesh: done in \d+\.\d s", mesh)
    assert colour.startswith("colour: 100%") and " 8/8 " in colour and "view/s]" in colour and "loss" not in colour


def test_strict_refuses_unknown_words_in_one_line_with_exit_2(capsys, tmp_path, tiny_folder):
    code, err = run_cli(capsys, "a wooden cube", "-o", str(tmp_path / "a.glb"), "--model", str(tiny_folder),
                        "--strict")
    assert code == 2 and err.count("\n") == 1, err
    assert "the prompt 'a wooden cube' has words the prior does not know" in err and ": wooden." in err
    assert not list(tmp_path.iterdir())


# -- paint and sketch: a mesh file before the prompt

PLY_HEADER = ("ply\nformat {format} 1.0\nelement vertex {vertices}\nproperty float x\nproperty float y\n"
              "property float z\nelement face {faces}\nproperty list uchar int vertex_indices\nend_header\n")


def write_ascii_ply(path, vertices, faces):
    lines = [" ".join(map(str, v)) for v in vertices] + ["3 " + " ".join(map(str, f)) for f in faces]
    path.write_text(PLY_HEADER.format(format="ascii", vertices=len(vertices), faces=len(faces)) + "\n".join(lines)
                    + "\n")
    return path


def write_oversized_ply(path):
    """One face more than the engine takes, in a binary PLY that loads in a fraction of a second."""
    faces = np.zeros(MAX_FACES + 1, dtype=[("count", "u1"), ("indices", "<i4", (3,))])
    faces["count"], faces["indices"] = 3, [0, 1, 2]
    header = PLY_HEADER.format(format="binary_little_endian", vertices=3, faces=len(faces)).encode()
    path.write_bytes(header + np.eye(3, dtype="<f4").tobytes() + faces.tobytes())
    return path


TRIANGLE = [(0, 0, 0), (1, 0, 0), (0, 1, 0)]
BAD_MESHES = {  # name: (writes the file into a folder and returns its path, what the error says)
    "missing": (lambda d: d / "nothing-here.obj", "no mesh file at"),
    "unreadable": (lambda d: d / "broken.glb", "cannot read broken.glb"),
    "not a mesh format": (lambda d: d / "notes.txt", "cannot read .txt"),
    "empty": (lambda d: d / "points.obj", "points.obj holds no triangles"),
    "an empty file": (lambda d: d / "nothing.stl", "nothing.stl is empty (0 bytes)"),
    "a face past the vertex count": (lambda d: d / "badidx.obj",
                                     "badidx.obj: face 2 refers to vertex 9, but the file has only 3 vertices"),
    "a face with OBJ's vertex 0": (lambda d: d / "zero.obj", "zero.obj: face 1 refers to vertex 0, but OBJ vertices "
                                   "are numbered from 1"),
    "non-finite": (lambda d: write_ascii_ply(d / "nan.ply", [(0, 0, 0), (1, "nan", 0), (0, 1, 0)], [(0, 1, 2)]),
                   "nan.ply: the vertices are not all finite"),
    "indices out of range": (lambda d: write_ascii_ply(d / "far.ply", TRIANGLE, [(0, 1, 7)]),
                             "far.ply: face indices must lie in [0, 3)"),
    "over the size limit": (lambda d: write_oversized_ply(d / "huge.ply"), "huge.ply: the mesh is too large"),
}


@pytest.fixture
def bad_mesh_folder(tmp_path):
    (tmp_path / "broken.glb").write_bytes(b"glTF but not really \x00\x01")
    (tmp_path / "notes.txt").write_text("a cube, roughly")
    (tmp_path / "points.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\n")
    (tmp_path / "nothing.stl").write_bytes(b"")
    (tmp_path / "badidx.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\nf 1 2 9\n")
    (tmp_path / "zero.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 0\n")
    return tmp_path


@pytest.mark.parametrize("command", ["paint", "sketch"])
@pytest.mark.parametrize("name", BAD_MESHES)
def test_bad_meshes_get_one_line_and_exit_2_before_the_prior_loads(capsys, bad_mesh_folder, command, name):
    make, message = BAD_MESHES[name]
    mesh = make(bad_mesh_folder)
    # A missing model would be reported too; the mesh's error shows it was checked first.
    code, err = run_cli(capsys, str(mesh), "a red cube", "-o", str(bad_mesh_folder / "out.glb"),
                        "--model", str(bad_mesh_folder / "no-such-model"), command=command)
    assert code == 2
    assert message in err and "no model at" not in err, err
    assert err.count("\n") == 1, err


@pytest.mark.parametrize("command", ["paint", "sketch"])
@pytest.mark.parametrize("args, message", [
    (["{mesh}", "", "-o", "{tmp}/a.glb"], "the prompt is empty"),
    (["{mesh}", "a red cube", "-o", "{tmp}/a.glb", "--steps", "0"], "--steps: steps must be in [1, 20000]"),
    (["{mesh}", "a red cube", "-o", "{tmp}/a.glb", "--preset", "ultra"], "unknown preset 'ultra'"),
    (["{mesh}", "a red cube", "-o", "{tmp}/a.glb", "--method", "magic"], "--method: unknown guidance method 'magic'"),
    (["{mesh}", "a red cube", "-o", "{tmp}/a.obj"], "must be a .glb"),
    (["{mesh}", "a red cube", "-o", "{tmp}/a.glb", "--model", "{tmp}/no-such-model"], "no model at"),
    (["a red cube", "-o", "{tmp}/a.glb"], "required: prompt"),
])
def test_paint_and_sketch_share_the_common_options_and_their_checks(capsys, tmp_path, command, args, message):
    mesh = write_ascii_ply(tmp_path / "triangle.ply", TRIANGLE, [(0, 1, 2)])
    code, err = run_cli(capsys, *[a.format(tmp=tmp_path, mesh=mesh) for a in args], command=command)
    assert code == 2
    assert message in err
    assert err.count("\n") == 1, err


def test_every_command_takes_the_same_options():
    from engine.cli import build_parser

    common = ["-o", "x.glb", "--model", "m", "--preset", "draft", "--steps", "3", "--seed", "4", "--guidance", "7",
              "--negative", "blurry", "--strict", "--shaded", "--method", "sjc", "--device", "cuda", "-v"]
    parsed = {command: vars(build_parser().parse_args([command, *mesh, "a red cube", *common]))
              for command, mesh in (("generate", []), ("paint", ["m.obj"]), ("sketch", ["m.obj"]))}
    for command, values in parsed.items():
        assert values.pop("command") == command
        assert values.pop("mesh", "m.obj") == "m.obj"
    assert parsed["generate"] == parsed["paint"] == parsed["sketch"] == {
        "prompt": "a red cube", "output": "x.glb", "model": "m", "preset": "draft", "steps": 3, "seed": 4,
        "guidance": 7.0, "negative": "blurry", "strict": True, "shaded": True, "method": "sjc", "device": "cuda",
        "verbose": True}


@pytest.mark.parametrize("command", ["generate", "paint", "sketch"])
def test_shaded_keeps_the_priors_shading_and_otherwise_the_texture_is_albedo(command):
    from engine.cli import build_parser, task_config
    from engine.tasks import TASKS

    parser = build_parser()
    mesh = ["m.obj"] if command != "generate" else []

    def delight(*flags):
        args = parser.parse_args([command, *mesh, "a red cube", *flags])
        return task_config(parser, args, TASKS[command]).colour.delight

    assert delight("--shaded") is False
    assert delight() in (True, None)  # None: albedo whenever the prior knows its light (paint)


def run_engine(*args):
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True, text=True, timeout=300)


def run_on_offset_box(command: str, mesh_path, out, tiny_folder):
    """``command`` run on a 0.6 m box away from the origin, written to ``mesh_path``; returns (box, run)."""
    box = trimesh.creation.box((0.6, 0.6, 0.6))
    box.apply_translation((2.0, 0.0, 1.0))
    box.export(mesh_path)
    return box, run_engine(command, str(mesh_path), "a red cube", "-o", str(out), "--model", str(tiny_folder),
                           "--preset", "draft", "--steps", "2", "--seed", "1")


def test_paint_textures_a_mesh_file_and_keeps_its_faces(tmp_path, tiny_folder):
    out = tmp_path / "painted.glb"
    box, result = run_on_offset_box("paint", tmp_path / "box.ply", out, tiny_folder)
    assert result.returncode == 0, result.stderr
    assert "optimising" in result.stderr and str(out) in result.stdout  # the progress bar, the files
    for path in (out, out.with_suffix(".obj"), tmp_path / "painted_preview.png"):
        assert path.is_file() and path.stat().st_size > 0, path
    from engine.export import load_glb

    painted = load_glb(out)  # back in Blender axes, like the input
    assert len(painted.faces) == len(box.faces)
    np.testing.assert_allclose(painted.vertices[painted.faces], box.vertices[box.faces], atol=1e-5)


def test_sketch_refines_a_mesh_file_where_it_is(tmp_path, tiny_folder):
    out = tmp_path / "sketched.glb"
    box, result = run_on_offset_box("sketch", tmp_path / "sketch.obj", out, tiny_folder)
    assert result.returncode == 0, result.stderr
    assert str(out) in result.stdout
    from engine.export import load_glb

    sketched = load_glb(out)
    low, high = sketched.vertices.min(axis=0), sketched.vertices.max(axis=0)
    np.testing.assert_allclose((low + high) / 2, [2.0, 0.0, 1.0], atol=0.15)
    assert 0.3 < (high - low).max() < 1.2
