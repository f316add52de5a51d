"""An analytic Gaussian-mixture "pretrained model": exact score, density and sampler at every noise level.

Under the VP forward process a mixture stays a mixture (docs/design.md, section 3):
``p_s(x) = sum_i w_i N(x; alpha_s mu_i, alpha_s^2 Sigma_i + sigma_s^2 I)``. Each covariance is
diagonalised once, ``Sigma_i = U_i diag(lambda_i) U_i^T``, so at any s the noised covariance is
``U_i diag(alpha_s^2 lambda_i + sigma_s^2) U_i^T``: inverse and log-determinant are elementwise,
and the score needs no linear algebra in the step loop (nothing that breaks CUDA-graph capture).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from diffusion_gym.parametrization import PARAMETRIZATIONS, Parametrization, from_pair
from diffusion_gym.sde import LinearVPSchedule, RectifiedFlowSchedule, Schedule


class GaussianMixtureScore(nn.Module):
    """The exact score of a Gaussian mixture data law noised along a path ``x = alpha x0 + sigma eps``
    (a VP schedule, or the rectified flow), and its exact posterior means: every prediction in closed form.

    Args:
        weights: mixture weights, shape (K,), positive; normalised here.
        means: component means, shape (K, D).
        covariances: component covariances, shape (K, D, D), symmetric positive definite.
        schedule: the path; defaults to :class:`LinearVPSchedule`.
        parametrization: what :meth:`predict` returns (:mod:`diffusion_gym.parametrization`): the
            score (default), or the velocity of a flow-matching model on the rectified-flow path.
    """

    def __init__(
        self,
        weights: Tensor,
        means: Tensor,
        covariances: Tensor,
        schedule: Schedule | None = None,
        parametrization: Parametrization = "score",
    ) -> None:
        super().__init__()
        w = torch.as_tensor(weights, dtype=torch.float64)
        mu = torch.as_tensor(means, dtype=torch.float64)
        cov = torch.as_tensor(covariances, dtype=torch.float64)
        k, d = mu.shape
        if w.shape != (k,) or cov.shape != (k, d, d):
            raise ValueError(
                f"expected weights (K,), means (K, D), covariances (K, D, D); got {w.shape}, {mu.shape}, {cov.shape}"
            )
        if (w <= 0).any():
            raise ValueError("mixture weights must be positive")
        if not torch.allclose(cov, cov.transpose(1, 2)):
            raise ValueError("covariances must be symmetric")
        lam, U = torch.linalg.eigh(cov)
        if (lam <= 0).any():
            raise ValueError("covariances must be positive definite")
        if parametrization not in PARAMETRIZATIONS:
            raise ValueError(f"parametrization must be one of {PARAMETRIZATIONS}, got {parametrization!r}")
        if parametrization == "velocity" and not isinstance(schedule, RectifiedFlowSchedule):
            raise ValueError("a velocity is the rectified flow's: give schedule=RectifiedFlowSchedule()")
        self.schedule = schedule if schedule is not None else LinearVPSchedule()
        self.parametrization = parametrization
        self.event_shape: tuple[int, ...] = (d,)
        self.register_buffer("log_weights", torch.log(w / w.sum()).float())
        self.register_buffer("means", mu.float())
        self.register_buffer("eigvals", lam.float())
        self.register_buffer("eigvecs", U.float())

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    def _component_terms(self, s: Tensor | float, x: Tensor) -> tuple[Tensor, Tensor]:
        """Per-component log-densities (K, B) and whitened residuals ``z_i / var_i`` (K, D, B), where
        ``z_i = U_i^T (x - alpha_s mu_i)`` and ``var_i = alpha_s^2 lambda_i + sigma_s^2``.

        The batch is the innermost dimension (K, D, B): with K and D small, every reduction and
        matrix product then runs along long contiguous rows, several times faster on CPU.
        """
        s = torch.as_tensor(s, dtype=x.dtype, device=x.device)
        alpha, sigma2 = self.schedule.alpha(s), self.schedule.sigma2(s)
        if s.ndim:  # one time per row
            alpha, sigma2 = alpha.reshape(1, 1, -1), sigma2.reshape(1, 1, -1)
        var = alpha**2 * self.eigvals.unsqueeze(-1) + sigma2  # (K, D, 1 or B)
        diff = x.T.unsqueeze(0) - alpha * self.means.unsqueeze(-1)  # (K, D, B)
        z = torch.bmm(self.eigvecs.transpose(1, 2), diff)
        z_over_var = z / var
        log_comp = (
            self.log_weights.unsqueeze(-1)
            - 0.5 * (z * z_over_var).sum(1)
            - 0.5 * torch.log(var).sum(1)
            - 0.5 * x.shape[-1] * math.log(2 * math.pi)
        )
        return log_comp, z_over_var

    def score(self, s: Tensor | float, x: Tensor, cond: Tensor | None = None) -> Tensor:
        """``grad_x log p_s(x) = -sum_i P(i | x) Sigma_i(s)^{-1} (x - alpha_s mu_i)``; ``s`` is a scalar
        or one diffusion time per row."""
        log_comp, z_over_var = self._component_terms(s, x)
        resp = torch.softmax(log_comp, dim=0)
        precision_residual = torch.bmm(self.eigvecs, z_over_var)  # U_i (z_i / var_i)
        return -(resp.unsqueeze(1) * precision_residual).sum(0).T.contiguous()

    def posterior_mean(self, s: Tensor | float, x: Tensor) -> Tensor:
        """``E[x0 | X_s = x] = sum_i P(i | x) (mu_i + alpha_s Sigma_i Sigma_i(s)^{-1} (x - alpha_s mu_i))``,
        finite at pure noise (alpha = 0: the data mean), where the score says nothing of x0."""
        log_comp, z_over_var = self._component_terms(s, x)
        resp = torch.softmax(log_comp, dim=0)
        alpha = self.schedule.alpha(torch.as_tensor(s, dtype=x.dtype, device=x.device))
        if alpha.ndim:
            alpha = alpha.reshape(1, 1, -1)
        shift = torch.bmm(self.eigvecs, alpha * self.eigvals.unsqueeze(-1) * z_over_var)  # (K, D, B)
        posterior = self.means.unsqueeze(-1) + shift
        return (resp.unsqueeze(1) * posterior).sum(0).T.contiguous()

    def predict(self, s: Tensor | float, x: Tensor, cond: Tensor | None = None) -> Tensor:
        """The prediction of form :attr:`parametrization`, from the exact ``E[x0 | x]`` and ``E[eps | x]``."""
        if self.parametrization == "score":
            return self.score(s, x)
        st = torch.as_tensor(s, dtype=x.dtype, device=x.device)
        sigma = self.schedule.sigma(st)
        if sigma.ndim:
            sigma = sigma.reshape(-1, *([1] * (x.ndim - 1)))
        eps = -sigma * self.score(s, x)
        return from_pair(self.parametrization, self.posterior_mean(s, x), eps, sigma)

    def log_prob(self, s: Tensor | float, x: Tensor) -> Tensor:
        """``log p_s(x)``, shape (B,). ``s = 0`` is the data density."""
        return torch.logsumexp(self._component_terms(s, x)[0], dim=0)

    def responsibilities(self, s: Tensor | float, x: Tensor) -> Tensor:
        """Posterior component probabilities ``P(i | X_s = x)``, shape (B, K)."""
        return torch.softmax(self._component_terms(s, x)[0], dim=0).T

    def sample(self, n: int, generator: torch.Generator | None = None, s: float = 0.0) -> Tensor:
        """``n`` exact samples of ``X_s`` (data at s = 0), on the model's device."""
        device = self.means.device
        idx = torch.multinomial(self.log_weights.exp(), n, replacement=True, generator=generator)
        eps = torch.randn(n, self.event_shape[0], generator=generator, device=device)
        x0 = self.means[idx] + torch.einsum("bde,be->bd", self.eigvecs[idx], self.eigvals[idx].sqrt() * eps)
        if s == 0.0:
            return x0
        st = torch.tensor(s, dtype=x0.dtype, device=device)
        noise = torch.randn(x0.shape, generator=generator, device=device)
        return self.schedule.alpha(st) * x0 + self.schedule.sigma(st) * noise
