"""The class-conditional digits base model of ``DiffusionSDE-Digits-v0``: a small diffusers
``UNet2DModel`` trained on the 8x8 digits by :mod:`diffusion_gym.tasks.digits.train_unet`.

It predicts noise on DDPMScheduler's default (linear, 1,000-step) schedule, trained in continuous
time (fractional timesteps, see :class:`~diffusion_gym.sde.DiscreteVPSchedule`) so that any grid
is in-distribution, with 10% label dropout to the null class 10 for classifier-free guidance. Its
flow-matching sibling (``model="flow"``) is the same UNet trained on the same data to predict the
velocity of the linear path (:func:`digits_flow_model`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffusers import DDPMScheduler, UNet2DModel

from diffusion_gym.base_models.diffusers_unet import ClassLabels, DiffusersScore, DiffusersVelocity
from diffusion_gym.checkpoints import load_weights_into, read_metadata
from diffusion_gym.sde import DiscreteVPSchedule, RectifiedFlowSchedule
from diffusion_gym.tasks.digits import WEIGHTS_DIR
from diffusion_gym.tasks.digits.data import NUM_CLASSES

WEIGHTS_NAMES: dict[str, str] = {"ddpm": "digits_unet", "flow": "digits_flow_unet"}
"""The shipped weights of each model family (``model=`` of the task), in ``WEIGHTS_DIR``."""
NULL_CLASS = NUM_CLASSES

UNET_CONFIG: dict[str, Any] = {
    "sample_size": 8,
    "in_channels": 1,
    "out_channels": 1,
    "block_out_channels": (32, 64, 64),
    "layers_per_block": 1,
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    "norm_num_groups": 8,
    "attention_head_dim": 8,
    "num_class_embeds": NUM_CLASSES + 1,
}


def digits_schedule() -> DiscreteVPSchedule:
    """DDPMScheduler's default linear schedule (betas 1e-4 to 0.02 over 1,000 steps) on continuous time."""
    return DiscreteVPSchedule(DDPMScheduler().alphas_cumprod)


def load_digits_unet(path: Path | None = None, model: str = "ddpm") -> UNet2DModel:
    """The shipped UNet of family ``model`` (or the safetensors file at ``path``, with its JSON beside
    it), eval mode, frozen."""
    path = Path(path) if path is not None else WEIGHTS_DIR / f"{WEIGHTS_NAMES[model]}.safetensors"
    meta = read_metadata(path, "the digits UNet", keys=["unet_config"])
    unet = load_weights_into(UNet2DModel(**meta["unet_config"]), path, "the digits UNet")
    return unet.eval().requires_grad_(False)


def digits_score_model(guidance_scale: float = 1.0, path: Path | None = None) -> DiffusersScore:
    """The digits base model as a ScoreModel; condition i is digit class i."""
    return DiffusersScore(
        load_digits_unet(path),
        digits_schedule(),
        prediction_type="epsilon",
        conditioning=ClassLabels(NUM_CLASSES, NULL_CLASS),
        guidance_scale=guidance_scale,
    )


def digits_flow_model(guidance_scale: float = 1.0, path: Path | None = None) -> DiffusersVelocity:
    """The flow-matching digits model as a velocity model on the unshifted linear path (its UNet at
    diffusers' flow timestep ``1000 s``); condition i is digit class i."""
    return DiffusersVelocity(
        load_digits_unet(path, "flow"),
        RectifiedFlowSchedule(),
        conditioning=ClassLabels(NUM_CLASSES, NULL_CLASS),
        guidance_scale=guidance_scale,
    )
