"""Flow-matching base models (issue 22, first part): the four parametrisations convert exactly, the
marginal-preserving flow SDE of Flow-GRPO steps as a Gaussian transition affine in the correction,
with its exact KL, and samples the pretrained law.

Exact identities are checked to float64 precision; the sampler's terminal law against the mixture's
exact moments at a stated sample size and tolerance.
"""

import math

import pytest
import torch

from diffusion_gym.base_models.gaussian_mixture import GaussianMixtureScore
from diffusion_gym.envs.vector import DiffusionSDEVectorEnv
from diffusion_gym.evaluation import rollout
from diffusion_gym.parametrization import PARAMETRIZATIONS, convert, to_pair
from diffusion_gym.sde import LinearVPSchedule, RectifiedFlowSchedule, discretize, time_grid
from diffusion_gym.tasks.mixture.model import mixture

pytestmark = pytest.mark.filterwarnings("ignore:Euler-Maruyama step:UserWarning")


def flow_mixture(dim: int, shift: float = 1.0, parametrization: str = "velocity") -> GaussianMixtureScore:
    """The mixture task's data law as a flow-matching model: exact velocity on the rectified-flow path."""
    base = mixture(dim)
    cov = base.eigvecs @ torch.diag_embed(base.eigvals) @ base.eigvecs.transpose(1, 2)
    schedule = RectifiedFlowSchedule(shift)
    model = GaussianMixtureScore(base.log_weights.exp(), base.means, cov, schedule, parametrization).double()
    # The buffers in float64 from a float64 decomposition: orthogonal to float64 precision, as the
    # identities below need (the model stores float32 eigenvectors, orthogonal to 1e-7).
    eigvals, eigvecs = torch.linalg.eigh(cov.double())
    model.eigvals.copy_(eigvals)
    model.eigvecs.copy_(eigvecs)
    return model


class ZeroReward(torch.nn.Module):
    def forward(self, x, cond=None):
        return x.flatten(1).sum(1) * 0


@pytest.mark.parametrize("dim", [2, 8])
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_every_parametrisation_is_the_autograd_score_of_the_noised_mixture(dim, shift):
    """velocity, eps and x0 predictions, converted to the score, equal the autograd gradient of
    ``log p_sigma`` on the rectified-flow path at several sigma (float64, 1e-9 relative)."""
    model = flow_mixture(dim, shift)
    x = torch.randn(64, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(dim)) * 2
    for s in (0.05, 0.3, 0.6, 0.95):
        st = torch.tensor(s, dtype=torch.float64)
        alpha, sigma = model.schedule.alpha(st), model.schedule.sigma(st)
        xg = x.clone().requires_grad_(True)
        (autograd,) = torch.autograd.grad(model.log_prob(st, xg).sum(), xg)
        eps = -sigma * autograd
        x0 = model.posterior_mean(st, x)
        torch.testing.assert_close(alpha * x0 + sigma * eps, x, rtol=1e-12, atol=1e-12)  # the path's identity
        predictions = {"score": autograd, "eps": eps, "x0": x0, "velocity": model.predict(st, x)}
        torch.testing.assert_close(predictions["velocity"], eps - x0, rtol=1e-12, atol=1e-12)
        for source, out in predictions.items():
            for target in PARAMETRIZATIONS:
                got = convert(out, x, alpha, sigma, source, target)
                torch.testing.assert_close(got, predictions[target], rtol=1e-9, atol=1e-9, msg=f"{source}->{target}")


