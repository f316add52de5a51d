"""diffusion-gym: the denoising process of a diffusion model as a continuous-time Gymnasium environment.

Importing the package registers the tasks (:mod:`diffusion_gym.tasks`) and their environments::

    import gymnasium as gym
    import diffusion_gym  # noqa: F401

    env = gym.make("DiffusionSDE-v0", n_steps=50)
    venv = gym.make_vec("DiffusionSDE-v0", num_envs=1024, vectorization_mode="vector_entry_point")
"""

from diffusion_gym import tasks
from diffusion_gym.envs.single import DiffusionSDEEnv
from diffusion_gym.envs.vector import DiffusionSDEVectorEnv
from diffusion_gym.tasks import TaskSpec, register_task

__version__ = "0.1.0"
__all__ = ["DiffusionSDEEnv", "DiffusionSDEVectorEnv", "TaskSpec", "__version__", "register_task", "tasks"]
