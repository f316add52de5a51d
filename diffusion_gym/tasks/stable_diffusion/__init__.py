"""``DiffusionSDE-SD-v0``: the latent reverse SDE of a local Stable Diffusion directory (``model_path=``),
prompts as conditions, the VAE-decoded image scored by a local scorer (JPEG compressibility by default);
``DiffusionSDE-FlowSD-v0``: the same for a directory of the flow family (SD3 / SD3.5, FLUX.1)."""

from diffusion_gym.sde import DEFAULT_NOISE_LEVEL
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

FLOW_TASK = register_task(
    TaskSpec(
        name="flow_sd",
        env_id="DiffusionSDE-FlowSD-v0",
        models="diffusion_gym.tasks.stable_diffusion.env:flow_task_models",
        # The pipelines' 28 steps; Flow-GRPO's SDE at its noise level (the pipelines sample the ODE).
        defaults={"n_steps": 28, "integrator": "flow_sde", "noise_level": DEFAULT_NOISE_LEVEL},
        throughput=((16, 28),),
        law_neutral=("gold", "gold_kwargs"),
    )
)
