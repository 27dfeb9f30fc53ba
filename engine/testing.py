"""A tiny, randomly initialised Stable-Diffusion-layout prior, built in memory.

For tests and for pipeline users who want to exercise the engine or the server in seconds without
any weights on disk. Its images are noise; what it proves is that the plumbing works.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
import trimesh

from .cameras import Camera, CameraConvention, orbit_camera
from .colour import DecodedView, albedo
from .prior import Prior, PriorMetadata
from .progress import CancelToken, Progress, ProgressCallback
from .raster import Lighting, render_silhouette

TINY_VOCABULARY = ["a", "an", "of", "red", "green", "blue", "yellow", "cube", "sphere", "chair", "house",
                   "front", "side", "back", "overhead", "view", ",", "photo", "ugly", "blurry"]


def tiny_tokenizer(max_length: int = 12):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]
    vocab = {token: i for i, token in enumerate(specials + TINY_VOCABULARY)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                     pre_tokenizers.Punctuation()])
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]",
                                   bos_token="[BOS]", eos_token="[EOS]", model_max_length=max_length)


def tiny_components(prediction_type: str = "epsilon", seed: int = 0, latent_size: int = 8, vae_scale: int = 2):
    """(unet, vae, text_encoder, tokenizer, scheduler): about 0.3M parameters in all.
    ``vae_scale``: how many image pixels a latent pixel covers (2, 4 or 8; Stable Diffusion's is 8)."""
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    # The weights come from ``seed`` alone, and the caller's global RNG is left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokenizer = tiny_tokenizer()
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
            num_attention_heads=2, max_position_embeddings=tokenizer.model_max_length,
            pad_token_id=0, bos_token_id=2, eos_token_id=3))
        # Above 16x16 latents the attention moves to the half-resolution block: over all 4096 pixels
        # of a 64x64 latent it would cost tens of seconds per test run on 2 cores.
        down, up = ("CrossAttnDownBlock2D", "DownBlock2D"), ("UpBlock2D", "CrossAttnUpBlock2D")
        if latent_size > 16:
            down, up = ("DownBlock2D", "CrossAttnDownBlock2D"), ("CrossAttnUpBlock2D", "UpBlock2D")
        unet = UNet2DConditionModel(
            sample_size=latent_size, in_channels=4, out_channels=4, layers_per_block=1,
            block_out_channels=(16, 32), down_block_types=down, up_block_types=up, cross_attention_dim=16,
            attention_head_dim=4, norm_num_groups=8)
        vae = tiny_vae(latent_size, vae_scale)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                              beta_end=0.012, prediction_type=prediction_type)
    return unet, vae, text_encoder, tokenizer, scheduler


def tiny_vae(latent_size: int = 8, vae_scale: int = 2):
    """A random ``AutoencoderKL`` with 4 latent channels whose decoder upsamples ``vae_scale`` times
    (2, 4 or 8; Stable Diffusion's is 8), with the caller's RNG. A few thousand parameters."""
    from diffusers import AutoencoderKL

    blocks = 1 + {2: 1, 4: 2, 8: 3}[vae_scale]  # each block after the first halves the image
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8,) * (blocks - 1) + (16,),
        down_block_types=("DownEncoderBlock2D",) * blocks, up_block_types=("UpDecoderBlock2D",) * blocks,
        layers_per_block=1, norm_num_groups=4, sample_size=latent_size * vae_scale)


def tiny_metadata(latent_size: int = 8, vae_scale: int = 2) -> PriorMetadata:
    return PriorMetadata(
        name="tiny-random", image_size=latent_size * vae_scale, latent_size=latent_size,
        camera=CameraConvention(distance=(2.0, 2.2), fov_y_deg=(40.0, 45.0), elevation_deg=(0.0, 45.0),
                                overhead_elevation_deg=40.0),
        scene_bound=0.75, background_rgb=(1.0, 1.0, 1.0))


