"""``DiffusionSDE-SD-v0``: the latent reverse SDE of a local Stable Diffusion directory (``model_path=``),
prompts as conditions, the VAE-decoded image scored by a local scorer (JPEG compressibility by default)."""

from diffusion_gym.tasks.spec import TaskSpec, register_task

TASK = register_task(
    TaskSpec(
        name="stable_diffusion",
        env_id="DiffusionSDE-SD-v0",
        models="diffusion_gym.tasks.stable_diffusion.env:task_models",
        defaults={"n_steps": 50, "integrator": "ddpm"},
        throughput=((16, 20),),
        law_neutral=("gold", "gold_kwargs"),
    )
)
