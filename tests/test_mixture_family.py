"""The D-dimensional Gaussian-mixture task ``DiffusionSDE-Mixture-v0`` (docs/design.md, sections 1-3):
exact score, env contract, J* against quadrature, the shipped proxies, bad input, the gold's structure."""

import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import diffusion_gym  # noqa: F401  (registers the env ids)
from diffusion_gym.optimum import optimal_objective, optimal_objective_quadrature, optimum_from_rewards
from diffusion_gym.rewards.bradley_terry import pairwise_agreement
from diffusion_gym.tasks.mixture.env import make_vector_env, task_models
from diffusion_gym.tasks.mixture.model import MIN_SEPARATION, RARE, WEIGHTS, mixture, mixture_parameters
from diffusion_gym.tasks.mixture.rewards import (
    SHIPPED_DIMS,
    ProxyConfig,
    comparison_inputs,
    gap_pair,
    gold_bumps,
    gold_utility,
    load_proxy,
)


@pytest.mark.parametrize("dim", SHIPPED_DIMS)
def test_score_is_the_gradient_of_the_log_density(dim):
    """In float64 the closed-form score equals autograd's gradient of ``log p_s`` to 1e-9 (relative to
    its norm), from the data (s = 0) to pure noise, at states drawn from ``p_s`` and around them."""
    model = mixture(dim).double()
    gen = torch.Generator().manual_seed(dim)
    for s in (0.0, 0.01, 0.1, 0.4, 1.0):
        x = model.sample(64, gen, s=s) + 0.3 * torch.randn(64, dim, generator=gen, dtype=torch.float64)
        x.requires_grad_(True)
        (grad,) = torch.autograd.grad(model.log_prob(s, x).sum(), x)
        score = model.score(s, x.detach())
        scale = grad.norm(dim=-1, keepdim=True).clamp_min(1.0)
        assert ((score - grad) / scale).abs().max().item() < 1e-9


@pytest.mark.parametrize("dim", [2, 3, 8, 32])
def test_mixture_construction(dim):
    """Deterministic; the stated weights; means at least 3 apart; standard deviations in [0.15, 0.6]."""
    w, mu, cov = mixture_parameters(dim)
    w2, mu2, cov2 = mixture_parameters(dim)
    assert torch.equal(mu, mu2) and torch.equal(cov, cov2)
    assert torch.allclose(w, torch.tensor(WEIGHTS, dtype=torch.float64)) and w.argmin().item() == RARE
    dist = torch.cdist(mu, mu) + 1e9 * torch.eye(len(w), dtype=torch.float64)
    assert dist.min().item() >= MIN_SEPARATION - 1e-9
    std = torch.linalg.eigvalsh(cov).sqrt()
    assert std.min().item() >= 0.15 - 1e-9 and std.max().item() <= 0.6 + 1e-9
    assert not torch.equal(mu, mixture_parameters(dim + 1)[1][:, :dim])


