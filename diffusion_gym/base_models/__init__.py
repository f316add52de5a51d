"""Pretrained score models: the protocol the env needs and the analytic Gaussian mixture."""

from diffusion_gym.base_models.gaussian_mixture import GaussianMixtureScore, mixture_2d
from diffusion_gym.base_models.protocol import ScoreModel

__all__ = ["GaussianMixtureScore", "ScoreModel", "mixture_2d"]
