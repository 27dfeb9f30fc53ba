import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import trimesh

from engine import Cancelled, CancelToken, generate, write_outputs
from engine.colour import DecodedView, backproject, filled
from engine.config import parse_assignments
from engine.export import bake_texture, texel_surface_points
from engine.raster import render_textured
from engine.tasks import preset_config
from engine.tasks.common import run_steps
from engine.testing import cancel_when


def small_config(overrides: dict | None = None):
    return preset_config("generate", "draft", {"steps": 6, "field.grid_resolution": 24, "surface.mesh_resolution": 40,
                                               **(overrides or {})})


@pytest.mark.parametrize("prior_name", ["tiny", "tiny_v"])
def test_generate_end_to_end_writes_a_textured_glb(request, tmp_path, prior_name):
    prior = request.getfixturevalue(prior_name)
    # Flattening off: the colour check below is about back-projection; flattening has its own tests.
    result = generate("a red cube", prior, small_config({"colour.flatten.iterations": 0}))
    glb = write_outputs(result.mesh, tmp_path / "cube.glb")[0]
    loaded = trimesh.load(glb, force="mesh")
    assert len(loaded.faces) > 100
    assert loaded.visual.uv.shape == (len(loaded.vertices), 2)
    texture = loaded.visual.material.baseColorTexture
    assert min(texture.size) >= 512
    # The colour check: unshaded renders of the textured mesh reproduce the VAE's decoded views.
    assert result.colour_error < 0.1


@pytest.mark.parametrize("key, bad, allowed", [
    ("colour.delight", "false", "true, false or unset"), ("strict_prompt", 1, "true or false"),
    ("view_dependent_prompts", "yes", "true or false"), ("surface.carve_outline_only", None, "true or false")])
def test_a_bool_setting_given_anything_else_is_refused_in_one_line_naming_it(key, bad, allowed):
    # "false" as text would otherwise count as true: the light divided out against the user's word.
    with pytest.raises(ValueError, match=f"^{re.escape(key)} must be {allowed}, got {re.escape(repr(bad))}$"):
        preset_config("generate", "draft", {key: bad})
    assert preset_config("generate", "draft", {"colour.delight": None}).colour.delight is None


def test_an_unset_optional_setting_is_read_from_text_as_its_declared_type():
    config = preset_config("generate", "draft")  # colour.delight is None: the prior's metadata decides
    assert parse_assignments(config, ["colour.delight=false", "steps=3"]) == {"colour.delight": False, "steps": 3}
    assert parse_assignments(config, ["colour.delight=none"]) == {"colour.delight": None}
    with pytest.raises(ValueError, match=r"^colour\.delight: cannot read 'maybe' as bool$"):
        parse_assignments(config, ["colour.delight=maybe"])


def test_same_seed_same_asset(tiny):
    first = generate("a blue sphere", tiny, small_config({"seed": 3}))
    second = generate("a blue sphere", tiny, small_config({"seed": 3}))
    other = generate("a blue sphere", tiny, small_config({"seed": 4}))
    assert np.array_equal(first.mesh.vertices, second.mesh.vertices)
    assert np.array_equal(first.mesh.texture, second.mesh.texture)
    assert not np.array_equal(first.mesh.texture, other.mesh.texture)


def test_progress_reports_every_step_with_previews_and_cancel_stops_within_a_step(tiny):
    events = []
    generate("a red cube", tiny, small_config({"steps": 5}), on_progress=events.append)
    steps = [e.step for e in events if e.phase == "optimise"]
    assert steps == [1, 2, 3, 4, 5] and all(e.total == 5 for e in events if e.phase == "optimise")
    assert any(e.preview is not None and e.preview.ndim == 3 for e in events)

    token, seen, cancel_at_three = cancel_when(lambda event: event.step == 3)
    with pytest.raises(Cancelled):
        generate("a red cube", tiny, small_config({"steps": 50}), on_progress=cancel_at_three, cancel=token)
    assert [event.step for event in seen] == [1, 2, 3]


def test_on_a_gpu_the_loss_is_read_only_with_a_preview_so_steps_do_not_wait_for_the_device(tiny):
    class DeviceLoss:  # stands for a 0-dim CUDA tensor: float() is a host sync
        device = SimpleNamespace(type="cuda")
        reads = 0

        def __float__(self):
            DeviceLoss.reads += 1
            return 1.0

    latents = torch.zeros(4, tiny.metadata.latent_size, tiny.metadata.latent_size)
    events = []
    run_steps(lambda index: (latents, DeviceLoss()), 40, tiny, events.append, CancelToken(), preview_every=10)
    assert DeviceLoss.reads == 5  # steps 1, 11, 21, 31 and the last
    assert [e.step for e in events if e.loss is not None] == [e.step for e in events if e.preview is not None]


