"""``DiffusionSDE-Mixture-v0``: an 8-component Gaussian mixture in D dimensions (``dim=``, default 8; exact
score), a Bradley-Terry proxy learned from noisy comparisons as the terminal reward, the closed-form
gold utility in ``info``.

The D-dimensional family of ``DiffusionSDE-v0`` (docs/design.md, section 3): unequal weights down to a
rare mode (0.04), well separated anisotropic components (:mod:`.model`), and a gold of three Gaussian
bumps, in a gap between two modes, on the rare mode and (low) on the heaviest mode, whose widths follow
the components' spread (:mod:`.rewards`). The proxy ships for D = 2, 8 and 32; ``reward="gold"``
trains on the gold in any dimension >= 2. The optimal control (J_oracle) is closed form, as for every
Gaussian-mixture task; J_best's dynamic programme is for 2-D only.
"""

from pathlib import Path

from diffusion_gym.tasks.spec import TaskSpec, register_task

WEIGHTS_DIR = Path(__file__).parent / "weights"

# The search grids and budget of DiffusionSDE-v0 (see diffusion_gym/tasks/mixture2d/__init__.py). SAC's
# "auto" entropy target is -D here, so -10.0 is the lower-noise alternative only for D < 10.
TASK = register_task(
    TaskSpec(
        name="mixture",
        env_id="DiffusionSDE-Mixture-v0",
        models="diffusion_gym.tasks.mixture.env:task_models",
        defaults={"integrator": "exponential"},
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
