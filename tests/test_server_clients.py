"""Four clients on one server: queue limits, cancels, and no client ever sees or touches another's jobs."""

import time

import pytest

from server.client import Client, NoServer, ServerError, ServerTimeout, no_server_message
from server.protocol import DEFAULT_ADDRESS, Code, Msg, State
from server.testing import FAST_JOB, LONG_JOB, free_port


def refused_code(call, *args):
    with pytest.raises(ServerError) as refused:
        call(*args)
    return refused.value.code


def test_four_clients_get_only_their_own_events_and_hit_the_queue_limits(dreamsmith_server_factory):
    server = dreamsmith_server_factory(extra_args=["--max-queued", "6", "--max-per-client", "3"])
    clients = [server.client(client_id=f"artist-{n}") for n in range(4)]
    jobs = {n: [] for n in range(4)}
    events = {n: [] for n in range(4)}

    def submit(n, params=FAST_JOB):
        jobs[n].append(clients[n].submit(f"a red cube number {n}", **params))
        return jobs[n][-1]

    long_job = submit(0, LONG_JOB)
    while not any(e.type == Msg.PROGRESS for e in clients[0].poll_events(timeout=60)):
        pass  # running now, so it no longer counts against the queue
    submit(0), submit(0)
    assert refused_code(submit, 0) == Code.QUEUE_FULL  # 3 unfinished jobs is client 0's limit
    submit(1), submit(1), submit(2), submit(2)
    assert refused_code(submit, 3) == Code.QUEUE_FULL  # 6 jobs wait: the queue is full

    for intruder, victim in ((1, 0), (2, 1), (3, 2)):
        for call in (clients[intruder].cancel, clients[intruder].fetch, clients[intruder].attach,
                     clients[intruder].status):
            assert refused_code(call, jobs[victim][0]) == Code.FORBIDDEN

    cancelled_while_queued = jobs[1][1]
    assert clients[1].cancel(cancelled_while_queued)["state"] == State.CANCELLED
    submit(3)
    clients[0].cancel(long_job)

    expected_end = {job_id: State.DONE for n in range(4) for job_id in jobs[n]}
    expected_end.update({long_job: State.CANCELLED, cancelled_while_queued: State.CANCELLED})
    ended = {}
    deadline = time.monotonic() + 300
    while len(ended) < len(expected_end):
        assert time.monotonic() < deadline, f"still waiting for {set(expected_end) - set(ended)}"
        for n, client in enumerate(clients):
            for event in client.poll_events(timeout=0.05):
                events[n].append(event)
                if event.type == Msg.STATE and event.header["state"] in State.TERMINAL:
                    ended[event.job_id] = event.header["state"]
    assert ended == expected_end

    for n, client in enumerate(clients):
        assert {event.job_id for event in events[n]} <= set(jobs[n]), f"client {n} saw someone else's job"
        for job_id in jobs[n]:
            if expected_end[job_id] == State.DONE:
                assert len(client.fetch(job_id).faces) > 0
    assert all(client.status()["jobs"] == [] for client in clients)


def test_a_client_with_no_server_at_its_address_says_so_and_how_to_start_one():
    address = f"tcp://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with Client(address, timeout=0.3) as client, pytest.raises(NoServer) as caught:
        client.submit("a red cube")
    assert time.monotonic() - started < 2.0
    assert isinstance(caught.value, ServerTimeout)  # callers that catch the timeout still do
    assert str(caught.value) == (f"no Dreamsmith server answered at {address} within 0.3 s; "
                                 f"start one with: python -m server --bind {address}")
    assert no_server_message(DEFAULT_ADDRESS, 10.0) == (
        "no Dreamsmith server answered at tcp://127.0.0.1:5555 within 10 s; start one with: python -m server")
