"""The server's parts without sockets: queue, job table, result files and the worker with scripted runners."""

import select
import threading
import time

import numpy as np
import pytest
import torch

from engine.export import TexturedMesh, load_glb
from engine.progress import Progress
from server.events import EventChannel
from server.job_queue import Job, JobQueue
from server.protocol import Code, Msg, ProtocolError, State, decode
from server.results import JobOutput, ResultStore
from server.store import JobStore
from server.worker import PREVIEW_INTERVAL_S, JobEnd, JobEnded, Worker


def small_output() -> JobOutput:
    vertices = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float32)
    faces = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]], dtype=np.int32)
    uvs = np.array([[0, 0], [1, 0], [0, 1], [1, 1]], dtype=np.float32)
    texture = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3)
    return JobOutput(TexturedMesh(vertices, faces, uvs, texture), np.zeros((8, 8, 3), np.uint8))


def new_job(number: int, client: str = "alice") -> Job:
    return Job(f"{number:032x}", client, "generate", {"prompt": "a cube"}, {}, None, time.time())


class ScriptedRunner:
    """Runs each job by calling the next script: script(job, on_progress) -> JobOutput or raises."""

    kinds = ("generate",)

    def __init__(self, *scripts):
        self.scripts = list(scripts)

    def prepare(self, kind, params, inputs):
        return None

    def run(self, job, on_progress, cancel):
        return self.scripts.pop(0)(job, on_progress)


def raising(error):
    def script(job, on_progress):
        raise error
    return script


def succeeding(job, on_progress):
    return small_output()


@pytest.fixture
def worker_setup(tmp_path):
    queue, store, results, events = JobQueue(10, 10), JobStore(tmp_path / "jobs.sqlite3"), ResultStore(tmp_path), \
        EventChannel()
    started = []

    def start(runner):
        worker = Worker(queue, store, results, runner, events, number=len(started))
        worker.start()
        started.append(worker)
        return worker

    yield queue, store, results, events, start
    queue.close()
    for worker in started:
        worker.join(5)
    store.close()
    events.close()


def collect_events(events: EventChannel, terminal_count: int, timeout: float = 30.0) -> list:
    received, deadline = [], time.monotonic() + timeout
    while sum(m.type == Msg.STATE and m.header["state"] in State.TERMINAL for m in received) < terminal_count:
        assert time.monotonic() < deadline, f"only got {[m.header for m in received]}"
        select.select([events.fileno()], [], [], 0.5)
        received += [decode(e.frames, Msg.EVENTS) for e in events.drain()]
    return received


def queue_jobs(worker_setup, count):
    queue, store, _, _, _ = worker_setup
    for number in range(count):
        job = new_job(number)
        store.insert(job.id, job.client, job.kind, job.params, job.created)
        queue.put(job)


def run_jobs(worker_setup, runner, count):
    queue_jobs(worker_setup, count)
    worker_setup[4](runner)
    return collect_events(worker_setup[3], count)


def final_states(received):
    return [(m.job_id, m.header["state"], (m.header["error"] or {}).get("code"))
            for m in received if m.type == Msg.STATE and m.header["state"] in State.TERMINAL]


def test_out_of_memory_and_engine_errors_fail_only_their_own_job(worker_setup):
    runner = ScriptedRunner(raising(MemoryError()), raising(torch.cuda.OutOfMemoryError("CUDA out of memory")),
                            raising(RuntimeError("boom")), succeeding)
    received = run_jobs(worker_setup, runner, 4)
    ids = [new_job(n).id for n in range(4)]
    assert final_states(received) == [(ids[0], State.FAILED, Code.OUT_OF_MEMORY),
                                      (ids[1], State.FAILED, Code.OUT_OF_MEMORY),
                                      (ids[2], State.FAILED, Code.WORKER_CRASHED),
                                      (ids[3], State.DONE, None)]
    _, store, results, _, _ = worker_setup
    assert "boom" in store.get(ids[2]).error["message"]
    assert store.get(ids[3]).state == State.DONE and store.get(ids[3]).error is None
    assert results.read(ids[2]) is None and results.read(ids[3]) is not None


