"""The references a policy is scored against (docs/design.md, section 1): J_best(N) by dynamic programming,
the continuous-time optimal control (J_oracle), and their order J_oracle <= J_best <= J*."""

import math

import numpy as np
import pytest
import torch

from agents import AGENTS
from diffusion_gym.base_models import GaussianMixtureScore
from diffusion_gym.dynamic_programming import best_policy, gaussian_smoothing, sup_convolution_1d
from diffusion_gym.envs.vector import DiffusionSDEVectorEnv
from diffusion_gym.evaluation import rollout
from diffusion_gym.optimal_control import MixtureOptimalControl
from diffusion_gym.optimum import optimal_objective
from diffusion_gym.references import compute_references
from diffusion_gym.sde import FLOW_INTEGRATORS, RectifiedFlowSchedule
from diffusion_gym.tasks.mixture2d.env import make_vector_env

pytestmark = pytest.mark.filterwarnings("ignore:Euler-Maruyama step:UserWarning")


class Quadratic(torch.nn.Module):
    """``r(x) = -sum_d q_d (x_d - b_d)^2 / 2``."""

    def __init__(self, q, b):
        super().__init__()
        self.register_buffer("q", torch.tensor(q, dtype=torch.float64))
        self.register_buffer("b", torch.tensor(b, dtype=torch.float64))

    def forward(self, x, cond=None):
        return -0.5 * (self.q.to(x.dtype) * (x - self.b.to(x.dtype)) ** 2).sum(-1)


MU, LAM, Q, B, KL = [0.5, 1.0], [0.3, 0.6], [0.5, 0.8], [1.0, -0.5], 0.7


def lq_env(n_steps: int, integrator: str, num_envs: int = 8, noise_level: float | None = None) -> DiffusionSDEVectorEnv:
    """A Gaussian base N(MU, diag(LAM)) with a quadratic reward; the action box far out of reach. On
    the flow integrator the base is the same Gaussian's exact velocity on the rectified-flow path."""
    flow = integrator in FLOW_INTEGRATORS
    schedule, kind = (RectifiedFlowSchedule(), "velocity") if flow else (None, "score")
    model = GaussianMixtureScore(torch.ones(1), torch.tensor([MU]), torch.diag(torch.tensor(LAM))[None], schedule, kind)
    return DiffusionSDEVectorEnv(
        num_envs,
        model,
        Quadratic(Q, B),
        n_steps=n_steps,
        integrator=integrator,
        kl_coef=KL,
        action_scale=100.0,
        noise_level=noise_level,
    )


def lq_closed_form(env: DiffusionSDEVectorEnv) -> tuple[float, list[tuple[np.ndarray, np.ndarray]]]:
    """J_best of the linear-quadratic chain and each step's optimal shift ``u*(z) = g_k (c_k - z)`` per coordinate.

    Per coordinate the value stays quadratic, ``V_k(y) = -p_k (y - c_k)^2 / 2 + e_k``: smoothing adds
    ``-p v / 2``, the sup-convolution maps ``p`` to ``1 / (1 / p + v / kl)`` with the maximiser
    ``u* = p (c - z) / (p + kl / v)``, and the affine pretrained mean ``m(y) = A y + Bc`` composes.
    """
    d = env.discretization.to("cpu", torch.float64)
    total, shifts = 0.0, [None] * d.n_steps
    per_dim = []
    for dim in range(2):
        p, c, e, steps = Q[dim], B[dim], 0.0, []
        for k in range(d.n_steps - 1, -1, -1):
            s = d.s[k]
            alpha, sigma2 = env.schedule.alpha(s).item(), env.schedule.sigma2(s).item()
            v, a, cs = d.noise_std[k].item() ** 2, d.drift_scale[k].item(), d.score_scale[k].item()
            var_s = alpha**2 * LAM[dim] + sigma2
            if d.output == "velocity":  # v(y) = (sigma - alpha LAM) (y - alpha MU) / var_s - MU
                gain = (math.sqrt(sigma2) - alpha * LAM[dim]) / var_s
                slope, offset = a + cs * gain, -cs * (gain * alpha * MU[dim] + MU[dim])
            else:  # the score -(y - alpha MU) / var_s
                slope, offset = a - cs / var_s, cs * alpha * MU[dim] / var_s
            steps.append((p / (p + KL / v), c))
            e -= p * v / 2
            p, c = slope**2 / (1 / p + v / KL), (c - offset) / slope
        total += -p / 2 * (1 + c**2) + e
        per_dim.append(steps[::-1])
    for k in range(d.n_steps):
        shifts[k] = (np.array([per_dim[0][k][0], per_dim[1][k][0]]), np.array([per_dim[0][k][1], per_dim[1][k][1]]))
    return total, shifts


