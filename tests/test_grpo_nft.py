"""GRPO's groups, steps and KL term; DiffusionNFT's loss against the denoising regression it generalises."""

import math

import pytest
import torch

from agents.common.trajectories import collect, policy_deltas
from agents.grpo import GRPO, GRPOConfig, group_advantages, kl_term, trained_steps
from agents.nft import NFT, NFTConfig, nft_loss, noised_samples, optimality_probability
from diffusion_gym import kernel
from diffusion_gym.tasks.mixture2d.env import make_vector_env

pytestmark = pytest.mark.filterwarnings("ignore:Euler-Maruyama step:UserWarning")


def test_group_advantages_have_zero_mean_and_unit_sd_in_every_group():
    gen = torch.Generator().manual_seed(0)
    rewards = torch.randn(60, generator=gen, dtype=torch.float64) * 3 + 1
    groups = torch.arange(60) % 4
    advantages, std = group_advantages(rewards, groups)
    for g in range(4):
        a = advantages[groups == g]
        assert abs(float(a.mean())) < 1e-12 and float(a.std()) == pytest.approx(1.0, abs=1e-12)
        assert float(std[groups == g][0]) == pytest.approx(float(rewards[groups == g].std()), rel=1e-12)
    same, _ = group_advantages(torch.ones(4, dtype=torch.float64), torch.zeros(4, dtype=torch.int64))
    assert torch.equal(same, torch.zeros(4, dtype=torch.float64))  # no spread: no advantage


def perturbed(agent):
    """``agent`` with its policy moved away from zero (every path of the network active)."""
    with torch.no_grad():
        for p in agent.actor.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return agent


def test_the_kl_term_is_the_envs_summed_kl_and_ratios_are_one():
    """On-policy, GRPO's KL term over all steps equals the KL the env charged each episode (1e-12,
    float64), and every step's ratio is 1 within 1e-5."""
    from tests.test_agents import assert_ratios_are_one

    env = make_vector_env(16, n_steps=6, integrator="exponential", dtype="float64")
    agent = perturbed(GRPO(env, GRPOConfig(progress=False)))
    env.reset(seed=0)
    traj = collect(env, agent.behaviour_action)
    mask = torch.ones(env.n_steps, 1, dtype=torch.bool)
    with torch.no_grad():
        torch.testing.assert_close(kl_term(env, policy_deltas(agent, traj), mask), traj.kl.sum(0), rtol=1e-12, atol=0)
    assert float(traj.kl.sum()) > 0
    assert_ratios_are_one(agent, traj)


def test_trained_steps_fraction_and_sliding_window():
    assert trained_steps(GRPOConfig(timestep_fraction=0.99), 10, 0).tolist() == [True] * 9 + [False]
    assert trained_steps(GRPOConfig(), 10, 5).all()
    config = GRPOConfig(window=3, window_shift_every=2, window_stride=2)
    starts = [int(trained_steps(config, 10, it).nonzero()[0]) for it in range(0, 12, 2)]
    assert starts == [0, 2, 4, 6, 0, 2]  # moves by 2 every 2 iterations, rolls back after the last window (7..9)
    assert all(int(trained_steps(config, 10, it).sum()) == 3 for it in range(12))
    with pytest.raises(ValueError, match="set one"):
        GRPOConfig(window=3, timestep_fraction=0.5)
    with pytest.raises(ValueError, match="shared_noise needs"):
        GRPOConfig(shared_noise=True)


def test_groups_share_their_condition_and_initial_noise():
    """group_size G on a conditional task: consecutive rows of G episodes with one class and, with
    shared_noise, one Y_0 (DanceGRPO); and G must divide the batch."""
    from diffusion_gym.tasks.digits.env import make_vector_env as make_digits

    env = make_digits(8, n_steps=2, utility="thickness")
    agent = GRPO(env, GRPOConfig(progress=False, group_size=4, shared_noise=True, policy_net="conv"))
    env.reset(seed=0)
    traj = agent.collect_trajectories()
    for g in range(2):
        rows = slice(4 * g, 4 * g + 4)
        assert len(traj.cond[rows].unique()) == 1
        assert torch.equal(traj.states[0, rows], traj.states[0, 4 * g].expand_as(traj.states[0, rows]))
        assert not torch.equal(traj.states[1, 4 * g], traj.states[1, 4 * g + 1])  # the chain's noise differs
    assert agent.update(traj)["trained_steps"] == 2
    with pytest.raises(ValueError, match="group_size 3 must divide num_envs 8"):
        GRPO(env, GRPOConfig(progress=False, group_size=3))


def test_nft_with_certain_positives_and_beta_one_is_the_denoising_regression():
    """Every optimality probability 1 and beta 1: the loss is ``E ||-sigma_k s_theta(x_k) - eps||^2`` on
    the generated samples noised again (1e-12), written here from the model's score directly."""
    env = make_vector_env(16, n_steps=5, integrator="exponential", dtype="float64", record_transitions=True)
    agent = perturbed(NFT(env, NFTConfig(progress=False)))
    env.reset(seed=0)
    traj = collect(env, agent.behaviour_action)
    noised = noised_samples(agent, traj)
    with torch.no_grad():  # a policy step away from the old one, so that theta != theta_old
        for p in agent.actor.parameters():
            p.add_(0.1 * torch.randn_like(p))
    disc = env.discretization
    n, b = env.n_steps, env.num_envs
    actions = agent.mean_action(disc.t[:-1].repeat_interleave(b), noised.x.flatten(0, 1), None)
    delta = kernel.path_delta(disc, actions.view(noised.x.shape))
    loss = nft_loss(noised, delta, torch.ones(b, dtype=torch.float64), beta=1.0)
    sigma = env.schedule.sigma(disc.s)
    expected = torch.stack(
        [(-sigma[k] * (env.score(k, noised.x[k]) + delta[k]) - noised.eps[k]).square().sum(1) for k in range(n)]
    ).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=0)
    negative = nft_loss(noised, delta, torch.zeros(b, dtype=torch.float64), beta=1.0)
    assert not torch.isclose(loss, negative)  # the negative branch is another regression


def test_optimality_probabilities_lie_in_the_unit_interval():
    rewards = torch.tensor([0.0, 1.0, 2.0, 3.0, 10.0, 11.0], dtype=torch.float64)
    p = optimality_probability(rewards, torch.tensor([0, 0, 0, 0, 1, 1]), adv_clip=1.0)
    assert (p >= 0).all() and (p <= 1).all()
    assert p[3] > p[2] > p[1] > p[0] and p[5] > p[4]
    assert float(p[:4].mean()) == pytest.approx(0.5, abs=1e-12)  # symmetric rewards, nothing clipped on average


@pytest.mark.parametrize("name", ["grpo", "nft"])
def test_grpo_and_nft_improve_the_objective(name):
    """Twenty iterations of 256 episodes on the 2-D mixture task at the defaults raise J by > 5 s.e."""
    from agents import AGENTS

    agent_cls, config_cls = AGENTS[name]
    agent = agent_cls(make_vector_env(256, n_steps=10, integrator="exponential"), config_cls(progress=False))
    before = agent.evaluate(n=4096)["objective"]
    after = agent.learn(256 * 20).evaluate(n=4096)["objective"]
    assert after.mean - before.mean > 5 * math.hypot(after.se, before.se), (before, after)
