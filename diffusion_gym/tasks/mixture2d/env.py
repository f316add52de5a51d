"""``DiffusionSDE-v0``: the 2-D Gaussian-mixture task (exact score, learned proxy, closed-form gold)."""

from __future__ import annotations

from typing import Literal

from diffusion_gym.base_models.gaussian_mixture import GaussianMixtureScore
from diffusion_gym.rewards.protocol import RewardModel
from diffusion_gym.tasks.mixture2d import TASK
from diffusion_gym.tasks.mixture2d.model import mixture_2d
from diffusion_gym.tasks.mixture2d.rewards import GaussianBumpUtility, gold_utility, load_proxy
from diffusion_gym.validation import validated


@validated
def task_models(
    reward: Literal["proxy", "gold"] = "proxy",
) -> tuple[GaussianMixtureScore, RewardModel, GaussianBumpUtility]:
    """The task's (base model, terminal reward, gold utility). ``reward="gold"`` trains on the gold."""
    gold = gold_utility()
    return mixture_2d(), (load_proxy() if reward == "proxy" else gold_utility()), gold


make_env = TASK.make_env
"""``gym.make("DiffusionSDE-v0", **kwargs)``: ``reward=`` as :func:`task_models`, the rest as the env's."""
make_vector_env = TASK.make_vector_env
"""``gym.make_vec("DiffusionSDE-v0", num_envs, vectorization_mode="vector_entry_point", **kwargs)``."""
