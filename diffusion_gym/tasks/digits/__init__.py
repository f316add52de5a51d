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
# references.json (python -m diffusion_gym.tasks.references). N = 10 with the exponential integrator halves
# a query's cost against N = 20 (the UNet is 90% of it). model="flow" samples with the flow SDE.
TASK = register_task(
    TaskSpec(
        name="digits",
        env_id="DiffusionSDE-Digits-v0",
        models="diffusion_gym.tasks.digits.env:task_models",
        defaults={"n_steps": 10, "integrator": "exponential", "kl_coef": 0.3},
        variant_defaults={"model": {"flow": {"integrator": "flow_sde"}}},
        image_features="diffusion_gym.tasks.digits.classifier:image_features",
        throughput=((256, 20),),
        references="diffusion_gym.tasks.digits:references.json",
    )
)
