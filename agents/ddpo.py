"""DDPO: denoising diffusion policy optimisation (Black, Janner, Du, Kostrikov, Levine 2023,
arXiv 2305.13301), the PPO-clip variant (DDPO_IS, their eq. 4 with the clipped surrogate).

Every denoising step is an action whose log-probability is the Gaussian transition density; there
is no value function: each episode's return, normalised per condition (their per-prompt stat
tracking) or over the batch for unconditional tasks, is the advantage of all its steps. The ratio
is clipped with one fixed range for every step. As every gradient agent of the zoo, it adds the
running KL price differentiated pathwise (docs/design.md, section 4), so it optimises the same objective as the
others: ``L = -sum_k E[min(rho_k A, clip(rho_k, 1 - eps, 1 + eps) A)] + kl_coef sum_k E[w_k ||delta||^2] / s``,
with ``s`` the standard deviation of the episode's condition's returns (the advantages' scale before
normalisation), so every condition keeps the objective's balance of reward and KL.
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
from diffusion_gym.validation import NonNegativeFloat, PositiveFloat, PositiveInt


@dataclass
class DDPOConfig(AgentConfig):
    """DDPO settings. The published defaults (clip 1e-4, advantages clipped at 5, lr 3e-4) were tuned
    for log-probabilities averaged over a 4x64x64 latent; here log-probabilities are full Gaussian
    densities, and the clip range comes from the recorded search (agents/tuning/).

    Attributes:
        epochs: passes over each batch of trajectories.
        minibatches: minibatches per pass.
        clip: the fixed ratio clip range.
        adv_clip: advantages are clipped to [-adv_clip, adv_clip] after normalisation.
    """

    lr: NonNegativeFloat = 1e-3
    epochs: PositiveInt = 4
    minibatches: PositiveInt = 4
    clip: PositiveFloat = 0.1
    adv_clip: PositiveFloat = 5.0


class DDPO(FieldAgent):
    """DDPO (see the module docstring)."""

    name = "ddpo"

    def __init__(self, env: Any, config: DDPOConfig | None = None) -> None:
        super().__init__(env, config or DDPOConfig(), critic=None)

    def update(self, traj: Trajectories) -> Stats:
        cfg, env = self.config, self.env
        with torch.no_grad():
            # Per condition over the whole batch (every rank's episodes), then this rank's part.
            cond = None if traj.cond is None else distributed.gather(traj.cond)
            advantages, scale = normalized_per_condition(distributed.gather(traj.objective), cond)
            advantages = distributed.local_part(advantages).clamp(-cfg.adv_clip, cfg.adv_clip)
            scale = distributed.local_part(scale)

        def loss(sub: Trajectories, idx: Tensor, deltas: Tensor, ratio: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
            # One advantage per episode, for all its steps.
            policy_loss, clip_fraction = clipped_ratio(ratio, advantages[idx], cfg.clip)
            kl_loss = env.kl_coef * (running_kl(env, deltas) / scale[idx]).mean()
            stats = {"policy_loss": policy_loss, "kl_loss": kl_loss, "clip_fraction": clip_fraction}
            return policy_loss + kl_loss, stats

        return dict(ppo_clip_updates(self, traj, cfg.epochs, cfg.minibatches, loss))


def normalized_per_condition(returns: Tensor, cond: Tensor | None) -> tuple[Tensor, Tensor]:
    """``(returns - mean_c) / std_c`` within each condition's episodes (the whole batch if
    unconditional), and each episode's ``std_c`` (B,): the scale its KL price is divided by too, so
    that every condition's objective keeps its balance of reward and KL."""
    means = returns.mean().expand(returns.shape).clone()
    scale = returns.std().clamp_min(1e-8).expand(returns.shape).clone()
    if cond is not None:
        for c in cond.unique():
            mask = cond == c
            means[mask] = returns[mask].mean()
            if int(mask.sum()) > 1:  # a lone episode keeps the batch's scale
                scale[mask] = returns[mask].std().clamp_min(1e-8)
    return (returns - means) / scale, scale
