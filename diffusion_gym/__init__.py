"""diffusion-gym: the denoising process of a diffusion model as a continuous-time Gymnasium environment.

Importing the package registers the environments::

    import gymnasium as gym
    import diffusion_gym  # noqa: F401

    env = gym.make("DiffusionSDE-v0", n_steps=50)
    venv = gym.make_vec("DiffusionSDE-v0", num_envs=1024, vectorization_mode="vector_entry_point")
"""

from gymnasium.envs.registration import register, registry

from diffusion_gym.envs.single import DiffusionSDEEnv
from diffusion_gym.envs.vector import DiffusionSDEVectorEnv

__version__ = "0.1.0"
__all__ = ["DiffusionSDEEnv", "DiffusionSDEVectorEnv", "__version__"]

if "DiffusionSDE-v0" not in registry:
    register(
        id="DiffusionSDE-v0",
        entry_point="diffusion_gym.envs.mixture2d:make_env",
        vector_entry_point="diffusion_gym.envs.mixture2d:make_vector_env",
    )
