"""``DiffusionSDE-Digits-v0``: the class-conditional 8x8 digits UNet (its class as the condition, the
"prompt"), a learned preference proxy as the terminal reward, the gold utility in ``info``; the
shipped classifier's features give the benchmarks' Frechet distance and diversity."""

from pathlib import Path

from diffusion_gym.tasks.spec import TaskSpec, register_task

WEIGHTS_DIR = Path(__file__).parent / "weights"

# Defaults (utility "thickness" in env.py): the headroom a benchmark needs. At kl_coef 1 J* - J(pre)
# is 0.31 pretrained standard deviations (every utility but JPEG), less than the evaluation noise of
# a few hundred samples; at 0.3 it is 1.15 (N = 10) and 1.13 (N = 20), with an effective sample size
# of only ~1% of the pretrained samples behind J* (385 and 322 of 32,768): J* and J(pre) ship in
# references.json (references.py). N = 10 with the exponential integrator halves a query's cost against
# N = 20 (the UNet is 90% of it), which is what lets the quick suite's agents learn on 2 CPU cores.
# exp(q / gamma) explores at a KL price of gamma D T / 2 per episode (D: the state's dimension): the
# 2-D grid's temperatures times 2 / 64 give the same exploration price on 8x8 digits. On 2 CPU cores
# the LoRA UNet policy runs ~8 episodes/s (a few hundred queries in a tuning run's minute, where it
# raised KL faster than reward); the MLP field on the 64 pixels runs ~80/s.
TASK = register_task(
    TaskSpec(
        name="digits",
        env_id="DiffusionSDE-Digits-v0",
        models="diffusion_gym.tasks.digits.env:task_models",
        defaults={"n_steps": 10, "integrator": "exponential", "kl_coef": 0.3},
        image_features="diffusion_gym.tasks.digits.classifier:image_features",
        tuning={
            "ct_ppo": {"lr": [3e-4, 1e-3], "clip": [0.1, 0.3]},
            "ddpo": {"lr": [3e-4, 1e-3], "clip": [1e-4, 0.1]},
            "dpok": {"lr": [3e-4, 1e-3], "clip": [1e-4, 0.1]},
            "ct_q_learning": {"lr": [3e-4, 1e-3], "temperature": [0.25 / 32, 1.0 / 32]},
        },
        tuning_budget={
            "num_envs": 64,
            "reward_queries": 4096,
            "eval_n": 1024,
            "optimum_n": 4096,
            "curve_points": 4,
            "curve_n": 256,
            "policy_net": "mlp",
            "critic_pretrain_queries": 256,
        },
        throughput=((256, 20),),
        references="diffusion_gym.tasks.digits:references.json",
    )
)
