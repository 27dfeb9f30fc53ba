"""The Blender add-on (blender_addon/dreamsmith) and build_addon.py, tested inside real Blender: the
PyPI ``bpy`` module, headless.

bpy lives in its own environment, ``.venv-blender/`` (``python -m scripts.blender_venv``, part of the
README's test command), because it pins NumPy below 2; the tests themselves run in the main one.
bpy can be imported once per process and keeps global state, so every Blender-side check runs in a
fresh subprocess of that environment's python with its own Blender user folder (``run_in_blender``).
The check itself is a plain function below, named ``in_blender_*``: its source is sent to the
subprocess, which enables the add-on (from the built zip or the source tree), calls it with the
add-on's module, and sends back its JSON return value for the assertions here.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import re
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # scripts/ is not an installed package; plain `pytest` does not put the root first
    sys.path.insert(0, str(ROOT))

from scripts import blender_venv  # noqa: E402

ADDON_SOURCE = ROOT / "blender_addon" / "dreamsmith"
# Wheel platform tags for the manifest's windows-x64, linux-x64, macos-arm64 and macos-x64.
PLATFORM_TAGS = (r"win_amd64", r"manylinux\w*_x86_64", r"macosx_\d+_\d+_(arm64|universal2)",
                 r"macosx_\d+_\d+_(x86_64|universal2)")
# Blender 4.2 to 5.0 run Python 3.11; 5.1 and later 3.13, which also takes a stable-ABI wheel.
PYTHON_TAGS = (r"cp311-cp311", r"(cp313-cp313|cp3\d+-abi3)")
RESULT_MARKER = "@@in-blender-result@@"
BLENDER_TIMEOUT_S = 180
# A job on the tiny test prior that finishes in seconds (the draft preset, few steps).
FAST = dict(preset="DRAFT", steps=3, seed=7)

pytestmark = pytest.mark.skipif(blender_venv.find_bpy_python() is None,
                                reason="the bpy module exists for Python 3.11 only, and there is none here")


def bpy_python() -> Path:
    """The Blender environment's python; the test fails, naming the command, when it has not been made."""
    python = blender_venv.blender_python()
    if python is None:
        pytest.fail(f"no Blender environment at {blender_venv.VENV_DIR}: python -m scripts.blender_venv makes it "
                    "(the README's test command runs it)")
    return python


@pytest.fixture(scope="module")
def build(tmp_path_factory) -> subprocess.CompletedProcess:
    dist = tmp_path_factory.mktemp("dist")
    # This environment's pip fetches the wheels; the Blender environment's bpy validates the zip.
    return subprocess.run([sys.executable, str(ROOT / "build_addon.py"), "--dist", str(dist), "--require-validation",
                           "--bpy-python", str(bpy_python())], capture_output=True, text=True, cwd=ROOT, timeout=600)


@pytest.fixture(scope="module")
def addon_zip(build) -> Path:
    assert build.returncode == 0, f"build_addon.py failed:\n{build.stdout}{build.stderr}"
    return Path(build.stdout.strip().splitlines()[-1])


# -- running code inside Blender
#
# The functions up to run_in_blender run in the Blender subprocess, sent as source; so do the
# in_blender_* checks further down. Each imports what it uses itself.


def enable(source, where):
    """The add-on enabled the way a user gets it: installed from the zip, or from a local repository
    that points at the source tree; returns its module."""
    import sys

    import bpy

    if source == "zip":
        bpy.ops.extensions.package_install_files(filepath=where, repo="user_default", enable_on_install=True)
        module = "bl_ext.user_default.dreamsmith"
    else:
        bpy.context.preferences.extensions.repos.new(name="source", module="source", custom_directory=where,
                                                     source="USER")
        module = "bl_ext.source.dreamsmith"
        bpy.ops.preferences.addon_enable(module=module)
    return sys.modules[module]


def use_server(addon, address, timeout=None):
    import bpy

    prefs = bpy.context.preferences.addons[addon.__name__].preferences
    prefs.server_address = address
    if timeout is not None:
        prefs.timeout = timeout


def set_job(prompt, preset=FAST["preset"], steps=FAST["steps"], seed=FAST["seed"]):
    import bpy

    settings = bpy.context.scene.dreamsmith
    settings.prompt, settings.preset, settings.steps, settings.seed = prompt, preset, steps, seed


def select_only(name):
    import bpy

    for obj in bpy.context.view_layer.objects:
        obj.select_set(obj.name == name)
    bpy.context.view_layer.objects.active = bpy.data.objects[name]


def run_operator(operator, **options):
    """The error report of a failing operator (bpy raises it as RuntimeError), or an empty string."""
    try:
        operator(**options)
    except RuntimeError as error:
        return str(error)
    return ""


