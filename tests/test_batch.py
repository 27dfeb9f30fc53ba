"""python -m server.batch against a real server process on the tiny test prior."""

import contextlib
import io
import shutil
import time
from dataclasses import dataclass, field

import pytest
import trimesh

from engine.export import load_glb
from server import batch
from server.batch import BatchLine, is_complete_glb
from server.client import Client
from server.testing import FAST_JOB, free_port

# FAST_JOB as the command's flags: a few seconds a job.
FAST_ARGS = ["--preset", FAST_JOB["preset"], "--steps", str(FAST_JOB["steps"]),
             "--param", f"grid_resolution={FAST_JOB['grid_resolution']}",
             "--param", f"mesh_resolution={FAST_JOB['mesh_resolution']}"]
PROMPTS = "# props for the test\na red cube\n\na blue sphere\n"  # words the tiny prior knows
PROMPT_FILES = ["002_a_red_cube_s0.glb", "004_a_blue_sphere_s0.glb"]


def run_batch(*argv) -> tuple[int, str]:
    """The command's exit code and its last line (the summary)."""
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        code = batch.main([str(arg) for arg in argv])
    return code, output.getvalue().strip().splitlines()[-1]


def refusal(*argv) -> str:
    """What the command says on stderr when it exits with code 2."""
    error = io.StringIO()
    with contextlib.redirect_stderr(error), pytest.raises(SystemExit) as exited:
        batch.main([str(arg) for arg in argv])
    assert exited.value.code == 2
    return error.getvalue()


@dataclass
class SubmitSpy:
    prompts: list = field(default_factory=list)
    unfinished_at_submit: list = field(default_factory=list)  # this client's unfinished jobs, on the server


@contextlib.contextmanager
def spy_on_submits(max_per_client: int | None = None):
    """Counts the batch's submits; with ``max_per_client``, the server's hello says that limit."""
    spy, real_submit, real_hello = SubmitSpy(), Client.submit, Client.hello

    def submit(self, prompt, **options):
        spy.unfinished_at_submit.append(len(self.status()["jobs"]))
        spy.prompts.append(prompt)
        return real_submit(self, prompt, **options)

    def hello(self, timeout=None):
        limits = real_hello(self, timeout)
        if max_per_client is not None:
            self.limits = limits = {**limits, "max_per_client": max_per_client}
        return limits

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Client, "submit", submit)
        patch.setattr(Client, "hello", hello)
        yield spy


@pytest.fixture(scope="module")
def finished_batch(dreamsmith_server, tmp_path_factory):
    """PROMPTS run once, the server's hello saying 1 unfinished job per client: (folder, out, spy, code, summary)."""
    folder = tmp_path_factory.mktemp("batch")
    (folder / "prompts.txt").write_text(PROMPTS)
    with spy_on_submits(max_per_client=1) as spy:
        code, summary = run_batch(folder / "prompts.txt", "--out", folder / "out", "--address",
                                  dreamsmith_server.address, *FAST_ARGS)
    return folder, folder / "out", spy, code, summary


def test_file_names_come_from_the_line_number_the_prompt_and_the_seed():
    assert BatchLine(3, "A red cube!", 1).file_name == "003_a_red_cube_s1.glb"
    assert BatchLine(12, "a  blue/sphere", 0, "paint").file_name == "012_paint_a_blue_sphere_s0.glb"
    assert BatchLine(1234, "¿?", 7).file_name == "1234_prompt_s7.glb"


def test_the_batch_writes_one_glb_per_prompt_line_within_the_per_client_limit(finished_batch):
    _, out, spy, code, summary = finished_batch
    assert code == 0
    assert summary == f"2 done, 0 skipped, 0 failed: {out}"
    assert sorted(path.name for path in out.iterdir()) == PROMPT_FILES  # no temp files left
    for name in PROMPT_FILES:
        assert is_complete_glb(out / name) and len(load_glb(out / name).faces) > 0
    assert spy.prompts == ["a red cube", "a blue sphere"]
    assert spy.unfinished_at_submit == [0, 0]  # the second waited for the first to end


