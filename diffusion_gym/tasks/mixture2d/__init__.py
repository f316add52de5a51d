"""``DiffusionSDE-v0``: an 8-component 2-D Gaussian mixture (exact score), a Bradley-Terry proxy learned
from noisy comparisons as the terminal reward, the closed-form gold utility in ``info``."""

from pathlib import Path

from diffusion_gym.tasks.spec import TaskSpec, register_task

WEIGHTS_DIR = Path(__file__).parent / "weights"

# Undiscounted SB3 (gamma = 1). SB3's action noise is a score correction the env charges KL for:
# log_std_init -1 / -3 is a delta noise of 1.5 / 0.2 per coordinate at action_scale 4. SAC's
# entropy target sets its exploration: "auto" is -2 (the action's dimension), -10 far less noise.
TASK = register_task(
    TaskSpec(
        name="mixture2d",
        env_id="DiffusionSDE-v0",
        models="diffusion_gym.tasks.mixture2d.env:task_models",
        tuning={
            "ct_ppo": {"lr": [3e-4, 1e-3], "clip": [0.3, 1.0]},
            "ddpo": {"lr": [3e-4, 1e-3], "clip": [0.01, 0.1]},
            "dpok": {"lr": [3e-4, 1e-3], "clip": [0.01, 0.1]},
            "ct_q_learning": {"lr": [3e-4, 1e-3], "temperature": [0.25, 1.0]},
            "sb3_ppo": {"lr": [3e-4, 1e-3], "log_std_init": [-1.0, -3.0], "gae_lambda": [0.95, 1.0]},
            "sb3_sac": {"lr": [3e-4, 1e-3], "target_entropy": ["auto", -10.0]},
        },
        tuning_budget={
            "num_envs": 512,
            "reward_queries": 100_000,
            "eval_n": 8192,
            "optimum_n": 65_536,
            "curve_points": 8,
            "curve_n": 2048,
            "policy_net": "mlp",
            "critic_pretrain_queries": 2048,
        },
        throughput=((4096, 100), (65_536, 20)),
    )
)