BLENDER_HELPERS = (enable, use_server, set_job, select_only, run_operator)


def run_in_blender(check, user_dir: Path, source: str = "source", addon_zip: Path | None = None, **arguments):
    python = bpy_python()
    where = str(addon_zip) if source == "zip" else str(ROOT / "blender_addon")
    code = "\n\n".join([
        "import json",
        f"FAST = {FAST!r}",
        *(inspect.getsource(function) for function in (*BLENDER_HELPERS, check)),
        f"arguments = json.loads({json.dumps(arguments)!r})",
        f"result = {check.__name__}(enable({source!r}, {where!r}), **arguments)",
        f"print({RESULT_MARKER!r} + json.dumps(result))",
    ])
    user_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "BLENDER_USER_RESOURCES": str(user_dir)}  # never the real Blender's settings
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, env=env,
                          timeout=BLENDER_TIMEOUT_S, cwd=ROOT)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_MARKER)]
    if done.returncode != 0 or not lines:
        pytest.fail(f"{check.__name__} failed in Blender (exit {done.returncode}):\n{done.stdout[-3000:]}\n"
                    f"{done.stderr[-6000:]}")
    return json.loads(lines[-1][len(RESULT_MARKER):])


# -- build_addon.py


def test_build_makes_a_zip_that_blenders_validator_accepts(build, addon_zip):
    assert addon_zip.is_file() and addon_zip.name == "dreamsmith-0.1.0.zip"
    assert "validator accepted" in build.stderr, build.stderr


def test_zip_vendors_the_servers_protocol_and_bundles_wheels_for_every_platform(addon_zip):
    with zipfile.ZipFile(addon_zip) as archive:
        names = set(archive.namelist())
        manifest = tomllib.loads(archive.read("blender_manifest.toml").decode())
        for module in ("protocol.py", "client.py"):
            assert archive.read(f"_vendor/{module}") == (ROOT / "server" / module).read_bytes()
    assert manifest["id"] == "dreamsmith" and manifest["blender_version_min"] == "4.2.0"
    assert set(manifest["permissions"]) == {"network", "files"}
    wheels = [wheel.removeprefix("./") for wheel in manifest["wheels"]]
    assert all(wheel in names for wheel in wheels)
    for package in ("pyzmq", "msgpack"):
        for python in PYTHON_TAGS:
            for platform in PLATFORM_TAGS:
                pattern = rf"wheels/{package}-[^-]+-{python}-([\w.]*\.)?{platform}(\.[\w.]*)?\.whl"
                assert any(re.fullmatch(pattern, wheel) for wheel in wheels), f"no {package} wheel for {pattern}"
    assert not any("__pycache__" in name or name.endswith("index.json") for name in names)


