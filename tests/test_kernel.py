"""The transition kernel: the one-step and whole-path forms agree, and each is the Gaussian it claims."""

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from diffusion_gym import kernel
from diffusion_gym.sde import LinearVPSchedule, discretize, time_grid
from diffusion_gym.tasks.mixture2d.model import mixture_2d


@pytest.fixture(params=["euler_maruyama", "ddpm", "exponential"])
def disc(request):
    grid = time_grid(1.0, n_steps=12)
    with pytest.warns(UserWarning) if request.param == "euler_maruyama" else _nothing():
        return discretize(LinearVPSchedule(), grid, request.param, action_scale=lambda t: 2.0 + t)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *args):
        return False


def _path(disc, b=5, seed=0):
    """A chain of the 2-D mixture under random actions: states, pretrained means, deltas, noise."""
    gen = torch.Generator().manual_seed(seed)
    model = mixture_2d().double()
    n = disc.n_steps
    y = torch.randn(b, 2, generator=gen, dtype=torch.float64)
    states, means, deltas = [y], [], []
    for k in range(n):
        delta = kernel.step_delta(disc, k, torch.rand(b, 2, generator=gen, dtype=torch.float64) * 2 - 1)
        m = kernel.step_mean(disc, k, y, model.score(disc.s[k], y))
        noise = torch.randn(b, 2, generator=gen, dtype=torch.float64)
        y = kernel.step_sample(disc, k, kernel.step_shift(disc, k, m, delta), noise)
        states.append(y)
        means.append(m)
        deltas.append(delta)
    return torch.stack(states), torch.stack(means), torch.stack(deltas), model


def test_path_functions_equal_the_step_functions(disc):
    states, means, deltas, model = _path(disc)
    path_logp = kernel.path_log_prob(disc, states[1:], means, deltas)
    path_kl = kernel.path_kl(disc, deltas)
    for k in range(disc.n_steps):
        shifted = kernel.step_shift(disc, k, means[k], deltas[k])
        step_logp = kernel.step_log_prob(disc, k, states[k + 1], shifted)
        torch.testing.assert_close(path_logp[k], step_logp, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(path_kl[k], kernel.step_kl(disc, k, deltas[k]), rtol=1e-12, atol=0)
        # The controlled mean in one go equals pretrained mean + b_k delta, to rounding.
        direct = kernel.step_mean(disc, k, states[k], model.score(disc.s[k], states[k]), deltas[k])
        torch.testing.assert_close(direct, shifted, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(kernel.path_delta(disc, deltas / disc.action_scale[:, None, None]), deltas)
    # The score recovered from the stored means is the model's.
    score = torch.stack([model.score(disc.s[k], states[k]) for k in range(disc.n_steps)])
    torch.testing.assert_close(kernel.path_score(disc, states, means), score, rtol=1e-10, atol=1e-10)


def test_log_prob_and_kl_are_the_gaussians(disc):
    states, means, deltas, _ = _path(disc, seed=1)
    b_k = disc.score_scale[:, None, None]
    std = disc.noise_std[:, None, None]
    expected = Normal(means + b_k * deltas, std).log_prob(states[1:]).sum(-1)
    torch.testing.assert_close(kernel.path_log_prob(disc, states[1:], means, deltas), expected, rtol=1e-12, atol=1e-12)
    exact_kl = kl_divergence(Normal(means + b_k * deltas, std), Normal(means, std)).sum(-1)
    torch.testing.assert_close(kernel.path_kl(disc, deltas), exact_kl, rtol=1e-12, atol=1e-14)


def test_gaussian_log_prob_matches_torch_distributions():
    gen = torch.Generator().manual_seed(0)
    mean = torch.randn(5, 3, 4, generator=gen, dtype=torch.float64)
    y = torch.randn(5, 3, 4, generator=gen, dtype=torch.float64)
    expected = Normal(mean, 0.37).log_prob(y).flatten(1).sum(1)
    torch.testing.assert_close(kernel.gaussian_log_prob(y, mean, 0.37), expected, rtol=1e-13, atol=1e-13)
    std = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64).view(3, 1, 1)
    y3, mean3 = y.view(3, 5, 4), mean.view(3, 5, 4)
    expected3 = Normal(mean3, std).log_prob(y3).sum(-1)
    got = kernel.gaussian_log_prob(y3, mean3, std, batch_dims=2)
    torch.testing.assert_close(got, expected3, rtol=1e-13, atol=1e-13)
    assert math.isfinite(float(kernel.gaussian_log_prob(y, mean, torch.tensor(1.0, dtype=torch.float64)).sum()))


def test_float32_discretization_keeps_float64_constants():
    d64 = discretize(LinearVPSchedule(), time_grid(1.0, n_steps=50), "ddpm", action_scale=4.0)
    d32 = d64.to(dtype=torch.float32)
    assert d32.constants == d64.constants and d32.noise_std.dtype == torch.float32
    assert d64.constants[3].noise_std == float(d64.noise_std[3]) and d64.constants[3].action_scale == 4.0
    with pytest.raises(ValueError, match="action_scale"):
        discretize(LinearVPSchedule(), time_grid(1.0, n_steps=5), "ddpm", action_scale=lambda t: -t)
