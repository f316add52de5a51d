"""``DiffusionSDE-SD-v0`` and ``DiffusionSDE-FlowSD-v0``: the latent reverse SDE of a local diffusers
directory, Stable Diffusion 1.x/2.x (a UNet on a VP schedule) or the flow family (SD3 / SD3.5 and
FLUX.1: a transformer predicting the rectified-flow velocity, sampled by the flow SDE).

The state is the latent (4, H/8, W/8 for SD; 16, H/8, W/8 for SD3 and FLUX, which the env holds
image-shaped and FLUX's transformer sees packed); the condition is a prompt index into the env's
prompt set, encoded once when the env is built (or given as embeddings, which needs no tokenizer);
the VAE decodes the final latent for the terminal reward. Rewards: JPEG compressibility (the
default, no weights) or incompressibility, an aesthetic, PickScore or ImageReward scorer from local
weights (:mod:`diffusion_gym.tasks.stable_diffusion.scorers`), or any RewardModel of decoded images
in [-1, 1].
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from diffusion_gym.rewards.composite import DecodedReward
from diffusion_gym.rewards.protocol import RewardModel
from diffusion_gym.tasks.stable_diffusion import FLOW_TASK, TASK
from diffusion_gym.tasks.stable_diffusion.directory import has_text_encoders
from diffusion_gym.tasks.stable_diffusion.flow_model import (
    MAX_SEQUENCE_LENGTH,
    classifier_free,
    flow_velocity_model,
    load_flow_parts,
    pipeline_defaults,
    pipeline_family,
)
from diffusion_gym.tasks.stable_diffusion.flow_model import (
    encode_prompts as encode_flow_prompts,
)
from diffusion_gym.tasks.stable_diffusion.model import (
    LatentDecoder,
    encode_prompts,
    load_parts,
    stable_diffusion_score,
)
from diffusion_gym.tasks.stable_diffusion.scorers import image_reward
from diffusion_gym.validation import PositiveInt, validated


@validated
def task_models(
    model_path: str | Path | None = None,
    prompts: Sequence[str] | None = None,
    prompt: str | Sequence[str] | None = None,
    prompt_embeds: Tensor | None = None,
    negative_prompt_embeds: Tensor | None = None,
    guidance_scale: float = 7.5,
    reward: str | RewardModel = "jpeg_compressibility",
    gold: str | RewardModel | None = None,
    reward_kwargs: dict[str, Any] | None = None,
    gold_kwargs: dict[str, Any] | None = None,
    resolution: PositiveInt | None = None,
) -> tuple[Any, RewardModel, RewardModel | None]:
    """(latent score model, terminal reward, gold) of a local Stable Diffusion directory.

    Args:
        model_path: the pipeline directory (``StableDiffusionPipeline.save_pretrained``).
        prompts: the prompt set (text; needs the directory's tokenizer and text encoder).
        prompt: the same, spelled as diffusers pipelines do: one prompt (a string) or several (a list or
            tuple); give ``prompt`` or ``prompts``, not both.
        prompt_embeds: or the prompts' text-encoder hidden states, (P, L, D).
        negative_prompt_embeds: the unconditional embedding (L, D) for guidance; default: the empty
            prompt's, encoded by the directory's text encoder (required when it has none and
            ``guidance_scale != 1``).
        guidance_scale: classifier-free guidance weight.
        reward: a scorer name (``jpeg_compressibility``, ``jpeg_incompressibility``, ``aesthetic``,
            ``pickscore``, ``imagereward``) or a RewardModel of images in [-1, 1].
        gold: likewise, reported in ``info["gold_reward"]`` (default: none).
        reward_kwargs: keyword arguments of the reward's scorer (local weight paths).
        gold_kwargs: likewise for the gold's scorer.
        resolution: image side in pixels (default: the UNet's native size).

    Raises:
        ValueError: no model_path, both ``prompt`` and ``prompts``, or neither text nor embeddings.
    """
    if model_path is None:
        raise ValueError("DiffusionSDE-SD-v0 needs model_path=<a local Stable Diffusion directory>")
    prompts = _prompt_list(prompt, prompts)
    parts = load_parts(model_path, resolution)
    if prompt_embeds is None:
        if not prompts:
            raise ValueError("pass prompts (text) or prompt_embeds (P, L, D)")
        prompt_embeds, null = encode_prompts(model_path, list(prompts))
    else:
        prompt_embeds = torch.as_tensor(prompt_embeds)
        if prompt_embeds.ndim == 2:
            prompt_embeds = prompt_embeds[None]
        if prompts is not None and len(prompts) != prompt_embeds.shape[0]:
            raise ValueError(f"{len(prompts)} prompts but {prompt_embeds.shape[0]} prompt embeddings")
        null = None
    if negative_prompt_embeds is not None:
        null = torch.as_tensor(negative_prompt_embeds)
    elif null is None:
        if has_text_encoders(model_path):
            null = encode_prompts(model_path, [])[1]
        elif guidance_scale != 1.0:
            raise ValueError(
                "classifier-free guidance needs the unconditional embedding: pass negative_prompt_embeds (the "
                "empty prompt's), or use a directory with tokenizer/ and text_encoder/, or guidance_scale=1"
            )
    score = stable_diffusion_score(parts, prompt_embeds, null, guidance_scale)
    return score, *_decoded_rewards(LatentDecoder(parts.vae), prompts, reward, reward_kwargs, gold, gold_kwargs)


def _prompt_list(prompt: str | Sequence[str] | None, prompts: Sequence[str] | None) -> list[str] | None:
    """The prompt set from ``prompt`` (diffusers' spelling: one string or several) or ``prompts``."""
    if prompt is None:
        return None if prompts is None else list(prompts)
    if prompts is not None:
        raise ValueError("pass prompt (diffusers' spelling) or prompts, not both")
    return [prompt] if isinstance(prompt, str) else list(prompt)


def _decoded_rewards(
    decoder: LatentDecoder,
    prompts: Sequence[str] | None,
    reward: str | RewardModel,
    reward_kwargs: dict[str, Any] | None,
    gold: str | RewardModel | None,
    gold_kwargs: dict[str, Any] | None,
) -> tuple[RewardModel, RewardModel | None]:
    """The terminal reward and the gold, each a scorer of the VAE-decoded image."""

    def build(spec: str | RewardModel, kwargs: dict[str, Any] | None) -> RewardModel:
        scorer = image_reward(spec, prompts, **(kwargs or {})) if isinstance(spec, str) else spec
        return DecodedReward(decoder, scorer)

    return build(reward, reward_kwargs), None if gold is None else build(gold, gold_kwargs)


@validated
def flow_task_models(
    model_path: str | Path | None = None,
    prompts: Sequence[str] | None = None,
    prompt: str | Sequence[str] | None = None,
    negative_prompt: str | None = None,
    prompt_embeds: Tensor | None = None,
    pooled_prompt_embeds: Tensor | None = None,
    negative_prompt_embeds: Tensor | None = None,
    negative_pooled_prompt_embeds: Tensor | None = None,
    guidance_scale: float | None = None,
    max_sequence_length: PositiveInt | None = None,
    reward: str | RewardModel = "jpeg_compressibility",
    gold: str | RewardModel | None = None,
    reward_kwargs: dict[str, Any] | None = None,
    gold_kwargs: dict[str, Any] | None = None,
    resolution: PositiveInt | None = None,
) -> tuple[Any, RewardModel, RewardModel | None]:
    """(latent velocity model, terminal reward, gold) of a local SD3 / SD3.5 or FLUX.1 directory.

    Args:
        model_path: the pipeline directory (``StableDiffusion3Pipeline`` / ``FluxPipeline.save_pretrained``).
        prompts: the prompt set (text; needs the directory's tokenizers and text encoders).
        prompt: the same, spelled as diffusers pipelines do (one string or several); not with ``prompts``.
        negative_prompt: SD3: the prompt guidance steers away from (default: the empty prompt).
        prompt_embeds: or the prompts' token embeddings (P, L, D) as the pipeline's ``encode_prompt``
            returns them, with ``pooled_prompt_embeds`` (P, Dp).
        pooled_prompt_embeds: see ``prompt_embeds``.
        negative_prompt_embeds: SD3 with embeddings: the negative prompt's (L, D), with
            ``negative_pooled_prompt_embeds`` (Dp,); default: the empty prompt's, encoded by the
            directory's text encoders (required when it has none and ``guidance_scale != 1``).
        negative_pooled_prompt_embeds: see ``negative_prompt_embeds``.
        guidance_scale: SD3: the classifier-free guidance weight; FLUX.1-dev: the transformer's
            guidance input (no classifier-free guidance); default: the pipeline's (7.0 / 3.5).
        max_sequence_length: the T5 prompt length (default: the pipeline's, 256 / 512).
        reward, gold, reward_kwargs, gold_kwargs: as ``DiffusionSDE-SD-v0``'s: scorers of the decoded image.
        resolution: image side in pixels (default: the pipeline's).

    Raises:
        ValueError: no model_path, a directory of another pipeline, both ``prompt`` and ``prompts``,
            neither text nor embeddings, or a negative prompt for FLUX.
    """
    if model_path is None:
        raise ValueError("DiffusionSDE-FlowSD-v0 needs model_path=<a local SD3 or FLUX directory>")
    # Every check that needs no weights first: loading a transformer takes minutes at FLUX's size.
    prompts = _prompt_list(prompt, prompts)
    name, family = pipeline_family(model_path)
    sd3 = family == "sd3"
    negatives = (negative_prompt, negative_prompt_embeds, negative_pooled_prompt_embeds)
    if not sd3 and any(v is not None for v in negatives):
        raise ValueError(
            "this env guides FLUX by its guidance input only: FluxPipeline's true classifier-free guidance "
            "(negative_prompt with true_cfg_scale) is not supported; drop the negative prompt"
        )
    if (prompt_embeds is None) != (pooled_prompt_embeds is None):
        raise ValueError(
            "give prompt_embeds (P, L, D) and pooled_prompt_embeds (P, Dp) together, as the pipelines take"
        )
    if (negative_prompt_embeds is None) != (negative_pooled_prompt_embeds is None):
        raise ValueError("give negative_prompt_embeds (L, D) and negative_pooled_prompt_embeds (Dp,) together")
    if negative_prompt is not None and negative_prompt_embeds is not None:
        raise ValueError("pass negative_prompt (text) or negative_prompt_embeds, not both")
    if prompt_embeds is None and not prompts:
        raise ValueError("pass prompts (text) or prompt_embeds (P, L, D) with pooled_prompt_embeds (P, Dp)")
    if max_sequence_length is not None and max_sequence_length > MAX_SEQUENCE_LENGTH:
        raise ValueError(f"max_sequence_length must be <= {MAX_SEQUENCE_LENGTH} (the pipelines' T5 limit)")
    given = None
    if prompt_embeds is not None:
        given = _pair(prompt_embeds, pooled_prompt_embeds, 3, "prompt_embeds")
        if prompts is not None and len(prompts) != given[0].shape[0]:
            raise ValueError(f"{len(prompts)} prompts but {given[0].shape[0]} prompt embeddings")
    null = (
        None
        if negative_prompt_embeds is None
        else _pair(negative_prompt_embeds, negative_pooled_prompt_embeds, 2, "negative_prompt_embeds")
    )
    default_guidance, default_length = pipeline_defaults(name)
    scale = default_guidance if guidance_scale is None else float(guidance_scale)
    length = default_length if max_sequence_length is None else max_sequence_length
    guided = classifier_free(family, scale)
    if guided and given is not None and null is None and not has_text_encoders(model_path):
        raise ValueError(
            "classifier-free guidance needs the negative prompt's embeddings: pass negative_prompt_embeds and "
            "negative_pooled_prompt_embeds, or use a directory with its text encoders, or guidance_scale=1"
        )

    parts = load_flow_parts(model_path, resolution)
    if given is None:
        embeds, pooled, *encoded_null = encode_flow_prompts(model_path, parts, prompts, negative_prompt, length)
        null = null or (tuple(encoded_null) if guided else None)
    else:
        embeds, pooled = given
        if guided and null is None:
            null = tuple(encode_flow_prompts(model_path, parts, [""], negative_prompt, length)[2:])
    velocity = flow_velocity_model(parts, embeds, pooled, *(null or (None, None)), scale)
    return velocity, *_decoded_rewards(LatentDecoder(parts.vae), prompts, reward, reward_kwargs, gold, gold_kwargs)


def _pair(tokens: Tensor, pooled: Tensor, ndim: int, name: str) -> tuple[Tensor, Tensor]:
    """Token and pooled embeddings given as the pipelines give them: ``ndim`` dimensions for the tokens
    ((P, L, D) for prompts, (L, D) for the negative prompt; a leading batch of one is squeezed for
    the latter, one more is added for a single prompt's (L, D)), the pooled with one fewer."""
    tokens, pooled = torch.as_tensor(tokens), torch.as_tensor(pooled)
    if tokens.ndim == ndim + 1 and tokens.shape[0] == 1 and ndim == 2:
        tokens, pooled = tokens[0], pooled.reshape(pooled.shape[-1])
    if tokens.ndim == ndim - 1 and ndim == 3:
        tokens, pooled = tokens[None], pooled.reshape(1, -1)
    if tokens.ndim != ndim or pooled.ndim != ndim - 1:
        want = "(P, L, D) and (P, Dp)" if ndim == 3 else "(L, D) and (Dp,)"
        raise ValueError(
            f"{name} and its pooled embeddings must be {want}, got {tuple(tokens.shape)} and {tuple(pooled.shape)}"
        )
    return tokens, pooled


make_env = TASK.make_env
"""``gym.make("DiffusionSDE-SD-v0", model_path=..., prompts=[...], **kwargs)``."""
make_vector_env = TASK.make_vector_env
"""``gym.make_vec("DiffusionSDE-SD-v0", num_envs, vectorization_mode="vector_entry_point", model_path=..., ...)``."""
make_flow_env = FLOW_TASK.make_env
"""``gym.make("DiffusionSDE-FlowSD-v0", model_path=..., prompt="a cat", **kwargs)``."""
make_flow_vector_env = FLOW_TASK.make_vector_env
"""``gym.make_vec("DiffusionSDE-FlowSD-v0", num_envs, vectorization_mode="vector_entry_point", model_path=...)``."""
