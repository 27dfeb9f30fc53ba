"""Jobs through a real server process over loopback, on the tiny test prior."""

import io
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from PIL import Image

from engine.export import load_glb
from server.client import Client, ServerError
from server.protocol import Code, Msg, State
from server.testing import FAST_JOB, LONG_JOB


def png_pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_a_generate_job_runs_end_to_end_and_returns_what_the_engine_stored(dreamsmith_server, dreamsmith_client,
                                                                           tmp_path):
    job_id = dreamsmith_client.submit("a red cube", seed=3, **FAST_JOB)
    events = []
    final = dreamsmith_client.wait(job_id, on_event=events.append, timeout=300)
    assert final["state"] == State.DONE, final
    assert events[0].type == Msg.STATE and events[0].header["state"] == State.RUNNING
    steps = [e.header["step"] for e in events if e.type == Msg.PROGRESS and e.header["phase"] == "optimise"]
    assert steps == list(range(1, FAST_JOB["steps"] + 1))
    assert any(e.type == Msg.PREVIEW for e in events)

    result = dreamsmith_client.fetch(job_id)
    stored_glb = dreamsmith_server.results_dir / job_id / "model.glb"
    stored = load_glb(stored_glb)
    np.testing.assert_array_equal(result.vertices, stored.vertices)
    np.testing.assert_array_equal(result.faces, stored.faces)
    np.testing.assert_allclose(result.uvs, stored.uvs, atol=1e-6)  # glTF stores v flipped: 1 - (1 - v)
    np.testing.assert_array_equal(png_pixels(result.texture_png), stored.texture)
    assert result.glb == stored_glb.read_bytes()
    assert png_pixels(result.preview_png).ndim == 3
    assert result.save_glb(tmp_path / "cube.glb").read_bytes() == result.glb


def test_cancel_stops_a_running_job_within_one_second(dreamsmith_client):
    job_id = dreamsmith_client.submit("a blue sphere", **LONG_JOB)
    first_progress = []
    while not first_progress:
        first_progress = [e for e in dreamsmith_client.poll_events(timeout=60) if e.type == Msg.PROGRESS]
    asked = time.monotonic()
    assert dreamsmith_client.cancel(job_id)["cancel_requested"]
    final = dreamsmith_client.wait(job_id, timeout=10)
    assert time.monotonic() - asked < 1.0
    assert final["state"] == State.CANCELLED and final["error"]["code"] == Code.CANCELLED
    with pytest.raises(ServerError) as refused:
        dreamsmith_client.fetch(job_id)
    assert refused.value.code == Code.CANCELLED


KILLED_CLIENT = textwrap.dedent("""
    import sys
    from server.client import Client
    from server.protocol import Msg
    from server.testing import FAST_JOB

    client = Client(sys.argv[1], client_id=sys.argv[2])
    job_id = client.submit("a green chair", **{**FAST_JOB, "steps": 40})
    while not any(event.type == Msg.PROGRESS for event in client.poll_events(timeout=60)):
        pass
    print(job_id, flush=True)
    input()  # killed here, mid-job
""")


def test_a_client_killed_mid_job_loses_nothing(dreamsmith_server):
    client_id = "laptop-that-crashes"
    doomed = subprocess.Popen([sys.executable, "-c", KILLED_CLIENT, dreamsmith_server.address, client_id],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        job_id = doomed.stdout.readline().strip()
    finally:
        doomed.kill()
        doomed.wait()
    assert len(job_id) == 32, "the client died before its first progress event"

    with Client(dreamsmith_server.address, client_id=client_id) as again:
        assert again.attach(job_id)["state"] in (State.RUNNING, State.DONE)
        assert again.wait(job_id, timeout=300)["state"] == State.DONE
        assert len(again.fetch(job_id).faces) > 0


@pytest.mark.parametrize("kind", ["paint", "sketch"])
def test_paint_and_sketch_inputs_are_checked_then_refused_as_unavailable(dreamsmith_client, kind):
    vertices = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], dtype=np.float32)
    faces = np.array([[0, 1, 2]], dtype=np.int32)
    with pytest.raises(ServerError) as bad_mesh:
        dreamsmith_client.submit("a chair", kind=kind, inputs={"vertices": vertices, "faces": faces + 1})
    assert (bad_mesh.value.code, bad_mesh.value.field) == (Code.BAD_REQUEST, "faces")
    with pytest.raises(ServerError) as unavailable:
        dreamsmith_client.submit("a chair", kind=kind, inputs={"vertices": vertices, "faces": faces})
    assert (unavailable.value.code, unavailable.value.field) == (Code.BAD_REQUEST, "kind")
    assert "not available in this engine version" in unavailable.value.message
