"""SB3 PPO and SAC on DiffusionSDE-v0: through gym.make, and through the batched VecEnv adapter in the zoo's API."""

import pytest
import torch

from agents.sb3 import SB3Agent, SB3Config, make_sb3_model
from diffusion_gym.tasks.mixture2d.env import make_vector_env

pytestmark = pytest.mark.filterwarnings("ignore:Euler-Maruyama step:UserWarning")


@pytest.mark.parametrize(
    ("algorithm", "kwargs"),
    [
        ("ppo", {"n_steps": 1000, "batch_size": 100, "n_epochs": 2}),
        ("sac", {"learning_starts": 200, "train_freq": 4, "batch_size": 64, "buffer_size": 5000}),
    ],
)
def test_sb3_trains_on_gym_make_with_tensorboard_logs(algorithm, kwargs, tmp_path):
    model = make_sb3_model(algorithm, "DiffusionSDE-v0", seed=0, logdir=str(tmp_path), **kwargs)
    model.learn(total_timesteps=3000)
    assert model.num_timesteps >= 3000
    assert list(tmp_path.rglob("events.out.tfevents.*"))


def test_sb3_agent_on_the_batched_env(tmp_path):
    env = make_vector_env(16, n_steps=10, integrator="exponential")
    agent = SB3Agent(env, SB3Config(progress=False, algorithm="ppo", algo_kwargs={"n_epochs": 2}))
    agent.learn(reward_queries=160)
    assert agent.reward_queries >= 160
    result = agent.evaluate(n=64)
    assert result["objective"].n == 64
    assert agent.policy(0.5, torch.zeros(4, 2)).shape == (4, 2)
    agent.save(tmp_path / "sb3.zip")
    config = SB3Config(progress=False, algorithm="ppo", algo_kwargs={"n_epochs": 2})
    again = SB3Agent(make_vector_env(16, n_steps=10, integrator="exponential"), config)
    again.load(tmp_path / "sb3.zip")
    assert again.reward_queries == agent.reward_queries
    # Another run's checkpoint is refused, naming the field: here the grid, and then the config.
    other = SB3Agent(make_vector_env(16, n_steps=5, integrator="exponential"), config)
    with pytest.raises(ValueError, match=r"sb3.zip: checkpoint of another run: .*n_steps: 10 there, 5 here"):
        other.load(tmp_path / "sb3.zip")
    other = SB3Agent(make_vector_env(16, n_steps=10, integrator="exponential"), SB3Config(progress=False))
    with pytest.raises(ValueError, match=r"config.algo_kwargs.n_epochs: 2 there, None here"):
        other.load(tmp_path / "sb3.zip")


def test_sb3_agent_calls_the_zoo_callback_between_rollouts_and_stops_on_false():
    env = make_vector_env(16, n_steps=10, integrator="exponential")
    agent = SB3Agent(env, SB3Config(progress=False, algorithm="ppo", algo_kwargs={"n_epochs": 1}))
    seen = []

    def callback(a, stats):
        seen.append(a.reward_queries)
        return len(seen) < 3

    agent.learn(reward_queries=16 * 10, callback=callback)
    # Each PPO rollout is one episode of the 16 rows; the callback runs before rollouts 2, 3 and 4.
    assert seen == [16, 32, 48]
    # SB3 stops at the first step of rollout 4 (it counts that step before asking the callback);
    # reward_queries counts finished episodes only.
    assert agent.model.num_timesteps == 48 * 10 + 16
    assert agent.reward_queries == 48


def test_sb3_agents_are_undiscounted_and_take_their_exploration_settings():
    """The objective is undiscounted: gamma = 1 by default; PPO's GAE lambda and initial action noise,
    and SAC's entropy target, come from the config (algo_kwargs still override)."""
    env = make_vector_env(16, n_steps=10, integrator="exponential")
    ppo = SB3Agent(env, SB3Config(progress=False, log_std_init=-2.5, gae_lambda=1.0, lr=3e-4))
    assert ppo.model.gamma == 1.0 and ppo.model.gae_lambda == 1.0 and ppo.model.learning_rate == 3e-4
    torch.testing.assert_close(ppo.model.policy.log_std.detach(), torch.full((2,), -2.5))
    sac = SB3Agent(env, SB3Config(progress=False, algorithm="sac", target_entropy=-6.0, algo_kwargs={"gamma": 0.9}))
    assert sac.model.gamma == 0.9 and sac.model.target_entropy == -6.0
    assert SB3Agent(env, SB3Config(progress=False, algorithm="sac")).model.target_entropy == -2.0  # "auto"