@pytest.mark.parametrize(
    "integrator, noise_level",
    [("exponential", None), ("euler_maruyama", None), ("ddpm", None), ("flow_sde", 0.3), ("flow_sde", math.sqrt(2))],
)
def test_dp_matches_the_linear_quadratic_closed_form(integrator, noise_level):
    """J_best within 1e-3 relative of the closed form (measured 3e-6), and the DP's optimal shifts
    within 1e-3 relative on the pretrained terminal law's bulk; on VP and on the flow SDE."""
    env = lq_env(20, integrator, noise_level=noise_level)
    exact, shifts = lq_closed_form(env)
    solution = best_policy(env, n_grid=192, half_width=12.0, keep_shifts=True)
    assert solution.j_best == pytest.approx(exact, rel=1e-3)
    assert solution.error < 1e-3 * abs(exact)
    for k in (0, 10, 19):
        extent = solution.extents[k + 1]  # the shifts of step k live on the grid of z = m_k(y), step k + 1's
        h = 2 * extent / solution.n_grid
        axis = np.linspace(-extent + h / 2, extent - h / 2, solution.n_grid)
        inner = np.abs(axis) < 3.0
        gain, centre = shifts[k]
        u2_exact = gain[1] * (centre[1] - axis[inner])  # u2 at z = (z1, z2), the second pass: z2's row
        u2 = solution.shifts[k, 1][np.argmin(np.abs(axis - 0.3)), inner]
        np.testing.assert_allclose(u2, u2_exact, rtol=1e-3, atol=1e-3 * np.abs(u2_exact).max())


def test_gaussian_smoothing_of_a_gaussian_bump_is_exact():
    """exp(-|x|^2 / 2a) smoothed by N(0, v I) is (a / (a + v)) exp(-|x|^2 / 2(a + v)), to 1e-10."""
    n, half = 128, 10.0
    h = 2 * half / n
    x = np.linspace(-half + h / 2, half - h / 2, n)
    r2 = x[:, None] ** 2 + x[None, :] ** 2
    a, v = 0.7, 0.4
    out = gaussian_smoothing(np.exp(-r2 / (2 * a)), v, h)
    np.testing.assert_allclose(out, a / (a + v) * np.exp(-r2 / (2 * (a + v))), atol=1e-10)


@pytest.mark.parametrize("pen", [0.003, 0.05, 1.0])
def test_sup_convolution_resolves_shifts_below_the_grid_spacing(pen):
    """The two separable passes equal a brute-force 2-D maximisation over 161 x 161 shifts of the same
    spline interpolant, for penalties whose optimal shifts are far below the grid spacing
    (pen = 0.003: about 0.006 against a spacing of 0.19) and far above it (pen = 1): never below
    the brute force by more than 1e-6 (the second pass interpolates the first pass's maxima, not the
    spline itself), and above it by no more than the brute force's own resolution error."""
    from scipy import ndimage

    n, half = 64, 6.0
    h = 2 * half / n
    x = np.linspace(-half + h / 2, half - h / 2, n)
    f = 2.0 * np.exp(-((x[:, None] - 1.0) ** 2 + (x[None, :] + 0.5) ** 2) / 1.5) - 0.05 * x[None, :] ** 2
    bound = 0.8
    first, _ = sup_convolution_1d(f, 0, pen, bound, h)
    both, _ = sup_convolution_1d(first, 1, pen, bound, h)
    coef = ndimage.spline_filter(f, order=3, mode="nearest")
    slope = max(np.abs(np.diff(f, axis=a)).max() for a in (0, 1)) / h
    window = min(bound, 1.2 * pen * slope)
    us = np.linspace(-window, window, 161)
    step = us[1] - us[0]
    u1, u2 = np.meshgrid(us, us, indexing="ij")
    for i, j in [(40, 28), (32, 32), (20, 45)]:
        coords = np.stack([i + u1.ravel() / h, j + u2.ravel() / h])
        values = ndimage.map_coordinates(coef, coords, order=3, mode="nearest", prefilter=False)
        brute = (values - (u1.ravel() ** 2 + u2.ravel() ** 2) / (2 * pen)).max()
        # The brute force misses the maximum by at most curvature * (step / 2)^2 / 2 per axis, the
        # curvature at most 1 / pen plus |f''| <= 2 * 2 / 1.5.
        assert brute - 1e-6 <= both[i, j] <= brute + 2 * (1 / pen + 2.7) * step**2 / 8 + 1e-6


