import shutil

import huggingface_hub.constants
import pytest

from engine.prior import PriorError, load_prior
from engine.testing import save_tiny_prior


def test_folder_loads_with_its_metadata(tiny_folder):
    prior = load_prior(tiny_folder)
    assert prior.prediction_type == "epsilon"
    assert prior.dtype.is_floating_point and str(prior.dtype) == "torch.float32"  # fp32 on the CPU
    assert prior.metadata.name == "tiny-random" and prior.metadata.camera.distance == (2.0, 2.2)
    assert prior.latent_channels == 4


def test_v_prediction_folder_without_metadata_gets_literature_defaults(tmp_path):
    folder = save_tiny_prior(tmp_path / "v", prediction_type="v_prediction", with_metadata=False)
    prior = load_prior(folder)
    assert prior.prediction_type == "v_prediction"
    camera = prior.metadata.camera
    assert camera.distance == (1.5, 2.0) and camera.fov_y_deg == (40.0, 70.0)
    assert camera.elevation_deg == (-10.0, 45.0)
    assert prior.metadata.latent_size == 8  # from the U-Net's sample size
    assert prior.metadata.image_size == 16  # latents times the VAE's downsampling


def test_hugging_face_cache_id_loads_offline(tmp_path, monkeypatch):
    snapshot = tmp_path / "models--someone--tiny-sd" / "snapshots" / "0123abcd"
    save_tiny_prior(snapshot)
    (tmp_path / "models--someone--tiny-sd" / "refs").mkdir()
    (tmp_path / "models--someone--tiny-sd" / "refs" / "main").write_text("0123abcd")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    assert load_prior("someone/tiny-sd").metadata.name == "tiny-random"


def test_uncached_hub_id_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(PriorError, match="not in the local Hugging Face cache.*--model"):
        load_prior("runwayml/stable-diffusion-v1-5")


def test_missing_path_names_the_path(tmp_path):
    with pytest.raises(PriorError, match=f"no model at {tmp_path / 'nowhere'}.*--model"):
        load_prior(tmp_path / "nowhere")


def test_missing_component_is_named(tmp_path, tiny_folder):
    broken = shutil.copytree(tiny_folder, tmp_path / "no-unet")
    shutil.rmtree(broken / "unet")
    with pytest.raises(PriorError, match=r"missing unet/"):
        load_prior(broken)


def test_corrupt_weights_are_a_one_line_error(tmp_path, tiny_folder):
    broken = shutil.copytree(tiny_folder, tmp_path / "corrupt")
    weights = next((broken / "unet").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(PriorError) as error:
        load_prior(broken)
    message = str(error.value)
    assert "could not load the prior" in message and str(broken) in message and "\n" not in message


@pytest.mark.parametrize("lighting, problem", [
    ({"direction": [0, 0, 0], "ambient": 0.4, "diffuse": 0.6}, "direction"),
    ({"direction": [0.4, -0.6, "x"], "ambient": 0.4, "diffuse": 0.6}, "could not convert|direction"),
    ({"direction": [0.4, -0.6, 0.7], "ambient": 0.0, "diffuse": 0.6}, "ambient > 0"),
    ({"direction": [0.4, -0.6, 0.7], "diffuse": 0.6}, "ambient"),
])
def test_bad_lighting_in_the_metadata_is_one_clear_error(tmp_path, lighting, problem):
    import json

    folder = save_tiny_prior(tmp_path / "lit")
    meta_file = folder / "dreamsmith_prior.json"
    meta_file.write_text(json.dumps({**json.loads(meta_file.read_text()), "lighting": lighting}))
    with pytest.raises(PriorError, match=f"dreamsmith_prior.json is not valid prior metadata: .*({problem})"):
        load_prior(folder)
