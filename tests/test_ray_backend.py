"""The Ray backend (python -m server --backend ray): a real server process on a local Ray of 2 CPUs,
two actors on the tiny prior, shared by the tests of this module (starting one takes ~20 s).

The server test that kills the front restarts that same server; no test leaves a Ray process behind.
Without Ray installed only the flag checks run.
"""

import importlib.util
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from server.cli import serve_parser, settings_from
from server.protocol import Code, Msg, State
from server.settings import StartupError
from server.testing import FAST_JOB, LONG_JOB, ServerProcess, free_port

requires_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                                  reason='Ray is not installed (pip install -e ".[ray]")')

RAY_ARGS = ("--backend", "ray", "--jobs", "2")  # with the tests' --threads 1: a local Ray of 2 CPUs
RAY_CORE = {"raylet", "gcs_server"}  # what must never outlive a front, however it stopped
GONE_WITHIN_S = 30.0
STOP_WITHIN_S = 60.0
RUNS_ON = re.compile(r"job (?P<job>[0-9a-f]{32}) runs on Ray actor \d+ \(pid (?P<pid>\d+) on ")


# ------------------------------------------------------------------------ processes of a server
def _parents() -> dict[int, int]:
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):  # it ended while being read
            continue
    return parents


def descendants(pid: int) -> set[int]:
    """Every process started by ``pid``, its children's children included (Ray's raylet, its workers...)."""
    children: dict[int, list[int]] = {}
    for child, parent in _parents().items():
        children.setdefault(parent, []).append(child)
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def process_name(pid: int) -> str | None:
    """None once the process has ended (a zombie counts as ended)."""
    try:
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return None
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


def still_running(pids: set[int], within: float) -> dict[int, str]:
    """The processes of ``pids`` still running after ``within`` seconds, by name."""
    deadline = time.monotonic() + within
    while True:
        running = {pid: name for pid in pids if (name := process_name(pid)) is not None}
        if not running or time.monotonic() > deadline:
            return running
        time.sleep(0.5)


