"""Schedules, grids, integrator coefficients and the per-step KL, checked against independent formulas."""

import math
import warnings

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import Tensor
from torch.distributions import Normal, kl_divergence

from diffusion_gym.sde import (
    VP_INTEGRATORS,
    CosineVPSchedule,
    LinearVPSchedule,
    discretize,
    girsanov_kl_rate,
    schedule_from_config,
    time_grid,
)

SCHEDULES = [LinearVPSchedule(), CosineVPSchedule(), LinearVPSchedule(0.05, 12.0, T=2.0)]


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: str(s.config()))
def test_schedule_closed_forms_match_numerical_integration(schedule):
    s = torch.linspace(0, schedule.T, 400_001, dtype=torch.float64)
    integral = torch.cat([torch.zeros(1), torch.cumulative_trapezoid(schedule.beta(s), s)])
    torch.testing.assert_close(schedule.integral_beta(s), integral, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(schedule.alpha(s) ** 2 + schedule.sigma2(s), torch.ones_like(s), rtol=0, atol=1e-14)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: str(s.config()))
def test_beta_is_minus_derivative_of_log_alpha_squared(schedule):
    s = torch.linspace(0.01, schedule.T - 0.01, 50, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad((2 * schedule.log_alpha(s)).sum(), s)
    torch.testing.assert_close(-grad, schedule.beta(s.detach()), rtol=1e-12, atol=1e-12)


def test_default_schedule_is_the_design_one():
    sched = LinearVPSchedule()
    one = torch.tensor(1.0, dtype=torch.float64)
    assert sched.beta(one).item() == pytest.approx(20.0)
    assert sched.alpha(one).item() == pytest.approx(math.exp(-0.25 * 20.1), rel=1e-12)  # ~0.0065
    assert CosineVPSchedule().alpha(one).item() == pytest.approx(0.0065, rel=1e-12)


def test_sigma2_is_accurate_near_zero():
    s = torch.tensor(1e-9, dtype=torch.float64)
    assert LinearVPSchedule().sigma2(s).item() == pytest.approx(0.1 * 1e-9, rel=1e-6)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: str(s.config()))
def test_schedule_config_round_trip(schedule):
    again = schedule_from_config(schedule.config())
    s = torch.linspace(0, schedule.T, 7, dtype=torch.float64)
    torch.testing.assert_close(again.alpha(s), schedule.alpha(s), rtol=0, atol=0)


def test_bad_schedules_and_configs_raise():
    with pytest.raises(ValueError, match="beta_min"):
        LinearVPSchedule(beta_min=-1.0)
    with pytest.raises(ValueError, match="alpha_end"):
        CosineVPSchedule(alpha_end=1.5)
    with pytest.raises(ValueError, match="unknown schedule kind"):
        schedule_from_config({"kind": "sigmoid"})


def test_uniform_grid():
    g = time_grid(1.0, n_steps=4, eps=1e-3)
    assert g.dtype == torch.float64
    torch.testing.assert_close(g, torch.tensor([0.0, 0.24975, 0.4995, 0.74925, 0.999], dtype=torch.float64))


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ([0.0], "at least 2"),
        ([0.1, 0.5], "start at t=0"),
        ([0.0, 0.5, 0.5], "strictly increasing"),
        ([0.0, 0.6, 0.4], "strictly increasing"),
        ([0.0, 1.0], "end before T"),
        ([0.0, float("nan")], "NaN"),
    ],
)
def test_bad_grids_raise(grid, message):
    with pytest.raises(ValueError, match=message):
        time_grid(1.0, grid=grid)


@pytest.mark.parametrize("n_steps", [0, -3, 2.5, None])
def test_bad_step_counts_raise(n_steps):
    with pytest.raises(ValueError, match="n_steps"):
        time_grid(1.0, n_steps=n_steps)


