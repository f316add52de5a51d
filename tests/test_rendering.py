"""render_mode="rgb_array": frames of the single, batched and digits envs, and the render API's errors."""

from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.error import ResetNeeded

import diffusion_gym  # noqa: F401
from diffusion_gym.envs.rendering import render_batch

pytestmark = pytest.mark.filterwarnings("ignore:Euler-Maruyama step")


def assert_frame(frame):
    assert isinstance(frame, np.ndarray) and frame.ndim == 3 and frame.shape[-1] == 3
    assert frame.dtype == np.uint8 and frame.max() > frame.min()


def make_vec(env_id="DiffusionSDE-v0", num_envs=64, **kwargs):
    return gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="vector_entry_point", n_steps=5, **kwargs)


def test_single_env_renders_its_sample():
    env = gym.make("DiffusionSDE-v0", render_mode="rgb_array", n_steps=5)
    assert env.unwrapped.render_mode == "rgb_array" and "rgb_array" in env.metadata["render_modes"]
    env.reset(seed=0)
    first = env.render()
    assert_frame(first)
    for _ in range(5):
        env.step(np.zeros(2, np.float32))
    last = env.render()
    assert_frame(last)
    assert last.shape == first.shape and not np.array_equal(first, last)


def test_vector_env_renders_the_batch():
    env = make_vec(render_mode="rgb_array")
    env.reset(seed=0)
    first = env.render()
    assert_frame(first)
    for _ in range(5):
        env.step(torch.zeros(64, 2))
    last = env.render()
    assert_frame(last)
    assert last.shape == first.shape and not np.array_equal(first, last)


def test_digits_env_renders_an_image_grid():
    env = make_vec("DiffusionSDE-Digits-v0", num_envs=16, render_mode="rgb_array")
    env.reset(seed=0)
    assert_frame(env.render())
    for _ in range(3):
        env.step(torch.zeros(16, 1, 8, 8))
    frame = env.render()
    assert_frame(frame)
    assert frame.shape[1] >= 256


def test_other_channel_counts_and_event_shapes():
    latents = SimpleNamespace(event_shape=(4, 8, 8), _x=torch.randn(5, 4, 8, 8, dtype=torch.float64))
    assert_frame(render_batch(latents))
    with pytest.raises(ValueError, match=r"\(1,\)"):
        render_batch(SimpleNamespace(event_shape=(1,), _x=torch.zeros(2, 1)))
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        render_batch(SimpleNamespace(event_shape=(2, 3), _x=torch.zeros(2, 2, 3)))


def test_render_mode_none_human_and_before_reset():
    env = gym.make("DiffusionSDE-v0", n_steps=5)
    env.reset(seed=0)
    assert env.render() is None
    venv = make_vec(num_envs=4)
    venv.reset(seed=0)
    assert venv.render() is None

    with pytest.raises(ValueError, match="render_mode"):
        gym.make("DiffusionSDE-v0", render_mode="human", n_steps=5)
    with pytest.raises(ValueError, match="render_mode"):
        make_vec(num_envs=4, render_mode="human")

    with pytest.raises(ResetNeeded):
        gym.make("DiffusionSDE-v0", render_mode="rgb_array", n_steps=5).render()
    with pytest.raises(ResetNeeded):
        gym.make("DiffusionSDE-v0", render_mode="rgb_array", n_steps=5, disable_env_checker=True).unwrapped.render()
    with pytest.raises(ResetNeeded):
        make_vec(num_envs=4, render_mode="rgb_array").render()
