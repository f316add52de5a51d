"""The base model of ``DiffusionSDE-Mixture-v0``: an 8-component Gaussian mixture in D dimensions, exact score."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from diffusion_gym.base_models.gaussian_mixture import GaussianMixtureScore
from diffusion_gym.parametrization import Parametrization
from diffusion_gym.sde import Schedule

WEIGHTS = (0.25, 0.2, 0.15, 0.12, 0.1, 0.08, 0.06, 0.04)
"""The mixture weights, heaviest first; the last component is the rare mode."""
RARE = len(WEIGHTS) - 1
"""The index of the rare mode (weight 0.04)."""
MIN_SEPARATION = 3.0
"""The smallest distance between two component means."""
STD_RANGE = (0.15, 0.6)
"""The range of the components' standard deviations along their principal axes."""
SEED_BASE = 20_240_000
"""The construction of dimension D draws from ``torch.Generator().manual_seed(SEED_BASE + D)``."""


def mean_radius(dim: int) -> float:
    """The norm of every component mean: 3, or 4 in two dimensions (eight points 3 apart on a circle
    need a radius of at least ``1.5 / sin(pi / 8) = 3.92``)."""
    return 4.0 if dim == 2 else 3.0


def _spread_directions(u: Tensor, min_chord: float, max_iter: int = 20_000, step: float = 0.01) -> Tensor:
    """Unit vectors ``u`` (K, D) pushed apart on the sphere until every pairwise distance is at least
    ``min_chord``: projected gradient steps on the Coulomb energy ``sum_{i<j} 1 / |u_i - u_j|``,
    stopping at the first configuration that satisfies the bound (so the directions stay random
    where they already do)."""
    k = u.shape[0]
    off = ~torch.eye(k, dtype=torch.bool)
    for _ in range(max_iter):
        diff = u[:, None, :] - u[None, :, :]
        dist = diff.norm(dim=-1)
        if dist[off].min() >= min_chord:
            return u
        dist = dist + torch.eye(k, dtype=u.dtype)  # no self-force
        force = (diff / dist[..., None] ** 3).sum(1)
        force = force - (force * u).sum(-1, keepdim=True) * u  # tangent to the sphere
        u = u + step * force
        u = u / u.norm(dim=-1, keepdim=True)
    raise RuntimeError(f"could not spread {k} directions to pairwise distances >= {min_chord}")


def _random_rotation(dim: int, generator: torch.Generator) -> Tensor:
    """A Haar-random orthogonal matrix (QR of a Gaussian matrix, column signs fixed)."""
    q, r = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


def mixture_parameters(dim: int) -> tuple[Tensor, Tensor, Tensor]:
    """The weights (K,), means (K, D) and covariances (K, D, D) of :func:`mixture`, float64.

    Args:
        dim: the dimension D (an integer >= 2).
    """
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 2:
        raise ValueError(f"dim must be an integer >= 2, got {dim!r}")
    gen = torch.Generator().manual_seed(SEED_BASE + dim)
    k = len(WEIGHTS)
    weights = torch.tensor(WEIGHTS, dtype=torch.float64)
    radius = mean_radius(dim)
    u = torch.randn(k, dim, generator=gen, dtype=torch.float64)
    u = _spread_directions(u / u.norm(dim=-1, keepdim=True), MIN_SEPARATION / radius)
    means = radius * u
    lo, hi = math.log(STD_RANGE[0]), math.log(STD_RANGE[1])
    stds = torch.exp(lo + (hi - lo) * torch.rand(k, dim, generator=gen, dtype=torch.float64))
    rotations = torch.stack([_random_rotation(dim, gen) for _ in range(k)])
    covariances = torch.einsum("kde,ke,kfe->kdf", rotations, stds**2, rotations)
    covariances = (covariances + covariances.transpose(1, 2)) / 2
    return weights, means, covariances


def mixture(
    dim: int, schedule: Schedule | None = None, parametrization: Parametrization = "score"
) -> GaussianMixtureScore:
    """The D-dimensional 8-component mixture of ``DiffusionSDE-Mixture-v0`` (docs/design.md, section 3).

    Deterministic for each ``dim``: built in float64 from ``torch.Generator().manual_seed(20240000 + dim)``.

    - Weights 0.25, 0.2, 0.15, 0.12, 0.1, 0.08, 0.06 and 0.04 (the rare mode, component 7).
    - Means on the sphere of radius 3 (4 when D = 2), in random directions pushed apart (Coulomb
      repulsion on the sphere, stopped as soon as it holds) until every two means are at least 3 apart.
    - Covariances ``R_i diag(sigma_i^2) R_i^T``: ``R_i`` a Haar-random rotation, the D standard
      deviations ``sigma_i`` log-uniform in [0.15, 0.6]; two means are at least 5 of the largest
      standard deviations apart.

    Args:
        dim: the dimension D (an integer >= 2).
        schedule: the path: a VP schedule (default: the linear one) or the rectified flow.
        parametrization: what the model predicts (``"velocity"`` for a flow-matching model).

    Raises:
        ValueError: ``dim`` is not an integer >= 2.
    """
    return GaussianMixtureScore(*mixture_parameters(dim), schedule, parametrization)