@pytest.fixture(scope="module")
def mixture_references():
    """J*, J(pre) (32,768 pretrained samples), J_best and J_oracle (4,096 episodes) of DiffusionSDE-v0
    with the exponential integrator at N = 10, 20, 50."""
    return {
        n: compute_references(
            make_vector_env(4096, n_steps=n, integrator="exponential"), n_samples=32_768, oracle_n=4096
        )
        for n in (10, 20, 50)
    }


def test_the_references_are_ordered_on_every_grid(mixture_references):
    """J_oracle <= J_best + 3 s.e. and J_best <= J* + 3 s.e. at N = 10, 20, 50; the optimal control is far
    above the pretrained model; the DP's own J(pre) agrees with the Monte Carlo one."""
    for n, refs in mixture_references.items():
        j_star, j_pre = refs.optimum.j_star, refs.optimum.j_pretrained
        assert refs.j_oracle.mean <= refs.j_best.mean + 3 * math.hypot(refs.j_oracle.se, refs.j_best.se), n
        assert refs.j_best.mean <= j_star.mean + 3 * math.hypot(j_star.se, refs.j_best.se), n
        assert refs.j_oracle.mean > j_pre.mean + 10 * math.hypot(refs.j_oracle.se, j_pre.se), n
        assert refs.reachable_gap(refs.j_oracle).mean < refs.gap(refs.j_oracle).mean
    gaps = [refs.gap(refs.j_best).mean for refs in mixture_references.values()]
    assert gaps == sorted(gaps, reverse=True)  # the best policy on the grid nears J* as the grid refines


def test_dp_pretrained_recursion_matches_monte_carlo(mixture_references):
    """The recursion without the maximisation is the pretrained sampler's value: within 3 s.e. of J(pre)."""
    for n in (10, 20):
        env = make_vector_env(4096, n_steps=n, integrator="exponential")
        solution = best_policy(env)
        pre = mixture_references[n].optimum.j_pretrained
        assert abs(solution.j_pretrained - pre.mean) < 3 * pre.se, n


def test_the_dp_policy_scores_j_best_by_monte_carlo(mixture_references):
    """The DP's own policy, rolled out in the env on its grid (16,384 episodes), scores J_best within 3 s.e."""
    env = make_vector_env(4096, n_steps=10, integrator="exponential")
    solution = best_policy(env, keep_shifts=True)
    result = rollout(env, solution.policy(env), 16_384, seed=5).summary()["objective"]
    assert abs(result.mean - solution.j_best) < 3 * result.se
    assert solution.j_best == pytest.approx(mixture_references[10].j_best.mean, abs=1e-6)
    with pytest.raises(ValueError, match="grid it was solved on"):
        solution.policy(make_vector_env(64, n_steps=20, integrator="exponential"))


def test_j_best_nears_j_star_on_a_fine_grid():
    """At N = 200 the best policy of the env's action class is within 0.08 of J* in normalized gap
    (measured 0.01): mean shifts of Gaussian steps reach the optimum as the steps shrink."""
    env = make_vector_env(4096, n_steps=200, integrator="exponential")
    optimum = optimal_objective(env, 32_768, seed=1)
    j_best = best_policy(env, n_grid=128).j_best
    gap = (optimum.j_star.mean - j_best) / (optimum.j_star.mean - optimum.j_pretrained.mean)
    assert gap <= 0.08
    assert j_best <= optimum.j_star.mean + 3 * optimum.j_star.se


def test_the_dp_refuses_what_it_cannot_solve():
    from diffusion_gym.tasks.digits.env import make_vector_env as make_digits

    with pytest.raises(ValueError, match="2-D unconditional"):
        best_policy(make_digits(4, n_steps=3, utility="thickness"))
    with pytest.raises(ValueError, match="kl_coef > 0"):
        best_policy(make_vector_env(4, n_steps=5, kl_coef=0.0))