def test_unknown_integrator_raises():
    with pytest.raises(ValueError, match="unknown integrator"):
        discretize(LinearVPSchedule(), time_grid(1.0, 10), "heun")


@pytest.mark.filterwarnings("ignore:Euler-Maruyama step:UserWarning")
def test_euler_maruyama_coefficients():
    sched = LinearVPSchedule()
    grid = torch.tensor([0.0, 0.1, 0.35, 0.9], dtype=torch.float64)
    d = discretize(sched, grid, "euler_maruyama")
    beta = sched.beta(1.0 - grid[:-1])
    dt = grid.diff()
    torch.testing.assert_close(d.drift_scale, 1 + 0.5 * beta * dt, rtol=1e-15, atol=0)
    torch.testing.assert_close(d.score_scale, beta * dt, rtol=1e-15, atol=0)
    torch.testing.assert_close(d.noise_std**2, beta * dt, rtol=1e-14, atol=0)
    torch.testing.assert_close(d.kl_weight, beta * dt / 2, rtol=1e-14, atol=0)


def test_ddpm_coefficients_are_the_textbook_ancestral_step():
    """Ho et al. (2020), Alg. 2: x' = (x + beta_t score) / sqrt(alpha_t) + sigma_t z, with the posterior
    variance sigma_t^2 = (1 - abar_{t-1}) / (1 - abar_t) beta_t, and abar the cumulative alpha^2."""
    sched = LinearVPSchedule()
    grid = time_grid(1.0, 25)
    d = discretize(sched, grid, "ddpm")
    abar = sched.alpha(1.0 - grid) ** 2  # abar at the start (index k) and end (k + 1) of each step
    alpha_t = abar[:-1] / abar[1:]
    beta_t = 1 - alpha_t
    torch.testing.assert_close(d.drift_scale, 1 / alpha_t.sqrt(), rtol=1e-13, atol=0)
    torch.testing.assert_close(d.score_scale, beta_t / alpha_t.sqrt(), rtol=1e-12, atol=0)
    torch.testing.assert_close(d.noise_std**2, (1 - abar[1:]) / (1 - abar[:-1]) * beta_t, rtol=1e-12, atol=0)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: str(s.config()))
def test_integrators_agree_to_first_order(schedule):
    """All integrators discretise the same SDE: their coefficients differ by O(dt^2) per step.

    (Fine grids: the cosine schedule's beta reaches ~480 at s = T, so beta dt is small only there.)
    """
    errors = []
    for n in (1000, 10_000):
        grid = time_grid(schedule.T, n)
        em = discretize(schedule, grid, "euler_maruyama")
        err = max(
            ((em.drift_scale - other.drift_scale).abs() / em.dt).max().item()
            + ((em.score_scale - other.score_scale).abs() / em.dt).max().item()
            + ((em.noise_std**2 - other.noise_std**2).abs() / em.dt).max().item()
            for other in (discretize(schedule, grid, "ddpm"), discretize(schedule, grid, "exponential"))
        )
        errors.append(err)
    assert errors[1] < errors[0] / 5  # the O(dt) relative discrepancy shrinks with dt


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: str(s.config()))
def test_exponential_integrator_is_exact_for_a_frozen_score(schedule):
    """With score + delta frozen at S over a step, the reverse SDE dY = (beta Y / 2 + beta S) dt +
    sqrt(beta) dW is linear; its exact step is Y' = A Y + C S + sqrt(V) xi. Composing 20,000 tiny
    Euler-Maruyama steps of it (affine maps: A, C and V compose in closed form) converges to the
    exponential integrator's (A, C, V) at rate O(1/M): relative error < 2e-3 and ~10x smaller than at
    M = 2,000 (checked > 7x)."""
    grid = torch.tensor([0.0, 0.3, 0.7, 0.999 * schedule.T], dtype=torch.float64)
    d = discretize(schedule, grid, "exponential")
    exact = torch.stack([d.drift_scale, d.score_scale, d.noise_std**2], dim=1)

    def composed(k: int, m: int) -> Tensor:
        fine = discretize(schedule, torch.linspace(grid[k].item(), grid[k + 1].item(), m + 1, dtype=torch.float64))
        a, c, v = 1.0, 0.0, 0.0
        steps = zip(fine.drift_scale.tolist(), fine.score_scale.tolist(), (fine.noise_std**2).tolist(), strict=True)
        for drift, score, var in steps:
            a, c, v = drift * a, drift * c + score, drift**2 * v + var
        return torch.tensor([a, c, v], dtype=torch.float64)

    for k in range(d.n_steps):
        coarse, fine = (((composed(k, m) - exact[k]) / exact[k]).abs().max().item() for m in (2_000, 20_000))
        assert fine < 2e-3
        assert coarse / fine > 7  # first order: 10x the substeps, 10x less error


