"""A local diffusers directory of the flow family (SD3 / SD3.5, FLUX.1) as a latent velocity model.

Only local files are read (``local_files_only=True``): the directory is what
``StableDiffusion3Pipeline.save_pretrained`` or ``FluxPipeline.save_pretrained`` writes
(``transformer/``, ``vae/``, ``scheduler/``, and the tokenizers and text encoders for text prompts;
``model_index.json`` names the pipeline). The scheduler is ``FlowMatchEulerDiscreteScheduler``; its
time shift, static (``shift``) or resolution-dependent (``use_dynamic_shifting``: ``mu`` from the
image's token count, as the pipelines compute it), becomes the
:class:`~diffusion_gym.sde.RectifiedFlowSchedule`'s ``shift``. Prompts are encoded by the pipeline's
own ``encode_prompt``; the text encoders are dropped once they have.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from diffusion_gym.base_models.diffusers_transformer import PackedFluxTransformer, PooledPromptEmbeddings
from diffusion_gym.base_models.diffusers_unet import DiffusersVelocity
from diffusion_gym.sde import RectifiedFlowSchedule
from diffusion_gym.tasks.stable_diffusion.directory import import_transformers, is_flow_pipeline, pipeline_name, require

Family = Literal["sd3", "flux"]
PIPELINES: dict[str, Family] = {"StableDiffusion3Pipeline": "sd3", "FluxPipeline": "flux"}
"""The diffusers pipelines whose directories this module reads, and their family."""
UNSUPPORTED_SCHEDULER_OPTIONS = (
    "invert_sigmas",
    "shift_terminal",
    "use_karras_sigmas",
    "use_exponential_sigmas",
    "use_beta_sigmas",
    "stochastic_sampling",
)
"""``FlowMatchEulerDiscreteScheduler`` options that change its sigmas or its step beyond the shift:
refused rather than silently ignored."""
MAX_SEQUENCE_LENGTH = 512
"""The longest T5 prompt the SD3 and FLUX pipelines take (their ``check_inputs``)."""


@dataclass
class FlowPipelineParts:
    """What the env needs from a flow-family directory.

    Attributes:
        pipeline: the pipeline class ``model_index.json`` names.
        family: "sd3" (classifier-free guidance, a null prompt) or "flux" (guidance embedded, or none).
        transformer: the diffusion transformer, frozen, in eval mode.
        vae: its autoencoder, frozen, in eval mode.
        schedule: the rectified-flow path with the scheduler's shift at this resolution.
        latent_shape: one latent's (C, H, W).
        resolution: the image side in pixels.
        timestep_scale: the scheduler's ``num_train_timesteps``: the network sees ``sigma`` times it.
    """

    pipeline: str
    family: Family
    transformer: nn.Module
    vae: nn.Module
    schedule: RectifiedFlowSchedule
    latent_shape: tuple[int, int, int]
    resolution: int
    timestep_scale: float


LAYOUT = (
    "a local SD3 or FLUX directory as written by StableDiffusion3Pipeline / FluxPipeline.save_pretrained "
    "(model_index.json, transformer/, vae/, scheduler/)"
)


def _require(model_path: str | Path, sub: str) -> Path:
    return require(model_path, sub, LAYOUT)


def pipeline_family(model_path: str | Path) -> tuple[str, Family]:
    """The directory's pipeline class name (``model_index.json``) and its family; another pipeline is
    refused, naming the env that takes it."""
    _require(model_path, "model_index.json")
    name = pipeline_name(model_path) or ""
    if name not in PIPELINES:
        if is_flow_pipeline(name):
            hint = f": only the text-to-image pipelines {sorted(PIPELINES)} are read"
        elif name == "StableDiffusionPipeline":
            hint = ": a Stable Diffusion 1.x/2.x directory, DiffusionSDE-SD-v0 takes it"
        else:
            hint = f"; expected one of {sorted(PIPELINES)}"
        raise ValueError(f"{model_path}: pipeline {name!r} is not of the flow family{hint}")
    return name, PIPELINES[name]


def scheduler_shift(config: Any, image_seq_len: int) -> float:
    """The time shift ``FlowMatchEulerDiscreteScheduler`` applies to a unit-interval grid: ``shift``, or
    with dynamic shifting ``exp(mu)`` ("exponential") / ``mu`` ("linear"), ``mu`` linear in the image's
    token count between ``(base_image_seq_len, base_shift)`` and ``(max_image_seq_len, max_shift)``
    (the pipelines' ``calculate_shift``). Both forms are ``shift s / (1 + (shift - 1) s)``."""
    for option in UNSUPPORTED_SCHEDULER_OPTIONS:
        if config.get(option, False):
            raise ValueError(f"scheduler option {option}={config[option]!r} is not supported (only the time shift is)")
    if not config.get("use_dynamic_shifting", False):
        return float(config.get("shift", 1.0))
    base_len, max_len = config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096)
    base_shift, max_shift = config.get("base_shift", 0.5), config.get("max_shift", 1.15)
    slope = (max_shift - base_shift) / (max_len - base_len)
    mu = image_seq_len * slope + (base_shift - slope * base_len)
    kind = config.get("time_shift_type", "exponential")
    if kind not in ("exponential", "linear"):
        raise ValueError(f"scheduler time_shift_type {kind!r}: expected 'exponential' or 'linear'")
    return math.exp(mu) if kind == "exponential" else float(mu)


