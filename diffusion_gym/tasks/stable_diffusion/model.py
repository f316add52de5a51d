"""A local diffusers Stable Diffusion directory as a latent-space ScoreModel, its VAE and its text encoder.

Only local files are read (``local_files_only=True``): the directory is what
``StableDiffusionPipeline.save_pretrained`` writes (``unet/``, ``vae/``, ``scheduler/``, and
``tokenizer/`` + ``text_encoder/`` for text prompts). The UNet, VAE and scheduler need diffusers
alone; encoding text prompts needs ``transformers`` (``pip install transformers``) and is skipped
when prompt embeddings are passed instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from torch import Tensor, nn

from diffusion_gym.base_models.diffusers_unet import DiffusersScore, PromptEmbeddings
from diffusion_gym.sde import DiscreteVPSchedule
from diffusion_gym.tasks.stable_diffusion.directory import import_transformers, is_flow_pipeline, pipeline_name, require


@dataclass
class StableDiffusionParts:
    """What the env needs from a Stable Diffusion directory."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    schedule: DiscreteVPSchedule
    prediction_type: str
    latent_shape: tuple[int, int, int]


LAYOUT = (
    "a local Stable Diffusion directory as written by StableDiffusionPipeline.save_pretrained (with unet/, vae/ "
    "and scheduler/)"
)


def _require_dir(model_path: str | Path, sub: str) -> Path:
    return require(model_path, sub, LAYOUT)


def load_parts(model_path: str | Path, resolution: int | None = None) -> StableDiffusionParts:
    """The UNet, VAE and schedule of the directory, frozen, in eval mode.

    Args:
        model_path: the local pipeline directory.
        resolution: image side in pixels (default: the UNet's sample size times the VAE's factor).
    """
    if is_flow_pipeline(pipeline := pipeline_name(model_path)):
        raise ValueError(f"{model_path} is a {pipeline} directory (flow matching): use DiffusionSDE-FlowSD-v0")
    unet = UNet2DConditionModel.from_pretrained(_require_dir(model_path, "unet"), local_files_only=True)
    vae = AutoencoderKL.from_pretrained(_require_dir(model_path, "vae"), local_files_only=True)
    scheduler = DDPMScheduler.from_pretrained(_require_dir(model_path, "scheduler"), local_files_only=True)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    latent = unet.config.sample_size if resolution is None else resolution // factor
    if resolution is not None and resolution % factor:
        raise ValueError(f"resolution must be a multiple of the VAE's factor {factor}, got {resolution}")
    return StableDiffusionParts(
        unet.eval().requires_grad_(False),
        vae.eval().requires_grad_(False),
        DiscreteVPSchedule(scheduler.alphas_cumprod),
        scheduler.config.prediction_type,
        (unet.config.in_channels, latent, latent),
    )


@torch.no_grad()
def encode_prompts(model_path: str | Path, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
    """Text-encoder hidden states of each prompt (P, L, D) and of the empty prompt (L, D)."""
    transformers = import_transformers("encoding text prompts (or pass prompt_embeds and negative_prompt_embeds)")
    tokenizer = transformers.CLIPTokenizer.from_pretrained(_require_dir(model_path, "tokenizer"), local_files_only=True)
    text_encoder = _require_dir(model_path, "text_encoder")
    encoder = transformers.CLIPTextModel.from_pretrained(text_encoder, local_files_only=True).eval()
    tokens = tokenizer(
        [*prompts, ""],
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    hidden = encoder(tokens.input_ids)[0]
    return hidden[:-1], hidden[-1]


def stable_diffusion_score(
    parts: StableDiffusionParts, prompt_embeds: Tensor, null_embeds: Tensor | None, guidance_scale: float
) -> DiffusersScore:
    """The latent-space score; condition i is prompt i, guided towards it with classifier-free guidance."""
    return DiffusersScore(
        parts.unet,
        parts.schedule,
        prediction_type=parts.prediction_type,  # type: ignore[arg-type]
        conditioning=PromptEmbeddings(
            prompt_embeds.float().clone(), None if null_embeds is None else null_embeds.float().clone()
        ),
        guidance_scale=guidance_scale,
        event_shape=parts.latent_shape,
    )


class LatentDecoder(nn.Module):
    """Latents to images in [-1, 1] through the VAE, as the pipelines decode them:
    ``x = vae.decode(z / scaling_factor + shift_factor)`` (SD3's and FLUX's VAEs have a shift; SD's none)."""

    def __init__(self, vae: AutoencoderKL) -> None:
        super().__init__()
        self.vae = vae
        self.shift = float(getattr(vae.config, "shift_factor", None) or 0.0)

    def forward(self, latents: Tensor) -> Tensor:
        return self.vae.decode(latents / self.vae.config.scaling_factor + self.shift).sample.clamp(-1, 1)
