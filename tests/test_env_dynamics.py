"""The env's mathematics (docs/design.md, section 1): the pretrained sampler, the exact KL price, the objective."""

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from diffusion_gym import kernel
from diffusion_gym.base_models import GaussianMixtureScore
from diffusion_gym.envs.vector import DiffusionSDEVectorEnv
from diffusion_gym.evaluation import rollout
from diffusion_gym.tasks.mixture2d.env import make_vector_env
from diffusion_gym.tasks.mixture2d.model import mixture_2d
from diffusion_gym.tasks.mixture2d.rewards import load_proxy

from .two_sample import energy_distance_test


def _terminal_samples(env: DiffusionSDEVectorEnv, seed: int = 0) -> torch.Tensor:
    return rollout(env, None, env.num_envs, seed).x


@pytest.mark.parametrize("integrator", ["euler_maruyama", "ddpm"])
def test_zero_action_reproduces_the_pretrained_mixture(integrator):
    """N=100, 4,096 terminal samples: component frequencies within 0.02 of the weights, and an energy
    distance permutation test against 4,096 fresh data samples that does not reject at the 1% level."""
    env = make_vector_env(4096, n_steps=100, integrator=integrator)
    x = _terminal_samples(env)
    m = mixture_2d()
    s_end = env.T - env.grid[-1].item()
    freq = torch.bincount(m.responsibilities(s_end, x).argmax(1), minlength=8) / x.shape[0]
    assert (freq - m.log_weights.exp()).abs().max().item() < 0.02  # measured 0.011 / 0.009
    gen = torch.Generator().manual_seed(1)
    data = m.sample(4096, gen, s=s_end)
    _, p_value = energy_distance_test(x, data, 199, gen)
    assert p_value > 0.01


def test_energy_distance_test_rejects_a_wrong_score():
    """The same test with the score of a mixture whose weights are all equal (a wrong model) rejects."""
    m = mixture_2d()
    covs = torch.einsum("kde,ke,kfe->kdf", m.eigvecs, m.eigvals, m.eigvecs)
    wrong = GaussianMixtureScore(torch.ones(8), m.means, covs)
    env = DiffusionSDEVectorEnv(4096, wrong, load_proxy(), n_steps=100)
    x = _terminal_samples(env)
    gen = torch.Generator().manual_seed(1)
    statistic, p_value = energy_distance_test(x, m.sample(4096, gen, s=1e-3), 199, gen)
    assert p_value <= 0.01 and statistic > 0.05  # measured 0.12 against a null of ~0.002


