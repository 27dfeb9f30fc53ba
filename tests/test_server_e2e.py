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


def box_inputs(centre=(3.0, -1.0, 0.5), size=0.8) -> dict:
    """A closed box somewhere in the world, the way the add-on sends a selected mesh."""
    import trimesh

    box = trimesh.creation.box((size, size, size))
    return {"vertices": (box.vertices + centre).astype(np.float32), "faces": box.faces.astype(np.int32)}


def camera_towards(target, eye) -> dict:
    """A rig camera at ``eye`` looking at ``target`` (Blender: it looks down its local -Z, +Y up)."""
    back = np.subtract(eye, target) / np.linalg.norm(np.subtract(eye, target))
    right = np.cross([0.0, 0.0, 1.0], back)
    right /= np.linalg.norm(right)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, np.cross(back, right), back, eye
    return {"name": "Shot", "c2w": c2w, "fov_y_deg": 40.0, "aspect": 1.5}


def test_a_paint_job_textures_the_sent_mesh_and_keeps_its_shape(dreamsmith_client, tmp_path):
    inputs = box_inputs()
    rig = [camera_towards((3.0, -1.0, 0.5), (5.0, -4.0, 1.5))]
    job_id = dreamsmith_client.submit("a red cube", kind="paint", inputs=inputs, cameras=rig,
                                      preset="draft", steps=3, seed=1)
    final = dreamsmith_client.wait(job_id, timeout=300)
    assert final["state"] == State.DONE, final
    result = dreamsmith_client.fetch(job_id)
    assert len(result.faces) == len(inputs["faces"])  # face f of the result is sent triangle f
    np.testing.assert_allclose(result.vertices[result.faces], inputs["vertices"][inputs["faces"]], atol=1e-5)
    assert result.uvs.min() >= 0 and result.uvs.max() <= 1
    assert png_pixels(result.texture_png).shape == (512, 512, 3)
    assert load_glb(result.save_glb(tmp_path / "painted.glb")).faces.shape == (len(inputs["faces"]), 3)


def test_a_sketch_job_makes_a_textured_mesh_where_the_sketch_is(dreamsmith_client):
    inputs = box_inputs()
    job_id = dreamsmith_client.submit("a red cube", kind="sketch", inputs=inputs, seed=1, **FAST_JOB)
    final = dreamsmith_client.wait(job_id, timeout=300)
    assert final["state"] == State.DONE, final
    result = dreamsmith_client.fetch(job_id)
    assert len(result.faces) > 0 and png_pixels(result.texture_png).shape[0] >= 512
    # In the sketch's coordinates: centred on the sketch, about its size (the field may grow or
    # shrink it a little in a few steps, but it is nowhere near the origin the prior works at).
    low, high = result.vertices.min(axis=0), result.vertices.max(axis=0)
    np.testing.assert_allclose((low + high) / 2, [3.0, -1.0, 0.5], atol=0.2)
    assert 0.4 < (high - low).max() < 1.6


@pytest.mark.parametrize("kind", ["paint", "sketch"])
def test_unusable_meshes_and_cameras_are_refused_naming_the_field(dreamsmith_client, kind):
    inputs = box_inputs()

    def refused(**changes):
        arrays = {**inputs, **{k: v for k, v in changes.items() if k in inputs}}
        params = {k: v for k, v in changes.items() if k not in inputs}
        with pytest.raises(ServerError) as refusal:
            dreamsmith_client.submit("a chair", kind=kind, inputs=arrays, **params)
        return refusal.value.code, refusal.value.field

    assert refused(faces=inputs["faces"] + 1) == (Code.BAD_REQUEST, "faces")
    assert refused(vertices=np.full_like(inputs["vertices"], 2.0)) == (Code.BAD_REQUEST, "vertices")  # no extent
    sheared = camera_towards((0, 0, 0), (4, -4, 2))
    sheared["c2w"][0, 1] += 0.2
    assert refused(cameras=[sheared]) == (Code.BAD_REQUEST, "params.cameras[0].c2w")
    assert dreamsmith_client.status()["jobs"] == []  # nothing was queued


def test_unknown_words_are_a_warning_event_or_with_strict_a_refusal_naming_the_prompt(dreamsmith_client):
    with pytest.raises(ServerError) as refusal:
        dreamsmith_client.submit("a wooden cube", strict=True, **FAST_JOB)
    assert (refusal.value.code, refusal.value.field) == (Code.BAD_REQUEST, "params.prompt")
    assert "params.prompt: the prompt 'a wooden cube' has words the prior does not know" in refusal.value.message
    assert dreamsmith_client.status()["jobs"] == []  # nothing was queued

    job_id = dreamsmith_client.submit("a wooden cube", **LONG_JOB)
    first = dreamsmith_client.poll_events(timeout=60)[0]  # before the job runs
    assert (first.type, first.job_id) == (Msg.WARNING, job_id)
    assert ": wooden. It knows: a, an, of, red" in first.header["message"]
    dreamsmith_client.cancel(job_id)
    assert dreamsmith_client.wait(job_id, timeout=30)["state"] == State.CANCELLED


def test_the_server_runs_every_kind(dreamsmith_client):
    assert dreamsmith_client.hello()["kinds"] == ["generate", "paint", "sketch"]
