"""Pretrained score models: the protocol the env needs and the analytic Gaussian mixture."""

from diffusion_gym.base_models.gaussian_mixture import GaussianMixtureScore
from diffusion_gym.base_models.protocol import ScoreModel

__all__ = ["GaussianMixtureScore", "ScoreModel"]