def tiny_prior(prediction_type: str = "epsilon", seed: int = 0, device: str = "cpu") -> Prior:
    return Prior(*tiny_components(prediction_type, seed), metadata=tiny_metadata(), device=device)


def save_tiny_prior(folder, prediction_type: str = "epsilon", seed: int = 0, with_metadata: bool = True):
    """Write the tiny prior as a diffusers folder, so tests can take the on-disk loading path."""
    import json
    from pathlib import Path

    from .prior import METADATA_FILE

    folder = Path(folder)
    unet, vae, text_encoder, tokenizer, scheduler = tiny_components(prediction_type, seed)
    for name, part in (("unet", unet), ("vae", vae), ("text_encoder", text_encoder),
                       ("tokenizer", tokenizer), ("scheduler", scheduler)):
        part.save_pretrained(folder / name)
    if with_metadata:
        (folder / METADATA_FILE).write_text(json.dumps(tiny_metadata().to_dict(), indent=2))
    return folder


def cancel_when(condition: Callable[[Progress], bool]) -> tuple[CancelToken, list[Progress], ProgressCallback]:
    """A cancel token, the progress events seen, and an ``on_progress`` that records each event and
    cancels once ``condition(event)`` holds: for checking that a job stops where it should."""
    token, events = CancelToken(), []

    def on_progress(event: Progress) -> None:
        events.append(event)
        if condition(event):
            token.cancel()

    return token, events, on_progress


def tilted_box() -> trimesh.Trimesh:
    """A 0.6 x 0.5 x 0.7 box centred on the origin and turned off every axis: flat faces and sharp
    edges that no lattice axis lines up with, for tests of the surface stages."""
    box = trimesh.creation.box(extents=(0.6, 0.5, 0.7))
    box.apply_transform(trimesh.transformations.euler_matrix(0.35, 0.25, 0.5))
    return box


def silhouette_views(mesh: trimesh.Trimesh, cameras: Sequence[Camera], size: int = 64) -> list[DecodedView]:
    """Decoded views as a prior that draws ``mesh`` exactly would give them: a red object
    on a white ground, with the mesh's exact coverage as each view's opacity."""
    views = []
    for camera in cameras:
        cover = render_silhouette(np.asarray(mesh.vertices), np.asarray(mesh.faces), camera, size, size, ssaa=4)
        image = np.ones((size, size, 3)) - cover[..., None] * np.array([0.2, 0.9, 0.9])
        views.append(DecodedView(camera, image, cover))
    return views


def ring_views(mesh: trimesh.Trimesh, elevations: Sequence[float] = (6.25, 18.75, 31.25, 43.75),
               azimuths: int = 8) -> list[DecodedView]:
    """``silhouette_views`` from rings of cameras at distance 2.2 (field of view 40 degrees)."""
    cameras = [orbit_camera(360.0 * k / azimuths, elevation, 2.2, 40.0)
               for elevation in elevations for k in range(azimuths)]
    return silhouette_views(mesh, cameras)


def albedo_texels_mismatch(shaded: np.ndarray, delit: np.ndarray, normals: np.ndarray, lighting: Lighting,
                           min_divided: float = 0.7) -> str | None:
    """What is wrong, if anything, with ``delit`` as the albedo of ``shaded`` (both (N, 3) uint8
    texels with unit ``normals`` (N, 3)): most texels must be their shaded colour with ``lighting``
    divided out, within 8-bit rounding; the rest (seen at grazing angles or not at all) must have
    copied the albedo of one of those. None when it holds."""
    expected = albedo(shaded / 255.0, normals, lighting)
    divided = np.abs(delit / 255.0 - expected).max(axis=1) < 4 / 255  # 8-bit rounding, over a shade of 0.4
    if divided.mean() < min_divided:
        return f"only {divided.mean():.1%} of the texels are their shaded colour divided by the light"
    copied = set(map(tuple, delit[divided]))
    strays = sum(tuple(texel) not in copied for texel in delit[~divided])
    return f"{strays} texels neither divided nor copied from a divided one" if strays else None