def load_flow_parts(model_path: str | Path, resolution: int | None = None) -> FlowPipelineParts:
    """The transformer, VAE and schedule of an SD3 or FLUX directory, frozen, in eval mode.

    Args:
        model_path: the local pipeline directory.
        resolution: image side in pixels (default: the pipeline's, ``sample_size`` x the VAE's factor
            for SD3, 128 x it for FLUX).
    """
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel, SD3Transformer2DModel

    name, family = pipeline_family(model_path)
    config = _require(model_path, "scheduler/scheduler_config.json")
    if (kind := json.loads(config.read_text()).get("_class_name")) != "FlowMatchEulerDiscreteScheduler":
        raise ValueError(f"{config}: scheduler {kind!r}; expected FlowMatchEulerDiscreteScheduler")
    network_cls = SD3Transformer2DModel if family == "sd3" else FluxTransformer2DModel
    transformer = network_cls.from_pretrained(_require(model_path, "transformer"), local_files_only=True)
    vae = AutoencoderKL.from_pretrained(_require(model_path, "vae"), local_files_only=True)
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(
        _require(model_path, "scheduler"), local_files_only=True
    )
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    # FLUX packs 2x2 latent patches (sides a multiple of 2 factor); SD3 patches by its patch size.
    multiple = factor * (2 if family == "flux" else transformer.config.patch_size)
    native = transformer.config.sample_size * factor if family == "sd3" else 128 * factor
    resolution = native if resolution is None else int(resolution)
    if resolution % multiple:
        raise ValueError(f"resolution must be a multiple of {multiple} for this {family} model, got {resolution}")
    side = resolution // factor
    channels = transformer.config.in_channels // (4 if family == "flux" else 1)
    patch = 2 if family == "flux" else transformer.config.patch_size
    shift = scheduler_shift(scheduler.config, (side // patch) ** 2)
    return FlowPipelineParts(
        name,
        family,
        transformer.eval().requires_grad_(False),
        vae.eval().requires_grad_(False),
        RectifiedFlowSchedule(shift),
        (channels, side, side),
        resolution,
        float(scheduler.config.num_train_timesteps),
    )


def _pipeline_class(name: str) -> type:
    import diffusers

    return getattr(diffusers, name)


def pipeline_defaults(name: str) -> tuple[float, int]:
    """The pipeline's own defaults of ``guidance_scale`` and ``max_sequence_length`` (SD3: 7.0, 256;
    FLUX: 3.5, 512), read from its ``__call__``."""
    call = inspect.signature(_pipeline_class(name).__call__).parameters
    return float(call["guidance_scale"].default), int(call["max_sequence_length"].default)


@torch.no_grad()
def encode_prompts(
    model_path: str | Path,
    parts: FlowPipelineParts,
    prompts: Sequence[str],
    negative_prompt: str | None,
    max_sequence_length: int,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """The pipeline's ``encode_prompt`` of each prompt: token embeddings (P, L, D), pooled (P, Dp), and
    for SD3 the negative prompt's pair (L, D), (Dp,) (the empty prompt by default; FLUX: None)."""
    import_transformers("encoding text prompts (or pass prompt_embeds and pooled_prompt_embeds)")
    pipe = _pipeline_class(parts.pipeline).from_pretrained(
        model_path, transformer=parts.transformer, vae=parts.vae, local_files_only=True
    )
    if parts.family == "sd3":
        embeds, null, pooled, null_pooled = pipe.encode_prompt(
            prompt=list(prompts),
            prompt_2=None,
            prompt_3=None,
            do_classifier_free_guidance=True,
            negative_prompt=negative_prompt or "",
            max_sequence_length=max_sequence_length,
        )
        return embeds, pooled, null[0], null_pooled[0]
    embeds, pooled, _ = pipe.encode_prompt(prompt=list(prompts), prompt_2=None, max_sequence_length=max_sequence_length)
    return embeds, pooled, None, None


def classifier_free(family: Family, guidance_scale: float) -> bool:
    """Whether the pipeline mixes in a null prompt's prediction: SD3 above 1 (its
    ``do_classifier_free_guidance``), FLUX never (its guidance is an input of the transformer)."""
    return family == "sd3" and guidance_scale > 1.0


def flow_velocity_model(
    parts: FlowPipelineParts,
    prompt_embeds: Tensor,
    pooled_embeds: Tensor,
    null_embeds: Tensor | None,
    null_pooled: Tensor | None,
    guidance_scale: float,
) -> DiffusersVelocity:
    """The latent velocity; condition i is prompt i. SD3: classifier-free guidance at
    ``guidance_scale`` (towards prompt i, away from the negative prompt), as its pipeline only above 1
    (at or below 1 the conditional model alone). FLUX: the scale is the transformer's guidance input
    where it has one (FLUX.1-dev; FLUX.1-schnell ignores it, as its pipeline does), no
    classifier-free guidance."""

    def table(t: Tensor | None) -> Tensor | None:  # the model's own buffer: no graph, its caller's precision
        return None if t is None else t.detach().clone()

    conditioning = PooledPromptEmbeddings(*map(table, (prompt_embeds, pooled_embeds, null_embeds, null_pooled)))
    if parts.family == "sd3":
        network, cfg = parts.transformer, guidance_scale if classifier_free("sd3", guidance_scale) else 1.0
    else:
        network, cfg = PackedFluxTransformer(parts.transformer, guidance_scale), 1.0
    return DiffusersVelocity(
        network, parts.schedule, conditioning, cfg, timestep_scale=parts.timestep_scale, event_shape=parts.latent_shape
    )
