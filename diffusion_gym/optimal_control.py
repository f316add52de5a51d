"""The continuous-time optimal control of a Gaussian-mixture task, in closed form up to quadrature.

Over all controlled reverse SDEs the optimum of ``E[r(Y_T)] - kl_coef KL`` is Doob's h-transform
of the pretrained process (docs/design.md, section 1):

    delta*(t, y) = grad_y log h(t, y) / correction_weight,   h(t, y) = E_pre[exp(r(Y_T) / kl_coef) | Y_t = y].

Where the pretrained SDE is the time reversal of the path's Gaussian forward process (every VP
integrator; the flow SDE at noise level ``sqrt(2)``: :attr:`~diffusion_gym.sde.Discretization.time_reversal`),
given ``Y_t = y`` (diffusion time ``s = T - t``) the pretrained sampler ends at a draw of the
terminal law conditioned on ``X_s = y``. For a Gaussian-mixture base that posterior is itself a
mixture, every term in closed form. Write the terminal law (the data law noised to the grid's
last diffusion time ``s_N``) as ``sum_i w_i N(a_i, U_i diag(lam_i) U_i^T)`` and the forward step
from ``s_N`` to ``s`` on the path ``x = alpha x0 + sigma eps`` as ``X_s = rho X_{s_N} + tau xi`` with
``rho = alpha_s / alpha_{s_N}`` and ``tau^2 = sigma_s^2 - rho^2 sigma_{s_N}^2`` (``1 - rho^2`` on VP).
Then component i's posterior is ``N(m_i(y), U_i diag(c_i) U_i^T)`` with
``c_i = lam_i tau^2 / (tau^2 + rho^2 lam_i)`` and
``m_i = a_i + U_i diag(c_i rho / tau^2) U_i^T (y - rho a_i)``, and its weight is the model's
responsibility ``pi_i(y) = P(i | X_s = y)``. With quadrature nodes ``x_iq = m_i + U_i (sqrt(c_i) z_q)``
and weights ``omega_q``,

    log h = logsumexp_{i,q} [log pi_i + log omega_q + r(x_iq) / kl_coef],
    grad log h = sum_{i,q} P_iq [grad log pi_i + (rho / tau^2) U_i (sqrt(c_i) z_q)],

``P`` the softmax of the same terms. The second term is Stein's identity for the Gaussian posterior
(``grad_m E f(m + L z) = L^{-T} E[z f]``, chained through ``dm_i / dy``): the reward's gradient is
never needed, so any reward (a black box too) is exact up to the quadrature. Quadrature: a
Gauss-Hermite tensor rule in low dimension, antithetic, moment-matched Monte Carlo draws of the
posterior in high dimension (drawn once: the control is a deterministic function of (t, y)).

Doob's transform adds ``g^2 grad log h`` to the drift; the env's correction moves it by
``correction_weight * g^2 * delta`` (:attr:`~diffusion_gym.sde.Discretization.correction_weight`),
so the optimal correction is ``delta* = grad log h / correction_weight``: ``grad log h`` on VP,
``2 grad log h`` on the flow SDE.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from diffusion_gym.base_models.gaussian_mixture import GaussianMixtureScore
from diffusion_gym.envs.vector import DiffusionSDEVectorEnv
from diffusion_gym.evaluation import Estimate
from diffusion_gym.rewards.protocol import RewardModel


def gauss_hermite_rule(nodes_per_dim: int, dim: int) -> tuple[Tensor, Tensor]:
    """The tensor-product Gauss-Hermite rule for ``N(0, I_dim)``: nodes (Q, dim) and log weights (Q,), float64."""
    x, w = np.polynomial.hermite_e.hermegauss(nodes_per_dim)
    x1 = torch.as_tensor(x, dtype=torch.float64)
    logw1 = torch.as_tensor(np.log(w / math.sqrt(2 * math.pi)), dtype=torch.float64)
    grids = torch.meshgrid(*([torch.arange(nodes_per_dim)] * dim), indexing="ij")
    idx = torch.stack([g.flatten() for g in grids], dim=1)
    return x1[idx], logw1[idx].sum(1)


def antithetic_normal_rule(n_samples: int, dim: int, seed: int) -> tuple[Tensor, Tensor]:
    """``n_samples`` draws of ``N(0, I_dim)`` in antithetic pairs (z, -z), whitened so that their second
    moment is exactly the identity (the rule is then exact for quadratic integrands, as Gauss-Hermite
    is), with equal log weights, float64."""
    if n_samples < 2 or n_samples % 2:
        raise ValueError(f"n_samples must be an even number >= 2, got {n_samples}")
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n_samples // 2, dim, generator=gen, dtype=torch.float64)
    z = torch.cat([z, -z])
    if n_samples > dim:
        lam, vecs = torch.linalg.eigh(z.T @ z / n_samples)
        z = z @ (vecs * lam.rsqrt()) @ vecs.T
    return z, torch.full((n_samples,), -math.log(n_samples), dtype=torch.float64)


class MixtureOptimalControl:
    """``delta*(t, y) = grad_y log h(t, y) / correction_weight`` of a Gaussian-mixture task (see the module
    docstring).

    Args:
        model: the base model's exact mixture score.
        reward: the terminal reward the control optimises (the env's proxy).
        kl_coef: the price per nat of KL (> 0).
        t_end: the environment time of the grid's last point (the sampler stops there).
        correction_weight: the drift's weight of the env's correction per unit of diffusion variance
            (:attr:`~diffusion_gym.sde.Discretization.correction_weight`; 1 on VP, 1/2 on the flow SDE).
        gauss_hermite: nodes per dimension of the Gauss-Hermite rule, used while
            ``gauss_hermite ** D <= max_nodes``.
        max_nodes: above this many tensor-rule nodes, ``max_nodes`` antithetic posterior draws are used.
        seed: seeds the posterior draws of the Monte Carlo rule.
        skip: in reward units: a component whose responsibility at a state is below
            ``exp(-skip / kl_coef)`` of the largest one's is left out of the sums there, since it would
            need a reward ``skip`` above the others' to matter (default 70; rewards here span a few units).
        chunk: rows per reward evaluation batch (``chunk * K * Q`` reward calls at once).
    """

    def __init__(
        self,
        model: GaussianMixtureScore,
        reward: RewardModel,
        kl_coef: float,
        t_end: float,
        correction_weight: float = 1.0,
        gauss_hermite: int = 4,
        max_nodes: int = 512,
        seed: int = 0,
        skip: float = 70.0,
        chunk: int = 1024,
    ) -> None:
        if not isinstance(model, GaussianMixtureScore):
            raise TypeError(
                f"the optimal control is closed-form for Gaussian-mixture bases, got {type(model).__name__}"
            )
        if not kl_coef > 0:
            raise ValueError(f"the optimal control needs kl_coef > 0, got {kl_coef}")
        self.model, self.reward, self.kl_coef, self.chunk = model, reward, float(kl_coef), int(chunk)
        self.correction_weight = float(correction_weight)
        self.skip_logit = float(skip) / self.kl_coef
        tensors = [*reward.parameters(), *reward.buffers()] if isinstance(reward, nn.Module) else []
        self.reward_dtype = next((p.dtype for p in tensors if p.is_floating_point()), None)
        self.schedule = model.schedule
        self.T = float(self.schedule.T)
        self.s_end = self.T - float(t_end)
        if not 0 < self.s_end < self.T:
            raise ValueError(f"t_end must lie in (0, T), got {t_end}")
        dim = model.event_shape[0]
        if gauss_hermite**dim <= max_nodes:
            z, logw = gauss_hermite_rule(gauss_hermite, dim)
            self.rule = f"Gauss-Hermite {gauss_hermite}^{dim}"
        else:
            z, logw = antithetic_normal_rule(max_nodes, dim, seed)
            self.rule = f"{max_nodes} antithetic posterior draws"
        s_end = torch.tensor(self.s_end, dtype=torch.float64)
        alpha_end, sigma2_end = self.schedule.alpha(s_end), self.schedule.sigma2(s_end)
        self.alpha_end, self.sigma2_end = float(alpha_end), float(sigma2_end)
        device = model.means.device
        self.nodes, self.log_node_weights = z.to(device), logw.to(device)
        # The terminal law: the data mixture noised to s_end (same eigenvectors), in float64.
        self.end_means = alpha_end * model.means.double()
        self.end_eigvals = alpha_end**2 * model.eigvals.double() + sigma2_end
        self.eigvecs = model.eigvecs.double()
        self.log_weights = model.log_weights.double()

    @staticmethod
    def applies(env: DiffusionSDEVectorEnv) -> bool:
        """Whether the control is exact for ``env``'s task: a Gaussian-mixture base with a KL price,
        sampled by the time reversal of its forward process (not the flow SDE at another noise level)."""
        env = getattr(env, "unwrapped", env)
        exact = env.discretization.time_reversal
        return isinstance(env.score_model, GaussianMixtureScore) and env.kl_coef > 0 and exact

    @classmethod
    def for_env(cls, env: DiffusionSDEVectorEnv, **kwargs: Any) -> MixtureOptimalControl:
        """The optimal control of ``env``'s task: its base model, terminal reward, kl_coef and end time."""
        env = getattr(env, "unwrapped", env)
        if not env.discretization.time_reversal:
            raise ValueError(
                "the closed-form optimal control needs the time reversal of the forward process; the flow "
                f"SDE at noise level {env.noise_level} is not it (noise_level = sqrt(2) is)"
            )
        weight = env.discretization.correction_weight
        return cls(env.score_model, env.reward_model, env.kl_coef, float(env.grid[-1]), weight, **kwargs)

    def policy(self, env: DiffusionSDEVectorEnv) -> Callable[[dict[str, Tensor]], Tensor]:
        """The control as an action map of ``env`` (``delta* / action_scale``, clipped to the action box)."""
        env = getattr(env, "unwrapped", env)
        return lambda obs: self.action(env, obs["t"][:, 0], obs["x"])

    def action(self, env: DiffusionSDEVectorEnv, t: Tensor, x: Tensor) -> Tensor:
        """``delta*(t, x)`` as ``env``'s action: divided by its action scale, clipped to the action box."""
        return (self(t, x) / env.action_scale_at(t)[:, None]).clamp(-1, 1)

    def _terms(self, t: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """The logits of h per (row, component, node), (B, K, Q), and what delta* is summed from:
        ``grad log pi`` (B, K, D), the nodes' offsets from their posterior means (A, Q, D) and
        ``rho / tau^2`` (B,), for the A (row, component) pairs ``(rows, comps)`` that carry
        weight. A component whose responsibility is below ``exp(-skip / kl_coef)`` of the row's largest
        is left out (its logits are -inf): it would need a reward ``skip`` above the others' to
        matter, and late in the chain most rows sit in one component."""
        s = (self.T - t.double()).clamp_min(self.s_end + 1e-12)
        rho = self.schedule.alpha(s) / self.alpha_end  # (B,)
        rho2 = rho**2
        noise = self.schedule.sigma2(s) - rho2 * self.sigma2_end  # tau^2: 1 - rho^2 on VP
        lam = self.end_eigvals  # (K, D)
        var = rho2[:, None, None] * lam + noise[:, None, None]  # (B, K, D): X_s | component, eigenbasis
        y64 = y.double()
        resid = torch.einsum("kde,bkd->bke", self.eigvecs, y64[:, None, :] - rho[:, None, None] * self.end_means)
        log_comp = self.log_weights - 0.5 * (resid**2 / var + torch.log(var)).sum(-1)  # (B, K), up to a constant
        log_pi = torch.log_softmax(log_comp, dim=1)
        grad_log_comp = -torch.einsum("kde,bke->bkd", self.eigvecs, resid / var)  # (B, K, D)
        grad_log_pi = grad_log_comp - (log_pi.exp()[..., None] * grad_log_comp).sum(1, keepdim=True)
        rows, comps = torch.nonzero(log_pi >= log_pi.amax(1, keepdim=True) - self.skip_logit, as_tuple=True)
        post_var = lam[comps] * noise[rows, None] / var[rows, comps]  # c_i, (A, D)
        # c rho / tau^2 U^T (y - rho a), in the eigenbasis
        gain = (lam[comps] * rho[rows, None] / var[rows, comps]) * resid[rows, comps]
        eigvecs = self.eigvecs[comps]  # (A, D, D)
        post_mean = self.end_means[comps] + torch.einsum("ade,ae->ad", eigvecs, gain)  # (A, D)
        offsets = torch.einsum("ade,aqe->aqd", eigvecs, post_var.sqrt()[:, None, :] * self.nodes)  # (A, Q, D)
        r = self._reward((post_mean[:, None, :] + offsets).flatten(0, 1)).view(offsets.shape[:2])
        logits = torch.full((*log_pi.shape, self.nodes.shape[0]), -math.inf, dtype=torch.float64, device=y.device)
        logits[rows, comps] = log_pi[rows, comps, None] + self.log_node_weights + r / self.kl_coef
        return logits, grad_log_pi, offsets, torch.stack([rows, comps]), rho / noise

    def _reward(self, x: Tensor) -> Tensor:
        """The reward in its own precision (a float32 network stays float32), returned in float64."""
        return self.reward(x.to(self.reward_dtype or x.dtype)).double()

    @torch.no_grad()
    def log_h(self, t: Tensor | float, y: Tensor) -> Tensor:
        """``log h(t, y)`` for states ``y`` (B, D) at environment times ``t`` (scalar or (B,)), float64."""
        t = torch.as_tensor(t, dtype=torch.float64, device=y.device).expand(y.shape[0])
        chunks = zip(t.split(self.chunk), y.split(self.chunk), strict=True)
        return torch.cat([torch.logsumexp(self._terms(tc, yc)[0].flatten(1), 1) for tc, yc in chunks])

    @torch.no_grad()
    def initial_value(self, n: int, seed: int = 0) -> Estimate:
        """``J*_0 = kl_coef E[log h(0, Y_0)]``, ``Y_0 ~ N(0, I)``, in continuous time: the optimum over path
        measures with the env's initial law, from ``n`` draws of ``Y_0`` (the quadrature of ``log h``
        is the rule's; its Monte Carlo error over ``Y_0`` is the standard error)."""
        gen = torch.Generator(device=self.model.means.device).manual_seed(seed)
        y0 = torch.randn(n, self.model.event_shape[0], generator=gen, dtype=torch.float64, device=gen.device)
        return Estimate.of(self.kl_coef * self.log_h(0.0, y0))

    @torch.no_grad()
    def __call__(self, t: Tensor | float, y: Tensor) -> Tensor:
        """``delta*(t, y) = grad log h(t, y) / correction_weight``, shaped and typed like ``y``."""
        t = torch.as_tensor(t, dtype=torch.float64, device=y.device).expand(y.shape[0])
        out = []
        for tc, yc in zip(t.split(self.chunk), y.split(self.chunk), strict=True):
            logits, grad_log_pi, offsets, (rows, comps), gain = self._terms(tc, yc)
            p = torch.softmax(logits.flatten(1), 1).view(logits.shape)
            spread = torch.einsum("aq,aqd->ad", p[rows, comps], offsets)
            stein = torch.zeros_like(grad_log_pi[:, 0]).index_add_(0, rows, spread)
            out.append(torch.einsum("bk,bkd->bd", p.sum(2), grad_log_pi) + gain[:, None] * stein)
        return (torch.cat(out) / self.correction_weight).to(y.dtype)