def test_the_posterior_mean_is_tweedies_on_vp_and_finite_at_pure_noise():
    base = mixture(2).double()
    x = torch.randn(32, 2, dtype=torch.float64)
    s = torch.tensor(0.4, dtype=torch.float64)
    alpha, sigma2 = base.schedule.alpha(s), base.schedule.sigma2(s)
    torch.testing.assert_close(base.posterior_mean(s, x), (x + sigma2 * base.score(s, x)) / alpha)
    flow = flow_mixture(2)
    at_noise = flow.posterior_mean(torch.tensor(1.0, dtype=torch.float64), x)  # alpha = 0: the data mean
    data_mean = (flow.log_weights.exp()[:, None] * flow.means).sum(0)
    torch.testing.assert_close(at_noise, data_mean.expand_as(at_noise))
    x0, eps = to_pair("velocity", flow.predict(torch.tensor(1.0), x), x, torch.tensor(0.0), torch.tensor(1.0))
    torch.testing.assert_close(eps, x)


@pytest.mark.parametrize("a", [0.3, 0.7, math.sqrt(2)])
def test_the_flow_sde_step_is_gaussian_with_the_exact_kl(a):
    """One step of the flow SDE: ``c_k = g^2 h / 2``, ``v_k = g^2 h``, the KL of the corrected to the
    pretrained transition ``g^2 h ||delta||^2 / 8`` = torch.distributions' Gaussian KL (1e-12)."""
    schedule = RectifiedFlowSchedule()
    grid = time_grid(1.0, n_steps=10)
    d = discretize(schedule, grid, "flow_sde", 1.0, a)
    sigma = schedule.sigma(1.0 - grid)
    h = sigma[:-1] - sigma[1:]
    g2 = a**2 * sigma[:-1] / torch.where(sigma[:-1] >= 1, 1 - sigma[1:], 1 - sigma[:-1])
    torch.testing.assert_close(d.control_scale, g2 * h / 2)
    torch.testing.assert_close(d.noise_std**2, g2 * h)
    torch.testing.assert_close(d.kl_weight, g2 * h / 8)
    assert d.output == "velocity" and torch.isfinite(d.drift_scale).all() and torch.isfinite(d.score_scale).all()
    delta = torch.randn(10, 3, dtype=torch.float64)
    ours = d.kl_weight[:, None] * delta.square()
    std = d.noise_std[:, None].expand_as(delta)
    shifted = torch.distributions.Normal(d.control_scale[:, None] * delta, std)
    theirs = torch.distributions.kl_divergence(shifted, torch.distributions.Normal(torch.zeros_like(delta), std))
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("a", [0.3, 0.7, math.sqrt(2)])
def test_the_flow_sde_samples_the_pretrained_law(a):
    """At zero action the flow SDE's terminal law is the data mixture: 2**14 samples at N = 200 have
    the mixture's exact mean and covariance within 3 standard errors. The Euler step's bias is first
    order: about 0.35, 0.2, 0.1 and 0.05 in the covariance at N = 25, 50, 100, 200 (a = 0.3, 2**16
    samples, where the s.e. is about 0.03), so at N = 100 and 2**15 samples this test sees it."""
    model = flow_mixture(2)
    n = 2**14
    env = DiffusionSDEVectorEnv(
        n, model, ZeroReward(), n_steps=200, integrator="flow_sde", noise_level=a, dtype="float64"
    )
    x = rollout(env, None, n, seed=0).x
    w, mu, lam, u = model.log_weights.exp(), model.means, model.eigvals, model.eigvecs
    cov = u @ torch.diag_embed(lam) @ u.transpose(1, 2)
    mean = (w[:, None] * mu).sum(0)
    exact_cov = (w[:, None, None] * (cov + mu[:, :, None] * mu[:, None, :])).sum(0) - mean[:, None] * mean[None, :]
    assert ((x.mean(0) - mean).abs() <= 3 * x.std(0) / n**0.5).all()
    centred = x - x.mean(0)
    se = (centred[:, :, None] * centred[:, None, :]).std(0) / n**0.5
    assert ((torch.cov(x.T) - exact_cov).abs() <= 3 * se).all(), (torch.cov(x.T) - exact_cov, se)


