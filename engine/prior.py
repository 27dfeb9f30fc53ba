"""Loading a frozen text-to-image latent diffusion prior, and the two things the engine asks of it:
a classifier-free-guided noise prediction, and decoding latents to RGB.

Every checkpoint takes the same path: the embedded Primitive World prior, a user's Stable Diffusion
folder, a Hugging Face cache id, or components built in memory (tests) all end up in ``Prior``.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable

import torch

from .cameras import CameraConvention
from .raster import Lighting

log = logging.getLogger(__name__)

METADATA_FILE = "dreamsmith_prior.json"
DEFAULT_PRIOR_DIR = Path(__file__).resolve().parent / "priors" / "primitive-world"
COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
# A word, or one punctuation mark, as a word-level tokenizer splits a prompt.
WORD = re.compile(r"\w+")
WORD_OR_MARK = re.compile(r"\w+|[^\w\s]")
HOW_TO_OBTAIN = (
    "Pass --model with a diffusers Stable Diffusion folder (unet/, vae/, text_encoder/, tokenizer/, "
    "scheduler/), or the id of a model already in the Hugging Face cache (download it on a machine "
    "with network access with `huggingface-cli download <id>`); the embedded prior is rebuilt with "
    "`python -m primitive_world.train --seed 0 --out engine/priors/primitive-world`."
)


# (model_in (B, C, h, w), timesteps (B,), text (B, tokens, dim)) -> the U-Net's output (B, C, h, w), float32.
UNetForward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class PriorError(RuntimeError):
    """A prior that cannot be found or loaded; the message is meant for the user as is."""


@dataclass(frozen=True)
class PriorMetadata:
    """How the prior's training images were made. Optional file; literature defaults otherwise."""

    name: str = "unknown"
    image_size: int = 512
    latent_size: int = 64
    camera: CameraConvention = field(default_factory=CameraConvention)
    view_prompt: str = "{prompt}, {view} view"
    scene_bound: float = 1.0
    background_rgb: tuple[float, float, float] | None = None
    # The light the training images were shaded with, when it is one known light (Primitive World);
    # text-to-3D then divides it out of the texture. None (photographs): the texture keeps it.
    lighting: Lighting | None = None

    @classmethod
    def from_dict(cls, data: dict, name: str = "unknown") -> "PriorMetadata":
        defaults = cls()
        background = data.get("background_rgb")
        return cls(
            name=str(data.get("name", name)),
            image_size=int(data.get("image_size", defaults.image_size)),
            latent_size=int(data.get("latent_size", defaults.latent_size)),
            camera=CameraConvention.from_dict(data.get("camera", {})),
            view_prompt=str(data.get("view_prompt", defaults.view_prompt)),
            scene_bound=float(data.get("scene_bound", defaults.scene_bound)),
            background_rgb=tuple(float(c) for c in background) if background else None,
            lighting=Lighting.from_dict(data["lighting"]) if data.get("lighting") else None,
        )

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "image_size": self.image_size,
            "latent_size": self.latent_size,
            "camera": self.camera.to_dict(),
            "view_prompt": self.view_prompt,
            "scene_bound": self.scene_bound,
            "background_rgb": list(self.background_rgb) if self.background_rgb else None,
            "lighting": self.lighting.to_dict() if self.lighting else None,
        }


def default_dtype(device: torch.device) -> torch.dtype:
    return torch.float16 if device.type == "cuda" else torch.float32


