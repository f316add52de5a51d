"""The tasks: each one folder with its models, rewards, trainers and one registered :class:`TaskSpec`.

Importing this package registers the built-in tasks (``mixture2d``: ``DiffusionSDE-v0``, ``mixture``:
``DiffusionSDE-Mixture-v0`` and ``DiffusionSDE-FlowMixture-v0``, ``digits``: ``DiffusionSDE-Digits-v0``,
``stable_diffusion``: ``DiffusionSDE-SD-v0`` and ``DiffusionSDE-FlowSD-v0``); a new task calls
:func:`register_task` from its own module.
"""

from diffusion_gym.tasks import digits, mixture, mixture2d, stable_diffusion  # noqa: E402,F401  (registers them)
from diffusion_gym.tasks.spec import TASKS, TaskSpec, get_task, register_task, resolve

__all__ = ["TASKS", "TaskSpec", "get_task", "register_task", "resolve"]