def test_the_flow_integrators_refuse_what_they_cannot_step():
    flow, grid = RectifiedFlowSchedule(), time_grid(1.0, n_steps=5)
    for a in (0.0, -0.5, math.inf):
        with pytest.raises(ValueError, match="noise_level must be a finite number > 0"):
            discretize(flow, grid, "flow_sde", 1.0, a)
    with pytest.raises(ValueError, match="integrator 'exponential' does not step a rectified-flow path"):
        discretize(flow, grid, "exponential")
    with pytest.raises(ValueError, match="integrator 'flow_sde' does not step a VP path"):
        discretize(LinearVPSchedule(), grid, "flow_sde")
    with pytest.raises(ValueError, match="noise_level is the flow SDE's"):
        discretize(LinearVPSchedule(), grid, "exponential", 1.0, 0.7)
    score_model = flow_mixture(2, parametrization="score")
    with pytest.raises(ValueError, match="which a score model cannot give at pure noise"):
        DiffusionSDEVectorEnv(4, score_model, ZeroReward(), n_steps=5, integrator="flow_sde")
    with pytest.raises(ValueError, match="noise_level: expected a finite number > 0"):
        DiffusionSDEVectorEnv(4, flow_mixture(2), ZeroReward(), n_steps=5, integrator="flow_sde", noise_level=0)
    with pytest.raises(ValueError, match="a velocity is the rectified flow's"):
        GaussianMixtureScore(torch.ones(1), torch.zeros(1, 2), torch.eye(2)[None], parametrization="velocity")


class QuadraticReward(torch.nn.Module):
    def forward(self, x, cond=None):
        return -0.1 * (x - 1.0).square().flatten(1).sum(1)


@pytest.mark.parametrize("integrator", ["flow_sde", "flow_exponential"])
@pytest.mark.parametrize("name", ["ct_ppo", "ct_q_learning", "ddpo", "dpok", "grpo", "nft"])
def test_every_agent_trains_on_a_flow_model_with_exact_ratios(name, integrator):
    """The zoo, unchanged, on both flow integrators: an update runs, and after it the agent's recomputed
    transition densities of fresh trajectories equal those of the corrections applied (ratio 1 within
    1e-5), the correction entering the mean through c_k."""
    from agents import AGENTS
    from agents.common.trajectories import collect
    from tests.test_agents import assert_ratios_are_one

    env = DiffusionSDEVectorEnv(
        32,
        flow_mixture(2),
        QuadraticReward(),
        n_steps=5,
        integrator=integrator,
        dtype="float64",
        record_transitions=True,
    )
    agent_cls, config_cls = AGENTS[name]
    agent = agent_cls(env, config_cls(progress=False))
    env.reset(seed=0)
    stats = agent.update(collect(env, agent.behaviour_action))
    assert all(math.isfinite(float(v)) for v in stats.values())
    assert agent.policy(0.5, torch.zeros(4, 2, dtype=torch.float64)).abs().max() > 0  # it moved
    if name != "ct_q_learning":  # q-learning's behaviour policy explores around its mean
        assert_ratios_are_one(agent, collect(env, agent.behaviour_action))


@pytest.mark.parametrize("integrator", ["flow_sde", "flow_exponential"])
@pytest.mark.parametrize("name", ["reward_gradient", "adjoint_matching"])
def test_the_gradient_agents_learn_on_a_flow_model(name, integrator):
    """The reward-gradient agents on both flow integrators (adjoint matching at its memoryless noise
    level): twelve iterations raise the deterministic policy's J by > 5 s.e. (measured 11-20 s.e.)."""
    from agents import AGENTS

    env = DiffusionSDEVectorEnv(
        256,
        flow_mixture(2),
        QuadraticReward(),
        n_steps=5,
        integrator=integrator,
        noise_level=math.sqrt(2),
        dtype="float64",
    )
    agent_cls, config_cls = AGENTS[name]
    agent = agent_cls(env, config_cls(progress=False, lr=1e-2))
    before = agent.evaluate(n=8192)["objective"]
    after = agent.learn(256 * 12).evaluate(n=8192)["objective"]
    assert after.mean - before.mean > 5 * math.hypot(after.se, before.se)


