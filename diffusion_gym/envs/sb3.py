"""Deprecated module path: the Stable-Baselines3 ``VecEnv`` adapter lives in
:mod:`diffusion_gym.envs.stable_baselines` (``from diffusion_gym.envs import SB3VecEnv``)."""

import warnings

from diffusion_gym.envs.stable_baselines import SB3VecEnv

warnings.warn(
    "this module path is deprecated: import SB3VecEnv from diffusion_gym.envs", DeprecationWarning, stacklevel=2
)

__all__ = ["SB3VecEnv"]
