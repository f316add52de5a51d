"""The analytic mixture: exact score, density, sampler, and its input checks."""

import math

import pytest
import torch

from diffusion_gym.base_models import GaussianMixtureScore, ScoreModel
from diffusion_gym.sde import CosineVPSchedule
from diffusion_gym.tasks.mixture2d.model import mixture_2d


@pytest.fixture
def model64():
    return mixture_2d().double()


def test_is_a_score_model():
    assert isinstance(mixture_2d(), ScoreModel)


@pytest.mark.parametrize("s", [0.0, 1e-3, 0.05, 0.3, 0.999])
def test_score_is_the_gradient_of_the_log_density(model64, s):
    gen = torch.Generator().manual_seed(1)
    x = (torch.randn(64, 2, generator=gen, dtype=torch.float64) * 3).requires_grad_()
    st = torch.tensor(s, dtype=torch.float64)
    (grad,) = torch.autograd.grad(model64.log_prob(st, x).sum(), x)
    torch.testing.assert_close(model64.score(st, x.detach()), grad, rtol=1e-9, atol=1e-9)


def test_one_time_per_row_equals_row_by_row(model64):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(6, 2, generator=gen, dtype=torch.float64) * 2
    s = torch.tensor([0.001, 0.1, 0.2, 0.5, 0.7, 1.0], dtype=torch.float64)
    rows = torch.cat([model64.score(s[i], x[i : i + 1]) for i in range(6)])
    torch.testing.assert_close(model64.score(s, x), rows, rtol=1e-12, atol=1e-12)


def test_density_integrates_to_one(model64):
    u = torch.linspace(-7, 7, 701, dtype=torch.float64)
    xy = torch.cartesian_prod(u, u)
    h = (u[1] - u[0]).item()
    for s in (0.0, 0.2, 1.0):
        mass = model64.log_prob(torch.tensor(s, dtype=torch.float64), xy).exp().sum().item() * h * h
        assert mass == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("s", [0.0, 0.3])
def test_sampler_moments_match_the_closed_form(model64, s):
    """Mean and covariance of 200k samples of X_s within 5 standard errors of the analytic ones."""
    n = 200_000
    x = model64.sample(n, torch.Generator().manual_seed(3), s=s)
    w = model64.log_weights.exp()
    mu, cov_i = model64.means, torch.einsum("kde,ke,kfe->kdf", model64.eigvecs, model64.eigvals, model64.eigvecs)
    st = torch.tensor(s, dtype=torch.float64)
    a, s2 = model64.schedule.alpha(st), model64.schedule.sigma2(st)
    mean = a * (w @ mu)
    second = a**2 * torch.einsum("k,kdf->df", w, cov_i + mu[:, :, None] * mu[:, None, :]) + s2 * torch.eye(2)
    cov = second - mean[:, None] * mean[None, :]
    se_mean = (cov.diagonal() / n).sqrt()
    assert ((x.mean(0) - mean).abs() < 5 * se_mean).all()
    emp_cov = torch.cov(x.T)
    se_cov = (cov.diagonal()[:, None] * cov.diagonal()[None, :] * 3 / n).sqrt()  # generous: kurtotic mixture
    assert ((emp_cov - cov).abs() < 5 * se_cov).all()


def test_components_are_separated_and_weights_unequal():
    m = mixture_2d()
    w = m.log_weights.exp()
    assert m.n_components == 8 and w.max() / w.min() > 3
    assert torch.allclose(w.sum(), torch.tensor(1.0))
    x = m.sample(20_000, torch.Generator().manual_seed(4))
    assert m.responsibilities(0.0, x).max(1).values.mean() > 0.99  # measured 0.994
    eig = m.eigvals
    assert (eig.max(1).values / eig.min(1).values > 5).all()  # anisotropic


def test_other_schedules_are_used():
    m = mixture_2d(CosineVPSchedule())
    x = torch.zeros(1, 2)
    assert not torch.allclose(m.score(torch.tensor(0.5), x), mixture_2d().score(torch.tensor(0.5), x))


@pytest.mark.parametrize(
    ("weights", "means", "covs", "message"),
    [
        (torch.ones(2), torch.zeros(2, 2), torch.eye(2).repeat(3, 1, 1), "expected weights"),
        (torch.tensor([1.0, -1.0]), torch.zeros(2, 2), torch.eye(2).repeat(2, 1, 1), "positive"),
        (torch.ones(2), torch.zeros(2, 2), torch.tensor([[[1.0, 0.5], [0.0, 1.0]]] * 2), "symmetric"),
        (torch.ones(2), torch.zeros(2, 2), torch.tensor([[[1.0, 2.0], [2.0, 1.0]]] * 2), "positive definite"),
    ],
)
def test_bad_parameters_raise(weights, means, covs, message):
    with pytest.raises(ValueError, match=message):
        GaussianMixtureScore(weights, means, covs)


def test_higher_dimensional_mixture():
    gen = torch.Generator().manual_seed(5)
    a = torch.randn(3, 5, 5, generator=gen, dtype=torch.float64)
    covs = a @ a.transpose(1, 2) + 0.1 * torch.eye(5, dtype=torch.float64)
    m = GaussianMixtureScore(torch.tensor([0.2, 0.3, 0.5]), torch.randn(3, 5, generator=gen), covs).double()
    x = torch.randn(10, 5, generator=gen, dtype=torch.float64).requires_grad_()
    (grad,) = torch.autograd.grad(m.log_prob(torch.tensor(0.1, dtype=torch.float64), x).sum(), x)
    torch.testing.assert_close(m.score(torch.tensor(0.1, dtype=torch.float64), x.detach()), grad)
    assert math.isfinite(m.log_prob(0.0, x.detach()).sum().item())
