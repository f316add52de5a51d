"""Fréchet distance against closed forms."""

import math

import pytest
import torch

from diffusion_gym.metrics import frechet_distance


def test_frechet_distance_of_gaussians_has_the_closed_form():
    """Two large Gaussian samples: the estimate matches ||mu||^2 + tr(A + B - 2 sqrt(AB)) for diagonal
    covariances, within sampling error."""
    gen = torch.Generator().manual_seed(0)
    n = 200_000
    a = torch.randn(n, 3, generator=gen, dtype=torch.float64) * torch.tensor([1.0, 2.0, 0.5])
    b = torch.randn(n, 3, generator=gen, dtype=torch.float64) * torch.tensor([1.5, 1.0, 0.5]) + torch.tensor(
        [1.0, 0, 0]
    )
    var_a, var_b = torch.tensor([1.0, 4.0, 0.25]), torch.tensor([2.25, 1.0, 0.25])
    exact = 1.0 + (var_a + var_b - 2 * (var_a * var_b).sqrt()).sum().item()
    assert frechet_distance(a, b) == pytest.approx(exact, abs=0.03)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_with_non_commuting_covariances():
    """Full covariances that do not commute (where tr(sqrt(A) sqrt(B)) is wrong): matches scipy's sqrtm."""
    import numpy as np
    from scipy.linalg import sqrtm

    cov_a = np.array([[4.0, 1.9], [1.9, 1.0]])
    cov_b = np.array([[4.0, -1.9], [-1.9, 1.0]])
    exact = np.trace(cov_a + cov_b - 2 * np.real(sqrtm(cov_a @ cov_b))) + 0.5  # + ||(0.5, 0.5)||^2
    gen = torch.Generator().manual_seed(2)
    n = 400_000
    a = torch.randn(n, 2, generator=gen, dtype=torch.float64) @ torch.linalg.cholesky(torch.tensor(cov_a)).T
    b = torch.randn(n, 2, generator=gen, dtype=torch.float64) @ torch.linalg.cholesky(torch.tensor(cov_b)).T + 0.5
    assert frechet_distance(a, b) == pytest.approx(exact, abs=0.05)
    wrong = np.trace(cov_a + cov_b - 2 * np.real(sqrtm(cov_a)) @ np.real(sqrtm(cov_b))) + 0.5
    assert abs(wrong - exact) > 1.0  # the test tells the two formulas apart


def test_frechet_distance_is_symmetric_and_checks_shapes():
    gen = torch.Generator().manual_seed(1)
    a, b = torch.randn(500, 4, generator=gen), torch.randn(400, 4, generator=gen) + 0.3
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-9)
    assert math.isfinite(frechet_distance(a, b))
    with pytest.raises(ValueError, match="equal dimension"):
        frechet_distance(a, b[:, :3])