def test_a_half_written_or_foreign_file_does_not_count_as_a_finished_glb(finished_batch, tmp_path):
    whole = (finished_batch[1] / PROMPT_FILES[0]).read_bytes()
    for name, content in {"half.glb": whole[: len(whole) // 2], "longer.glb": whole + b"\0" * 4,
                          "text.glb": b"not a GLB at all, just long enough", "empty.glb": b""}.items():
        (tmp_path / name).write_bytes(content)
        assert not is_complete_glb(tmp_path / name), name
    assert not is_complete_glb(tmp_path / "missing.glb")


def test_a_rerun_submits_only_the_lines_whose_glb_is_missing(finished_batch, dreamsmith_server, tmp_path):
    folder, out, *_ = finished_batch
    rerun = tmp_path / "out"
    shutil.copytree(out, rerun)
    (rerun / PROMPT_FILES[1]).unlink()
    kept = (rerun / PROMPT_FILES[0]).stat().st_mtime_ns

    with spy_on_submits() as spy:
        code, summary = run_batch(folder / "prompts.txt", "--out", rerun, "--address", dreamsmith_server.address,
                                  *FAST_ARGS)
    assert code == 0 and summary == f"1 done, 1 skipped, 0 failed: {rerun}"
    assert spy.prompts == ["a blue sphere"]
    assert all(is_complete_glb(rerun / name) for name in PROMPT_FILES)
    assert (rerun / PROMPT_FILES[0]).stat().st_mtime_ns == kept


def test_ctrl_c_cancels_the_submitted_jobs_and_a_rerun_finishes_the_rest(dreamsmith_server, dreamsmith_client,
                                                                         tmp_path):
    (tmp_path / "prompts.txt").write_text(PROMPTS)
    out = tmp_path / "out"
    real_job_finished = batch.BatchProgress.job_finished

    def ctrl_c_after_the_first_job(self, *args):
        real_job_finished(self, *args)
        raise KeyboardInterrupt  # as if the user pressed Ctrl-C right after the first GLB

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(batch.BatchProgress, "job_finished", ctrl_c_after_the_first_job)
        code, summary = run_batch(tmp_path / "prompts.txt", "--out", out, "--address", dreamsmith_server.address,
                                  *FAST_ARGS)
    assert code == 130 and summary == f"1 done, 0 skipped, 0 failed, 1 cancelled: {out}"
    assert [path.name for path in out.iterdir()] == [PROMPT_FILES[0]]
    assert _server_goes_idle(dreamsmith_client), "the interrupted batch left its job on the server"

    with spy_on_submits() as spy:
        code, summary = run_batch(tmp_path / "prompts.txt", "--out", out, "--address", dreamsmith_server.address,
                                  *FAST_ARGS)
    assert code == 0 and summary == f"1 done, 1 skipped, 0 failed: {out}"
    assert spy.prompts == ["a blue sphere"]
    assert sorted(path.name for path in out.iterdir()) == PROMPT_FILES


def _server_goes_idle(client: Client, within_s: float = 5.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        status = client.status()
        if status["queued"] == 0 and status["running"] == 0:
            return True
        time.sleep(0.1)
    return False


def test_a_csv_gives_each_row_its_seed_and_the_seed_goes_into_the_name(dreamsmith_server, tmp_path):
    (tmp_path / "props.csv").write_text("Prompt,seed,task\na red cube,1,\na red cube,2,generate\n")
    out = tmp_path / "out"
    code, summary = run_batch(tmp_path / "props.csv", "--out", out, "--address", dreamsmith_server.address,
                              *FAST_ARGS)
    assert code == 0 and summary == f"2 done, 0 skipped, 0 failed: {out}"
    first, second = out / "002_a_red_cube_s1.glb", out / "003_a_red_cube_s2.glb"
    assert first.read_bytes() != second.read_bytes()  # another seed, another asset


def test_a_refused_job_is_reported_by_line_and_the_rest_are_still_written(dreamsmith_server, tmp_path, caplog):
    box = trimesh.creation.box((0.8, 0.8, 0.8))
    box.export(tmp_path / "box.obj")
    (tmp_path / "props.csv").write_text("prompt,task,mesh\na wooden chair,,\na blue cube,paint,box.obj\n")
    out = tmp_path / "out"
    code, summary = run_batch(tmp_path / "props.csv", "--out", out, "--address", dreamsmith_server.address,
                              "--strict", "--preset", "draft", "--steps", "3")
    assert code == 1 and summary == f"1 done, 0 skipped, 1 failed: {out}"
    failures = [record.getMessage() for record in caplog.records if record.levelname == "ERROR"]
    assert len(failures) == 1
    assert failures[0].startswith("line 2 ('a wooden chair') failed: refused: bad_request: params.prompt")
    assert [path.name for path in out.iterdir()] == ["003_paint_a_blue_cube_s0.glb"]
    assert len(load_glb(out / "003_paint_a_blue_cube_s0.glb").faces) == len(box.faces)  # paint keeps the mesh


BAD_INPUTS = {
    "missing.txt": (None, "no prompts file at"),
    "empty.txt": ("# nothing yet\n\n", "holds no prompts"),
    "no_prompt_column.csv": ("text,seed\na red cube,1\n", "the CSV header must name a prompt column"),
    "bad_seed.csv": ("prompt,seed\na red cube,1\na blue cube,one\n", "line 3: the seed must be a whole number"),
    "negative_seed.csv": ("prompt,seed\na red cube,-1\n", "line 2: the seed must be a whole number"),
    "unknown_task.csv": ("prompt,task\na red cube,carve\n", "line 2: unknown task 'carve'"),
    "paint_without_mesh.csv": ("prompt,task\na red cube,paint\n", "line 2: task paint needs a mesh"),
    "too_long.txt": ("a red cube\n" + "a" * 1001 + "\n", "line 2 ('aaaa"),
}


@pytest.mark.parametrize("name", BAD_INPUTS)
def test_a_bad_prompts_file_is_one_line_and_exit_2_before_any_server_is_asked(name, tmp_path):
    content, message = BAD_INPUTS[name]
    if content is not None:
        (tmp_path / name).write_text(content)
    nobody = f"tcp://127.0.0.1:{free_port()}"  # a server there would only be asked after the check
    said = refusal(tmp_path / name, "--out", tmp_path / "out", "--address", nobody, "--timeout", "0.2")
    assert said.count("\n") == 1 and said.startswith("python -m server.batch: error: ")
    assert message in said


def test_no_server_is_the_clients_one_line_no_server_error(tmp_path):
    (tmp_path / "prompts.txt").write_text("a red cube\n")
    nobody = f"tcp://127.0.0.1:{free_port()}"
    said = refusal(tmp_path / "prompts.txt", "--out", tmp_path / "out", "--address", nobody, "--timeout", "0.5")
    assert said == (f"python -m server.batch: error: no Dreamsmith server answered at {nobody} within 0.5 s; "
                    f"start one with: python -m server --bind {nobody}\n")
