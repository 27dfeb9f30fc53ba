"""A server killed with SIGKILL and started again: committed results survive, unfinished jobs say so."""

import numpy as np
import pytest

from server.client import ServerError
from server.protocol import Code, Msg, State
from server.testing import FAST_JOB, LONG_JOB


def test_results_survive_a_crash_and_unfinished_jobs_are_reported_interrupted(dreamsmith_server_factory):
    server = dreamsmith_server_factory()
    client = server.client(client_id="survivor")
    finished = client.submit("a red cube", **FAST_JOB)
    assert client.wait(finished, timeout=300)["state"] == State.DONE
    before = client.fetch(finished)
    running = client.submit("a blue sphere", **LONG_JOB)
    waiting = client.submit("a green chair", **FAST_JOB)
    while not any(e.type == Msg.PROGRESS and e.job_id == running for e in client.poll_events(timeout=60)):
        pass

    server.kill()
    server.start()

    after = client.fetch(finished)  # the client says hello again by itself on the new connection
    assert after.glb == before.glb
    np.testing.assert_array_equal(after.vertices, before.vertices)
    np.testing.assert_array_equal(after.faces, before.faces)
    for job_id in (running, waiting):
        status = client.status(job_id)
        assert status["state"] == State.INTERRUPTED and status["error"]["code"] == Code.WORKER_CRASHED
        with pytest.raises(ServerError) as refused:
            client.fetch(job_id)
        assert refused.value.code == Code.WORKER_CRASHED
    assert client.status()["jobs"] == []


def test_with_jobs_2_two_jobs_run_at_once_share_forwards_and_both_results_survive_a_crash(dreamsmith_server_factory):
    server = dreamsmith_server_factory(extra_args=("--jobs", "2"))
    client = server.client(client_id="two-at-once")
    jobs = [client.submit("a red cube", seed=1, **FAST_JOB), client.submit("a blue sphere", seed=2, **FAST_JOB)]
    for job_id in jobs:
        assert client.wait(job_id, timeout=300)["state"] == State.DONE
    statuses = [client.status(job_id) for job_id in jobs]
    assert max(s["started"] for s in statuses) < min(s["finished"] for s in statuses)  # both ran at once
    shared = [int(line.split(" of its ")[0].rsplit(" ", 1)[1]) for line in server.log_tail(200).splitlines()
              if "U-Net calls shared a forward" in line]
    assert len(shared) == 2 and max(shared) > 0
    before = [client.fetch(job_id) for job_id in jobs]

    server.kill()
    server.start()

    for job_id, result in zip(jobs, before):
        after = client.fetch(job_id)
        assert after.glb == result.glb
        np.testing.assert_array_equal(after.vertices, result.vertices)
