"""J* and J(pre), the optimum over all path measures and the pretrained objective, and the normalized
gap (docs/design.md, section 1).

By Donsker-Varadhan, over all path measures Q,
``sup_Q E_Q[r(Y_T)] - kl_coef KL(Q || P_pre) = kl_coef log E_pre[exp(r(Y_T) / kl_coef)] =: J*``,
attained by tilting the pretrained terminal law by ``exp(r / kl_coef)``. J* needs only samples of
the pretrained sampler on the env's own grid (exact for the discrete chain), or, for 2-D tasks,
quadrature of the noised data density (the continuous-time limit). It is an upper bound for the
env's policies: they shift the mean of Gaussian transitions and cannot move ``Y_0``, so they reach
J* only in the continuous-time limit and up to the (here negligible, ``alpha_T ~ 0.0065``)
dependence of ``Y_T`` on ``Y_0``. Two references that a policy of the env can reach complete it
(:class:`~diffusion_gym.references.References`, the owner of a grid's references): J_best(N), the
best policy of the env's own action class on its grid (a dynamic programme, 2-D tasks:
:mod:`diffusion_gym.dynamic_programming`), and J_oracle(N), the continuous-time optimal control
applied on the grid (Gaussian-mixture tasks: :mod:`diffusion_gym.optimal_control`).
``J_oracle <= J_best <= J*``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from diffusion_gym.base_models.gaussian_mixture import GaussianMixtureScore
from diffusion_gym.envs.vector import DiffusionSDEVectorEnv
from diffusion_gym.evaluation import Estimate, rollout
from diffusion_gym.rewards.protocol import RewardModel


def soft_value(rewards: Tensor, kl_coef: float) -> Estimate:
    """``kl_coef * log mean exp(r / kl_coef)`` with its delta-method standard error.

    With ``w = exp(r / kl_coef)``: ``se = kl_coef * std(w) / (sqrt(n) * mean(w))``. (The estimate
    is biased low by Jensen's inequality, by about ``se^2 / (2 kl_coef)``: negligible when the
    standard error is small.)
    """
    if kl_coef <= 0:
        raise ValueError(f"J* needs kl_coef > 0, got {kl_coef}")
    r = rewards.detach().double().flatten()
    n = r.numel()
    z = r / kl_coef
    w = torch.exp(z - z.max())
    mean = kl_coef * (torch.log(w.mean()) + z.max()).item()
    se = kl_coef * (w.std() / (math.sqrt(n) * w.mean())).item()
    return Estimate(mean, se, n)


@dataclass(frozen=True)
class Optimum:
    """J* and the pretrained sampler's objective J(pre), estimated from the same samples.

    Attributes:
        j_star: ``kl_coef log E_pre exp(r / kl_coef)``.
        j_pretrained: ``E_pre r`` (the pretrained sampler pays no KL).
        covariance: the covariance of the two estimates (strongly positive: same samples).
        ess: the effective sample size ``(sum w)^2 / sum w^2`` of the weights ``w = exp(r / kl_coef)``
            behind J* (None where unknown): J* rests on about this many samples, so a J* whose
            ESS is a few dozen is not to be trusted whatever its standard error says.
    """

    j_star: Estimate
    j_pretrained: Estimate
    covariance: float = 0.0
    ess: float | None = None

    def row(self) -> dict[str, float | None]:
        """The estimates as flat numbers (results files, shipped reference tables)."""
        return {
            "j_star": self.j_star.mean,
            "j_star_se": self.j_star.se,
            "j_pretrained": self.j_pretrained.mean,
            "j_pretrained_se": self.j_pretrained.se,
            "covariance": self.covariance,
            "n": self.j_star.n,
            "ess": self.ess,
        }

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Optimum:
        """The estimates of :meth:`row` (a results file's or a task's shipped table's entry) back."""
        n = row["n"]
        return cls(
            Estimate(row["j_star"], row["j_star_se"], n),
            Estimate(row["j_pretrained"], row["j_pretrained_se"], n),
            row.get("covariance", 0.0),
            row.get("ess"),
        )

    def normalized_gap(self, j: Estimate) -> Estimate:
        """The normalized gap of a policy's objective ``j`` (estimated from other samples)."""
        return normalized_gap(j, self.j_star, self.j_pretrained, self.covariance)


def optimum_from_rewards(rewards: Tensor, kl_coef: float) -> Optimum:
    """J*, J(pre), their covariance and the weights' effective sample size from terminal rewards of
    the pretrained sampler.

    The covariance is the delta-method one, from the influence functions
    ``kl_coef (w_i / mean(w) - 1)`` of J* and ``r_i - mean(r)`` of J(pre).
    """
    r = rewards.detach().double().flatten()
    z = r / kl_coef
    w = torch.exp(z - z.max())
    influence_star = kl_coef * (w / w.mean() - 1)
    influence_pre = r - r.mean()
    cov = (influence_star * influence_pre).sum().item() / (r.numel() * (r.numel() - 1))
    ess = (w.sum().square() / w.square().sum()).item()
    return Optimum(soft_value(r, kl_coef), Estimate.of(r), cov, ess)


def optimal_objective(env: DiffusionSDEVectorEnv, n_samples: int = 65_536, seed: int = 0) -> Optimum:
    """J* and J(pre) by Monte Carlo over the pretrained sampler (zero action) of ``env``."""
    return optimum_from_rewards(rollout(env, None, n_samples, seed).terminal_reward, env.kl_coef)


@torch.no_grad()
def optimal_objective_quadrature(
    model: GaussianMixtureScore,
    reward: RewardModel,
    kl_coef: float,
    s: float,
    half_width: float = 8.0,
    n_grid: int = 801,
) -> tuple[float, float]:
    """``(J*, J(pre))`` of a 2-D task in the continuous-time limit, by quadrature on a square grid.

    The pretrained sampler's terminal law in that limit is the model's ``p_s`` at the grid's last
    diffusion time ``s`` (closed form for a mixture); the midpoint rule on
    ``[-half_width, half_width]^2`` integrates ``p_s`` and ``p_s exp(r / kl_coef)``.

    Raises:
        ValueError: if the box holds less than 1 - 1e-6 of the mass.
    """
    if model.event_shape != (2,):
        raise ValueError(f"quadrature is for 2-D models, got event shape {model.event_shape}")
    device = model.means.device
    h = 2 * half_width / n_grid
    u = torch.linspace(-half_width + h / 2, half_width - h / 2, n_grid, dtype=torch.float64, device=device)
    xy = torch.cartesian_prod(u, u)
    st = torch.tensor(s, dtype=torch.float64, device=device)
    model64 = copy.deepcopy(model).double()
    reward64 = copy.deepcopy(reward).double() if isinstance(reward, nn.Module) else reward
    log_p = torch.cat([model64.log_prob(st, chunk) for chunk in xy.split(65_536)])
    r = torch.cat([reward64(chunk).double() for chunk in xy.split(65_536)])
    log_area = 2 * math.log(h)
    mass = torch.exp(torch.logsumexp(log_p, 0) + log_area).item()
    if abs(mass - 1) > 1e-6:
        raise ValueError(f"the quadrature box holds {mass:.8f} of the mass; widen half_width")
    j_star = kl_coef * (torch.logsumexp(log_p + r / kl_coef, 0) + log_area).item()
    j_pre = (torch.exp(log_p + log_area) * r).sum().item()
    return j_star, j_pre


def normalized_gap(j: Estimate, j_star: Estimate, j_pretrained: Estimate, cov_star_pretrained: float = 0.0) -> Estimate:
    """``(J* - J) / (J* - J(pre))``: 1 = no better than pretrained, 0 = optimal.

    The standard error propagates the three by the delta method: ``j`` independent of the other
    two (evaluate the policy with another seed), which may covary (see :class:`Optimum`).
    """
    d = j_star.mean - j_pretrained.mean
    if d <= 0:
        raise ValueError(f"J* - J(pre) must be positive, got {d}")
    num = j_star.mean - j.mean
    d_star, d_pre = (j.mean - j_pretrained.mean) / d**2, num / d**2  # partial derivatives
    var = (
        (j.se / d) ** 2
        + (d_star * j_star.se) ** 2
        + (d_pre * j_pretrained.se) ** 2
        + 2 * d_star * d_pre * cov_star_pretrained
    )
    return Estimate(num / d, math.sqrt(max(var, 0.0)), min(j.n, j_star.n, j_pretrained.n))
