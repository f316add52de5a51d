"""Environments: the batched torch env (the step math), the single numpy env, the SB3 adapter, tasks."""

from diffusion_gym.envs.single import DiffusionSDEEnv
from diffusion_gym.envs.stable_baselines import SB3VecEnv
from diffusion_gym.envs.vector import DiffusionSDEVectorEnv

__all__ = ["DiffusionSDEEnv", "DiffusionSDEVectorEnv", "SB3VecEnv"]
