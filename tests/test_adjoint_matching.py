"""Adjoint Matching on the linear-quadratic Gaussian task, where everything is closed form: the control
regressed onto the lean adjoint is the discrete chain's optimal control (J_best's), and it approaches
the continuous-time optimal control at first order in 1/N."""

import math

import pytest
import torch

from agents.adjoint_matching import AdjointMatching, AdjointMatchingConfig, lean_adjoint
from agents.common.trajectories import collect
from diffusion_gym.envs.vector import DiffusionSDEVectorEnv
from diffusion_gym.evaluation import rollout
from diffusion_gym.optimal_control import MixtureOptimalControl
from diffusion_gym.tasks.mixture.env import flow_task_models
from tests.test_references import lq_closed_form, lq_env

pytestmark = pytest.mark.filterwarnings("ignore:Euler-Maruyama step:UserWarning")


def batch_env(env: DiffusionSDEVectorEnv, num_envs: int) -> DiffusionSDEVectorEnv:
    """``env``'s task in float64 with ``num_envs`` rows, recording transitions."""
    return DiffusionSDEVectorEnv(
        num_envs,
        env.score_model,
        env.reward_model,
        n_steps=env.n_steps,
        integrator=env.integrator,
        kl_coef=env.kl_coef,
        action_scale=100.0,
        dtype="float64",
        record_transitions=True,
    )


def regressed_control(env, n_iterations: int, warm: int, final: int):
    """The fixed point of Adjoint Matching over per-step affine controls ``delta_k(y) = A_k y + b_k``:
    from zero, each iteration rolls out the current control and solves the regression onto the lean
    adjoint (the agent's loss, whose minimiser over this class is per-step least squares) exactly.
    The target of step k depends on the controls after it only, so the iteration converges like a
    Picard iteration; the last one on ``final`` fresh trajectories."""
    n = env.n_steps
    A, b = torch.zeros(n, 2, 2, dtype=torch.float64), torch.zeros(n, 2, dtype=torch.float64)
    for it in range(n_iterations):
        e = batch_env(env, final if it == n_iterations - 1 else warm)
        e.reset(seed=it)
        traj = collect(e, lambda k, obs, A=A, b=b: (obs["x"] @ A[k].T + b[k]) / 100.0)
        targets = lean_adjoint(e, traj)
        features = torch.cat([traj.states[:-1], torch.ones_like(traj.states[:-1, ..., :1])], -1)
        solution = torch.linalg.lstsq(features, targets).solution  # (N, 3, 2)
        A, b = solution[:, :2].transpose(1, 2), solution[:, 2]
    return A, b, traj, e


def relative_error(pairs) -> float:
    """``sqrt(sum E||fit - ref||^2 / sum E||ref||^2)`` over the steps' (fit, ref) pairs."""
    num = sum(float((f - r).square().sum(1).mean()) for f, r in pairs)
    return math.sqrt(num / sum(float(r.square().sum(1).mean()) for _, r in pairs))


def test_adjoint_matching_fits_the_optimal_control_of_the_linear_quadratic_task():
    """The discrete form of the lean adjoint is exact on the grid: by the envelope theorem
    ``grad V_{k+1} = (d m_{k+1} / dy)^T E[grad V_{k+2} | Y_{k+1}]`` at the optimum (the control's own
    Jacobian drops out by the first-order condition), so ``c_k delta_k = v_k E[a_{k+1} | Y_k]`` is the
    discrete optimum: the fitted control equals the DP's closed-form shifts up to Monte Carlo error
    (measured 4.0e-3, 3.1e-3, 2.1e-3 at N = 20, 50, 200; tolerance 1e-2). Against the continuous-time
    optimal control (closed form up to a 12-node Gauss-Hermite rule), read at the middle of the step's
    interval, the error is the discrete optimum's: O(1/N) (measured 0.068, 0.027, 0.0062 at N = 20, 50,
    200: 1.37 / N, 1.37 / N, 1.24 / N). Asserted:
    each error within 35% of that first-order line from N = 20, below 1e-2 at N = 200, and the fitted
    control's J at N = 200 within 3 s.e. of the closed-form J_best (measured -0.8350 +- 0.0034 against
    -0.8367)."""
    continuous = {}
    for n in (20, 50, 200):
        # Monte Carlo error ~ 1 / sqrt(batch) against a discretisation error ~ 1 / N: more rows at N = 200.
        warm, final = (16_384, 32_768) if n < 200 else (32_768, 131_072)
        A, b, traj, env = regressed_control(lq_env(n, "exponential"), n_iterations=6, warm=warm, final=final)
        disc = env.discretization
        _, shifts = lq_closed_form(env)
        control = MixtureOptimalControl.for_env(env, gauss_hermite=12)
        to_discrete, to_continuous = [], []
        for k in range(n):
            y = traj.states[k, :4096]
            fit = y @ A[k].T + b[k]
            gain, centre = (torch.as_tensor(v) for v in shifts[k])
            to_discrete.append((fit, gain * (centre - env.pretrained_mean(k, y)) / disc.control_scale[k]))
            to_continuous.append((fit, control((disc.t[k] + disc.dt[k] / 2).expand(len(y)), y)))
        assert relative_error(to_discrete) < 1e-2, n
        continuous[n] = relative_error(to_continuous)
    for n in (50, 200):
        assert continuous[n] == pytest.approx(continuous[20] * 20 / n, rel=0.35), continuous
    assert continuous[200] < 1e-2
    j_best, _ = lq_closed_form(env)
    grid = env.discretization.t[:-1]

    def affine(obs):  # the step of each row from its time (every row is at the same step)
        k = int(torch.searchsorted(grid, obs["t"][:1, 0], right=True)) - 1
        return (obs["x"] @ A[k].T + b[k]) / 100.0

    estimate = rollout(batch_env(env, 16_384), affine, n_samples=32_768, seed=1).summary()["objective"]
    assert abs(estimate.mean - j_best) < 3 * estimate.se, (estimate, j_best)


def test_adjoint_matching_refuses_what_is_not_memoryless():
    """On the flow SDE at a != sqrt(2) the optimum is not the tilted law: refused, naming the noise level."""
    score, reward, gold = flow_task_models(dim=2)
    env = DiffusionSDEVectorEnv(8, score, reward, gold, n_steps=5, integrator="flow_sde", noise_level=0.7)
    with pytest.raises(ValueError, match="memoryless.*noise level 0.7.*sqrt"):
        AdjointMatching(env, AdjointMatchingConfig(progress=False))
    env = DiffusionSDEVectorEnv(8, score, reward, gold, n_steps=5, integrator="flow_sde", noise_level=math.sqrt(2))
    AdjointMatching(env, AdjointMatchingConfig(progress=False))  # the memoryless schedule is accepted