def test_the_validator_really_runs_and_rejects_a_bad_manifest(addon_zip, tmp_path):
    spec = importlib.util.spec_from_file_location("build_addon", ROOT / "build_addon.py")
    build_addon = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build_addon)
    broken = tmp_path / "broken.zip"
    with zipfile.ZipFile(addon_zip) as source, zipfile.ZipFile(broken, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            if item.filename == "blender_manifest.toml":
                data = data.replace(b'type = "add-on"', b'type = "gadget"')
            target.writestr(item, data)
    with pytest.raises(build_addon.BuildError, match="rejected"):
        build_addon.validate(broken, blender=None, required=True, bpy_python=bpy_python())


# -- the recent jobs list (plain Python, no bpy)


def test_recent_jobs_survive_a_restart_newest_first_and_bounded(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("dreamsmith_recent_jobs", ADDON_SOURCE / "recent_jobs.py")
    recent_jobs = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, recent_jobs)  # dataclasses look their module up there
    spec.loader.exec_module(recent_jobs)
    path = tmp_path / "recent_jobs.json"
    jobs = recent_jobs.RecentJobs(path)
    for number in range(recent_jobs.KEEP + 2):
        jobs.add(recent_jobs.JobRecord(f"{number:032x}", "generate", f"prop {number}"))
    jobs.update(f"{recent_jobs.KEEP + 1:032x}", state="imported")
    reloaded = recent_jobs.RecentJobs(path).records
    assert len(reloaded) == recent_jobs.KEEP
    assert [r.label for r in reloaded[:2]] == [f"prop {recent_jobs.KEEP + 1}", f"prop {recent_jobs.KEEP}"]
    assert (reloaded[0].state, reloaded[0].reattachable) == ("imported", True)
    path.write_text("{ not json")
    assert recent_jobs.RecentJobs(path).records == []  # a damaged file must not stop the add-on


# -- registration, panel and poll messages


def in_blender_interface(addon):
    import bpy

    def reason(operator):
        return run_operator(operator).partition(".poll() ")[2]

    interface = {
        "panels": [name for name in ("VIEW3D_PT_dreamsmith", "VIEW3D_PT_dreamsmith_recent")
                   if getattr(bpy.types, name, None) is not None],
        "category": bpy.types.VIEW3D_PT_dreamsmith.bl_category,
        "operators": [name for name in ("generate", "texture_selected", "sketch_selected", "cancel")
                      if hasattr(bpy.types, f"DREAMSMITH_OT_{name}")],
        "no_prompt": reason(bpy.ops.dreamsmith.generate),
        "no_job": reason(bpy.ops.dreamsmith.cancel),
    }
    bpy.context.scene.dreamsmith.prompt = "a red cube"
    select_only("Camera")
    interface["no_mesh"] = reason(bpy.ops.dreamsmith.texture_selected)
    interface["sketch_no_mesh"] = reason(bpy.ops.dreamsmith.sketch_selected)
    faceless = bpy.data.objects.new("Faceless", bpy.data.meshes.new("Faceless"))
    bpy.context.scene.collection.objects.link(faceless)
    select_only("Faceless")
    interface["no_faces"] = reason(bpy.ops.dreamsmith.texture_selected)
    interface["generate_ready"] = bpy.ops.dreamsmith.generate.poll()
    return interface


@pytest.mark.parametrize("source", ["zip", "source"])
def test_addon_registers_its_panel_and_operators_with_poll_reasons(source, addon_zip, tmp_path):
    seen = run_in_blender(in_blender_interface, tmp_path / "user", source, addon_zip)
    assert seen["panels"] == ["VIEW3D_PT_dreamsmith", "VIEW3D_PT_dreamsmith_recent"]
    assert seen["category"] == "Dreamsmith"
    assert seen["operators"] == ["generate", "texture_selected", "sketch_selected", "cancel"]
    assert seen["no_prompt"] == "Type a prompt first"
    assert seen["no_job"] == "No Dreamsmith job is running"
    assert seen["no_mesh"] == seen["sketch_no_mesh"] == "Select a mesh object first"
    assert seen["no_faces"] == "'Faceless' has no faces"
    assert seen["generate_ready"] is True


def in_blender_panel(addon):
    import bpy

    class Layout:
        """Stands in for UILayout (the bpy module draws no interface) and records every call."""

        def __init__(self, calls):
            self.calls = calls

        def __getattr__(self, name):
            def record(*args, **kwargs):
                self.calls.append([name, [str(a) for a in args], {k: str(v) for k, v in kwargs.items()}])
                return Layout(self.calls)
            return record

    def draw():
        calls = []

        class Panel:
            layout = Layout(calls)

        bpy.types.VIEW3D_PT_dreamsmith.draw(Panel, bpy.context)
        return calls

    current = addon.session.current()
    current.monitor.stop()  # its reports would overwrite the statuses set here
    current.server = addon.transport.ServerStatus(False, "no reply to hello")
    current.active = addon.session.ActiveJob("generate", "a red cube", "", job_id="0" * 32, phase="optimise",
                                             step=3, total=12)
    current.warnings = ["the prompt 'a wooden cube' has words the prior does not know, which it reads as [UNK]: "
                        "wooden. It knows: a, red, cube"]
    during_job = draw()
    current.warnings = []
    current.server = addon.transport.ServerStatus(True, "0 running, 0 queued", ("generate",))
    current.active = None
    bpy.context.scene.dreamsmith.mode = "TEXTURE"
    idle_texture_mode = draw()
    return {"during_job": during_job, "idle_texture_mode": idle_texture_mode}


def _labels(calls) -> str:
    return " ".join(kwargs.get("text", "") for name, _, kwargs in calls if name == "label")


def _operators(calls) -> list:
    return [args[0] for name, args, _ in calls if name == "operator"]


def test_panel_shows_status_progress_cancel_and_the_mode_button(tmp_path):
    seen = run_in_blender(in_blender_panel, tmp_path / "user")
    during = seen["during_job"]
    assert "Not connected: no reply to hello" in _labels(during)
    (progress,) = [kwargs for name, _, kwargs in during if name == "progress"]
    assert float(progress["factor"]) == 0.25 and progress["text"] == "optimise 3/12"
    assert _operators(during) == ["dreamsmith.cancel"]
    assert "has words the prior does not know" in _labels(during)  # the server's warning about the job
    props = [args[1] for name, args, _ in during if name == "prop"]
    assert "strict_prompt" in props and "shaded_texture" in props
    idle = seen["idle_texture_mode"]
    assert "Connected to tcp://127.0.0.1:5555: 0 running, 0 queued" in _labels(idle)
    assert "does not know" not in _labels(idle)
    assert "This server does not run 'paint' jobs yet" in _labels(idle)
    assert _operators(idle) == ["dreamsmith.texture_selected"]
    assert not [name for name, _, _ in idle if name == "progress"]


# -- what a job takes from the scene, and how results go in (no server needed)


def in_blender_scene_inputs(addon):
    import bpy

    scene = bpy.context.scene
    active = addon.job_inputs.camera_rig(scene, None)
    from_cursor = addon.job_inputs.camera_rig(scene, None, (1.0, 2.0, 3.0))
    rig = bpy.data.collections.new("Rig")
    scene.collection.children.link(rig)
    for name, lens in (("Rig B", 35.0), ("Rig A", 50.0)):
        camera = bpy.data.objects.new(name, bpy.data.cameras.new(name))
        camera.data.lens = lens
        rig.objects.link(camera)
    collection_rig = addon.job_inputs.camera_rig(scene, rig)
    bpy.data.objects["Rig A"].data.type = "ORTHO"
    orthographic = ""
    try:
        addon.job_inputs.camera_rig(scene, rig)
    except addon.job_inputs.InputError as error:
        orthographic = str(error)

    cube = bpy.data.objects["Cube"]
    cube.location = (2.0, 0.0, 0.0)
    bpy.context.view_layer.update()
    sent = addon.job_inputs.mesh_input(cube)
    corner_uvs = [tuple(loop.uv) for loop in cube.data.uv_layers.active.data]
    corner_positions = [tuple(cube.matrix_world @ cube.data.vertices[loop.vertex_index].co) for loop in cube.data.loops]
    return {
        "active": active, "from_cursor": from_cursor,
        "camera_matrix": [list(row) for row in bpy.data.objects["Camera"].matrix_world],
        "collection_names": [entry["name"] for entry in collection_rig], "orthographic": orthographic,
        "shapes": [list(sent.vertices.shape), list(sent.faces.shape), list(sent.uvs.shape)],
        "sent_corner_uvs": sent.uvs[sent.corner_vertex].tolist(), "corner_uvs": corner_uvs,
        "sent_corner_positions": sent.vertices[sent.corner_vertex].tolist(), "corner_positions": corner_positions,
    }


def test_camera_rig_and_mesh_inputs_are_read_from_the_scene(tmp_path):
    import numpy as np

    seen = run_in_blender(in_blender_scene_inputs, tmp_path / "user")
    (camera,) = seen["active"]
    assert camera["name"] == "Camera"
    np.testing.assert_allclose(camera["c2w"], seen["camera_matrix"], atol=1e-6)
    # The default camera: 50 mm lens on a 36 mm sensor, fitted to the width of a 1920x1080 frame.
    assert camera["fov_y_deg"] == pytest.approx(np.degrees(2 * np.arctan(18 / 50 * 1080 / 1920)), abs=1e-4)
    assert camera["aspect"] == pytest.approx(1920 / 1080)
    (shifted,) = seen["from_cursor"]  # generate's rig: relative to the cursor, where the prop will be
    np.testing.assert_allclose(np.array(shifted["c2w"])[:3, 3], np.array(camera["c2w"])[:3, 3] - [1, 2, 3], atol=1e-6)
    np.testing.assert_array_equal(np.array(shifted["c2w"])[:, :3], np.array(camera["c2w"])[:, :3])
    assert seen["collection_names"] == ["Rig A", "Rig B"]
    assert "Rig A" in seen["orthographic"] and "perspective" in seen["orthographic"]
    # The cube: 8 corners split along its UV seams into 14, 12 triangles, one UV per sent vertex.
    assert seen["shapes"] == [[14, 3], [12, 3], [14, 2]]
    np.testing.assert_allclose(seen["sent_corner_uvs"], seen["corner_uvs"], atol=1e-6)
    np.testing.assert_allclose(seen["sent_corner_positions"], seen["corner_positions"], atol=1e-6)


def in_blender_paint_and_sketch_results(addon):
    import bpy
    import numpy as np

    protocol, client = addon._vendor.protocol, addon._vendor.client
    png = protocol.encode_png(np.full((4, 4, 3), 200, np.uint8))
    cube = bpy.data.objects["Cube"]
    cube.location = (3.0, 0.0, 1.0)
    bpy.context.view_layer.update()
    local_before = [tuple(v.co) for v in cube.data.vertices]
    sent = addon.job_inputs.mesh_input(cube)
    painted_uvs = 1.0 - sent.uvs
    result = client.Result("0" * 32, sent.vertices, sent.faces, painted_uvs, png, png, b"")
    painted = addon.importer.place_result(bpy.context, "paint", "a stone cube", "Cube", result)
    base_color = painted.active_material.node_tree.nodes["Principled BSDF"].inputs["Base Color"]
    image = base_color.links[0].from_node.image

    def active_corner_uvs():
        return np.array([tuple(d.uv) for d in cube.data.uv_layers.active.data])

    paint = {
        "object": painted.name, "vertices": len(cube.data.vertices), "uv_maps": cube.data.uv_layers.keys(),
        "active_uv_map": cube.data.uv_layers.active.name, "image_packed": image.packed_file is not None,
        "corner_uvs_match": bool(np.allclose(active_corner_uvs(), painted_uvs[sent.corner_vertex], atol=1e-6)),
    }
    # A result whose every triangle corner is a vertex of its own (the engine splits vertices along
    # the seams of the UVs it makes); each carries the UV meant for the Blender loop behind it.
    triangle_loops = np.array([tuple(triangle.loops) for triangle in cube.data.loop_triangles])
    loop_uvs = np.stack([np.arange(len(cube.data.loops)) / 24, np.linspace(1, 0, len(cube.data.loops))], axis=1)
    split = client.Result("1" * 32, sent.vertices[sent.faces].reshape(-1, 3),
                          np.arange(triangle_loops.size, dtype=np.int32).reshape(-1, 3),
                          loop_uvs[triangle_loops].reshape(-1, 2).astype(np.float32), png, png, b"")
    addon.importer.place_result(bpy.context, "paint", "a stone cube", "Cube", split)
    paint["split_uvs_match"] = bool(np.allclose(active_corner_uvs(), loop_uvs, atol=1e-6))
    paint["geometry_kept"] = [tuple(v.co) for v in cube.data.vertices] == local_before
    # A result that cannot be this mesh's: two vertices of the cube merged into one.
    merged_faces = sent.faces.copy()
    merged_faces[merged_faces == sent.faces[0, 1]] = sent.faces[0, 0]
    merged = client.Result("2" * 32, sent.vertices, merged_faces, painted_uvs, png, png, b"")
    try:
        addon.importer.place_result(bpy.context, "paint", "a stone cube", "Cube", merged)
        paint["merged"] = "accepted"
    except addon.job_inputs.InputError as error:
        paint["merged"] = str(error)

    made = addon.importer.place_result(bpy.context, "sketch", "a rock", "Cube", result)
    bpy.context.view_layer.update()  # matrix_world follows the new location
    positions = np.array([tuple(made.matrix_world @ v.co) for v in made.data.vertices])
    sketch = {"object": made.name, "sketch_hidden": cube.hide_get(), "active": bpy.context.active_object.name,
              "location": list(made.location),
              "same_place": bool(np.allclose(np.unique(positions.round(5), axis=0),
                                             np.unique(sent.vertices.round(5), axis=0), atol=1e-5))}
    return {"paint": paint, "sketch": sketch}


def test_paint_and_sketch_results_go_into_the_scene_as_documented(tmp_path):
    """The import side of Texture Selected and Sketch from Selected, on results made here."""
    seen = run_in_blender(in_blender_paint_and_sketch_results, tmp_path / "user")
    merged = seen["paint"].pop("merged")
    assert seen["paint"] == {"object": "Cube", "vertices": 8, "uv_maps": ["UVMap", "Dreamsmith"],
                             "active_uv_map": "Dreamsmith", "image_packed": True, "corner_uvs_match": True,
                             "split_uvs_match": True, "geometry_kept": True}
    assert "the mesh of 'Cube' changed while the job ran" in merged
    # The new object's origin is the sketch's, and its vertices are where the sketch's were.
    assert seen["sketch"] == {"object": "a rock", "sketch_hidden": True, "active": "a rock",
                              "location": [3.0, 0.0, 1.0], "same_place": True}


# -- without a server


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def in_blender_job_without_server(addon, address):
    import time

    import bpy

    use_server(addon, address)
    set_job("a red cube")
    objects = sorted(bpy.data.objects.keys())
    started = time.monotonic()
    report = run_operator(bpy.ops.dreamsmith.generate, wait=True)
    failed_after = time.monotonic() - started
    unchanged = sorted(bpy.data.objects.keys()) == objects
    started = time.monotonic()
    bpy.ops.preferences.addon_disable(module=addon.__name__)
    return {"report": report, "failed_after": failed_after, "unchanged": unchanged,
            "unregister_s": time.monotonic() - started}


def test_without_a_server_the_operator_fails_fast_with_a_readable_report(tmp_path):
    address = f"tcp://127.0.0.1:{unused_port()}"
    seen = run_in_blender(in_blender_job_without_server, tmp_path / "user", address=address)
    assert seen["failed_after"] < 2.0
    # The Python client's own message, as from any other caller of it.
    assert (f"no Dreamsmith server answered at {address} within 1 s; start one with: python -m server --bind "
            f"{address}") in seen["report"]
    assert seen["unchanged"]
    assert seen["unregister_s"] < 1.5


def in_blender_register_twice(addon, address):
    import sys
    import threading
    import time

    import bpy

    module = addon.__name__
    bpy.ops.preferences.addon_disable(module=module)
    baseline = threading.active_count()
    rounds = []
    for _ in range(2):
        bpy.ops.preferences.addon_enable(module=module)
        addon = sys.modules[module]
        use_server(addon, address, timeout=30.0)
        current = addon.session.current()
        # A job whose thread waits on a server that never answers: unregistering must wake it.
        current.run(addon.transport.JobOrder("generate", params={"prompt": "a red cube"}), "a red cube")
        time.sleep(0.3)
        threads_running = threading.active_count()
        context = current.threads.context
        started = time.monotonic()
        bpy.ops.preferences.addon_disable(module=module)
        rounds.append({"threads_running": threads_running, "unregister_s": time.monotonic() - started,
                       "context_closed": context.closed, "threads_after": threading.active_count()})
    return {"baseline": baseline, "rounds": rounds}


def test_register_and_unregister_twice_leaves_no_threads_or_sockets(tmp_path):
    seen = run_in_blender(in_blender_register_twice, tmp_path / "user", address=f"tcp://127.0.0.1:{unused_port()}")
    for round_ in seen["rounds"]:
        assert round_["threads_running"] >= seen["baseline"] + 2  # the status monitor and the job
        assert round_["unregister_s"] < 1.5  # not the 30 s the job's request would wait
        assert round_["context_closed"]  # term() returned: every socket of the add-on was closed
        assert round_["threads_after"] == seen["baseline"]


# -- against a live server (server.pytest_plugin's fixtures, tiny test prior)


def in_blender_generate(addon, address, results_dir):
    from pathlib import Path

    import bpy
    import numpy as np
    from mathutils.kdtree import KDTree

    use_server(addon, address)
    set_job("a red cube")
    bpy.context.scene.cursor.location = (1.0, 2.0, 3.0)
    report = run_operator(bpy.ops.dreamsmith.generate, wait=True)
    obj = bpy.context.active_object
    job = addon.session.current().recent.records[0]
    stored = Path(results_dir) / job.job_id
    mesh = np.load(stored / "mesh.npz")

    corners = np.array([tuple(obj.matrix_world @ obj.data.vertices[loop.vertex_index].co)
                        for loop in obj.data.loops])
    served_corners = mesh["vertices"][mesh["faces"]].reshape(-1, 3) + np.array([1.0, 2.0, 3.0])

    # Blender's own glTF importer converts the stored GLB from glTF's Y-up on its own: where its
    # vertices land is where the engine's front (-Y) and up (+Z) are in Blender.
    ours = [obj.matrix_world @ v.co for v in obj.data.vertices]
    bpy.ops.import_scene.gltf(filepath=str(stored / "model.glb"))
    imported = next(o for o in bpy.context.selected_objects if o.type == "MESH")
    tree = KDTree(len(imported.data.vertices))
    for index, vertex in enumerate(imported.data.vertices):
        tree.insert(imported.matrix_world @ vertex.co, index)
    tree.balance()
    gltf_distance = max(tree.find(co - obj.location)[2] for co in ours)

    base_color = obj.active_material.node_tree.nodes["Principled BSDF"].inputs["Base Color"]
    texture = base_color.links[0].from_node if base_color.links else None
    current = addon.session.current()
    preview = current.user_dir / "preview.png"
    return {
        "preview_shown": addon.session.PREVIEW_KEY in current.previews and preview.exists()
        and preview.read_bytes().startswith(b"\x89PNG"),
        "report": report, "name": obj.name, "location": list(obj.location), "type": obj.type,
        "uv_maps": obj.data.uv_layers.keys(), "job_state": job.state,
        "texture_node": texture.bl_idname if texture else None,
        "image_packed": bool(texture and texture.image.packed_file is not None),
        "image_size": list(texture.image.size) if texture else None,
        "corners_match_server": bool(np.allclose(corners, served_corners, atol=1e-5)),
        "max_distance_to_gltf_import": gltf_distance, "job_id": job.job_id,
        "camera_matrix": [list(row) for row in bpy.data.objects["Camera"].matrix_world],
    }


def received_params(server, job_id: str) -> dict:
    """The params the server recorded for a job, read from its job table."""
    import sqlite3

    with sqlite3.connect(server.results_dir / "jobs.sqlite3") as table:
        (params,) = table.execute("SELECT params FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return json.loads(params)


def test_generate_adds_a_textured_object_at_the_cursor_facing_like_the_engine(dreamsmith_server, addon_zip,
                                                                                  tmp_path):
    import numpy as np

    seen = run_in_blender(in_blender_generate, tmp_path / "user", "zip", addon_zip, address=dreamsmith_server.address,
                          results_dir=str(dreamsmith_server.results_dir))
    assert seen["report"] == ""
    assert (seen["type"], seen["name"], seen["location"]) == ("MESH", "a red cube", [1.0, 2.0, 3.0])
    assert seen["uv_maps"] == ["Dreamsmith"] and seen["job_state"] == "imported"
    assert seen["texture_node"] == "ShaderNodeTexImage" and seen["image_packed"]
    assert seen["image_size"][0] >= 512
    assert seen["preview_shown"]  # the optimisation's preview pictures reached the panel's preview
    assert seen["corners_match_server"]  # the very arrays the server stored, placed at the cursor
    assert seen["max_distance_to_gltf_import"] < 1e-5
    # The scene camera went with the job, relative to the cursor (where the engine's origin goes).
    (camera,) = received_params(dreamsmith_server, seen["job_id"])["cameras"]
    expected = np.array(seen["camera_matrix"])
    expected[:3, 3] -= [1.0, 2.0, 3.0]
    assert camera["name"] == "Camera"
    np.testing.assert_allclose(camera["c2w"], expected, atol=1e-5)


def in_blender_cancel(addon, address):
    import time

    import bpy

    use_server(addon, address)
    current = addon.session.current()
    objects = sorted(bpy.data.objects.keys())
    # Background mode blocks in the operators, so the job is started the way the panel's button does.
    long_job = {"prompt": "a red cube", "preset": "draft", "steps": 20000, "grid_resolution": 24}
    current.run(addon.transport.JobOrder("generate", params=long_job), "a red cube")
    cancel_report, outcome, deadline = None, None, time.monotonic() + 120
    while outcome is None and time.monotonic() < deadline:
        time.sleep(0.1)
        if cancel_report is None and current.active.step > 0:  # running: the server has started it
            cancel_report = run_operator(bpy.ops.dreamsmith.cancel)
        outcome = current.drain()
    return {"cancel_report": cancel_report, "outcome": [outcome.succeeded, outcome.message] if outcome else None,
            "record": current.recent.records[0].state, "unchanged": sorted(bpy.data.objects.keys()) == objects}


def test_cancel_stops_a_running_job(dreamsmith_server, tmp_path):
    seen = run_in_blender(in_blender_cancel, tmp_path / "user", address=dreamsmith_server.address)
    assert seen["cancel_report"] == ""
    assert seen["outcome"] == [False, "Dreamsmith: cancelled by its client"]
    assert seen["record"] == "cancelled" and seen["unchanged"]


def in_blender_selected_mesh_job(addon, address, operator):
    import bpy
    import numpy as np

    use_server(addon, address)
    set_job("a blue cube")
    bpy.context.scene.dreamsmith.shaded_texture = operator == "texture_selected"
    select_only("Cube")
    cube = bpy.data.objects["Cube"]
    cube.location = (3.0, -1.0, 0.5)
    bpy.context.view_layer.update()
    cube_world = np.array([tuple(cube.matrix_world @ v.co) for v in cube.data.vertices])

    def scene_state():
        return {"objects": sorted(bpy.data.objects.keys()), "cube_uv_maps": cube.data.uv_layers.keys(),
                "cube_hidden": cube.hide_get(), "cube_vertices": [tuple(v.co) for v in cube.data.vertices],
                "cube_materials": [m.name for m in cube.data.materials]}

    before = scene_state()
    report = run_operator(getattr(bpy.ops.dreamsmith, operator), wait=True)
    after = scene_state()
    made = bpy.context.active_object
    bpy.context.view_layer.update()
    texture = None
    if made.active_material is not None:
        base_color = made.active_material.node_tree.nodes["Principled BSDF"].inputs["Base Color"]
        texture = base_color.links[0].from_node if base_color.links else None
    positions = np.array([tuple(made.matrix_world @ v.co) for v in made.data.vertices])
    return {
        "report": report, "before": before, "after": after, "made": made.name, "made_location": list(made.location),
        "made_centre": ((positions.min(axis=0) + positions.max(axis=0)) / 2).tolist(),
        "made_size": float(np.ptp(positions, axis=0).max()),
        "cube_centre": ((cube_world.min(axis=0) + cube_world.max(axis=0)) / 2).tolist(),
        "texture_node": texture.bl_idname if texture else None,
        "image_packed": bool(texture and texture.image.packed_file is not None),
        "active_uv_map": made.data.uv_layers.active.name if made.data.uv_layers.active else None,
        "job_id": addon.session.current().recent.records[0].job_id,
        "camera_matrix": [list(row) for row in bpy.data.objects["Camera"].matrix_world],
    }


@pytest.mark.parametrize("operator, kind", [("texture_selected", "paint"), ("sketch_selected", "sketch")])
def test_texture_and_sketch_selected_on_the_default_cube(operator, kind, dreamsmith_server, tmp_path):
    import numpy as np

    seen = run_in_blender(in_blender_selected_mesh_job, tmp_path / "user", address=dreamsmith_server.address,
                          operator=operator)
    before, after = seen["before"], seen["after"]
    assert seen["report"] == ""
    assert seen["texture_node"] == "ShaderNodeTexImage" and seen["image_packed"]
    assert seen["active_uv_map"] == "Dreamsmith"
    if kind == "paint":
        # The cube itself, its geometry untouched, with a new UV map and a new textured material.
        assert seen["made"] == "Cube" and after["objects"] == before["objects"]
        assert after["cube_vertices"] == before["cube_vertices"]
        assert after["cube_uv_maps"] == ["UVMap", "Dreamsmith"]
        assert after["cube_materials"] == ["Cube Dreamsmith"] != before["cube_materials"]
        assert not after["cube_hidden"]
    else:
        # A new object where the sketch was, about its size; the sketch is hidden, not changed.
        assert seen["made"] == "a blue cube" and after["objects"] == sorted(before["objects"] + ["a blue cube"])
        assert seen["made_location"] == pytest.approx([3.0, -1.0, 0.5])
        np.testing.assert_allclose(seen["made_centre"], seen["cube_centre"], atol=0.5)
        assert 1.0 < seen["made_size"] < 4.0  # the default cube is 2 m across
        assert after["cube_hidden"] and after["cube_vertices"] == before["cube_vertices"]
    # Paint and sketch work in world space: the scene camera is sent as it is.
    params = received_params(dreamsmith_server, seen["job_id"])
    (camera,) = params["cameras"]
    np.testing.assert_allclose(camera["c2w"], seen["camera_matrix"], atol=1e-5)
    # The panel's guidance is 0, the preset's: paint keeps its own scale rather than text-to-3D's 100.
    assert "guidance_scale" not in params
    # Shaded Texture (ticked for paint here) asks for the prior's shading; unticked, the server's default.
    assert params.get("albedo", True) is (kind != "paint")


def in_blender_prompt_words(addon, address):
    import bpy

    use_server(addon, address)
    set_job("a wooden cube")
    settings = bpy.context.scene.dreamsmith
    settings.strict_prompt = True
    strict_report = run_operator(bpy.ops.dreamsmith.generate, wait=True)
    settings.strict_prompt = False
    report = run_operator(bpy.ops.dreamsmith.generate, wait=True)
    return {"strict_report": strict_report, "report": report, "warnings": addon.session.current().warnings}


def test_strict_prompt_refuses_unknown_words_and_otherwise_the_panel_gets_the_servers_warning(dreamsmith_server,
                                                                                               tmp_path):
    seen = run_in_blender(in_blender_prompt_words, tmp_path / "user", address=dreamsmith_server.address)
    assert "the server refused: params.prompt: the prompt 'a wooden cube' has words" in seen["strict_report"]
    assert seen["report"] == ""
    (warning,) = seen["warnings"]
    assert ": wooden. It knows: a, an, of, red" in warning


def in_blender_generate_then_quit(addon, address):
    import bpy

    use_server(addon, address)
    set_job("a green sphere")
    bpy.context.scene.cursor.location = (1.0, 2.0, 3.0)
    report = run_operator(bpy.ops.dreamsmith.generate, wait=True)
    return {"report": report, "job_id": addon.session.current().recent.records[0].job_id}


def in_blender_reattach(addon, address, job_id):
    import bpy

    use_server(addon, address)
    records = [(r.job_id, r.label, r.state) for r in addon.session.current().recent.records]
    objects = sorted(bpy.data.objects.keys())
    report = run_operator(bpy.ops.dreamsmith.attach, job_id=job_id, wait=True)
    added = sorted(set(bpy.data.objects.keys()) - set(objects))
    return {"records": records, "report": report, "added": added,
            "location": [list(bpy.data.objects[name].location) for name in added]}


def test_a_job_can_be_fetched_again_after_blender_restarts(dreamsmith_server, tmp_path):
    user_dir = tmp_path / "user"  # the same Blender user folder for both sessions, as after a restart
    first = run_in_blender(in_blender_generate_then_quit, user_dir, address=dreamsmith_server.address)
    assert first["report"] == ""
    second = run_in_blender(in_blender_reattach, user_dir, address=dreamsmith_server.address, job_id=first["job_id"])
    assert second["records"] == [[first["job_id"], "a green sphere", "imported"]]
    assert second["report"] == "" and second["added"] == ["a green sphere"]
    assert second["location"] == [[1.0, 2.0, 3.0]]  # where the cursor was when it was sent, not where it is now