@pytest.mark.parametrize("dim", [2, 8])
def test_gymnasium_and_sb3_checkers_pass_without_warnings(dim):
    """Both checkers, silent, render check included (D > 2 draws the first two coordinates)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(gym.make("DiffusionSDE-Mixture-v0", dim=dim).unwrapped)
        sb3_check_env(gym.make("DiffusionSDE-Mixture-v0", dim=dim))


def test_rendering_beyond_two_dimensions():
    """An 8-D batch renders as an RGB frame of its first two coordinates."""
    env = gym.make("DiffusionSDE-Mixture-v0", dim=8, render_mode="rgb_array", n_steps=2)
    env.reset(seed=0)
    frame = env.render()
    assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3 and frame.std() > 0


@pytest.mark.parametrize("dim", SHIPPED_DIMS)
def test_make_and_make_vec_have_the_dimension(dim):
    env = gym.make("DiffusionSDE-Mixture-v0", dim=dim, n_steps=5)
    assert env.observation_space["x"].shape == (dim,) and env.action_space.shape == (dim,)
    assert env.unwrapped.batched.integrator == "exponential"
    obs, _ = env.reset(seed=0)
    for _ in range(5):
        obs, reward, terminated, _, info = env.step(env.action_space.sample())
    assert terminated and obs["x"].shape == (dim,) and np.isfinite(info["gold_reward"])
    venv = gym.make_vec("DiffusionSDE-Mixture-v0", num_envs=16, vectorization_mode="vector_entry_point", dim=dim)
    obs, _ = venv.reset(seed=0)
    assert obs["x"].shape == (16, dim) and venv.single_action_space.shape == (dim,)


def test_monte_carlo_optimum_matches_quadrature_in_two_dimensions():
    """J* and J(pre) at D = 2 from exact samples of ``p_eps`` agree with quadrature within 3.5 standard
    errors, and from the env's own pretrained sampler (N = 100, exponential integrator) within 4
    (measured: quadrature 4.097 / 1.246; exact samples 4.106 ± 0.015 / 1.250 ± 0.007; env 4.076 ±
    0.021 / 1.251 ± 0.011)."""
    env = make_vector_env(16_384, dim=2, n_steps=100)
    eps = env.T - float(env.grid[-1])
    j_star_quad, j_pre_quad = optimal_objective_quadrature(env.score_model, env.reward_model, env.kl_coef, eps)
    x = env.score_model.sample(65_536, torch.Generator().manual_seed(5), s=eps)
    with torch.no_grad():
        exact = optimum_from_rewards(env.reward_model(x), env.kl_coef)
    assert exact.j_star.mean == pytest.approx(j_star_quad, abs=3.5 * exact.j_star.se)
    assert exact.j_pretrained.mean == pytest.approx(j_pre_quad, abs=3.5 * exact.j_pretrained.se)
    opt = optimal_objective(env, 32_768, seed=0)
    assert opt.j_star.mean == pytest.approx(j_star_quad, abs=4 * opt.j_star.se)
    assert opt.j_pretrained.mean == pytest.approx(j_pre_quad, abs=4 * opt.j_pretrained.se)
    assert opt.j_star.mean - opt.j_pretrained.mean > 2.5  # the gold's calibration, seen through the proxy


@pytest.mark.parametrize("dim", SHIPPED_DIMS)
def test_shipped_proxy_orders_fresh_pairs_as_the_gold(dim):
    """On 20,000 fresh pairs (another seed than training's) the proxy orders >= 0.95 of those whose gold
    utilities differ by more than 0.1 as the gold does (trained: >= 0.99), and >= 0.9 of pretrained pairs."""
    proxy, gold = load_proxy(dim), gold_utility(dim)
    gen = torch.Generator().manual_seed(12_345)
    config = ProxyConfig(dim=dim)
    a = comparison_inputs(dim, 20_000, gen, config.noise, config.reach)
    b = comparison_inputs(dim, 20_000, gen, config.noise, config.reach)
    with torch.no_grad():
        clear = (gold(a) - gold(b)).abs() > 0.1
    assert clear.sum() > 5_000
    assert pairwise_agreement(proxy, gold, a[clear], b[clear]) >= 0.95
    data_a, data_b = mixture(dim).sample(10_000, gen), mixture(dim).sample(10_000, gen)
    assert pairwise_agreement(proxy, gold, data_a, data_b) >= 0.9


def test_bad_input_is_refused():
    for kwargs, match in [
        ({"dim": 1}, "dim: expected an integer >= 2, got 1"),
        ({"dim": 2.0}, "dim: expected an integer >= 2, got 2.0"),
        ({"dim": 5, "reward": "proxy"}, r"shipped dims: \[2, 8, 32\]"),
        ({"reward": "nope"}, "reward: expected one of 'proxy', 'gold', got 'nope'"),
    ]:
        with pytest.raises(ValueError, match=match):
            task_models(**kwargs)
        with pytest.raises(ValueError, match=match):
            gym.make("DiffusionSDE-Mixture-v0", **kwargs)
    with pytest.raises(ValueError, match="shipped dims"):
        load_proxy(5)
    model, reward, gold = task_models(dim=5, reward="gold")  # the gold works in any dimension
    assert model.event_shape == (5,) and reward(torch.zeros(3, 5)).shape == (3,)


@pytest.mark.parametrize("dim", SHIPPED_DIMS)
def test_gold_has_its_stated_structure(dim):
    """A bump on the rare mode's mean; one farther than 2 component standard deviations (along any
    axis, and in the Mahalanobis norm) from every mean, higher than the others; a low one on the
    heaviest mode; the pretrained law's reward-tilted version moves mass to the rare mode and the gap."""
    w, mu, cov = mixture_parameters(dim)
    centers, heights, lengths = gold_bumps(dim)
    gold = gold_utility(dim)
    assert torch.equal(centers[1], mu[RARE]) and w[RARE] == w.min()
    assert torch.equal(centers[2], mu[0]) and heights[2] < heights[1] and heights[2] < heights[0]
    off = centers[0]
    max_std = torch.linalg.eigvalsh(cov).sqrt().max(dim=1).values
    assert ((off - mu).norm(dim=1) > 2 * max_std).all()
    maha = torch.einsum("kd,kde,ke->k", off - mu, torch.linalg.inv(cov), off - mu).sqrt()
    assert (maha > 2).all()
    assert (gold(centers.float()) >= heights.float() - 1e-5).all()  # each bump peaks at its centre (others add)
    # The tilted law exp(u) p moves mass from the heavy modes to the rare one and to the gap's pair.
    model = mixture(dim)
    x = model.sample(50_000, torch.Generator().manual_seed(0))
    with torch.no_grad():
        u = gold(x).double()
    tilt = torch.softmax(u, 0)
    comp = model.responsibilities(0.0, x).argmax(1)
    i, j = gap_pair(dim)
    assert tilt[comp == RARE].sum() > 5 * w[RARE]
    assert tilt[(comp == i) | (comp == j)].sum() > (comp == i).double().mean() + (comp == j).double().mean()
    assert tilt[comp == 0].sum() < w[0]
    assert lengths.min() > 0
