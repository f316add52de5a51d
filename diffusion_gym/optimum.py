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
``J_oracle <= J_best <= J*_0 <= J*`` (J*_0 below).

**The optimum for the env's initial law.** The env draws ``Y_0 ~ N(0, I)`` (and a condition) itself,
so over the path measures a policy can reach the optimum is Donsker-Varadhan's given ``Y_0``,

    J*_0 = kl_coef E_{Y_0}[ log E_pre[exp(r(Y_N) / kl_coef) | Y_0] ] <= J*,

with equality where ``Y_N`` is independent of ``Y_0`` (:func:`initial_law_optimum`, by nested Monte
Carlo on the env's own chain; ``J_best <= J*_0`` exactly). On the VP tasks at T = 1 (``alpha_T ~
0.0065``) and on the flow SDE at noise level ``sqrt(2)`` (memoryless) the two agree; on the flow SDE
at a small noise level the sample is nearly a function of the noise and ``J*_0`` falls towards J(pre).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from diffusion_gym import kernel
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


@dataclass(frozen=True)
class InitialLawOptimum:
    """``J*_0`` by nested Monte Carlo (:func:`initial_law_optimum`).

    Attributes:
        j_star_0: the jackknifed estimate, its standard error over the outer draws.
        plain: the plain nested estimate ``kl_coef mean_i log mean_j w_ij`` (biased low).
        bias: ``plain - j_star_0``: the plain estimate's bias as the jackknife estimates it, about
            ``-kl_coef E[Var(w | Y_0) / E[w | Y_0]^2] / (2 L)``; the jackknife's own leftover is of order ``1 / L^2``.
        half: the jackknifed estimate from the first half of each row's inner draws (a check: it
            should agree with ``j_star_0`` within their errors where the leftover bias is negligible).
        n_outer: initial states drawn.
        n_inner: pretrained continuations of each.
    """

    j_star_0: Estimate
    plain: float
    bias: float
    half: float
    n_outer: int
    n_inner: int

    def row(self) -> dict[str, float]:
        """The estimates as flat numbers (results files, shipped tables)."""
        return {
            "j_star_0": self.j_star_0.mean,
            "j_star_0_se": self.j_star_0.se,
            "j_star_0_plain": self.plain,
            "j_star_0_bias": self.bias,
            "j_star_0_half": self.half,
            "j_star_0_outer": self.n_outer,
            "j_star_0_inner": self.n_inner,
        }


def _jackknifed_log_mean(z: Tensor) -> tuple[Tensor, Tensor]:
    """Per row of ``z`` (M, L): ``log mean exp(z)`` and its leave-one-out jackknife
    ``L theta - (L - 1) mean_j theta_{-j}`` (the O(1/L) bias of a log of a mean removed), float64."""
    z = z.double()
    n = z.shape[1]
    top = z.amax(1, keepdim=True)
    w = torch.exp(z - top)
    total = w.sum(1, keepdim=True)
    plain = torch.log(total[:, 0] / n) + top[:, 0]
    # A row whose weight sits in one draw leaves a zero sum out: its leave-one-out term is then -inf,
    # and the jackknife says (rightly) that L is too small there; clamp at the float64 floor.
    leave_one_out = torch.log(((total - w) / (n - 1)).clamp_min(1e-300)) + top
    return plain, n * plain - (n - 1) * leave_one_out.mean(1)


@torch.no_grad()
def initial_law_optimum(
    env: DiffusionSDEVectorEnv, n_outer: int, n_inner: int, seed: int = 0, rows: int | None = None
) -> InitialLawOptimum:
    """``J*_0 = kl_coef E_{Y_0}[log E_pre[exp(r(Y_N) / kl_coef) | Y_0]]`` on ``env``'s grid by nested Monte
    Carlo: ``n_outer`` initial states (and conditions, for a conditional model: they are drawn by the
    env too), each continued by ``n_inner`` pretrained chains (the env's own transitions, through its
    :meth:`~diffusion_gym.envs.vector.DiffusionSDEVectorEnv.pretrained_mean` and the kernel).

    The log of an inner mean is biased low by about ``Var(w | Y_0) / (2 L E[w | Y_0]^2)`` (``w = exp(r /
    kl_coef)``, ``L = n_inner``); each row's leave-one-out jackknife removes that term, leaving one of
    order ``1 / L^2``. The estimated bias and a half-``L`` estimate are reported beside it
    (:class:`InitialLawOptimum`), so that a table shows whether ``L`` was large enough. The standard
    error is that of the outer mean of the jackknifed rows.

    Args:
        env: the task's batched env (its grid, integrator, models and kl_coef; its batch is not used).
        n_outer: initial states M (>= 2).
        n_inner: continuations L of each (>= 4, even).
        seed: seeds one generator for every draw.
        rows: chains stepped at once (default: the env's batch, at least one outer state's worth).
    """
    env = getattr(env, "unwrapped", env)
    if env.kl_coef <= 0:
        raise ValueError(f"J*_0 needs kl_coef > 0, got {env.kl_coef}")
    if n_outer < 2 or n_inner < 4 or n_inner % 2:
        raise ValueError(f"need n_outer >= 2 and an even n_inner >= 4, got {n_outer} and {n_inner}")
    gen = torch.Generator(device=env.device).manual_seed(seed)
    per_chunk = max(1, (rows or env.num_envs) // n_inner)
    plain, jack, half = [], [], []
    for start in range(0, n_outer, per_chunk):
        m = min(per_chunk, n_outer - start)
        y0 = torch.randn((m, *env.event_shape), generator=gen, device=env.device, dtype=env.dtype)
        cond = None
        if env.conditions is not None:
            pick = torch.randint(len(env.conditions), (m,), generator=gen, device=env.device)
            cond = env.conditions[pick].repeat_interleave(n_inner)
        y = y0.repeat_interleave(n_inner, 0)
        for k in range(env.n_steps):
            noise = torch.randn(y.shape, generator=gen, device=env.device, dtype=env.dtype)
            y = kernel.step_sample(env.discretization, k, env.pretrained_mean(k, y, cond), noise)
        z = (env.reward_model(y, cond).double() / env.kl_coef).view(m, n_inner)
        row_plain, row_jack = _jackknifed_log_mean(z)
        plain.append(row_plain)
        jack.append(row_jack)
        half.append(_jackknifed_log_mean(z[:, : n_inner // 2])[1])
    kl = env.kl_coef
    jackknifed = kl * torch.cat(jack)
    est = Estimate.of(jackknifed)
    plain_mean = kl * torch.cat(plain).mean().item()
    return InitialLawOptimum(
        est, plain_mean, plain_mean - est.mean, kl * torch.cat(half).mean().item(), n_outer, n_inner
    )


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