def end_leftovers(pids: set[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# -------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def ray_server(tmp_path_factory, dreamsmith_model):
    folder = tmp_path_factory.mktemp("ray-server")
    server = ServerProcess(dreamsmith_model, folder / "results", folder / "server.log", RAY_ARGS)
    server.start()
    try:
        yield server
    finally:
        started = descendants(server.process.pid)
        stop_gently(server)
        left = still_running(started, GONE_WITHIN_S)
        end_leftovers(set(left))
        assert not left, f"a stopped Ray front left {left}:\n{server.log_tail()}"


def stop_gently(server: ServerProcess) -> None:
    """SIGTERM, and time for the front to stop its local Ray (a busy machine can take longer than
    ServerProcess.stop waits before it kills)."""
    server.process.send_signal(signal.SIGTERM)
    try:
        server.process.wait(STOP_WITHIN_S)
    finally:
        server.stop()


def job_on(server: ServerProcess, job_id: str, timeout: float = 60.0) -> int:
    """The pid of the actor running ``job_id``, from the server's log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for match in RUNS_ON.finditer(server.log_path.read_text(errors="replace")):
            if match["job"] == job_id:
                return int(match["pid"])
        time.sleep(0.1)
    raise AssertionError(f"the server never said where job {job_id} runs:\n{server.log_tail()}")


def wait_for_progress(client, job_id: str) -> None:
    while not any(e.type == Msg.PROGRESS and e.job_id == job_id for e in client.poll_events(timeout=60)):
        pass


def steps_of(events) -> list[tuple]:
    return [(e.header["phase"], e.header["step"], e.header["total"]) for e in events if e.type == Msg.PROGRESS]


# ---------------------------------------------------------------------------- on a real server
@requires_ray
def test_the_same_seed_gives_the_same_asset_and_the_same_progress_on_the_ray_and_the_local_backend(
        ray_server, dreamsmith_server):
    on_ray, on_local = ray_server.client(timeout=60), dreamsmith_server.client(timeout=60)
    ray_job = on_ray.submit("a red cube", seed=7, **FAST_JOB)
    local_job = on_local.submit("a red cube", seed=7, **FAST_JOB)
    ray_events, local_events = [], []
    assert on_ray.wait(ray_job, on_event=ray_events.append, timeout=300)["state"] == State.DONE
    assert on_local.wait(local_job, on_event=local_events.append, timeout=300)["state"] == State.DONE

    from_ray, from_local = on_ray.fetch(ray_job), on_local.fetch(local_job)
    for name in ("vertices", "faces", "uvs"):
        np.testing.assert_array_equal(getattr(from_ray, name), getattr(from_local, name))
    assert from_ray.texture_png == from_local.texture_png
    assert steps_of(ray_events) == steps_of(local_events)
    assert {e.header["phase"] for e in ray_events if e.type == Msg.PROGRESS} == {"optimise", "mesh", "colour"}
    assert any(e.type == Msg.PREVIEW for e in ray_events)
    assert [e.header["state"] for e in ray_events if e.type == Msg.STATE] == [State.RUNNING, State.DONE]


@requires_ray
def test_cancel_stops_a_running_ray_job_within_a_second_and_reports_it_cancelled(ray_server):
    client = ray_server.client(timeout=60)
    job_id = client.submit("a blue sphere", **LONG_JOB)
    wait_for_progress(client, job_id)

    asked = time.monotonic()
    client.cancel(job_id)
    final = client.wait(job_id, timeout=30)

    assert time.monotonic() - asked < 1.0
    assert final["state"] == State.CANCELLED and final["error"]["code"] == Code.CANCELLED
    assert client.status(job_id)["state"] == State.CANCELLED


@requires_ray
def test_a_killed_ray_actor_fails_its_job_with_a_clear_error_and_is_replaced_for_the_next_jobs(ray_server):
    client = ray_server.client(timeout=60)
    doomed = client.submit("a green cone", **LONG_JOB)
    wait_for_progress(client, doomed)

    os.kill(job_on(ray_server, doomed), signal.SIGKILL)
    final = client.wait(doomed, timeout=60)

    assert final["state"] == State.FAILED and final["error"]["code"] == Code.WORKER_CRASHED
    assert "the Ray worker running this job died" in final["error"]["message"]
    assert "not retried" in final["error"]["message"]
    # Two jobs at once need both actors: the one started in the killed one's place too.
    after = [client.submit("a red cube", seed=seed, **FAST_JOB) for seed in (1, 2)]
    assert [client.wait(job_id, timeout=300)["state"] for job_id in after] == [State.DONE, State.DONE]
    assert {job_on(ray_server, job_id) for job_id in after}.isdisjoint({job_on(ray_server, doomed)})


@requires_ray
def test_a_ray_front_killed_mid_job_keeps_its_committed_results_and_reports_the_running_job_interrupted(
        ray_server):
    client = ray_server.client(client_id="ray-survivor", timeout=60)
    finished = client.submit("a red cube", **FAST_JOB)
    assert client.wait(finished, timeout=300)["state"] == State.DONE
    before = client.fetch(finished)
    running = client.submit("a blue sphere", **LONG_JOB)
    wait_for_progress(client, running)
    started = descendants(ray_server.process.pid)
    core = {pid for pid in started if process_name(pid) in RAY_CORE}

    ray_server.kill()
    left = still_running(core, GONE_WITHIN_S)
    end_leftovers(started)  # Ray's own agents can outlive a killed driver by minutes; its core must not
    assert core and not left, f"a killed Ray front left {left}"
    ray_server.start()

    after = client.fetch(finished)
    assert after.glb == before.glb
    np.testing.assert_array_equal(after.vertices, before.vertices)
    status = client.status(running)
    assert status["state"] == State.INTERRUPTED and status["error"]["code"] == Code.WORKER_CRASHED


# ------------------------------------------------------------------------------------- start-up
@requires_ray
def test_an_unreachable_ray_address_is_one_line_on_stderr_and_exit_code_2(tmp_path, dreamsmith_model):
    nowhere = f"127.0.0.1:{free_port()}"
    command = [sys.executable, "-m", "server", "--backend", "ray", "--ray-address", nowhere, "--model",
               dreamsmith_model, "--bind", f"tcp://127.0.0.1:{free_port()}", "--results-dir", str(tmp_path)]
    began = time.monotonic()
    finished = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 2
    assert finished.stderr.strip().splitlines() == [finished.stderr.strip()]
    assert f"cannot reach the Ray cluster at {nowhere}" in finished.stderr
    assert time.monotonic() - began < 60


def settings_for(flags: list[str], results_dir: Path):
    parser = serve_parser()
    return settings_from(parser, parser.parse_args([*flags, "--results-dir", str(results_dir)]))


@pytest.mark.parametrize("flags, complaint", [
    (["--ray-address", "127.0.0.1:6379"], "--ray-address needs --backend ray"),
    (["--backend", "ray", "--ray-address", "http://head"], "--ray-address must look like HOST:PORT"),
])
def test_ray_flags_that_cannot_work_are_one_line_and_exit_code_2_before_anything_loads(tmp_path, capsys, flags,
                                                                                        complaint):
    with pytest.raises(SystemExit) as exited:
        settings_for(flags, tmp_path)
    error = capsys.readouterr().err
    assert exited.value.code == 2 and complaint in error and len(error.strip().splitlines()) == 1


def test_the_ray_backend_without_ray_installed_is_one_line_saying_how_to_install_it(tmp_path, capsys, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *rest: None if name == "ray" else
                        find_spec(name, *rest))
    with pytest.raises(SystemExit) as exited:
        settings_for(["--backend", "ray"], tmp_path)
    assert exited.value.code == 2 and "pip install -e '.[ray]'" in capsys.readouterr().err


def test_ray_runs_one_actor_on_a_cpu_and_one_per_cluster_gpu_with_cuda_unless_jobs_says(tmp_path):
    assert settings_for(["--backend", "ray"], tmp_path).jobs == 1
    assert settings_for(["--backend", "ray", "--device", "cuda"], tmp_path).jobs is None
    assert settings_for(["--backend", "ray", "--device", "cuda", "--jobs", "3"], tmp_path).jobs == 3
    local = settings_for(["--device", "cuda"], tmp_path)
    assert (local.backend, local.jobs, local.ray_address) == ("local", 4, None)
    joined = settings_for(["--backend", "ray", "--ray-address", "10.0.0.1:6379"], tmp_path)
    assert (joined.backend, joined.ray_address) == ("ray", "10.0.0.1:6379")


def test_the_default_local_backend_never_imports_ray():
    script = "import sys, server.app, server.cli; assert 'ray' not in sys.modules, 'ray was imported'"
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)


@requires_ray
def test_the_ray_front_checks_prompts_with_the_tokenizer_alone_and_loads_no_network():
    from engine import Prior, PromptReader
    from server.protocol import ProtocolError
    from server.ray_backend import front_runner

    front = front_runner(None)
    assert isinstance(front.prior, PromptReader) and not isinstance(front.prior, Prior)
    with pytest.raises(ProtocolError, match="params.prompt: .*wooden"):
        front.prepare("generate", {"prompt": "a wooden cube", "strict": True}, {})
    assert front.prepare("generate", {"prompt": "a red cube"}, {}).warnings == ()


@requires_ray
def test_a_closed_port_is_refused_at_once_by_the_head_probe():
    from server.ray_backend import probe_head

    began = time.monotonic()
    with pytest.raises(StartupError, match="cannot reach the Ray cluster at 127.0.0.1:"):
        probe_head(f"127.0.0.1:{free_port()}", timeout=5)
    assert time.monotonic() - began < 5


@requires_ray
def test_actors_are_one_per_job_or_one_per_gpu_and_never_more_than_the_cluster_holds():
    from server.ray_backend import ActorSpec, actor_count

    on_cpu, on_gpu = ActorSpec(None, "cpu", 2), ActorSpec(None, "cuda", None)
    assert actor_count(3, on_cpu, {"CPU": 6.0}) == 3
    assert actor_count(None, on_gpu, {"CPU": 16.0, "GPU": 4.0}) == 4
    with pytest.raises(StartupError, match="3 Ray actors need 6 CPUs; the cluster has 4 CPUs and 0 GPUs"):
        actor_count(3, on_cpu, {"CPU": 4.0})
    with pytest.raises(StartupError, match="the Ray cluster has no GPU"):
        actor_count(None, on_gpu, {"CPU": 16.0})


@requires_ray
def test_a_ray_error_is_told_by_the_line_that_names_what_happened():
    from server.ray_backend import short_ray_error

    traceback_laden = ("ray::JobActor.__init__() (pid=1, ip=10.0.0.2)\n  File \"x.py\", line 1\n"
                       "ModuleNotFoundError: No module named 'server'\n")
    assert short_ray_error(RuntimeError(traceback_laden)) == "ModuleNotFoundError: No module named 'server'"
    assert short_ray_error(RuntimeError("The actor died unexpectedly.\n\tpid: 3")) == "The actor died unexpectedly."
