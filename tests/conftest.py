import os

import pytest
import torch

# Nothing may touch the network: the hub clients refuse to, and every model is built or shipped locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _deterministic_torch():
    """Every test starts from the same global torch state (network inits, default generator)."""
    torch.manual_seed(0)
    yield


def sample_digits(model_path=None, per_class: int = 200, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-action episodes of the digits base model with the env's defaults (N=50, DDPM, guidance 2),
    ``per_class`` samples of each class in turn; returns images clamped to [-1, 1] and classes."""
    from diffusion_gym.envs.vector import DiffusionSDEVectorEnv
    from diffusion_gym.evaluation import rollout
    from diffusion_gym.tasks.digits.rewards import gold_utility
    from diffusion_gym.tasks.digits.unet import digits_score_model

    n = 10 * per_class
    env = DiffusionSDEVectorEnv(
        n, digits_score_model(2.0, model_path), gold_utility("thickness"), n_steps=50, integrator="ddpm"
    )
    cond = torch.arange(10).repeat_interleave(per_class)
    with torch.inference_mode():
        samples = rollout(env, None, n, seed=seed, cond=cond)
    return samples.x.clamp(-1, 1), samples.cond


@pytest.fixture(scope="session")
def digits_base_samples() -> tuple[torch.Tensor, torch.Tensor]:
    """2,000 samples (200 per class) of the shipped digits base model, shared by the tests that need them."""
    return sample_digits()
