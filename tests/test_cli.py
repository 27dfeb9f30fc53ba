import subprocess
import sys

import pytest
import trimesh

from engine.cli import main


def run_cli(capsys, *args):
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", *args])
    captured = capsys.readouterr()
    return exit_info.value.code, captured.err


@pytest.mark.parametrize("args, message", [
    (["", "-o", "{tmp}/a.glb"], "the prompt is empty"),
    (["   ", "-o", "{tmp}/a.glb"], "the prompt is empty"),
    (["a red cube", "-o", "{tmp}/a.glb", "--steps", "-5"], "--steps must be a positive number"),
    (["a red cube", "-o", "{tmp}/a.glb", "--steps", "many"], "invalid int value"),
    (["a red cube", "-o", "{tmp}/a.glb", "--device", "tpu"], "unknown --device 'tpu'"),
    (["a red cube", "-o", "{tmp}/a.glb", "--method", "magic"], "unknown --method 'magic'"),
    (["a red cube", "-o", "{tmp}/a.glb", "--guidance", "nan"], "--guidance must be a positive number"),
    (["a red cube", "-o", "{tmp}/missing/a.glb"], "does not exist"),
    (["a red cube", "-o", "/proc/a.glb"], "cannot write '/proc/a.glb'"),
    (["a red cube", "-o", "{tmp}"], "must be a .glb"),
    (["a red cube", "-o", "{tmp}/a.glb", "--model", "{tmp}/no-such-model"], "no model at"),
    (["a red cube"], "required: -o/--output"),
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
    assert str(out) in result.stdout
    for path in (out, out.with_suffix(".obj"), out.with_suffix(".mtl"), tmp_path / "cube_preview.png"):
        assert path.is_file() and path.stat().st_size > 0, path
    loaded = trimesh.load(out, force="mesh")
    assert len(loaded.faces) > 0 and loaded.visual.uv is not None
