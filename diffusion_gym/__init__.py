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

_ENVS = {
    "DiffusionSDE-v0": "diffusion_gym.envs.mixture2d",
    "DiffusionSDE-Digits-v0": "diffusion_gym.envs.digits",
    "DiffusionSDE-SD-v0": "diffusion_gym.envs.stable_diffusion",
}
for _id, _module in _ENVS.items():
    if _id not in registry:
        register(id=_id, entry_point=f"{_module}:make_env", vector_entry_point=f"{_module}:make_vector_env")
