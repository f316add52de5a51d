"""``DiffusionSDE-Digits-v0``: the class-conditional 8x8 digits UNet, its class as the condition
(the "prompt"), a learned preference proxy as the terminal reward and the gold utility in info.

Defaults differ from ``DiffusionSDE-v0`` where the task needs it: N = 10 steps of the exponential
integrator, kl_coef 0.3 and the thickness utility, so that J* - J(pre) is about one standard
deviation of the pretrained objective (1.15; 0.31 at kl_coef 1) while a query stays cheap; and
classifier-free guidance 2. J* and J(pre) of the default configuration ship with the task
(``references.json``: the effective sample size behind J* is ~1% of the samples, so it takes tens of
thousands).

``model="flow"`` swaps the DDPM UNet for its flow-matching sibling (the same UNet trained on the
same digits to predict the linear path's velocity), sampled by the flow SDE (``integrator`` defaults
to ``"flow_sde"`` there, Flow-GRPO's step at ``noise_level`` 0.7); proxies, gold and defaults are
otherwise the same.
"""

from __future__ import annotations

from typing import Literal

from diffusion_gym.base_models.diffusers_unet import DiffusersScore, DiffusersVelocity
from diffusion_gym.rewards.protocol import RewardModel
from diffusion_gym.tasks.digits import TASK
from diffusion_gym.tasks.digits import rewards as digits_rewards
from diffusion_gym.tasks.digits.unet import digits_flow_model, digits_score_model
from diffusion_gym.validation import validated


@validated
def task_models(
    utility: str = "thickness",
    reward: Literal["proxy", "gold"] = "proxy",
    guidance_scale: float = 2.0,
    model: Literal["ddpm", "flow"] = "ddpm",
) -> tuple[DiffusersScore | DiffusersVelocity, RewardModel, RewardModel]:
    """(base model, terminal reward, gold utility) for ``utility`` (see
    :data:`diffusion_gym.tasks.digits.rewards.UTILITIES`); ``reward="gold"`` trains on the gold itself;
    ``model``: the DDPM UNet or its flow-matching sibling."""
    gold = digits_rewards.gold_utility(utility)
    terminal = digits_rewards.load_proxy(utility) if reward == "proxy" else digits_rewards.gold_utility(utility)
    base = digits_flow_model(guidance_scale) if model == "flow" else digits_score_model(guidance_scale)
    return base, terminal, gold


make_env = TASK.make_env
"""``gym.make("DiffusionSDE-Digits-v0", **kwargs)``: the task's arguments as :func:`task_models`."""
make_vector_env = TASK.make_vector_env
"""``gym.make_vec("DiffusionSDE-Digits-v0", num_envs, vectorization_mode="vector_entry_point", **kwargs)``."""
