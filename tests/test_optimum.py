"""J* (Monte Carlo and quadrature), J(pre), the normalized gap, and the evaluation helpers."""

import math

import pytest
import torch

from diffusion_gym.evaluation import Estimate, rollout
from diffusion_gym.optimum import (
    normalized_gap,
    optimal_objective,
    optimal_objective_quadrature,
    optimum_from_rewards,
    soft_value,
)
from diffusion_gym.tasks.mixture2d.env import make_vector_env
from diffusion_gym.tasks.mixture2d.model import mixture_2d

# Short episodes keep these tests fast; the coarse-grid warning of Euler-Maruyama is expected here.
pytestmark = pytest.mark.filterwarnings("ignore:Euler-Maruyama step:UserWarning")


def test_soft_value_of_gaussian_rewards_has_the_closed_form():
    """r ~ N(mu, s^2): kl log E exp(r / kl) = mu + s^2 / (2 kl); the estimate is within 4 s.e."""
    gen = torch.Generator().manual_seed(0)
    mu, sd, kl = 0.4, 0.6, 0.8
    r = mu + sd * torch.randn(400_000, generator=gen, dtype=torch.float64)
    est = soft_value(r, kl)
    assert est.mean == pytest.approx(mu + sd**2 / (2 * kl), abs=4 * est.se)
    assert 0 < est.se < 0.01
    const = soft_value(torch.full((10,), 2.5), 1.0)
    assert const.mean == pytest.approx(2.5) and const.se == 0
    with pytest.raises(ValueError, match="kl_coef > 0"):
        soft_value(r, 0.0)


def test_soft_value_is_stable_for_large_rewards():
    assert soft_value(torch.tensor([1000.0, 1000.0]), 0.01).mean == pytest.approx(1000.0)


class LinearReward(torch.nn.Module):
    def __init__(self, w):
        super().__init__()
        self.w = torch.as_tensor(w, dtype=torch.float32)

    def forward(self, x, cond=None):
        return x @ self.w.to(x.dtype)


def test_quadrature_matches_the_mixture_moment_generating_function():
    """For r(x) = w.x, J* = kl log sum_i w_i exp(alpha mu_i.w/kl + w^T Sigma_i(s) w / (2 kl^2)) in closed form."""
    m = mixture_2d()
    w, kl, s = torch.tensor([0.3, -0.5], dtype=torch.float64), 0.7, 0.05
    st = torch.tensor(s, dtype=torch.float64)
    alpha, s2 = m.schedule.alpha(st), m.schedule.sigma2(st)
    cov = torch.einsum("kde,ke,kfe->kdf", m.eigvecs.double(), m.eigvals.double(), m.eigvecs.double())
    cov_s = alpha**2 * cov + s2 * torch.eye(2, dtype=torch.float64)
    log_terms = (
        m.log_weights.double()
        + alpha * (m.means.double() @ w) / kl
        + torch.einsum("d,kde,e->k", w, cov_s, w) / (2 * kl**2)
    )
    exact_star = kl * torch.logsumexp(log_terms, 0).item()
    exact_pre = (alpha * (m.log_weights.double().exp() @ m.means.double()) @ w).item()
    j_star, j_pre = optimal_objective_quadrature(m, LinearReward(w), kl, s, half_width=10.0)
    assert j_star == pytest.approx(exact_star, abs=1e-5)
    assert j_pre == pytest.approx(exact_pre, abs=1e-5)


def test_quadrature_accepts_float64_rewards():
    reward = LinearReward([0.3, -0.5]).double()
    f64 = optimal_objective_quadrature(mixture_2d().double(), reward, 0.7, 0.05, half_width=10.0)
    f32 = optimal_objective_quadrature(mixture_2d(), LinearReward([0.3, -0.5]), 0.7, 0.05, half_width=10.0)
    assert f64 == pytest.approx(f32, abs=1e-5)


def test_gap_standard_error_is_calibrated():
    """J* and J(pre) share samples (correlation ~0.9); over 400 replications the spread of the estimated
    gap matches its mean reported standard error within 15%, while ignoring the covariance would not."""
    gen = torch.Generator().manual_seed(7)

    def rewards(n):  # skewed, like a reward bump hit by few samples
        z = torch.randn(n, generator=gen, dtype=torch.float64)
        return 0.8 * z + 0.1 * z**2

    pilot = optimum_from_rewards(rewards(1_000_000), kl_coef=1.0)
    middle = (pilot.j_star.mean + pilot.j_pretrained.mean) / 2
    gaps, ses, naive = [], [], []
    for _ in range(400):
        pre = rewards(2000)
        policy = middle + 0.3 * torch.randn(2000, generator=gen, dtype=torch.float64)  # independent
        opt = optimum_from_rewards(pre, kl_coef=1.0)
        gap = opt.normalized_gap(Estimate.of(policy))
        gaps.append(gap.mean)
        ses.append(gap.se)
        naive.append(normalized_gap(Estimate.of(policy), opt.j_star, opt.j_pretrained).se)
    spread = torch.tensor(gaps).std().item()
    assert torch.tensor(ses).mean().item() / spread == pytest.approx(1.0, abs=0.15)
    assert torch.tensor(naive).mean().item() / spread < 0.85


