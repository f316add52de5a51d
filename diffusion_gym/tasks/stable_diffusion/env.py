"""``DiffusionSDE-SD-v0``: the latent reverse SDE of a local Stable Diffusion directory.

The state is the latent (4, H/8, W/8 for SD); the condition is a prompt index into the env's prompt
set, encoded once when the env is built (or given as embeddings, which needs no tokenizer); the VAE
decodes the final latent for the terminal reward. Rewards: JPEG compressibility (the default, no
weights) or incompressibility, an aesthetic, PickScore or ImageReward scorer from local weights
(:mod:`diffusion_gym.tasks.stable_diffusion.scorers`), or any RewardModel of decoded images in [-1, 1].
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from diffusion_gym.rewards.composite import DecodedReward
from diffusion_gym.rewards.protocol import RewardModel
from diffusion_gym.tasks.stable_diffusion import TASK
from diffusion_gym.tasks.stable_diffusion.model import (
    LatentDecoder,
    encode_prompts,
    has_text_encoder,
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
    if prompt is not None:
        if prompts is not None:
            raise ValueError("pass prompt (diffusers' spelling) or prompts, not both")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
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
        if has_text_encoder(model_path):
            null = encode_prompts(model_path, [])[1]
        elif guidance_scale != 1.0:
            raise ValueError(
                "classifier-free guidance needs the unconditional embedding: pass negative_prompt_embeds (the "
                "empty prompt's), or use a directory with tokenizer/ and text_encoder/, or guidance_scale=1"
            )
        else:
            null = torch.zeros_like(prompt_embeds[0])  # never used without guidance
    score = stable_diffusion_score(parts, prompt_embeds, null, guidance_scale)
    decoder = LatentDecoder(parts.vae)

    def build(spec: str | RewardModel, kwargs: dict[str, Any] | None) -> RewardModel:
        scorer = image_reward(spec, prompts, **(kwargs or {})) if isinstance(spec, str) else spec
        return DecodedReward(decoder, scorer)

    return score, build(reward, reward_kwargs), None if gold is None else build(gold, gold_kwargs)


make_env = TASK.make_env
"""``gym.make("DiffusionSDE-SD-v0", model_path=..., prompts=[...], **kwargs)``."""
make_vector_env = TASK.make_vector_env
"""``gym.make_vec("DiffusionSDE-SD-v0", num_envs, vectorization_mode="vector_entry_point", model_path=..., ...)``."""
