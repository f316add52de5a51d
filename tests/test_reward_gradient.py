"""The differentiable rollout and the reward-gradient agent: the env's episode reproduced, the pathwise
gradient of J against a central finite difference under common random numbers, DRaFT-K's truncation."""

import pytest
import torch

from agents.reward_gradient import RewardGradient, RewardGradientConfig
from diffusion_gym import kernel
from diffusion_gym.differentiable_rollout import differentiable_rollout
from diffusion_gym.rewards.jpeg import JpegSize
from diffusion_gym.tasks.mixture2d.env import make_vector_env

pytestmark = pytest.mark.filterwarnings("ignore:Euler-Maruyama step:UserWarning")


def tiny_agent(grad_steps: int = 0, n_steps: int = 6, batch: int = 16) -> RewardGradient:
    """A reward-gradient agent in float64 whose policy is perturbed away from zero (every path active)."""
    env = make_vector_env(batch, n_steps=n_steps, integrator="exponential", dtype="float64", kl_coef=0.5)
    agent = RewardGradient(env, RewardGradientConfig(progress=False, grad_steps=grad_steps, hidden=(16,)))
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in agent.actor.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return agent


def test_the_differentiable_rollout_is_the_envs_episode():
    """From one generator state, the rollout's states, KL and objective equal the env's episode (the
    env draws in the same order) to float precision."""
    agent = tiny_agent()
    env = agent.env
    env.reset(seed=11)
    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():
        roll = differentiable_rollout(env, agent.mean_action, gen)
    obs, _ = env.reset(seed=11)
    for k in range(env.n_steps):
        obs, _, _, _, info = env.step(agent.act(obs))
        torch.testing.assert_close(obs["x"], roll.states[k + 1], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(info["kl"], roll.kl[k], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(info["objective"], roll.objective, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(info["gold_reward"], roll.gold_reward, rtol=1e-12, atol=1e-12)


def objective_along(agent, direction, h, y0, noise):
    """``mean J(theta + h v)`` under common random numbers."""
    params = [p for p in agent.actor.parameters()]
    with torch.no_grad():
        for p, v in zip(params, direction, strict=True):
            p.add_(v, alpha=h)
        value = differentiable_rollout(agent.env, agent.mean_action, y0=y0, noise=noise).objective.mean()
        for p, v in zip(params, direction, strict=True):
            p.sub_(v, alpha=h)
    return float(value)


def test_the_gradient_of_j_is_a_central_finite_difference_under_common_random_numbers():
    """``grad J . v`` by backpropagation through the whole chain equals ``(J(theta + h v) - J(theta - h v)) / 2h``
    with the same initial states and noise, within 1e-4 relative (float64; measured ~1e-9)."""
    agent = tiny_agent()
    gen = torch.Generator().manual_seed(5)
    roll = differentiable_rollout(agent.env, agent.mean_action, gen)
    roll.objective.mean().backward()
    params = list(agent.actor.parameters())
    direction = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
    analytic = sum(float((p.grad * v).sum()) for p, v in zip(params, direction, strict=True))
    y0, noise = roll.states[0].detach(), roll.noise
    h = 1e-5
    fd = (objective_along(agent, direction, h, y0, noise) - objective_along(agent, direction, -h, y0, noise)) / (2 * h)
    assert abs(analytic) > 1e-3  # a gradient worth comparing
    assert analytic == pytest.approx(fd, rel=1e-4)


def truncated_objective(agent, y_ref, noise, cut):
    """J with the states up to ``Y_cut`` held at ``y_ref`` (the reference rollout's): the KL of the first
    ``cut`` steps at those constant states, then the chain from ``Y_cut`` (written out with the kernel)."""
    env, disc = agent.env, agent.env.discretization
    kl = torch.zeros(env.num_envs, dtype=env.dtype)
    for k in range(cut):
        delta = kernel.step_delta(disc, k, agent.mean_action(disc.t[k].expand(env.num_envs), y_ref[k], None))
        kl = kl + kernel.step_kl(disc, k, delta)
    y = y_ref[cut]
    for k in range(cut, env.n_steps):
        delta = kernel.step_delta(disc, k, agent.mean_action(disc.t[k].expand(env.num_envs), y, None))
        kl = kl + kernel.step_kl(disc, k, delta)
        y = kernel.step_sample(disc, k, env.transition_mean(k, y, delta), noise[k])
    return env.reward_model(y) - env.kl_coef * kl


@pytest.mark.parametrize("grad_steps", [1, 3])
def test_truncation_backpropagates_through_the_last_k_steps(grad_steps):
    """DRaFT-K: with K < N the gradient is that of J with ``Y_{N-K}`` (and every earlier state) held
    constant, every step's KL keeping its direct gradient: a central difference of that objective
    within 1e-4; and it differs from the whole chain's gradient."""
    agent = tiny_agent(grad_steps=grad_steps)
    n = agent.env.n_steps
    gen = torch.Generator().manual_seed(7)
    roll = differentiable_rollout(agent.env, agent.mean_action, gen, grad_steps=grad_steps)
    roll.objective.mean().backward()
    params = list(agent.actor.parameters())
    truncated = [p.grad.clone() for p in params]
    direction = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
    y_ref, noise = roll.states.detach(), roll.noise
    h = 1e-5

    def along(step):
        with torch.no_grad():
            for p, v in zip(params, direction, strict=True):
                p.add_(v, alpha=step)
            value = truncated_objective(agent, y_ref, noise, n - grad_steps).mean()
            for p, v in zip(params, direction, strict=True):
                p.sub_(v, alpha=step)
        return float(value)

    analytic = sum(float((g * v).sum()) for g, v in zip(truncated, direction, strict=True))
    assert analytic == pytest.approx((along(h) - along(-h)) / (2 * h), rel=1e-4)
    for p in params:
        p.grad = None
    full = differentiable_rollout(agent.env, agent.mean_action, y0=y_ref[0], noise=noise)
    full.objective.mean().backward()
    whole = sum(float((p.grad * v).sum()) for p, v in zip(params, direction, strict=True))
    assert abs(whole - analytic) > 1e-3 * abs(whole)


def test_checkpointing_gives_the_same_gradient():
    """Recomputing every step in the backward pass changes memory, not the gradient (1e-12)."""
    grads = []
    for checkpoint in (False, True):
        agent = tiny_agent()
        roll = differentiable_rollout(
            agent.env, agent.mean_action, torch.Generator().manual_seed(2), checkpoint=checkpoint
        )
        roll.objective.mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in agent.actor.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-12, atol=1e-14)


def test_a_reward_without_gradient_is_refused():
    env = make_vector_env(4, n_steps=3, integrator="exponential")
    env.reward_model = JpegSize()
    with pytest.raises(ValueError, match="gradient of the terminal reward.*JpegSize"):
        RewardGradient(env, RewardGradientConfig(progress=False))
    with pytest.raises(ValueError, match="grad_steps must be at most"):
        RewardGradient(make_vector_env(4, n_steps=3, integrator="exponential"), RewardGradientConfig(grad_steps=4))


def test_reward_gradient_improves_the_objective():
    """A few hundred queries on the 2-D mixture task raise J over the pretrained sampler's by > 5 s.e."""
    env = make_vector_env(128, n_steps=10, integrator="exponential")
    agent = RewardGradient(env, RewardGradientConfig(progress=False, lr=3e-3, seed=1))
    before = agent.evaluate(n=4096)["objective"]
    agent.learn(reward_queries=128 * 40)
    after = agent.evaluate(n=4096)["objective"]
    assert after.mean - before.mean > 5 * (after.se**2 + before.se**2) ** 0.5
