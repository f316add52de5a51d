"""SB3 PPO and SAC on DiffusionSDE-v0: through gym.make, and through the batched VecEnv adapter in the zoo's API."""

import pytest
import torch

from agents.sb3 import SB3Agent, SB3Config, make_sb3_model
from diffusion_gym.envs.mixture2d import make_vector_env

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
    again = SB3Agent(make_vector_env(16, n_steps=10, integrator="exponential"), SB3Config(progress=False))
    again.load(tmp_path / "sb3.zip")
    assert again.reward_queries == agent.reward_queries
