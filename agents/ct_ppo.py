"""Continuous-time PPO with scores as actions (Zhao, Chen, Zhang, Yao, Tang, "Scores as Actions",
arXiv 2409.08400 / ICML 2025; the continuous-time PPO of Zhao, Tang, Yao, NeurIPS 2023).

The policy is a deterministic score correction ``delta_theta(t, y, c)``; all randomness is the
SDE's noise, so step k's "policy density" is the Gaussian transition
``p_theta(y' | y) = N(y'; m_k(y) + c_k delta_theta(y), v_k I)``, exactly known. One iteration:

1. roll out B episodes, keeping states, pretrained means m_k and rewards r_k;
2. advantage = the continuous-time TD increment (the q-rate times dt, Zhao et al.'s estimator):
   ``A_k = r_k + V(t_{k+1}, Y_{k+1}) - V(t_k, Y_k)``, with ``V(t_N, .) = 0``;
3. policy loss, summed over steps (a Riemann sum: every term is O(dt), so no N enters):
   ``L = -sum_k E[min(rho_k A_k, clip(rho_k, 1 - eps_k, 1 + eps_k) A_k)] / s_k
         + kl_coef sum_k E[w_k ||delta_theta(t_k, Y_k)||^2] / s_k``
   with ``rho_k`` the exact transition ratio, ``eps_k = clip * sqrt(2 w_k)`` (one step's log-ratio
   is ``sqrt(2 w_k) (delta_new - delta_old) . xi``: the clip bounds the change of delta, not of a
   dt-dependent ratio), and the running KL price ``w_k ||delta||^2`` differentiated pathwise
   (docs/design.md, section 4: the likelihood-ratio term alone is blind to it). ``s_k`` scales
   step k's advantages and its KL price alike, which keeps their balance: one scalar for all steps
   (the advantages' standard deviation, ``advantage_norm="global"``) or, as the authors ship it, the
   advantages standardised per time step (``"per_step"``: mean removed, a baseline, and divided by
   that step's standard deviation), optionally clipped at ``adv_clip``;
4. value loss: ``sum_k (dt_k / T) E[(V(t_k, Y_k) - G_k)^2]`` against the returns-to-go ``G_k``.

The critic is an MLP of (t, y, c) started cold (``critic="mlp"``), or the authors' critic
(``critic="reward"``, following ContTimeRL4DM's ``ddpo_continuous/scripts/train_with_valuefunc_cont.py``
and ``scripts/src/ImageReward_VN.py``): the terminal reward at the denoised estimate blended in time
with a learned residual (:class:`~agents.common.networks.DenoisedRewardCritic`), optionally fitted
to pretrained rollouts before RL (``critic_pretrain_queries``, counted as reward queries). It reads
the reward model at ``x0_hat`` for every state, N evaluations per episode beyond the terminal query
(the authors' design, not counted as queries: the comparison in benchmarks/RESULTS.md says so).

At theta = theta_old the gradient of L is minus the objective's gradient (an exact decomposition of
``J = E[r(Y_T)] - kl_coef KL``, reweighted per step by ``1 / s_k``), which is what makes one set of
hyperparameters serve every N.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from agents.common.agent import AgentConfig, FieldAgent, Stats
from agents.common.ppo_clip import clipped_ratio, ppo_clip_updates
from agents.common.trajectories import Trajectories, collect, per_step_kl
from diffusion_gym import distributed
from diffusion_gym.validation import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt


@dataclass
class CTPPOConfig(AgentConfig):
    """CT-PPO settings. Defaults: the winner of the search recorded in agents/tuning/DiffusionSDE-v0.md,
    the authors' critic and advantage standardisation. The cold MLP critic with one advantage scale
    ends at the same gap but needs 1.9 times the reward queries to close half of it (6,759 ± 394
    against 3,589 ± 934, 3 seeds, benchmarks/results/full-cpu/; 2.6 times in the search's one seed).

    Attributes:
        value_lr: the value network's learning rate.
        epochs: passes over each batch of trajectories.
        minibatches: minibatches per pass (split along episodes).
        clip: trust region in units of delta . xi per step (``eps_k = clip * sqrt(2 w_k)``).
        value_epochs: value-regression passes per iteration.
        critic: ``"mlp"`` (cold MLP) or ``"reward"`` (reward at the denoised state + MLP residual).
        critic_pretrain_queries: pretrained episodes the critic is fitted to before RL (0: none).
        advantage_norm: ``"global"`` (one scale) or ``"per_step"`` (standardised per time step).
        adv_clip: clip the scaled advantages to ``[-adv_clip, adv_clip]`` (0: no clipping).
    """

    lr: NonNegativeFloat = 1e-3
    value_lr: NonNegativeFloat = 1e-3
    epochs: PositiveInt = 4
    minibatches: PositiveInt = 4
    clip: PositiveFloat = 1.0
    value_epochs: NonNegativeInt = 4
    critic: str = "reward"
    critic_pretrain_queries: NonNegativeInt = 0
    advantage_norm: Literal["global", "per_step"] = "per_step"
    adv_clip: NonNegativeFloat = 5.0


class CTPPO(FieldAgent):
    """Continuous-time PPO (see the module docstring for the losses)."""

    name = "ct_ppo"

    def __init__(self, env: Any, config: CTPPOConfig | None = None) -> None:
        config = config or CTPPOConfig()
        super().__init__(env, config, critic=config.critic)

    def before_training(self) -> None:
        """Fit the critic to returns of the pretrained sampler (zero action) before RL, if configured."""
        spent, losses = 0, []
        zero = torch.zeros((self.env.num_envs, *self.env.event_shape), device=self.env.device, dtype=self.env.dtype)
        while spent < self.config.critic_pretrain_queries:
            traj = collect(self.env, lambda k, obs: zero)
            losses.append(self.fit_critic(traj))
            spent += traj.batch * self.world_size
        self.reward_queries += spent
        if losses:
            self._log(distributed.reduce_stats({"critic_pretrain_loss": torch.stack(losses).mean().item()}))

    def fit_critic(self, traj: Trajectories) -> Tensor:
        """``value_epochs`` passes of the time-weighted regression of V on the returns-to-go; the last loss."""
        cfg, env = self.config, self.env
        dt_over_T = (env.discretization.dt / env.T)[:, None]
        returns = traj.returns_to_go()
        for _ in range(cfg.value_epochs):
            for idx in self.minibatches(traj.batch, cfg.minibatches):
                value_loss = (dt_over_T * (self.values(traj.subset(idx))[:-1] - returns[:, idx]).square()).sum(0).mean()
                self.clip_and_step("critic", value_loss)
        return value_loss.detach()

    def scaled_advantages(self, traj: Trajectories) -> tuple[Tensor, Tensor]:
        """The TD increments scaled as ``config.advantage_norm`` says (and clipped), and each step's
        scale ``s_k`` (N, 1) that the KL price is divided by too."""
        cfg = self.config
        v = self.values(traj)
        advantages = traj.rewards + v[1:] - v[:-1]
        batch = distributed.gather(advantages, dim=1)  # the statistics are the whole batch's, over ranks
        if cfg.advantage_norm == "per_step":
            scale = batch.std(1, keepdim=True).clamp_min(1e-8)
            advantages = (advantages - batch.mean(1, keepdim=True)) / scale
        else:
            scale = batch.std().clamp_min(1e-8).expand(advantages.shape[0], 1)
            advantages = advantages / scale
        if cfg.adv_clip > 0:
            advantages = advantages.clamp(-cfg.adv_clip, cfg.adv_clip)
        return advantages, scale

    def update(self, traj: Trajectories) -> Stats:
        cfg, env = self.config, self.env
        eps = (cfg.clip * torch.sqrt(2 * env.discretization.kl_weight))[:, None]  # (N, 1)
        with torch.no_grad():
            advantages, scale = self.scaled_advantages(traj)

        def loss(sub: Trajectories, idx: Tensor, deltas: Tensor, ratio: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
            policy_loss, clip_fraction = clipped_ratio(ratio, advantages[:, idx], eps)
            kl_loss = env.kl_coef * (per_step_kl(env, deltas) / scale).sum(0).mean()
            stats = {"policy_loss": policy_loss, "kl_loss": kl_loss, "clip_fraction": clip_fraction}
            return policy_loss + kl_loss, stats

        stats: Stats = dict(ppo_clip_updates(self, traj, cfg.epochs, cfg.minibatches, loss))
        return stats | {"value_loss": self.fit_critic(traj), "advantage_scale": scale.mean()}
