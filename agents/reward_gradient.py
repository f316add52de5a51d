"""Reward-gradient fine-tuning: ascend J itself through the sampler (DRaFT-K, Clark, Vicol, Swersky,
Fleet 2023, arXiv 2309.17400; AlignProp, Prabhudesai, Goyal, Pathak, Fragkiadaki 2023, arXiv 2310.03739).

The objective's pathwise gradient, the noise held fixed (DRaFT's eq. 2 with the KL price added):

    J(theta) = E_xi[ r(Y_N(theta, xi), c) - kl_coef * sum_k w_k ||delta_theta(t_k, Y_k)||^2 ],
    grad J   = E_xi[ grad_theta (r(Y_N) - kl_coef sum_k KL_k) ],

computed by :func:`~diffusion_gym.differentiable_rollout.differentiable_rollout` (the env's base model,
kernel and reward composed with autograd). One iteration: B episodes from the agent's generator, the
loss ``-mean_b J_b``, one optimiser step. ``grad_steps = K < N`` backpropagates through the last K
steps only (DRaFT-K; K = 1 is DRaFT-1), every step's KL keeping its direct gradient; AlignProp's
memory saving is ``checkpoint`` (each step recomputed in the backward pass). There is no likelihood
ratio and no critic: the estimator has the variance of a pathwise gradient, and it needs the reward's
gradient, so it refuses tasks whose reward has none (JPEG size). Each episode is one reward query.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agents.common.agent import AgentConfig, FieldAgent, Stats
from diffusion_gym.differentiable_rollout import check_differentiable_reward, differentiable_rollout
from diffusion_gym.validation import NonNegativeFloat, NonNegativeInt


@dataclass
class RewardGradientConfig(AgentConfig):
    """Reward-gradient settings.

    Attributes:
        grad_steps: K, the last steps the gradient flows through (0: the whole chain, K = N).
        checkpoint: recompute each differentiated step in the backward pass (UNet bases).
    """

    lr: NonNegativeFloat = 1e-3
    grad_steps: NonNegativeInt = 0
    checkpoint: bool = False


class RewardGradient(FieldAgent):
    """Reward-gradient fine-tuning (see the module docstring)."""

    name = "reward_gradient"

    def __init__(self, env: Any, config: RewardGradientConfig | None = None) -> None:
        config = config or RewardGradientConfig()
        super().__init__(env, config, critic=None)
        check_differentiable_reward(self.env, "reward_gradient")
        if config.grad_steps > self.env.n_steps:
            raise ValueError(f"grad_steps must be at most the env's N = {self.env.n_steps}, got {config.grad_steps}")

    def train_iteration(self) -> tuple[Stats, int]:
        cfg = self.config
        rollout = differentiable_rollout(
            self.env, self.mean_action, self.generator, grad_steps=cfg.grad_steps or None, checkpoint=cfg.checkpoint
        )
        loss = -rollout.objective.mean()
        stats: Stats = {
            "objective": rollout.objective.detach().mean(),
            "proxy": rollout.terminal_reward.detach().mean(),
            "kl": rollout.kl.detach().sum(0).mean(),
            "grad_norm": self.clip_and_step("actor", loss),
        }
        if rollout.gold_reward is not None:
            stats["gold"] = rollout.gold_reward.mean()
        return stats, rollout.objective.shape[0]