def test_quadrature_refuses_a_box_that_misses_mass():
    with pytest.raises(ValueError, match="widen"):
        optimal_objective_quadrature(mixture_2d(), LinearReward([1.0, 0.0]), 1.0, 1e-3, half_width=2.0)


def test_monte_carlo_optimum_beats_pretrained_and_matches_quadrature():
    """J* > J(pre) by many standard errors, and the same-grid Monte Carlo J* agrees with the
    continuous-time quadrature (N=100 Euler-Maruyama; measured 1.072 ± 0.011 vs 1.087)."""
    env = make_vector_env(16_384, n_steps=100)
    opt = optimal_objective(env, 32_768, seed=0)
    assert opt.j_star.mean - opt.j_pretrained.mean > 10 * math.hypot(opt.j_star.se, opt.j_pretrained.se)
    j_star_quad, j_pre_quad = optimal_objective_quadrature(env.score_model, env.reward_model, env.kl_coef, 1e-3)
    assert opt.j_star.mean == pytest.approx(j_star_quad, abs=4 * opt.j_star.se + 0.03)
    assert opt.j_pretrained.mean == pytest.approx(j_pre_quad, abs=4 * opt.j_pretrained.se + 0.02)


def test_normalized_gap():
    j_star, j_pre = Estimate(2.0, 0.01, 100), Estimate(1.0, 0.01, 100)
    assert normalized_gap(j_star, j_star, j_pre).mean == pytest.approx(0.0)
    assert normalized_gap(j_pre, j_star, j_pre).mean == pytest.approx(1.0)
    half = normalized_gap(Estimate(1.5, 0.02, 100), j_star, j_pre)
    assert half.mean == pytest.approx(0.5)
    # delta method: sqrt((0.02/1)^2 + (0.5*0.01/1)^2 + (0.5*0.01/1)^2)
    assert half.se == pytest.approx(math.sqrt(0.02**2 + 2 * 0.005**2))
    with pytest.raises(ValueError, match="positive"):
        normalized_gap(j_pre, j_pre, j_star)


def test_estimate_and_rollout_summary():
    est = Estimate.of(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert est.mean == 2.5 and est.se == pytest.approx(torch.tensor([1.0, 2, 3, 4]).std().item() / 2)
    assert str(est) == "2.5000 ± 0.6455"
    env = make_vector_env(64, n_steps=5)
    out = rollout(env, None, 100, seed=0)
    assert out.x.shape == (100, 2) and out.objective.shape == (100,)
    assert torch.equal(out.kl, torch.zeros(100)) and torch.equal(out.objective, out.terminal_reward)
    assert set(out.summary()) == {"objective", "terminal_reward", "gold_reward", "kl"}
    again = rollout(env, None, 100, seed=0)
    assert torch.equal(again.x, out.x)
    same_step = rollout(make_vector_env(64, n_steps=5, autoreset_mode="SameStep"), None, 64, seed=0)
    assert torch.equal(same_step.x, out.x[:64])  # the final samples, not the next episode's noise


def test_effective_sample_size_of_the_tilting_weights():
    """Equal rewards: every sample counts (ESS = n). Two reward levels: the closed form
    ``(sum w)^2 / sum w^2``; and it falls as kl_coef does (a sharper tilt rests on fewer samples)."""
    n = 1000
    assert optimum_from_rewards(torch.full((n,), 3.0), 0.5).ess == pytest.approx(n, rel=1e-12)
    r = torch.cat([torch.ones(100), torch.zeros(900)])
    e = math.exp(1 / 0.25)
    expected = (100 * e + 900) ** 2 / (100 * e**2 + 900)
    assert optimum_from_rewards(r, 0.25).ess == pytest.approx(expected, rel=1e-12)
    g = torch.randn(4096, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sizes = [optimum_from_rewards(g, kl).ess for kl in (4.0, 1.0, 0.5)]
    assert sizes[0] > sizes[1] > sizes[2]


def test_a_reachable_reference_below_the_pretrained_model_is_no_yardstick():
    """The optimal control applied on a coarse grid can score below J(pre) (8-D mixture at N = 10):
    then there is no reachable gap on that grid, and a suite task is scored against J* alone."""
    from diffusion_gym.optimum import Optimum
    from diffusion_gym.references import References, task_reachable

    opt = Optimum(Estimate(3.0, 0.01, 1000), Estimate(1.3, 0.01, 1000))
    policy = Estimate(2.0, 0.02, 1000)
    assert References(opt, j_oracle=Estimate(0.9, 0.05, 512)).reachable_gap(policy) is None
    above = References(opt, j_oracle=Estimate(2.3, 0.05, 512)).reachable_gap(policy)
    assert above is not None and above.mean == pytest.approx(0.3 / 1.0)
    grids = [References(opt, j_oracle=Estimate(j, 0.05, 512)) for j in (0.9, 2.0)]
    assert [g.reachable_name for g in grids] == [None, "j_oracle"] and task_reachable(grids) is None
    grids[0] = References(opt, j_oracle=Estimate(1.5, 0.05, 512))
    assert task_reachable(grids) == "j_oracle"
    # J_best comes first wherever it is computable; a task whose grids differ has no common reference.
    both = References(opt, j_best=Estimate(2.5, 1e-6, 256), j_oracle=Estimate(2.3, 0.05, 512))
    assert both.reachable_name == "j_best"
    assert task_reachable([grids[1], References(opt, j_best=Estimate(2.5, 1e-6, 256))]) is None