def test_a_checkpoint_of_one_noise_level_refuses_another(tmp_path):
    from agents.common.build import build_agent

    def env(a):
        return DiffusionSDEVectorEnv(
            8, flow_mixture(2), QuadraticReward(), n_steps=4, integrator="flow_sde", noise_level=a
        )

    agent = build_agent("ddpo", env(0.7), {"progress": False})
    agent.learn(8, checkpoint=tmp_path / "c.pt")
    assert build_agent("ddpo", env(0.7), {"progress": False}).load(tmp_path / "c.pt").reward_queries == 8
    with pytest.raises(ValueError, match=r"env.noise_level: 0.7 there, 0.3 here"):
        build_agent("ddpo", env(0.3), {"progress": False}).load(tmp_path / "c.pt")


@pytest.mark.parametrize("a", [0.7, math.sqrt(2)])
@pytest.mark.parametrize("integrator", ["flow_sde", "flow_exponential"])
def test_the_summed_kl_of_a_smooth_control_converges_to_girsanovs_integral(integrator, a):
    """A state-independent correction ``delta(sigma) = (1 - sigma) sin(3 sigma) u`` (smooth, zero at pure
    noise, where ``g^2`` diverges like ``1 / (1 - sigma)``): the env's summed step KL is a Riemann sum of
    Girsanov's ``int g^2 ||delta||^2 / 8 dsigma`` (quadrature, scipy), within 1e-5 relative at N = 400
    (measured: 1e-7 at a = 0.7; 2e-5 at N = 25), and its error falls with N. The exact steps of
    "flow_exponential" weigh the correction by ``c_k^2 / (2 v_k)`` of the frozen-``x0`` solution, not
    the Euler weight: their sum converges to the same integral at first order (error / 4 as N x 4,
    below 1e-2 at N = 400)."""
    from scipy.integrate import quad

    u = torch.tensor([0.8, -0.4], dtype=torch.float64)

    def delta(sigma):
        return (1.0 - sigma) * torch.sin(3.0 * sigma) * u

    def policy(obs):  # action_scale 1: the action is the correction
        return delta(1.0 - obs["t"][:, :1]).expand_as(obs["x"])

    eps = 1e-3
    exact, _ = quad(lambda s: a**2 * s / (1 - s) * float(delta(torch.tensor(s)).square().sum()) / 8, eps, 1.0)
    errors = []
    for n_steps in (25, 100, 400):
        kwargs = {
            "n_steps": n_steps,
            "integrator": integrator,
            "noise_level": a,
            "dtype": "float64",
            "action_scale": 1.0,
        }
        env = DiffusionSDEVectorEnv(4, flow_mixture(2), QuadraticReward(), eps=eps, **kwargs)
        kl = rollout(env, policy, 4, seed=0).kl
        assert torch.allclose(kl, kl[0].expand_as(kl))  # the same on every episode: the control ignores the state
        errors.append(abs(float(kl[0]) - exact) / exact)
    if integrator == "flow_sde":
        assert errors[2] < 1e-5 and errors[0] > errors[1] > errors[2], errors
    else:  # first order: 0.089, 0.023, 0.0058 at a = 0.7 (N x 4, error / 4)
        ratios = [errors[1] / errors[0], errors[2] / errors[1]]
        assert errors[2] < 1e-2 and all(0.2 < r < 0.3 for r in ratios), errors


@pytest.mark.parametrize("shift", [1.0, 3.0, 0.4])
def test_time_at_inverts_the_shifted_path(shift):
    """``time_at`` is ``sigma``'s inverse on [0, 1] to float64 precision (where a scheduler's sigmas sit)."""
    schedule = RectifiedFlowSchedule(shift)
    s = torch.linspace(0.0, 1.0, 101, dtype=torch.float64)
    torch.testing.assert_close(schedule.time_at(schedule.sigma(s)), s, rtol=0, atol=1e-15)