@pytest.mark.parametrize("integrator", ["euler_maruyama", "ddpm"])
def test_summed_running_reward_is_minus_kl_coef_times_the_exact_path_kl(integrator):
    """A constant action: the running rewards sum to -kl_coef * sum_k KL(controlled_k || pretrained_k), the KL
    of the discrete path measures by the chain rule, each term from torch.distributions, to float64 precision."""
    kl_coef = 0.7
    env = make_vector_env(16, n_steps=40, integrator=integrator, kl_coef=kl_coef, dtype="float64")
    action = torch.tensor([0.3, -0.8], dtype=torch.float64).expand(16, 2)
    env.reset(seed=0)
    running = torch.zeros(16, dtype=torch.float64)
    for _ in range(env.n_steps):
        _, reward, terminated, _, info = env.step(action)
        running += reward
    running -= info["terminal_reward"]
    d = env.discretization
    delta = d.action_scale[:, None] * action[0]
    path_kl = kl_divergence(
        Normal(d.score_scale[:, None] * delta, d.noise_std[:, None]), Normal(0.0, d.noise_std[:, None])
    )
    expected = -kl_coef * path_kl.sum()
    torch.testing.assert_close(running, expected.expand(16), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(info["objective"], info["terminal_reward"] + running, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(info["kl_total"], path_kl.sum().expand(16), rtol=1e-12, atol=1e-12)


def test_float32_kl_accounting_matches_float64():
    action = torch.tensor([0.3, -0.8]).expand(8, 2)
    totals = {}
    for dtype in ("float32", "float64"):
        env = make_vector_env(8, n_steps=50, dtype=dtype)
        env.reset(seed=0)
        for _ in range(env.n_steps):
            _, _, _, _, info = env.step(action)
        totals[dtype] = info["kl_total"].double()
    torch.testing.assert_close(totals["float32"], totals["float64"], rtol=1e-5, atol=0)


def test_path_log_likelihood_ratio_has_mean_equal_to_the_kl():
    """For a state-dependent action field, the mean of log dP^pi/dP^pre over paths (each transition's
    exact Gaussian density, via the env's own m_k and c_k) equals the mean summed KL within 4 s.e."""
    env = make_vector_env(8192, n_steps=20, integrator="ddpm", dtype="float64")

    def policy(x):
        return torch.tanh(x[:, [1, 0]] / 2)

    obs, _ = env.reset(seed=3)
    log_ratio = torch.zeros(8192, dtype=torch.float64)
    for k in range(env.n_steps):
        x, action = obs["x"], policy(obs["x"])
        delta = kernel.step_delta(env.discretization, k, action)
        obs, _, _, _, info = env.step(action)
        log_ratio += kernel.step_log_prob(env.discretization, k, obs["x"], env.transition_mean(k, x, delta))
        log_ratio -= kernel.step_log_prob(env.discretization, k, obs["x"], env.pretrained_mean(k, x))
    kl = info["kl_total"]
    diff = log_ratio - kl  # a martingale: mean zero
    assert abs(diff.mean().item()) < 4 * diff.std().item() / math.sqrt(8192)
    assert kl.mean().item() > 1.0  # a non-trivial field


@pytest.mark.filterwarnings("ignore:Euler-Maruyama step:UserWarning")  # N = 10 is coarse on purpose
@pytest.mark.parametrize("integrator", ["euler_maruyama", "ddpm"])
def test_discrete_kl_converges_to_the_girsanov_integral(integrator):
    """Constant delta: sum_k KL_k -> int_0^{T-eps} beta(T-t)/2 ||delta||^2 dt, the error shrinking ~1/N.

    Measured relative errors at N = 10, 100, 1000: Euler-Maruyama 0.099, 0.0099, 0.00099; DDPM 12.6,
    0.090, 0.0082 (its last steps, where the posterior variance is tiny, converge only once dt << eps).
    """
    action = torch.tensor([[0.5, -0.25]], dtype=torch.float64)
    errors = []
    for n in (10, 100, 1000):
        env = make_vector_env(1, n_steps=n, integrator=integrator, dtype="float64", kl_coef=1.0)
        env.reset(seed=0)
        for _ in range(n):
            _, _, _, _, info = env.step(action)
        sched = env.schedule
        delta2 = (env.discretization.action_scale[0] * action).square().sum()
        girsanov = 0.5 * delta2 * (sched.integral_beta(torch.tensor(1.0)) - sched.integral_beta(torch.tensor(1e-3)))
        errors.append(abs(info["kl_total"].item() / girsanov.item() - 1))
    assert errors[0] > errors[1] > errors[2] and errors[2] < {"euler_maruyama": 2e-3, "ddpm": 1e-2}[integrator]
    assert errors[1] / errors[2] > 5  # first order


def test_fixed_action_field_moves_the_reward_and_pays_exactly_its_price():
    """Pushing towards the reward's peak raises E[terminal reward] by > 5 s.e.; each episode's return is its
    terminal reward minus kl_coef times its KL, exactly."""
    n = 4096
    env = make_vector_env(n, n_steps=50, kl_coef=0.5, dtype="float64")
    center = torch.tensor([1.15, -2.77], dtype=torch.float64)

    def policy(obs):
        return (0.25 * (center - obs["x"])).clamp(-1, 1)

    pre = rollout(env, None, n, seed=0)
    obs, _ = env.reset(seed=0)
    ret = torch.zeros(n, dtype=torch.float64)
    for _ in range(env.n_steps):
        obs, reward, _, _, info = env.step(policy(obs))
        ret += reward
    terminal, kl = info["terminal_reward"], info["kl_total"]
    se = math.sqrt(terminal.var().item() / n + pre.terminal_reward.var().item() / n)
    assert terminal.mean().item() - pre.terminal_reward.mean().item() > 5 * se
    assert (kl > 0).all()
    torch.testing.assert_close(ret, terminal - 0.5 * kl, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(info["objective"], ret, rtol=1e-12, atol=1e-12)


def test_recorded_transitions_are_the_step_math_and_change_nothing():
    """With record_transitions the env returns m_k and delta_k of every step; the states are the same
    as without (to rounding), x_{k+1} = m_k + c_k delta_k + sqrt(v_k) xi with m_k = pretrained_mean(k, x_k), and
    the generator state restores a run exactly."""

    def field(obs):
        return torch.tanh(obs["x"] - 0.5)

    def run(env, state=None):
        if state is None:
            env.reset(seed=11)
        else:
            env.set_rng_state(state)
        obs, _ = env.reset()
        out = [(obs["x"], None)]
        for _ in range(env.n_steps):
            obs, _, _, _, info = env.step(field(obs))
            out.append((obs["x"], info))
        return out

    plain = make_vector_env(64, n_steps=8, integrator="exponential", dtype="float64", action_scale=lambda t: 1 + t)
    recorded = make_vector_env(64, n_steps=8, integrator="exponential", dtype="float64", action_scale=lambda t: 1 + t)
    recorded.record_transitions = True
    a, b = run(plain), run(recorded)
    for k in range(1, len(a)):
        x_prev, (x, info) = b[k - 1][0], b[k]
        torch.testing.assert_close(x, a[k][0], rtol=1e-12, atol=1e-12)  # same noise; sums in another order
        assert "delta" not in (a[k][1] or {})
        torch.testing.assert_close(info["pretrained_mean"], recorded.pretrained_mean(k - 1, x_prev), rtol=0, atol=0)
        c = recorded.discretization.constants[k - 1]
        torch.testing.assert_close(info["delta"], (1 + recorded.grid[k - 1].item()) * field({"x": x_prev}))
        torch.testing.assert_close(
            recorded.transition_mean(k - 1, x_prev, info["delta"]),
            info["pretrained_mean"] + c.score_scale * info["delta"],
        )
    t = torch.tensor([0.0, 0.25, 0.9], dtype=torch.float64)
    torch.testing.assert_close(recorded.action_scale_at(t), 1 + t)
    torch.testing.assert_close(recorded.action_scale_at(recorded.grid[:-1]), recorded.discretization.action_scale)
    state = recorded.rng_state()
    first, again = run(recorded, state), run(recorded, state)
    assert all(torch.equal(u[0], v[0]) for u, v in zip(first, again, strict=True))


def test_reset_takes_the_initial_states_it_is_given():
    """``reset(options={"y0": x})`` starts the episode at ``x`` (a copy) and draws nothing for it; a
    wrong shape, an integer tensor or a non-finite entry is refused naming the option."""
    env = make_vector_env(4, n_steps=3, integrator="exponential")
    y0 = torch.arange(8, dtype=torch.float32).view(4, 2)
    obs, _ = env.reset(seed=0, options={"y0": y0})
    assert torch.equal(obs["x"], y0) and obs["x"].data_ptr() != y0.data_ptr()
    state = env.rng_state()
    env.reset(options={"y0": y0})
    assert torch.equal(env.rng_state(), state)  # no draw
    for bad in (torch.zeros(3, 2), torch.zeros(4, 2, dtype=torch.int64), torch.full((4, 2), float("nan"))):
        with pytest.raises(ValueError, match=r"options\['y0'\]"):
            env.reset(options={"y0": bad})
