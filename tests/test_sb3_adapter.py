"""The SB3 VecEnv adapter over the batched env, and SB3 agents on both paths."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3 import PPO

import diffusion_gym  # noqa: F401
from diffusion_gym.envs import SB3VecEnv
from diffusion_gym.tasks.mixture2d.env import make_vector_env

# Short episodes keep these tests fast; the coarse-grid warning of Euler-Maruyama is expected here.
pytestmark = pytest.mark.filterwarnings("ignore:Euler-Maruyama step:UserWarning")


def test_adapter_steps_resets_and_reports_episodes():
    venv = SB3VecEnv(make_vector_env(8, n_steps=3, kl_coef=0.3))
    venv.seed(5)
    obs = venv.reset()
    assert set(obs) == {"x", "t"} and obs["x"].shape == (8, 2) and isinstance(obs["x"], np.ndarray)
    for k in range(3):
        obs, rewards, dones, infos = venv.step(np.full((8, 2), 0.5, np.float32))
        assert rewards.shape == (8,) and rewards.dtype == np.float32 and len(infos) == 8
        assert dones.all() == (k == 2)
    assert (obs["t"] == 0).all()  # already the next episode
    final = infos[3]
    assert final["terminal_observation"]["t"][0] == pytest.approx(1 - 1e-3)
    assert final["kl_total"] > 0
    assert final["objective"] == pytest.approx(final["terminal_reward"] - 0.3 * final["kl_total"], rel=1e-5)
    assert final["TimeLimit.truncated"] is False
    assert venv.get_attr("n_steps") == [3] * 8 and venv.env_is_wrapped(gym.Wrapper) == [False] * 8


def test_adapter_seeding_reproduces():
    a, b = SB3VecEnv(make_vector_env(4, n_steps=2)), SB3VecEnv(make_vector_env(4, n_steps=2))
    a.seed(1)
    b.seed(1)
    np.testing.assert_array_equal(a.reset()["x"], b.reset()["x"])


def test_adapter_refuses_same_step_autoreset():
    with pytest.raises(ValueError, match="resets the batched env itself"):
        SB3VecEnv(make_vector_env(2, autoreset_mode="SameStep"))


@pytest.mark.parametrize("path", ["gym", "batched"])
def test_sb3_ppo_runs_on_both_paths(path, tmp_path):
    torch.manual_seed(0)
    env = gym.make("DiffusionSDE-v0", n_steps=10) if path == "gym" else SB3VecEnv(make_vector_env(16, n_steps=10))
    model = PPO("MultiInputPolicy", env, n_steps=32, batch_size=32, n_epochs=1, seed=0, device="cpu")
    model.learn(total_timesteps=64 if path == "gym" else 512)
    action, _ = model.predict({"x": np.zeros(2, np.float32), "t": np.zeros(1, np.float32)}, deterministic=True)
    assert model.num_timesteps >= (64 if path == "gym" else 512)
    assert action.shape == (2,) and np.isfinite(action).all()


def test_adapter_passes_reset_options_once():
    from diffusion_gym.tasks.digits.env import make_vector_env as make_digits

    venv = SB3VecEnv(make_digits(4, n_steps=1, utility="thickness"))
    venv.set_options({"cond": 3})
    assert (venv.reset()["cond"] == 3).all()
    venv.seed(0)
    draws = [venv.reset()["cond"] for _ in range(3)]  # options were used once: conditions are drawn again
    assert any((d != 3).any() for d in draws)
