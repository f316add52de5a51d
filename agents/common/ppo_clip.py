"""The PPO-clip update loop shared by CT-PPO, DDPO and DPOK (Schulman et al. 2017, "Proximal Policy
Optimization Algorithms"): epochs over minibatches of stored episodes, the exact transition ratio
of each, and the agent's own loss on it. The losses (what each algorithm is) stay in the agents'
files; this file holds only the loop they share.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from agents.common.trajectories import Trajectories, policy_deltas, transition_log_probs

LossFn = Callable[[Trajectories, Tensor, Tensor, Tensor], tuple[Tensor, dict[str, Tensor]]]
"""``loss(sub, idx, deltas, ratio) -> (loss, statistics)``: a minibatch ``sub`` (the episodes ``idx``
of the batch), the policy's current deltas there (N, b, ...) and the exact ratios ``rho_k`` (N, b)."""


def clipped_ratio(ratio: Tensor, advantages: Tensor, eps: Tensor | float) -> tuple[Tensor, Tensor]:
    """PPO's surrogate ``-sum_k E[min(rho_k A_k, clip(rho_k, 1 - eps, 1 + eps) A_k)]`` (a sum over the N
    steps, a mean over episodes), and the fraction of ratios outside the trust region."""
    clipped = torch.clamp(ratio, 1 - eps, 1 + eps)
    loss = -torch.min(ratio * advantages, clipped * advantages).sum(0).mean()
    return loss, ((ratio - 1).abs() > eps).float().mean()


def ppo_clip_updates(agent: Any, traj: Trajectories, epochs: int, minibatches: int, loss: LossFn) -> dict[str, Tensor]:
    """``epochs`` passes over ``minibatches`` random minibatches of ``traj``, one actor step each on
    ``loss``; returns the mean of each statistic (and of the actor's gradient norm) as device tensors:
    nothing here waits for the device.

    Args:
        agent: a :class:`~agents.common.agent.FieldAgent` (its ``"actor"`` optimiser is stepped).
        traj: the batch, collected by the policy before this update (the ratios' denominator).
        epochs: passes over the batch.
        minibatches: minibatches per pass, split along episodes.
        loss: the agent's loss on a minibatch (see :data:`LossFn`).
    """
    with torch.no_grad():
        old_logp = transition_log_probs(agent.env, traj, traj.deltas, agent.config.compile)
    sums: dict[str, Tensor] = {}
    count = 0
    for _ in range(epochs):
        for idx in agent.minibatches(traj.batch, minibatches):
            sub = traj.subset(idx)
            deltas = policy_deltas(agent, sub)
            ratio = torch.exp(transition_log_probs(agent.env, sub, deltas, agent.config.compile) - old_logp[:, idx])
            value, stats = loss(sub, idx, deltas, ratio)
            stats = stats | {"ratio_max": ratio.max(), "grad_norm": agent.clip_and_step("actor", value)}
            for key, stat in stats.items():
                sums[key] = sums[key] + stat.detach() if key in sums else stat.detach().clone()
            count += 1
    return {key: total / count for key, total in sums.items()}
