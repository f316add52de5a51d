"""Adjoint Matching (Domingo-Enrich, Drozdzal, Karrer, Chen 2024, arXiv 2409.08861): reward
fine-tuning as stochastic optimal control, the control regressed onto the lean adjoint.

Memoryless noise is what makes the control problem's optimum the reward-tilted law
``p_pre(x) exp(r(x) / kl_coef)`` (their section 3): the VP reverse SDE, and the flow SDE at
``a = sqrt(2)`` (:attr:`~diffusion_gym.sde.Discretization.time_reversal`); elsewhere the agent refuses.
On the env's grid (the discrete form of their eqs. 38-39, in the zoo's score-correction units):

1. roll out B episodes of the current control (no gradient);
2. the lean adjoint backward along each, with vector-Jacobian products of the *pretrained* mean
   ``m_k(y) = a_k y + b_k f_pre(s_k, y)`` only (the control's Jacobian is what "lean" drops):

       a_N = grad r(Y_N, c) / kl_coef,     a_k = (d m_k / d Y_k)^T a_{k+1};

   at the optimum ``E[a_{k+1} | Y_k] = grad log h(t_{k+1}, Y_k) + O(dt)``, Doob's ``grad log h``;
3. regress the correction onto it, each step weighted by its KL weight ``w_k = c_k^2 / (2 v_k)``
   (their loss ``int ||u + sigma^T a||^2 dt`` in these units):

       L = sum_k E[ w_k || delta_theta(t_k, Y_k) - (v_k / c_k) a_{k+1} ||^2 ],

   ``(v_k / c_k) a_{k+1}`` being ``grad log h / correction_weight`` in the limit: the optimal
   correction of :mod:`diffusion_gym.optimal_control`.

The regression's only fixed point is the optimal control (their Theorem 2); no likelihood ratio, no
critic, and the reward's gradient at every episode's end (one reward query each). Rewards without a
gradient are refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from agents.common.agent import AgentConfig, FieldAgent, Stats
from agents.common.trajectories import Trajectories, policy_deltas
from diffusion_gym.differentiable_rollout import check_differentiable_reward
from diffusion_gym.envs.vector import DiffusionSDEVectorEnv
from diffusion_gym.validation import NonNegativeFloat, PositiveInt


@dataclass
class AdjointMatchingConfig(AgentConfig):
    """Adjoint Matching settings.

    Attributes:
        epochs: regression passes over each batch of trajectories.
        minibatches: minibatches per pass.
    """

    lr: NonNegativeFloat = 1e-3
    epochs: PositiveInt = 4
    minibatches: PositiveInt = 4


def check_memoryless(env: DiffusionSDEVectorEnv, who: str) -> None:
    """Raise a ValueError naming ``who`` unless the env samples with memoryless noise."""
    if not env.discretization.time_reversal:
        raise ValueError(
            f"{who} needs memoryless noise (the time reversal of the forward process), so that the control "
            f"problem's optimum is the reward-tilted law; the flow SDE at noise level {env.noise_level} is not "
            "memoryless: use noise_level = sqrt(2) (math.sqrt(2)) or a VP task"
        )
    if env.kl_coef <= 0:
        raise ValueError(f"{who} needs a KL price (kl_coef > 0), got {env.kl_coef}")


def lean_adjoint(env: DiffusionSDEVectorEnv, traj: Trajectories) -> Tensor:
    """The regression targets ``(v_k / c_k) a_{k+1}`` of every step k < N (N, B, *event_shape): the
    lean adjoint from ``a_N = grad r(Y_N) / kl_coef`` backward by the pretrained mean's
    vector-Jacobian products at the stored states (see the module docstring)."""
    disc = env.discretization
    with torch.enable_grad():
        y = traj.states[-1].detach().requires_grad_(True)
        (adjoint,) = torch.autograd.grad(env.reward_model(y, traj.cond).sum(), y)
    adjoint = adjoint / env.kl_coef
    targets = []
    for k in range(env.n_steps - 1, -1, -1):
        c = disc.constants[k]
        targets.append(adjoint * (c.noise_std**2 / c.control_scale))
        if k > 0:  # a_0 has no step to regress
            with torch.enable_grad():
                y = traj.states[k].detach().requires_grad_(True)
                (adjoint,) = torch.autograd.grad(env.pretrained_mean(k, y, traj.cond), y, adjoint)
    return torch.stack(targets[::-1])


def matching_loss(env: DiffusionSDEVectorEnv, deltas: Tensor, targets: Tensor) -> Tensor:
    """``sum_k E[w_k ||delta_k - target_k||^2]`` over steps (a mean over episodes)."""
    return (env.discretization.kl_weight[:, None] * (deltas - targets).flatten(2).square().sum(2)).sum(0).mean()


class AdjointMatching(FieldAgent):
    """Adjoint Matching (see the module docstring)."""

    name = "adjoint_matching"

    def __init__(self, env: Any, config: AdjointMatchingConfig | None = None) -> None:
        super().__init__(env, config or AdjointMatchingConfig(), critic=None)
        check_memoryless(self.env, "adjoint_matching")
        check_differentiable_reward(self.env, "adjoint_matching")

    def update(self, traj: Trajectories) -> Stats:
        cfg = self.config
        targets = lean_adjoint(self.env, traj)
        total, count = torch.zeros((), device=self.env.device), 0
        for _ in range(cfg.epochs):
            for idx in self.minibatches(traj.batch, cfg.minibatches):
                loss = matching_loss(self.env, policy_deltas(self, traj.subset(idx)), targets[:, idx])
                grad_norm = self.clip_and_step("actor", loss)
                total, count = total + loss.detach(), count + 1
        return {
            "matching_loss": total / count,
            "grad_norm": grad_norm,
            "target_norm": targets.flatten(2).norm(dim=2).mean(),
        }