def _frozen(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    first = next(module.parameters())
    if first.device != device or first.dtype != dtype:  # from_pretrained usually placed it already
        module = module.to(device, dtype)
    return module.eval().requires_grad_(False)


class PromptReader:
    """A prior's tokenizer and what it says about prompts: all that checking a prompt needs, so a
    process that only checks them (the Ray backend's front) loads no network."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    @property
    def max_prompt_tokens(self) -> int:
        return int(self.tokenizer.model_max_length)

    @cached_property
    def vocabulary(self) -> tuple[str, ...] | None:
        """The tokens a word-level tokenizer with an unknown token knows (its special tokens left
        out), in id order; None for any other tokenizer. Stable Diffusion's byte-level BPE spells
        out every word, so only a word-level one (the embedded prior's) can lose a word to [UNK]."""
        from tokenizers.models import WordLevel

        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if not isinstance(getattr(backend, "model", None), WordLevel) or self.tokenizer.unk_token is None:
            return None
        special = set(self.tokenizer.all_special_tokens)
        vocab = self.tokenizer.get_vocab()
        return tuple(token for token in sorted(vocab, key=vocab.get) if token not in special)

    @cached_property
    def _known_tokens(self) -> frozenset[str]:
        return frozenset(self.vocabulary or ())

    def normalise_prompt(self, text: str) -> str:
        """``text`` as the tokenizer should see it. For a word-level tokenizer: words in lower case
        (unless the vocabulary has them as written) and punctuation it does not know dropped, so
        "A big red cube." reads "a big red cube"; any other tokenizer gets ``text`` unchanged.

        Args:
            text: a prompt, or a prompt with its view suffix.
        """
        if self.vocabulary is None:
            return text
        known = self._known_tokens
        pieces = (piece if piece in known else piece.lower() for piece in WORD_OR_MARK.findall(text))
        return " ".join(piece for piece in pieces if piece in known or WORD.fullmatch(piece))

    def unknown_words(self, text: str) -> list[str]:
        """The words of ``text`` (normalised) the tokenizer reads as its unknown token, each once, in
        order; always empty when ``vocabulary`` is None.

        Args:
            text: a prompt as the user wrote it.
        """
        if self.vocabulary is None:
            return []
        known = self._known_tokens
        return list(dict.fromkeys(word for word in self.normalise_prompt(text).split() if word not in known))

    def prompt_token_count(self, prompt: str) -> int:
        return len(self.tokenizer(self.normalise_prompt(prompt), truncation=False).input_ids)


class Prior(PromptReader):
    """A frozen latent diffusion model: U-Net, VAE, text encoder, tokenizer and noise schedule."""

    def __init__(self, unet, vae, text_encoder, tokenizer, scheduler, metadata: PriorMetadata,
                 device: str | torch.device = "cpu", dtype: torch.dtype | None = None, cuda_graphs: bool = False):
        self.device = torch.device(device)
        self.dtype = dtype or default_dtype(self.device)
        self.unet, self.vae, self.text_encoder = (
            _frozen(module, self.device, self.dtype) for module in (unet, vae, text_encoder))
        if self.device.type == "cuda":
            # cuDNN's fp16 convolutions run channels-last; NCHW weights cost a layout conversion per call.
            self.unet = self.unet.to(memory_format=torch.channels_last)
            if cuda_graphs:
                from .cuda_graphs import GraphedUNet

                self.unet = GraphedUNet(self.unet)
        elif cuda_graphs:
            raise PriorError("CUDA graphs need a CUDA device")
        super().__init__(tokenizer)
        self.scheduler = scheduler
        self.metadata = metadata
        self.prediction_type = scheduler.config.get("prediction_type", "epsilon")
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise PriorError(f"unsupported prediction_type {self.prediction_type!r} in the scheduler config; "
                             "expected 'epsilon' or 'v_prediction'")
        self.alphas_cumprod = scheduler.alphas_cumprod.to(self.device, torch.float32)
        self.num_train_timesteps = int(scheduler.config.num_train_timesteps)
        self.latent_channels = int(vae.config.latent_channels)
        self.scaling_factor = float(getattr(vae.config, "scaling_factor", 0.18215))
        self._embedding_cache: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Text embeddings, encoded exactly as diffusers' StableDiffusionPipeline does (after
        ``normalise_prompt``, which changes nothing for its tokenizer), and cached."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self._embedding_cache]
        if missing:
            ids = self.tokenizer([self.normalise_prompt(p) for p in missing], padding="max_length",
                                 max_length=self.max_prompt_tokens, truncation=True,
                                 return_tensors="pt").input_ids.to(self.device)
            embeddings = self.text_encoder(ids)[0]
            self._embedding_cache.update(zip(missing, embeddings))
        return torch.stack([self._embedding_cache[p] for p in prompts])

    # ---------------------------------------------------------------- noise
    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha_bar = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        return alpha_bar.sqrt() * latents + (1 - alpha_bar).sqrt() * noise

    @torch.no_grad()
    def unet_forward(self, model_in: torch.Tensor, timesteps: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """The U-Net's raw output as float32: the one network call every noise prediction makes, and
        the one ``engine.batching`` gathers across jobs.

        Args:
            model_in: noisy latents (B, C, h, w) in the prior's dtype and on its device.
            timesteps: one timestep per row (B,).
            text: one text embedding per row (B, tokens, dim) in the prior's dtype.
        """
        return self.unet(model_in, timesteps, encoder_hidden_states=text).sample.float()

    @torch.no_grad()
    def predict_noise(self, noisy_latents: torch.Tensor, t: torch.Tensor, cond: torch.Tensor,
                      uncond: torch.Tensor, guidance_scale: float, negative: torch.Tensor | None = None,
                      negative_weight: float = 0.0, forward: UNetForward | None = None) -> torch.Tensor:
        """Classifier-free guided noise estimate, in epsilon form whatever the model predicts.

        Guidance form (Ho & Salimans, as in diffusers): eps = eps_u + s * (eps_c - eps_u).
        With a ``negative`` prompt embedding and a positive ``negative_weight``, Perp-Neg
        (Armandpour et al. 2023): eps = eps_u + s * (d_c - w * perp(d_n, d_c)), d_x = eps_x - eps_u,
        where perp keeps the part of d_n orthogonal to d_c. Only what the negative prompt says and
        the positive one does not is pushed away ("front view" from a back view: the door), not
        what they share (the object). All prompts run as one batch.

        ``forward``: what runs the U-Net (``unet_forward``'s signature) when not this prior itself:
        ``engine.batching`` passes one that shares a forward with other jobs.
        """
        batch = noisy_latents.shape[0]
        texts = [uncond, cond] + ([negative] if negative is not None and negative_weight > 0 else [])
        copies = len(texts)
        model_in = noisy_latents.repeat(copies, 1, 1, 1).to(self.dtype)
        timesteps = t.to(self.device).repeat(copies)
        out = (forward or self.unet_forward)(model_in, timesteps, torch.cat(texts).to(self.dtype))
        if self.prediction_type == "v_prediction":
            alpha_bar = self.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
            out = alpha_bar.sqrt() * out + (1 - alpha_bar).sqrt() * model_in.float()
        eps_uncond, eps_cond = out[:batch], out[batch:2 * batch]
        direction = eps_cond - eps_uncond
        if copies == 3:
            away = out[2 * batch:] - eps_uncond
            along = (away * direction).sum(dim=(1, 2, 3), keepdim=True) \
                / direction.pow(2).sum(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12)
            direction = direction - negative_weight * (away - along * direction)
        return eps_uncond + guidance_scale * direction

    # ------------------------------------------------------------------ VAE
    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (B, C, h, w) -> RGB images (B, 3, H, W) in [0, 1]."""
        images = self.vae.decode(latents.to(self.dtype) / self.scaling_factor).sample.float()
        return ((images + 1) / 2).clamp(0, 1)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """RGB images (B, 3, H, W) in [0, 1] -> latents (B, C, h, w), the distribution's mean."""
        posterior = self.vae.encode((images * 2 - 1).to(self.device, self.dtype)).latent_dist
        return posterior.mean.float() * self.scaling_factor


# ---------------------------------------------------------------------- loading
def _resolve(model: str | os.PathLike | None) -> Path:
    if model is None:
        if (DEFAULT_PRIOR_DIR / "unet").is_dir():
            return DEFAULT_PRIOR_DIR
        raise PriorError(f"the embedded prior is missing: expected a diffusers folder at {DEFAULT_PRIOR_DIR}. "
                         + HOW_TO_OBTAIN)
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise PriorError(f"{path} is a file; expected a diffusers folder. " + HOW_TO_OBTAIN)
        return path
    if str(model).count("/") == 1 and not str(model).startswith((".", "/", "~")):
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(str(model), local_files_only=True))
        except Exception as error:  # the hub library raises several kinds for "not cached"
            raise PriorError(f"{model!r} is not in the local Hugging Face cache ({type(error).__name__}). "
                             + HOW_TO_OBTAIN) from None
    raise PriorError(f"no model at {path}: expected a diffusers folder or a cached Hugging Face id. "
                     + HOW_TO_OBTAIN)


def _check_layout(path: Path) -> None:
    missing = [name for name in COMPONENTS if not (path / name).is_dir()]
    if missing:
        raise PriorError(f"{path} is not a Stable Diffusion diffusers folder: missing {', '.join(missing)}/. "
                         + HOW_TO_OBTAIN)
    for name in ("unet", "vae", "text_encoder"):
        weights = [f for f in (path / name).iterdir() if f.suffix in (".safetensors", ".bin")]
        if not weights:
            raise PriorError(f"{path / name} has no weights (*.safetensors or *.bin). " + HOW_TO_OBTAIN)


def read_metadata(path: Path, latent_size: int | None = None, image_size: int | None = None) -> PriorMetadata:
    meta_file = path / METADATA_FILE
    if meta_file.is_file():
        try:
            return PriorMetadata.from_dict(json.loads(meta_file.read_text()), name=path.name)
        except (ValueError, TypeError, KeyError) as error:
            raise PriorError(f"{meta_file} is not valid prior metadata: {error}") from None
    log.info("%s has no %s; using the literature camera defaults", path, METADATA_FILE)
    if latent_size and image_size:
        return PriorMetadata(name=path.name, latent_size=latent_size, image_size=image_size)
    return PriorMetadata(name=path.name)


def _load_tokenizer(path: Path):
    from transformers import AutoTokenizer
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    return AutoTokenizer.from_pretrained(path / "tokenizer", local_files_only=True)


def load_prompt_reader(model: str | os.PathLike | None = None) -> PromptReader:
    """Load only a prior's tokenizer, to check prompts without the networks' memory (gigabytes for a
    Stable Diffusion checkpoint); nothing is downloaded.

    Args:
        model: as for ``load_prior``.

    Raises:
        PriorError: no model at ``model``, or no usable tokenizer in it.
    """
    path = _resolve(model)
    if not (path / "tokenizer").is_dir():
        raise PriorError(f"{path} is not a Stable Diffusion diffusers folder: missing tokenizer/. " + HOW_TO_OBTAIN)
    try:
        return PromptReader(_load_tokenizer(path))
    except Exception as error:
        raise PriorError(f"could not load the tokenizer at {path / 'tokenizer'}: {_first_line(error)}. "
                         + HOW_TO_OBTAIN) from None


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def load_prior(model: str | os.PathLike | None = None, device: str | torch.device = "cpu",
               dtype: torch.dtype | None = None, cuda_graphs: bool = False) -> Prior:
    """Load a prior from disk; nothing is downloaded.

    Args:
        model: a diffusers Stable Diffusion folder (unet/, vae/, text_encoder/, tokenizer/,
            scheduler/, optionally ``dreamsmith_prior.json``), the id of a model already in the
            local Hugging Face cache, or None for the embedded Primitive World prior.
        device: where the networks run ("cpu" or "cuda").
        dtype: the networks' dtype; fp16 on CUDA and fp32 on the CPU when None.
        cuda_graphs: replay the U-Net's forward from captured CUDA graphs (``engine.cuda_graphs``),
            one per input shape; CUDA only.

    Raises:
        PriorError: no usable model at ``model`` (the message says how to get one).
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from diffusers.utils import logging as diffusers_logging
    from transformers import CLIPTextModel
    from transformers.utils import logging as transformers_logging

    path = _resolve(model)
    _check_layout(path)
    device = torch.device(device)
    dtype = dtype or default_dtype(device)
    for library_logging in (diffusers_logging, transformers_logging):
        library_logging.set_verbosity_error()
        library_logging.disable_progress_bar()
    try:
        unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", torch_dtype=dtype,
                                                    local_files_only=True)
        vae = AutoencoderKL.from_pretrained(path, subfolder="vae", torch_dtype=dtype, local_files_only=True)
        text_encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder", torch_dtype=dtype,
                                                     local_files_only=True)
        tokenizer = _load_tokenizer(path)
        scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler", local_files_only=True)
    except Exception as error:
        raise PriorError(f"could not load the prior at {path}: {_first_line(error)}. Its weights look broken or "
                         f"incomplete. " + HOW_TO_OBTAIN) from None
    sample_size = unet.config.sample_size
    latent_size = sample_size if isinstance(sample_size, int) else None
    vae_factor = 2 ** (len(vae.config.block_out_channels) - 1)
    metadata = read_metadata(path, latent_size, latent_size and latent_size * vae_factor)
    log.info("loaded prior %s from %s (%s, %s, %s)", metadata.name, path, device, dtype,
             scheduler.config.get("prediction_type", "epsilon"))
    return Prior(unet, vae, text_encoder, tokenizer, scheduler, metadata, device=device, dtype=dtype,
                 cuda_graphs=cuda_graphs)