def test_a_cancel_that_the_engine_did_not_notice_still_cancels(worker_setup):
    def cancelled_late(job, on_progress):
        job.cancel.cancel()  # as if the client cancelled during the colour stage
        return small_output()

    received = run_jobs(worker_setup, ScriptedRunner(cancelled_late), 1)
    assert final_states(received) == [(new_job(0).id, State.CANCELLED, Code.CANCELLED)]
    assert worker_setup[2].read(new_job(0).id) is None


def test_progress_goes_out_every_step_and_previews_at_a_limited_rate(worker_setup):
    picture = np.full((4, 4, 3), 200, np.uint8)

    def chatty(job, on_progress):
        for step in range(1, 11):
            on_progress(Progress("optimise", step, 10, 0.5, picture))
        return small_output()

    received = run_jobs(worker_setup, ScriptedRunner(chatty), 1)
    progress = [m.header for m in received if m.type == Msg.PROGRESS]
    assert [p["step"] for p in progress] == list(range(1, 11))
    assert all(p["eta_s"] >= 0 and p["loss"] == 0.5 for p in progress) and progress[-1]["eta_s"] == 0
    previews = [m for m in received if m.type == Msg.PREVIEW]
    assert 1 <= len(previews) <= 1 + int(progress[-1]["time"] - progress[0]["time"]) // PREVIEW_INTERVAL_S
    assert bytes(previews[0].arrays["image_png"][:4]) == b"\x89PNG"


def test_a_job_that_ended_elsewhere_is_recorded_as_it_ended_there(worker_setup):
    died = JobEnd(State.FAILED, Code.WORKER_CRASHED, "the Ray worker running this job died (killed)")
    stopped = JobEnd(State.CANCELLED, Code.CANCELLED, "cancelled by its client")
    received = run_jobs(worker_setup, ScriptedRunner(raising(JobEnded(died)), raising(JobEnded(stopped)),
                                                     succeeding), 3)
    ids = [new_job(n).id for n in range(3)]
    assert final_states(received) == [(ids[0], State.FAILED, Code.WORKER_CRASHED),
                                      (ids[1], State.CANCELLED, Code.CANCELLED), (ids[2], State.DONE, None)]
    assert worker_setup[1].get(ids[0]).error == {"code": Code.WORKER_CRASHED, "field": None,
                                                 "message": "the Ray worker running this job died (killed)"}


def test_progress_reported_elsewhere_carries_the_time_the_engine_reported_it(worker_setup):
    def remote(job, on_progress):
        on_progress(Progress("optimise", 1, 2, 0.5), 1234.5)
        on_progress(Progress("optimise", 2, 2, 0.5))
        return small_output()

    received = run_jobs(worker_setup, ScriptedRunner(remote), 1)
    times = [m.header["time"] for m in received if m.type == Msg.PROGRESS]
    assert times[0] == 1234.5 and abs(times[1] - time.time()) < 60


def test_the_queue_is_fifo_and_bounded_in_total_and_per_client():
    queue = JobQueue(max_queued=3, max_per_client=2)
    for number, client in enumerate(["alice", "bob", "alice"]):
        queue.ensure_room(client)
        assert queue.put(new_job(number, client)) == number
    with pytest.raises(ProtocolError, match="per client") as per_client:
        queue.ensure_room("alice")
    with pytest.raises(ProtocolError, match="queue is full") as total:
        queue.ensure_room("carol")
    assert per_client.value.code == total.value.code == Code.QUEUE_FULL
    assert queue.take().id == new_job(0).id and queue.position(new_job(2).id) == 1
    assert queue.remove_pending(new_job(1).id).client == "bob" and queue.remove_pending(new_job(0).id) is None
    assert queue.signal_running(new_job(0).id) and queue.cancel_requested(new_job(0).id)
    queue.finish(new_job(0, "alice"))
    queue.ensure_room("alice")  # one of alice's two jobs has ended
    assert queue.counts() == (1, 0)


