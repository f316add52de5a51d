"""The value networks ``V(t, x, c)`` of the field agents, by name (their configs' ``critic``), in a
registry like the policies' (:mod:`agents.common.policies`).

    register_critic("mine", lambda env, config: MyValue(env.event_shape, env.T))
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from agents.common.networks import DenoisedRewardCritic, FieldMLP
from agents.common.policies import Builder, pick
from agents.common.trajectories import Trajectories
from diffusion_gym.envs.vector import DiffusionSDEVectorEnv

if TYPE_CHECKING:
    from agents.common.agent import AgentConfig

CRITICS: dict[str, Builder] = {}
"""The value networks a config's ``critic`` names."""


def register_critic(name: str, builder: Builder) -> None:
    """Make ``builder`` the value network ``critic=name``."""
    CRITICS[name] = builder


def make_critic(env: DiffusionSDEVectorEnv, config: AgentConfig, name: str) -> nn.Module:
    """The value network ``name`` names, on the env's device and dtype.

    Raises:
        ValueError: no critic of that name is registered.
    """
    return pick(CRITICS, name, "critic")(env, config).to(env.device, env.dtype)


def trajectory_values(critic: nn.Module, env: DiffusionSDEVectorEnv, traj: Trajectories) -> Tensor:
    """``V(t_k, Y_k)`` for k = 0..N, with ``V(t_N) = 0`` (no reward after the last step), (N + 1, B)."""
    inputs = traj.step_inputs(env)
    if isinstance(critic, DenoisedRewardCritic):
        if traj.denoised_reward is None:  # the reward is frozen: once per batch, not per minibatch
            denoised = critic.denoised_reward(traj.denoised(env), inputs[2])
            traj.denoised_reward = denoised.view(traj.n_steps, traj.batch)
        inputs = (*inputs, traj.denoised_reward.flatten())
    v = critic(*inputs).view(traj.n_steps, traj.batch)
    return torch.cat([v, torch.zeros_like(v[:1])])


def _mlp(env: DiffusionSDEVectorEnv, config: AgentConfig) -> nn.Module:
    return FieldMLP(env.event_shape, env.T, env.num_conditions, config.hidden, scalar=True, zero_init=False)


def _reward(env: DiffusionSDEVectorEnv, config: AgentConfig) -> nn.Module:
    return DenoisedRewardCritic(env.reward_model, env.event_shape, env.T, env.num_conditions, config.hidden)


register_critic("mlp", _mlp)  # an MLP of time, flattened state and condition, started cold
register_critic("reward", _reward)  # the reward at the denoised state blended with an MLP residual
