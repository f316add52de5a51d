"""DiffusionSDE-SD-v0 end to end, offline, on a tiny random Stable Diffusion directory built here."""

import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import diffusion_gym  # noqa: F401
from diffusion_gym.tasks.stable_diffusion.env import make_vector_env

from .tiny_models import build_tiny_stable_diffusion

pytestmark = pytest.mark.filterwarnings("ignore:Euler-Maruyama step:UserWarning")


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory):
    return build_tiny_stable_diffusion(tmp_path_factory.mktemp("tiny_sd"))


def embeddings(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 16, 32, generator=torch.Generator().manual_seed(0))


def test_batched_episode_with_prompt_embeddings(sd_dir):
    venv = gym.make_vec(
        "DiffusionSDE-SD-v0",
        num_envs=3,
        vectorization_mode="vector_entry_point",
        model_path=str(sd_dir),
        prompt_embeds=embeddings(),
        n_steps=5,
    )
    obs, _ = venv.reset(seed=0, options={"cond": [0, 1, 1]})
    assert obs["x"].shape == (3, 4, 8, 8) and obs["cond"].tolist() == [0, 1, 1]
    for _ in range(5):
        obs, reward, terminated, _, info = venv.step(torch.zeros(3, 4, 8, 8))
    assert terminated.all() and torch.isfinite(reward).all()
    # the default reward: JPEG compressibility of the decoded 16x16 image, in kB (DDPO's units)
    assert (info["terminal_reward"] < 0).all() and (info["terminal_reward"] > -2).all()
    assert "gold_reward" not in info


def test_single_env_with_text_prompts_and_gold(sd_dir):
    env = gym.make(
        "DiffusionSDE-SD-v0",
        model_path=str(sd_dir),
        prompts=["a cat", "a dog"],
        gold="jpeg_incompressibility",
        n_steps=4,
    )
    obs, _ = env.reset(seed=1)
    assert obs["x"].shape == (256,) and obs["cond"] in (0, 1)  # flattened 4x8x8 latent
    for _ in range(4):
        obs, reward, terminated, _, info = env.step(np.zeros(256, np.float32))
    assert terminated and info["gold_reward"] == pytest.approx(-info["terminal_reward"])


def test_prompts_are_encoded_by_the_directorys_text_encoder(sd_dir):
    from diffusion_gym.tasks.stable_diffusion.model import encode_prompts

    embeds, null = encode_prompts(sd_dir, ["a cat", "a dog"])
    assert embeds.shape == (2, 16, 32) and null.shape == (16, 32)
    assert not torch.allclose(embeds[0], embeds[1])


def test_sd_env_passes_both_checkers(sd_dir):
    kwargs = dict(model_path=str(sd_dir), prompt_embeds=embeddings(), n_steps=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(gym.make("DiffusionSDE-SD-v0", **kwargs).unwrapped)
        sb3_check_env(gym.make("DiffusionSDE-SD-v0", **kwargs))


def test_guidance_changes_the_trajectory(sd_dir):
    finals = []
    for scale in (1.0, 7.5):
        env = make_vector_env(2, model_path=str(sd_dir), prompt_embeds=embeddings(), guidance_scale=scale, n_steps=3)
        obs, _ = env.reset(seed=0, options={"cond": 0})
        for _ in range(3):
            obs, *_ = env.step(torch.zeros(2, 4, 8, 8))
        finals.append(obs["x"])
    assert not torch.allclose(finals[0], finals[1])


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({}, ValueError, "model_path"),
        ({"model_path": "/nonexistent/sd"}, FileNotFoundError, "local Stable Diffusion directory"),
    ],
)
def test_missing_model_is_a_clear_error(kwargs, error, message):
    with pytest.raises(error, match=message):
        make_vector_env(1, prompt_embeds=embeddings(), **kwargs)


def test_unconditional_embedding_comes_from_the_text_encoder_or_must_be_given(sd_dir, tmp_path):
    """With embeddings only, guidance uses the directory's empty-prompt embedding; a directory with no
    text encoder needs negative_prompt_embeds (or no guidance) instead of silently guiding from zeros."""
    from diffusion_gym.tasks.stable_diffusion.model import encode_prompts

    env = make_vector_env(1, model_path=str(sd_dir), prompt_embeds=embeddings(), n_steps=2)
    null = env.score_model.conditioning.null_embeds
    torch.testing.assert_close(null, encode_prompts(sd_dir, [])[1])
    bare = tmp_path / "no_text"
    bare.mkdir()
    for part in ("unet", "vae", "scheduler"):
        (bare / part).symlink_to(sd_dir / part)
    with pytest.raises(ValueError, match="negative_prompt_embeds"):
        make_vector_env(1, model_path=str(bare), prompt_embeds=embeddings())
    make_vector_env(1, model_path=str(bare), prompt_embeds=embeddings(), guidance_scale=1.0)
    given = torch.ones(16, 32)
    env = make_vector_env(1, model_path=str(bare), prompt_embeds=embeddings(), negative_prompt_embeds=given)
    torch.testing.assert_close(env.score_model.conditioning.null_embeds, given)


def test_reward_and_gold_take_their_own_scorer_arguments(sd_dir):
    env = make_vector_env(
        2,
        model_path=str(sd_dir),
        prompt_embeds=embeddings(),
        reward="jpeg_compressibility",
        reward_kwargs={"quality": 50},
        gold="jpeg_compressibility",
        gold_kwargs={"quality": 95},
        n_steps=2,
    )
    env.reset(seed=0)
    for _ in range(2):
        _, _, _, _, info = env.step(torch.zeros(2, 4, 8, 8))
    assert (info["terminal_reward"] > info["gold_reward"]).all()  # quality 50 compresses better


def test_bad_prompt_arguments(sd_dir):
    with pytest.raises(ValueError, match="prompts"):
        make_vector_env(1, model_path=str(sd_dir))
    with pytest.raises(ValueError, match="3 prompts but 2"):
        make_vector_env(1, model_path=str(sd_dir), prompts=["a", "b", "c"], prompt_embeds=embeddings())
    with pytest.raises(ValueError, match="unknown image reward"):
        make_vector_env(1, model_path=str(sd_dir), prompt_embeds=embeddings(), reward="beauty")


def test_prompt_is_diffusers_spelling_of_prompts(sd_dir):
    """``prompt=`` takes one string or a list, as diffusers pipelines do."""
    env = gym.make("DiffusionSDE-SD-v0", model_path=str(sd_dir), prompt="a cat", n_steps=2)
    obs, _ = env.reset(seed=0)
    assert env.unwrapped.batched.num_conditions == 1 and obs["cond"] == 0
    obs, reward, *_ = env.step(np.zeros(256, np.float32))
    assert "cond" in obs and np.isfinite(reward)
    env = make_vector_env(1, model_path=str(sd_dir), prompt=["a", "b"], n_steps=2)
    assert env.num_conditions == 2 and env.single_observation_space["cond"].n == 2


def test_prompt_and_prompts_together_are_an_error(sd_dir):
    with pytest.raises(ValueError, match="prompt .*or prompts, not both"):
        gym.make("DiffusionSDE-SD-v0", model_path=str(sd_dir), prompt="a cat", prompts=["a dog"])