def test_unfinished_jobs_become_interrupted_when_the_table_is_reopened(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite3")
    for number, state in enumerate([State.QUEUED, State.RUNNING, State.DONE]):
        store.insert(new_job(number).id, "alice", "generate", {}, 1.0)
        if state == State.RUNNING:
            store.mark_running(new_job(number).id, 2.0)
        if state == State.DONE:
            store.mark_finished(new_job(number).id, State.DONE, 3.0)
    store.close()
    reopened = JobStore(tmp_path / "jobs.sqlite3")
    assert reopened.interrupt_unfinished(4.0) == [new_job(0).id, new_job(1).id]
    states = [reopened.get(new_job(n).id) for n in range(3)]
    assert [(r.state, (r.error or {}).get("code")) for r in states] == [
        (State.INTERRUPTED, Code.WORKER_CRASHED), (State.INTERRUPTED, Code.WORKER_CRASHED), (State.DONE, None)]
    assert reopened.get("f" * 32) is None


def test_a_committed_result_reads_back_as_written(tmp_path):
    results, output = ResultStore(tmp_path), small_output()
    results.commit("a" * 32, output)
    arrays = results.read("a" * 32)
    for name in ("vertices", "faces", "uvs"):
        np.testing.assert_array_equal(arrays[name], getattr(output.mesh, name))
    assert arrays["glb"].tobytes() == results.glb_path("a" * 32).read_bytes()
    np.testing.assert_array_equal(load_glb(results.glb_path("a" * 32)).texture, output.mesh.texture)
    assert [p.name for p in tmp_path.iterdir()] == ["a" * 32]  # no staging folder left behind
    assert results.read("b" * 32) is None


def test_an_input_the_engine_finds_unusable_fails_its_job_naming_the_field(worker_setup):
    unusable = ProtocolError(Code.BAD_REQUEST, "vertices: the sketch encloses no volume", "vertices")
    received = run_jobs(worker_setup, ScriptedRunner(raising(unusable), succeeding), 2)
    assert final_states(received) == [(new_job(0).id, State.FAILED, Code.BAD_REQUEST),
                                      (new_job(1).id, State.DONE, None)]
    assert worker_setup[1].get(new_job(0).id).error == {
        "code": Code.BAD_REQUEST, "message": "vertices: the sketch encloses no volume", "field": "vertices"}


def test_results_are_stored_in_the_dtypes_the_result_message_carries(tmp_path):
    results, output = ResultStore(tmp_path), small_output()
    mesh = output.mesh
    wide = TexturedMesh(mesh.vertices.astype(np.float64), mesh.faces.astype(np.int64), mesh.uvs.astype(np.float64),
                        mesh.texture)
    results.commit("c" * 32, JobOutput(wide, output.preview))
    arrays = results.read("c" * 32)
    assert [arrays[name].dtype for name in ("vertices", "faces", "uvs")] == [np.float32, np.int32, np.float32]
    np.testing.assert_array_equal(arrays["faces"], mesh.faces)


class MeetingRunner:
    """Each job waits until every job and the test have met (so they all run at once), then runs until
    released, stopping early when cancelled."""

    kinds = ("generate",)

    def __init__(self, jobs: int):
        self.met = threading.Barrier(jobs + 1, timeout=20)
        self.release = threading.Event()

    def prepare(self, kind, params, inputs):
        return None

    def run(self, job, on_progress, cancel):
        self.met.wait()
        while not self.release.wait(0.01):
            cancel.raise_if_cancelled()
        return small_output()


def test_two_workers_run_two_jobs_at_once_and_cancelling_one_leaves_the_other(worker_setup):
    queue, store, results, events, start = worker_setup
    runner = MeetingRunner(jobs=2)
    queue_jobs(worker_setup, 2)
    start(runner), start(runner)
    runner.met.wait()  # both jobs are in the engine now
    first, second = new_job(0).id, new_job(1).id
    assert queue.counts() == (0, 2)
    assert [(job["job_id"], job["state"]) for job in queue.unfinished_of("alice")] == [
        (first, State.RUNNING), (second, State.RUNNING)]
    assert queue.signal_running(first) and queue.cancel_requested(first) and not queue.cancel_requested(second)
    received = collect_events(events, 1)
    runner.release.set()
    received += collect_events(events, 1)
    states = [(m.job_id, m.header["state"]) for m in received if m.type == Msg.STATE]
    assert states[:2] in ([(first, State.RUNNING), (second, State.RUNNING)],
                          [(second, State.RUNNING), (first, State.RUNNING)])
    assert states[2:] == [(first, State.CANCELLED), (second, State.DONE)]
    assert store.get(second).state == State.DONE and results.read(second) is not None
    assert store.get(first).state == State.CANCELLED and results.read(first) is None
    deadline = time.monotonic() + 10  # each worker frees its slot just after publishing the job's end
    while queue.counts() != (0, 0):
        assert time.monotonic() < deadline, queue.counts()
        time.sleep(0.01)