def test_empty_prompt_is_refused(tiny):
    with pytest.raises(ValueError, match="empty"):
        generate("  ", tiny, small_config())


def test_backprojection_recovers_the_colours_the_views_show():
    """Render a two-coloured sphere from a ring of views, back-project, compare with the truth."""
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.4)
    vertices, faces = sphere.vertices.astype(np.float32), sphere.faces.astype(np.int32)
    from engine.cameras import orbit_camera
    from engine.export import unwrap

    vertices, faces, uvs = unwrap(vertices, faces, 512)

    def truth(points, normals):
        return np.where(points[:, :1] > 0, [[0.8, 0.1, 0.1]], [[0.1, 0.25, 0.85]])

    texture = bake_texture(vertices, faces, uvs, truth, size=512)
    views = []
    for azimuth in range(0, 360, 45):
        camera = orbit_camera(azimuth, 20.0, 2.2, 40.0)
        image, alpha = render_textured(vertices, faces, uvs, texture, camera, 64, 64, shading=False)
        views.append(DecodedView(camera, image, alpha))
    _, _, points, normals, _ = texel_surface_points(vertices, faces, uvs, 256)
    colours, seen = backproject(points, normals, vertices, faces, views, depth_tolerance=0.03)
    colours = filled(points, colours, seen)
    away_from_seam = np.abs(points[:, 0]) > 0.08
    assert seen.mean() > 0.8
    assert np.abs(colours[away_from_seam] - truth(points, normals)[away_from_seam]).mean() < 0.05


def test_cancel_after_the_mesh_stage_stops_before_the_colour_stage_ends(tiny):
    token, seen, cancel_on_mesh = cancel_when(lambda event: event.phase == "mesh")
    with pytest.raises(Cancelled):
        generate("a red cube", tiny, small_config({"steps": 3}), on_progress=cancel_on_mesh, cancel=token)
    phases = [event.phase for event in seen]
    assert "mesh" in phases and "colour" not in phases


def test_the_sd_presets_whole_pipeline_runs_on_64x64_latents_with_an_8x_vae():
    """The stages a Stable Diffusion checkpoint gets, at SD's latent and image sizes, on a tiny random
    stand-in: a few steps, fewer colour views, a small texture, a coarse lattice (its views are
    noise, whose hull on the preset's 128^3 lattice is a sponge of a million faces) and a short
    outline fit (noise views send the surface stage to the field's density)."""
    from engine.prior import Prior
    from engine.testing import tiny_components, tiny_metadata

    sd_like = Prior(*tiny_components(latent_size=64, vae_scale=8), metadata=tiny_metadata(64, 8))
    preset = preset_config("generate", "sd")
    assert (preset.field.grid_resolution, preset.surface.mesh_resolution, preset.surface.method) == (64, 128, "hull")
    config = preset_config("generate", "sd", {"steps": 2, "colour.view_azimuths": 2, "colour.texture_size": 512,
                                              "surface.mesh_resolution": 40, "surface.silhouette_fit_steps": 16})
    events = []
    result = generate("a red cube", sd_like, config, on_progress=events.append)
    assert result.preview.shape == (512, 512, 3)
    assert result.mesh.texture.shape == (512, 512, 3) and len(result.mesh.faces) > 100
    assert [e.phase for e in events][-2:] == ["mesh", "colour"]


@pytest.mark.parametrize("method, elevations", [("hull", [0.0, 15.0, 30.0, 45.0]),
                                                ("density", [5.62, 16.88, 28.12, 39.38])])
def test_a_hull_is_cut_from_views_at_the_ends_of_the_priors_elevation_range(tiny, method, elevations):
    from engine.tasks.latent_field import FieldOptimisation, colour_views

    config = small_config({"surface.method": method, "colour.view_rings": 4})
    run = FieldOptimisation("a red cube", tiny, config, torch.Generator().manual_seed(0))
    views = colour_views(run, CancelToken())
    assert sorted({round(view.camera.elevation_deg, 2) for view in views}) == elevations  # tiny's range: 0-45