@pytest.mark.filterwarnings("ignore:Euler-Maruyama step:UserWarning")
@pytest.mark.parametrize("integrator", VP_INTEGRATORS)
def test_kl_weight_is_the_gaussian_kl(integrator):
    """kl_weight ||delta||^2 equals KL(N(m + c delta, v I) || N(m, v I)) from torch.distributions."""
    d = discretize(CosineVPSchedule(), time_grid(1.0, 30), integrator)
    delta = torch.tensor([0.7, -1.3, 2.0], dtype=torch.float64)
    m = torch.tensor([0.1, 0.2, -0.3], dtype=torch.float64)
    for k in range(d.n_steps):
        p = Normal(m + d.score_scale[k] * delta, d.noise_std[k])
        q = Normal(m, d.noise_std[k])
        expected = kl_divergence(p, q).sum()
        torch.testing.assert_close(d.kl_weight[k] * delta.square().sum(), expected, rtol=1e-12, atol=0)


def test_girsanov_rate():
    sched = LinearVPSchedule()
    t = torch.tensor([0.0, 0.5], dtype=torch.float64)
    torch.testing.assert_close(girsanov_kl_rate(sched, t), torch.tensor([10.0, 0.5 * 10.05], dtype=torch.float64))


@pytest.mark.filterwarnings("ignore:Euler-Maruyama step:UserWarning")
@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(st.floats(min_value=1e-4, max_value=1.0), min_size=1, max_size=40),
    end=st.floats(min_value=0.5, max_value=0.9999),
    integrator=st.sampled_from(VP_INTEGRATORS),
    cosine=st.booleans(),
)
def test_any_valid_grid_gives_valid_gaussian_transitions(steps, end, integrator, cosine):
    """Property: on any increasing grid in [0, T), every transition has finite positive coefficients and its
    KL weight is c^2 / (2 v)."""
    increments = torch.tensor(steps, dtype=torch.float64)
    grid = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(increments, 0) / increments.sum() * end])
    assume(bool((grid.diff() > 0).all()))
    schedule = CosineVPSchedule() if cosine else LinearVPSchedule()
    d = discretize(schedule, time_grid(1.0, grid=grid), integrator)
    for coef in (d.drift_scale, d.score_scale, d.noise_std, d.kl_weight):
        assert torch.isfinite(coef).all() and (coef > 0).all()
    assert (d.drift_scale >= 1).all()  # the reverse drift expands
    torch.testing.assert_close(d.kl_weight, d.score_scale**2 / (2 * d.noise_std**2), rtol=1e-12, atol=0)


def test_coarse_euler_maruyama_grids_warn():
    with pytest.warns(UserWarning, match=r"beta\*dt = 2.00 > 1 at t = 0"):
        discretize(LinearVPSchedule(), time_grid(1.0, 10), "euler_maruyama")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        discretize(LinearVPSchedule(), time_grid(1.0, 20), "euler_maruyama")
        discretize(LinearVPSchedule(), time_grid(1.0, 10), "ddpm")
