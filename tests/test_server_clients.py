"""Four clients on one server: queue limits, cancels, and no client ever sees or touches another's jobs."""

import threading
import time

import pytest
import zmq

from server import client as client_module
from server import protocol
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


LIMITS = {"server": "fake", "identity": "fake", "kinds": ["generate"], "max_message_bytes": 1 << 20,
          "max_header_bytes": 1 << 16, "max_frames": 8, "max_queued": 8, "max_per_client": 8,
          "max_vertices": 1000, "max_faces": 1000}


def slow_attach_server(address: str, delay_s: float, stop: threading.Event) -> None:
    """A server that answers hello at once and attach only after ``delay_s``: one busy in a silent stage."""
    with zmq.Context() as context, context.socket(zmq.ROUTER) as socket:
        socket.bind(address)
        while not stop.is_set():
            if not socket.poll(50):
                continue
            identity, header_frame, *_ = socket.recv_multipart()
            header = protocol.unpack_header(header_frame)
            if header["type"] == Msg.HELLO:
                reply = protocol.encode(Msg.LIMITS, header["id"], **LIMITS)
            elif stop.wait(delay_s):
                break
            else:
                reply = protocol.encode(Msg.JOB_STATUS, header["id"], job_id=header["job_id"], kind="generate",
                                        state=State.DONE, position=None, error=None, created=1.0, started=1.0,
                                        finished=2.0, cancel_requested=False)
            socket.send_multipart([identity, *reply])


def test_a_silent_job_on_a_server_slower_than_the_reply_timeout_is_waited_for_not_failed(monkeypatch):
    monkeypatch.setattr(client_module, "CHECK_EVERY_S", 1.0)
    address, stop = f"tcp://127.0.0.1:{free_port()}", threading.Event()
    server = threading.Thread(target=slow_attach_server, args=(address, 0.6, stop), daemon=True)
    server.start()
    try:
        with Client(address, timeout=0.2) as client:
            client.hello()
            final = client.wait("0" * 32, timeout=10.0)  # silent: re-attached after CHECK_EVERY_S
        assert final["state"] == State.DONE
        with Client(address, timeout=0.2) as client, pytest.raises(ServerTimeout):
            client.attach("0" * 32)  # a plain request keeps the client's own timeout
    finally:
        stop.set()
        server.join(timeout=5)


@pytest.mark.parametrize("delay_s, gone_s, ends", [(1.5, 30.0, "done"), (60.0, 2.0, "timeout")],
                         ids=["busy-past-a-whole-check", "silent-past-the-gone-limit"])
def test_a_check_left_unanswered_is_retried_until_the_server_has_been_silent_too_long(monkeypatch, delay_s,
                                                                                        gone_s, ends):
    monkeypatch.setattr(client_module, "CHECK_EVERY_S", 1.0)
    monkeypatch.setattr(client_module, "SERVER_GONE_S", gone_s)
    address, stop = f"tcp://127.0.0.1:{free_port()}", threading.Event()
    server = threading.Thread(target=slow_attach_server, args=(address, delay_s, stop), daemon=True)
    server.start()
    try:
        with Client(address, timeout=0.2) as client:
            client.hello()
            started = time.monotonic()
            if ends == "done":
                assert client.wait("0" * 32, timeout=20.0)["state"] == State.DONE
            else:
                with pytest.raises(ServerTimeout):
                    client.wait("0" * 32, timeout=20.0)
                assert gone_s <= time.monotonic() - started < gone_s + 3 * client_module.CHECK_EVERY_S
    finally:
        stop.set()
        server.join(timeout=5)
