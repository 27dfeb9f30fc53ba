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
