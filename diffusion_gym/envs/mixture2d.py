"""``DiffusionSDE-v0``: the 2-D Gaussian-mixture task (exact score, learned proxy, closed-form gold)."""

from __future__ import annotations

from typing import Any, Literal

from diffusion_gym.base_models.gaussian_mixture import GaussianMixtureScore, mixture_2d
from diffusion_gym.envs.single import DiffusionSDEEnv
from diffusion_gym.envs.vector import DiffusionSDEVectorEnv
from diffusion_gym.rewards.mixture2d import GaussianBumpUtility, gold_utility, load_proxy
from diffusion_gym.rewards.protocol import RewardModel


def task_models(
    reward: Literal["proxy", "gold"] = "proxy",
) -> tuple[GaussianMixtureScore, RewardModel, GaussianBumpUtility]:
    """The task's (base model, terminal reward, gold utility). ``reward="gold"`` trains on the gold."""
    if reward not in ("proxy", "gold"):
        raise ValueError(f"reward must be 'proxy' or 'gold', got {reward!r}")
    gold = gold_utility()
    return mixture_2d(), (load_proxy() if reward == "proxy" else gold_utility()), gold


def make_env(reward: Literal["proxy", "gold"] = "proxy", **kwargs: Any) -> DiffusionSDEEnv:
    """Entry point of ``gym.make("DiffusionSDE-v0", **kwargs)``; kwargs as :class:`DiffusionSDEVectorEnv`."""
    return DiffusionSDEEnv(*task_models(reward), **kwargs)


def make_vector_env(num_envs: int, reward: Literal["proxy", "gold"] = "proxy", **kwargs: Any) -> DiffusionSDEVectorEnv:
    """Entry point of ``gym.make_vec("DiffusionSDE-v0", num_envs, vectorization_mode="vector_entry_point")``."""
    return DiffusionSDEVectorEnv(num_envs, *task_models(reward), **kwargs)
