"""Continuous-time q-learning (Jia & Zhou, JMLR 2023, "q-Learning in continuous time"; for diffusion
models, Gao, Zha & Zhou, arXiv 2409.04832).

The q-function is the instantaneous advantage rate. Here the action (the score correction delta)
enters the dynamics linearly and the reward through the KL price ``-kl_coef (beta / 2) ||delta||^2``,
so q is quadratic in delta with a known curvature, and only its maximiser is learned (Gao et al.'s
result that the optimal policy is Gaussian with known covariance). On the env's grid, step k:

    q_k(y, delta) dt_k = -kl_coef w_k (||delta - mu_psi(t_k, y)||^2 - D sigma_k^2),

zero in expectation under the policy ``pi_psi = exp(q / gamma) / Z = N(mu_psi, sigma_k^2 I)``,
``sigma_k^2 = gamma dt_k / (2 kl_coef w_k)`` (gamma / (kl_coef beta) for Euler-Maruyama): the
temperature gamma sets the exploration, at a KL price of ``gamma D / 2`` per unit time.

Learning, from episodes of the exploring policy:
- the value J_theta by the martingale loss (Jia & Zhou 2022, policy evaluation):
  ``sum_k (dt_k / T) E[(J_theta(t_k, Y_k) - G_k)^2]`` with ``G_k`` the returns-to-go;
- the q-function by the martingale orthogonality condition with test functions ``d q / d psi``
  (Jia & Zhou 2023, Theorem 9 / Algorithm 2): ``sum_k E[(d q_k / d psi) e_k] = 0`` for the
  temporal-difference residual ``e_k = J(t_{k+1}, Y_{k+1}) - J(t_k, Y_k) + r_k - q_k dt_k``, solved by
  stochastic approximation: minimise ``-sum_k E[stopgrad(e_k) q_k(Y_k, delta_k) dt_k]``.
The deterministic policy evaluated is the mean ``mu_psi``.

A trust region on the mean keeps the update where the orthogonality condition was estimated: the
loss adds ``trust_region * E[KL(pi_behaviour || pi_psi)] = trust_region * sum_k E||mu_psi -
mu_behaviour||^2 / (2 sigma_k^2)`` per episode, zero at the behaviour mean (so the first gradient
of each iteration is unchanged). Measured reason (DiffusionSDE-Digits-v0 at kl_coef 1, 64 pixels,
temperature 1/32, 64 envs): without it the first iteration's 16 Adam steps moved the mean so far
that the recomputed ratios reached 1e8, the deterministic policy's KL grew by about one nat per
iteration (1, 1.4, 3.2, 4.1, ..., 20 after 11 iterations) and then ran away (1,500 nats after
1,536 queries, J thousands of nats below the pretrained model's) with the tanh saturated; Adam's
steps are about ``lr`` whatever the gradient's size, and in 64 dimensions the price's pull back,
one noisy correlation among many, never caught up. With the penalty (weight 0.1) the ratios stay
within 1.4 and J at the pretrained model's level or above (J 6.615 ± 0.030 against J(pre) 6.584
after 4,096 queries at the task's defaults); on DiffusionSDE-v0 (20,000 queries, 512 envs) it
removes the early dip below J(pre) (J -0.06 against 0.39 after 1,024 queries without it) and
ends where the unpenalised run does (0.745 against 0.743); weight 1 learns a third as fast there,
0.02 still dips.

The trust region bounds how fast the mean moves, not where: with the cold MLP critic (``critic="mlp"``)
the mean follows that critic's spatial gradient, and on digits it still went below the pretrained
model with a small KL (J 6.47 against 6.58 in the quick suite, 4,096 queries). With
``critic="reward"`` (the reward at the denoised state plus a learned residual, CT-PPO's default)
the same runs end above it (6.64 and 6.71 in two seeds).

The temperature is also the signal: the orthogonality condition correlates the TD residual with the
exploration ``delta - mu_psi``. On digits at its defaults (128 envs, 5,120 queries, reward critic)
temperature 1/32 left too little of it and the mean drifted below the pretrained model in one seed
(curve points 3.9 s.e. below J(pre), KL 0.01-0.03); 1/8 ends at J 6.665 in both seeds (lowest curve
point -1.7 s.e.), 1/2 at 6.76-6.79 with KL 1.76, and 1 runs away (J 5.74 after 2,944 queries, KL
3.6). The suites' digits settings: ``benchmarks/suites/shared/digits_agents.toml``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from agents.common.agent import AgentConfig, FieldAgent, Stats
from agents.common.trajectories import Trajectories, policy_deltas
from diffusion_gym import distributed, kernel
from diffusion_gym.validation import NonNegativeFloat, PositiveFloat, PositiveInt


@dataclass
class CTQLearningConfig(AgentConfig):
    """CT q-learning settings.

    Attributes:
        value_lr: the value network's learning rate.
        temperature: gamma; exploration variance ``sigma_k^2 = gamma dt_k / (2 kl_coef w_k)``.
        epochs: passes over each batch of trajectories.
        minibatches: minibatches per pass.
        trust_region: weight of the trust region on the mean, the penalty
            ``trust_region * E[KL(pi_behaviour || pi_psi)]`` per episode
            (``sum_k ||mu_psi - mu_behaviour||^2 / (2 sigma_k^2)``; 0: none).
        critic: the value network J: ``"mlp"`` (cold MLP) or ``"reward"`` (the reward at the
            denoised state blended with an MLP residual, as CT-PPO's default).
    """

    lr: NonNegativeFloat = 1e-3
    value_lr: NonNegativeFloat = 1e-3
    temperature: PositiveFloat = 1.0
    epochs: PositiveInt = 4
    minibatches: PositiveInt = 4
    trust_region: NonNegativeFloat = 0.1
    critic: str = "mlp"


class CTQLearning(FieldAgent):
    """Continuous-time q-learning with a quadratic q-function (see the module docstring)."""

    name = "ct_q_learning"

    def __init__(self, env: Any, config: CTQLearningConfig | None = None) -> None:
        config = config or CTQLearningConfig()
        super().__init__(env, config, critic=config.critic)
        cfg, e = self.config, self.env
        if e.kl_coef <= 0:
            raise ValueError("q-learning's Gaussian policy needs kl_coef > 0 (the curvature of q)")
        self.kl_weight = e.discretization.kl_weight
        self.exploration_std = torch.sqrt(cfg.temperature * e.discretization.dt / (2 * e.kl_coef * self.kl_weight))

    def behaviour_action(self, k: int, obs: dict[str, Tensor]) -> Tensor:
        """``delta ~ N(mu_psi, sigma_k^2 I)``, as an action (the env clips it to [-1, 1] and records the
        delta it applied). The means are kept for :meth:`behaviour_log_probs`."""
        mean = self.act(obs)
        if k == 0:
            self.behaviour_means: list[Tensor] = []
            self.behaviour_clipped: list[Tensor] = []
        disc = self.env.discretization
        self.behaviour_means.append(kernel.step_delta(disc, k, mean))
        noise = torch.randn(mean.shape, generator=self.generator, device=self.generator.device).to(mean.dtype)
        # The exploration noise is drawn in delta units and divided back into action units.
        action = mean + noise * (self.exploration_std[k] / disc.constants[k].action_scale)
        self.behaviour_clipped.append((action.abs() > 1).float().mean())
        return action

    def behaviour_log_probs(self, traj: Trajectories, means: Tensor) -> Tensor:
        """``log pi(delta_k | Y_k)`` of the applied deltas under Gaussians of the given means, (N, B)."""
        var = self.exploration_std.view(-1, 1, *([1] * len(self.env.event_shape))) ** 2
        dim = math.prod(self.env.event_shape)
        quad = ((traj.deltas - means).square() / var).flatten(2).sum(2)
        return -0.5 * quad - 0.5 * dim * torch.log(2 * math.pi * var.flatten(1))

    def q_dt(self, traj: Trajectories, mu: Tensor) -> Tensor:
        """``q_k(Y_k, delta_k) dt_k`` of every stored step for the means ``mu``, (N, B)."""
        dim = math.prod(self.env.event_shape)
        spread = (traj.deltas - mu).flatten(2).square().sum(2) - dim * self.exploration_std[:, None] ** 2
        return -self.env.kl_coef * self.kl_weight[:, None] * spread

    def update(self, traj: Trajectories) -> Stats:
        cfg, env = self.config, self.env
        dt_over_T = env.discretization.dt / env.T
        returns = traj.returns_to_go()
        with torch.no_grad():
            old_log_pi = self.behaviour_log_probs(traj, torch.stack(self.behaviour_means))
            j = self.values(traj)
            increment = traj.rewards + j[1:] - j[:-1]  # the residual's part that does not depend on psi
            # A per-step baseline: it leaves the orthogonality condition's expectation unchanged
            # (d q / d mu has mean zero under the policy) and removes the value's bias from it.
            batch = distributed.gather(increment, dim=1)  # the whole batch's statistics, over ranks
            increment = increment - batch.mean(1, keepdim=True)
            scale = (batch - batch.mean(1, keepdim=True)).std().clamp_min(1e-8)
            behaviour_means = torch.stack(self.behaviour_means)
            two_var = 2 * self.exploration_std[:, None] ** 2  # (N, 1)

        q_losses, value_losses = [], []
        for _ in range(cfg.epochs):
            for idx in self.minibatches(traj.batch, cfg.minibatches):
                sub = traj.subset(idx)
                mu = policy_deltas(self, sub)
                q = self.q_dt(sub, mu)
                policy_kl = ((mu - behaviour_means[:, idx]).flatten(2).square().sum(2) / two_var).sum(0).mean()
                # The residual is recomputed with the current q (the test function multiplies the
                # residual at the same psi): frozen, it would let mu run away from the explored actions.
                residual = (increment[:, idx] - q).detach() / scale
                q_loss = -(residual * q).sum(0).mean() + cfg.trust_region * policy_kl
                self.clip_and_step("actor", q_loss)
                value_loss = (dt_over_T[:, None] * (self.values(sub)[:-1] - returns[:, idx]).square()).sum(0).mean()
                self.clip_and_step("critic", value_loss)
                q_losses.append(q_loss.detach())
                value_losses.append(value_loss.detach())
        with torch.no_grad():
            log_ratio = self.behaviour_log_probs(traj, policy_deltas(self, traj)) - old_log_pi
        return {
            "ratio_mean": log_ratio.exp().mean(),
            "ratio_max": log_ratio.exp().max(),
            "q_loss": torch.stack(q_losses).mean(),
            "value_loss": torch.stack(value_losses).mean(),
            "increment_scale": scale,
            # Exploring actions the env clipped to [-1, 1]: those are not the Gaussian draws q assumes.
            "clip_fraction": torch.stack(self.behaviour_clipped).mean(),
            "exploration_kl": (env.kl_coef * self.kl_weight * self.exploration_std**2).sum()
            * math.prod(env.event_shape),
        }
