"""``DiffusionSDE-v0``: an 8-component 2-D Gaussian mixture (exact score), a Bradley-Terry proxy learned
from noisy comparisons as the terminal reward, the closed-form gold utility in ``info``."""

from pathlib import Path

from diffusion_gym.tasks.spec import TaskSpec, register_task

WEIGHTS_DIR = Path(__file__).parent / "weights"

TASK = register_task(
    TaskSpec(
        name="mixture2d",
        env_id="DiffusionSDE-v0",
        models="diffusion_gym.tasks.mixture2d.env:task_models",
        throughput=((4096, 100), (65_536, 20)),
    )
)
