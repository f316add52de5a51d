"""DPOK: diffusion policy optimisation with KL regularisation (Fan, Watkins, Du, Liu, Ryu, Boutilier,
Abbeel, Ghavamzadeh, Lee, Lee 2023, arXiv 2305.16381).

The policy gradient of the reward with the per-step KL to the pretrained model as the regulariser
(their eq. 7: the KL of each step's Gaussian transitions, differentiated directly), a learned value
baseline for the reward term (their Algorithm 1), and importance ratios clipped with a fixed range
for reuse of each batch:
``L = -sum_k E[min(rho_k A_k, clip(rho_k, 1 - eps, 1 + eps) A_k)] + kl_coef sum_k E[w_k ||delta||^2] / s``,
``A_k = (G_k - V(t_k, Y_k)) / s``, ``G_k`` the return-to-go, ``s`` the standard deviation of the
unnormalised advantages. Unlike CT-PPO the advantage is a Monte Carlo return (not a TD increment),
every step has the same weight, and the clip range is the same at every step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from agents.common.agent import AgentConfig, FieldAgent, Stats
from agents.common.ppo_clip import clipped_ratio, ppo_clip_updates
from agents.common.trajectories import Trajectories, running_kl
from diffusion_gym import distributed
from diffusion_gym.validation import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt


@dataclass
class DPOKConfig(AgentConfig):
    """DPOK settings.

    Attributes:
        value_lr: the value network's learning rate.
        epochs: passes over each batch of trajectories.
        minibatches: minibatches per pass.
        clip: the fixed ratio clip range.
        value_epochs: value-regression passes per iteration.
    """

    lr: NonNegativeFloat = 1e-3
    value_lr: NonNegativeFloat = 1e-3
    epochs: PositiveInt = 4
    minibatches: PositiveInt = 4
    clip: PositiveFloat = 0.1
    value_epochs: NonNegativeInt = 4


class DPOK(FieldAgent):
    """DPOK (see the module docstring)."""

    name = "dpok"

    def __init__(self, env: Any, config: DPOKConfig | None = None) -> None:
        super().__init__(env, config or DPOKConfig(), critic="mlp")

    def update(self, traj: Trajectories) -> Stats:
        cfg, env = self.config, self.env
        returns = traj.returns_to_go()
        with torch.no_grad():
            advantages = returns - self.values(traj)[:-1]
            scale = distributed.gather(advantages, dim=1).std().clamp_min(1e-8)  # the whole batch's
            advantages = advantages / scale

        def loss(sub: Trajectories, idx: Tensor, deltas: Tensor, ratio: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
            policy_loss, clip_fraction = clipped_ratio(ratio, advantages[:, idx], cfg.clip)
            kl_loss = env.kl_coef * running_kl(env, deltas).mean() / scale
            stats = {"policy_loss": policy_loss, "kl_loss": kl_loss, "clip_fraction": clip_fraction}
            return policy_loss + kl_loss, stats

        stats: Stats = dict(ppo_clip_updates(self, traj, cfg.epochs, cfg.minibatches, loss))
        for _ in range(cfg.value_epochs):
            for idx in self.minibatches(traj.batch, cfg.minibatches):
                value_loss = (self.values(traj.subset(idx))[:-1] - returns[:, idx]).square().mean()
                self.clip_and_step("critic", value_loss)
        return stats | {"value_loss": value_loss.detach()}