def linear_case(rule: dict) -> tuple[MixtureOptimalControl, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A Gaussian base and a linear reward: ``h`` is a Gaussian moment generating function, so
    ``delta* = rho c w / ((1 - rho^2) kl)`` per eigen-coordinate, in closed form."""

    class Linear(torch.nn.Module):
        def forward(self, x, cond=None):
            return x @ torch.tensor([0.6, -0.4], dtype=x.dtype)

    model = GaussianMixtureScore(torch.ones(1), torch.tensor([MU]), torch.diag(torch.tensor(LAM))[None])
    control = MixtureOptimalControl(model, Linear(), KL, t_end=0.999, **rule)
    t = torch.tensor([0.1, 0.5, 0.9, 0.99], dtype=torch.float64)
    y = torch.tensor([[0.3, -1.0], [1.5, 0.2], [-0.4, 0.8], [0.9, 1.1]], dtype=torch.float64)
    s_end = torch.tensor(control.s_end, dtype=torch.float64)
    rho = model.schedule.alpha(1.0 - t) / model.schedule.alpha(s_end)
    # The model keeps its covariances' eigenvalues in float32: the closed form uses the same ones.
    lam = model.schedule.alpha(s_end) ** 2 * model.eigvals[0].double() + model.schedule.sigma2(s_end)
    c = lam * (1 - rho[:, None] ** 2) / (1 - rho[:, None] ** 2 + rho[:, None] ** 2 * lam)
    exact = rho[:, None] * c / (1 - rho[:, None] ** 2) * torch.tensor([0.6, -0.4], dtype=torch.float64) / KL
    return control, t, y, exact


def test_optimal_control_of_a_linear_reward_has_the_closed_form():
    """Gauss-Hermite quadrature: delta* to 1e-8 of the closed form; posterior draws (Monte Carlo): to 2%."""
    control, t, y, exact = linear_case({"gauss_hermite": 12})
    torch.testing.assert_close(control(t, y), exact, rtol=1e-8, atol=1e-10)
    control, t, y, exact = linear_case({"gauss_hermite": 12, "max_nodes": 64})  # 144 nodes > 64: Monte Carlo
    assert "antithetic" in control.rule
    torch.testing.assert_close(control(t, y), exact, rtol=0.02, atol=1e-3)


def test_optimal_control_is_the_gradient_of_log_h_on_the_mixture_task():
    """On DiffusionSDE-v0 (8 components, the learned proxy), delta* equals the central finite difference of
    log h to 1e-4; 4 Gauss-Hermite nodes per dimension agree with 10 to 1e-3; near the end of the
    grid delta* is the reward's gradient over kl_coef."""
    env = make_vector_env(8, n_steps=20, integrator="exponential", dtype="float64")
    fine = MixtureOptimalControl.for_env(env, gauss_hermite=10)
    coarse = MixtureOptimalControl.for_env(env, gauss_hermite=4)
    gen = torch.Generator().manual_seed(0)
    y = 3 * torch.randn(16, 2, generator=gen, dtype=torch.float64)
    for t in (0.0, 0.5, 0.9):
        delta = fine(t, y)
        eps = 1e-5
        fd = torch.stack(
            [
                (fine.log_h(t, y + eps * e) - fine.log_h(t, y - eps * e)) / (2 * eps)
                for e in torch.eye(2, dtype=y.dtype)
            ],
            1,
        )
        torch.testing.assert_close(delta, fd, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(coarse(t, y), delta, rtol=1e-3, atol=1e-3)
    x = y.clone().requires_grad_(True)
    grad = torch.autograd.grad(env.reward_model(x).sum(), x)[0]
    torch.testing.assert_close(fine(0.99899, y), grad / env.kl_coef, rtol=5e-3, atol=5e-3)


def test_the_oracle_agent_is_the_optimal_control_and_learns_nothing(tmp_path):
    oracle_cls, config_cls = AGENTS["oracle"]
    env = make_vector_env(64, n_steps=20, integrator="exponential")
    agent = oracle_cls(env, config_cls(progress=False))
    assert not agent.trains and agent.learn(10_000).reward_queries == 0
    obs, _ = env.reset(seed=0)
    control = MixtureOptimalControl.for_env(env, gauss_hermite=4)
    torch.testing.assert_close(agent.act(obs), control.policy(env)(obs))
    agent.save(tmp_path / "oracle.pt")
    oracle_cls(env, config_cls(progress=False)).load(tmp_path / "oracle.pt")
    from diffusion_gym.tasks.digits.env import make_vector_env as make_digits

    with pytest.raises(TypeError, match="Gaussian-mixture"):
        oracle_cls(make_digits(4, n_steps=3, utility="thickness"), config_cls(progress=False))


def test_the_control_variate_estimates_j_oracle_without_bias_and_with_less_noise():
    """``objective - kl_coef * M`` (M the optimal control's martingale term, mean zero on any grid)
    and the plain objective estimate the same J_oracle: on the same 2,048 episodes of the 2-D mixture
    at N = 50 they agree within 3 plain standard errors, the martingale's own mean is within 3 of its
    standard errors of zero, and the control variate's standard error is at least 2x smaller."""
    from diffusion_gym.evaluation import Estimate, rollout
    from diffusion_gym.references import oracle_estimate
    from diffusion_gym.tasks.mixture.env import make_vector_env as mixture_env

    env = mixture_env(1024, dim=2, n_steps=50)
    control = MixtureOptimalControl.for_env(env)
    r = rollout(env, control.policy(env), 2048, seed=11, martingale=True)
    plain = Estimate.of(r.objective)
    cv, errors = oracle_estimate(r, env.kl_coef)
    assert abs(cv.mean - plain.mean) < 3 * plain.se
    assert abs(r.martingale.double().mean()) < 3 * Estimate.of(r.martingale).se
    assert cv.se < plain.se / 2 and cv.se == max(errors["j_oracle_se_episodes"], errors["j_oracle_se_batches"])
    # Recording it changes the episodes by rounding alone (the mean m_k + b_k delta is formed in two adds).
    again = rollout(env, control.policy(env), 2048, seed=11)
    assert torch.allclose(again.objective, r.objective, atol=1e-3)


@pytest.mark.slow
def test_a_shipped_mixture_entry_is_recomputed_by_its_command():
    """One shipped entry (D = 2, N = 50) recomputed as its commands compute it (J*_0 was added by a
    ``--missing`` run, which draws the same seeds): the same numbers up to the last digits a CPU type
    changes."""
    from diffusion_gym.tasks import get_task
    from diffusion_gym.tasks.references import shipped_entry

    task = get_task("mixture")
    shipped = task.shipped_references({"dim": 2, "n_steps": 50})
    fresh = shipped_entry(task, 50, shipped["n"], shipped["j_oracle_n"], dim=2)
    # The same configuration: equal on every key the entry records, the keys added since at their defaults.
    assert task.same_configuration(shipped["config"], fresh["config"])
    assert fresh["control"] == shipped["control"]
    keys = ("j_star", "j_star_se", "j_pretrained", "j_pretrained_se", "j_oracle", "j_oracle_se", "j_star_0")
    for key in (*keys, "j_star_0_se", "j_star_0_continuous"):
        assert fresh[key] == pytest.approx(shipped[key], rel=1e-6), key


@pytest.mark.parametrize("kl_coef", [1.0, 0.02])
def test_skipping_components_without_weight_leaves_the_control_unchanged(kl_coef):
    """The components the control skips (responsibility below exp(-70 / kl_coef) of the largest) carry
    no weight at any kl_coef: the control equals the one that sums every component to 1e-9, on
    states along and off the pretrained chain's paths, in 2-D and 8-D."""
    from diffusion_gym.tasks.mixture.env import make_vector_env as mixture_env

    for dim in (2, 8):
        env = mixture_env(64, dim=dim, n_steps=10, kl_coef=kl_coef)
        pruned = MixtureOptimalControl.for_env(env)
        full = MixtureOptimalControl.for_env(env, skip=math.inf)
        gen = torch.Generator().manual_seed(dim)
        for t in (0.0, 0.5, 0.9, 0.99):
            y = 3 * torch.randn(64, dim, generator=gen)
            a, b = pruned(t, y), full(t, y)
            assert torch.allclose(a, b, rtol=1e-9, atol=1e-9 * float(b.abs().max())), (dim, t)
