"""Continuous-time PPO with scores as actions (Zhao, Chen, Zhang, Yao, Tang, "Scores as Actions",
arXiv 2409.08400 / ICML 2025; the continuous-time PPO of Zhao, Tang, Yao, NeurIPS 2023).

The policy is a deterministic score correction ``delta_theta(t, y, c)``; all randomness is the
SDE's noise, so step k's "policy density" is the Gaussian transition
``p_theta(y' | y) = N(y'; m_k(y) + c_k delta_theta(y), v_k I)``, exactly known. One iteration:

1. roll out B episodes, keeping states, pretrained means m_k and rewards r_k;
2. advantage = the continuous-time TD increment (the q-rate times dt, Zhao et al.'s estimator):
   ``A_k = r_k + V(t_{k+1}, Y_{k+1}) - V(t_k, Y_k)``, with ``V(t_N, .) = 0``;
3. policy loss, summed over steps (a Riemann sum: every term is O(dt), so no N enters):
   ``L = -sum_k E[min(rho_k A_k, clip(rho_k, 1 - eps_k, 1 + eps_k) A_k)]
         + kl_coef sum_k E[w_k ||delta_theta(t_k, Y_k)||^2]``
   with ``rho_k`` the exact transition ratio, ``eps_k = clip * sqrt(2 w_k)`` (one step's log-ratio
   is ``sqrt(2 w_k) (delta_new - delta_old) . xi``: the clip bounds the change of delta, not of a
   dt-dependent ratio), and the running KL price ``w_k ||delta||^2`` differentiated pathwise
   (DESIGN 4: the likelihood-ratio term alone is blind to it). Advantages and the KL term are
   divided by one scalar (the advantages' standard deviation), which keeps their balance;
4. value loss: ``sum_k (dt_k / T) E[(V(t_k, Y_k) - G_k)^2]`` against the returns-to-go ``G_k``.

At theta = theta_old the gradient of L is minus the objective's gradient (an exact decomposition of
``J = E[r(Y_T)] - kl_coef KL``), which is what makes one set of hyperparameters serve every N.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from agents.common.agent import AgentConfig, FieldAgent
from agents.common.trajectories import Trajectories, policy_deltas, running_kl, transition_log_probs


@dataclass
class CTPPOConfig(AgentConfig):
    """CT-PPO settings (defaults: the small search recorded in agents/tuning/).

    Attributes:
        value_lr: the value network's learning rate.
        epochs: passes over each batch of trajectories.
        minibatches: minibatches per pass (split along episodes).
        clip: trust region in units of delta . xi per step (``eps_k = clip * sqrt(2 w_k)``).
        value_epochs: value-regression passes per iteration.
    """

    lr: float = 1e-3
    value_lr: float = 1e-3
    epochs: int = 4
    minibatches: int = 4
    clip: float = 0.3
    value_epochs: int = 4


class CTPPO(FieldAgent):
    """Continuous-time PPO (see the module docstring for the losses)."""

    name = "ct_ppo"

    def __init__(self, env: Any, config: CTPPOConfig | None = None) -> None:
        super().__init__(env, config or CTPPOConfig(), critic=True)

    def update(self, traj: Trajectories) -> dict[str, float]:
        cfg, env = self.config, self.env
        b = traj.batch
        eps = cfg.clip * torch.sqrt(2 * env.discretization.kl_weight)  # (N,)
        dt_over_T = env.discretization.dt / env.T

        # Advantages: the TD increment of the current value function; returns for the critic.
        with torch.no_grad():
            v = self.values(traj)
            advantages = traj.rewards + v[1:] - v[:-1]
            scale = advantages.std().clamp_min(1e-8)
            old_logp = transition_log_probs(env, traj, traj.deltas)
        returns = traj.returns_to_go()

        stats: dict[str, list[float]] = {"policy_loss": [], "kl_loss": [], "clip_fraction": [], "ratio_max": []}
        for _ in range(cfg.epochs):
            for idx in self.minibatches(b, cfg.minibatches):
                sub = traj.subset(idx)
                deltas = policy_deltas(self, sub)
                logp = transition_log_probs(env, sub, deltas)
                ratio = torch.exp(logp - old_logp[:, idx])
                adv = advantages[:, idx] / scale
                clipped = torch.clamp(ratio, 1 - eps[:, None], 1 + eps[:, None])
                policy_loss = -torch.min(ratio * adv, clipped * adv).sum(0).mean()
                kl_loss = env.kl_coef * running_kl(env, deltas).mean() / scale
                self.clip_and_step("actor", policy_loss + kl_loss)
                stats["policy_loss"].append(policy_loss.item())
                stats["kl_loss"].append(kl_loss.item())
                stats["clip_fraction"].append(((ratio - 1).abs() > eps[:, None]).float().mean().item())
                stats["ratio_max"].append(ratio.max().item())

        for _ in range(cfg.value_epochs):
            for idx in self.minibatches(b, cfg.minibatches):
                sub = traj.subset(idx)
                value_loss = (dt_over_T[:, None] * (self.values(sub)[:-1] - returns[:, idx]).square()).sum(0).mean()
                self.clip_and_step("critic", value_loss)
        out = {k: sum(v) / len(v) for k, v in stats.items()}
        out["value_loss"] = value_loss.item()
        out["advantage_scale"] = scale.item()
        return out
