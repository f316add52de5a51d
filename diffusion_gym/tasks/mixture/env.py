"""``DiffusionSDE-Mixture-v0``: the D-dimensional Gaussian-mixture task (exact score, learned proxy, closed-form
gold)."""

from __future__ import annotations

from typing import Annotated, Literal

from diffusion_gym.base_models.gaussian_mixture import GaussianMixtureScore
from diffusion_gym.rewards.protocol import RewardModel
from diffusion_gym.sde import RectifiedFlowSchedule
from diffusion_gym.tasks.mixture import TASK
from diffusion_gym.tasks.mixture.model import mixture
from diffusion_gym.tasks.mixture.rewards import SHIPPED_DIMS, GaussianBumpsUtility, gold_utility, load_proxy
from diffusion_gym.validation import PositiveFloat, Range, validated


@validated
def task_models(
    dim: Annotated[int, Range(ge=2)] = 8, reward: Literal["proxy", "gold"] = "proxy"
) -> tuple[GaussianMixtureScore, RewardModel, GaussianBumpsUtility]:
    """The task's (base model, terminal reward, gold utility) in ``dim`` dimensions.

    Args:
        dim: the dimension D, an integer >= 2; the proxy ships for :data:`~.rewards.SHIPPED_DIMS`.
        reward: ``"proxy"`` (the shipped Bradley-Terry proxy) or ``"gold"`` (train on the gold utility,
            any ``dim >= 2``).

    Raises:
        ValueError: ``dim`` is not an integer >= 2, ``reward`` is neither, or no proxy ships for ``dim``.
    """
    if reward == "proxy" and dim not in SHIPPED_DIMS:
        raise ValueError(
            f"no proxy ships for dim={dim}; shipped dims: {list(SHIPPED_DIMS)} (reward='gold' works for any dim >= 2)"
        )
    gold = gold_utility(dim)
    return mixture(dim), (load_proxy(dim) if reward == "proxy" else gold_utility(dim)), gold


@validated
def flow_task_models(
    dim: Annotated[int, Range(ge=2)] = 8, reward: Literal["proxy", "gold"] = "proxy", shift: PositiveFloat = 1.0
) -> tuple[GaussianMixtureScore, RewardModel, GaussianBumpsUtility]:
    """The flow task's (base model, terminal reward, gold utility): :func:`task_models`' with the mixture's
    exact velocity on the rectified-flow path of time shift ``shift`` (diffusers' static shift).

    Raises:
        ValueError: as :func:`task_models`, or ``shift`` is not a finite number > 0.
    """
    _, terminal_reward, gold = task_models(dim, reward)
    return mixture(dim, RectifiedFlowSchedule(shift), "velocity"), terminal_reward, gold


make_env = TASK.make_env
"""``gym.make("DiffusionSDE-Mixture-v0", **kwargs)``: ``dim``, ``reward`` as :func:`task_models`, the rest the env's."""
make_vector_env = TASK.make_vector_env
"""``gym.make_vec("DiffusionSDE-Mixture-v0", num_envs, vectorization_mode="vector_entry_point", **kwargs)``."""
