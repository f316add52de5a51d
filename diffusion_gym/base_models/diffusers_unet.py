"""Any diffusers network as a model in continuous diffusion time: a UNet on a DDPM-family schedule as
a :class:`ScoreModel` (:class:`DiffusersScore`), a flow-matching UNet or transformer as a velocity model
(:class:`DiffusersVelocity`); :class:`DiffusersModel` is what they share.

The scheduler's ``alphas_cumprod`` become a :class:`~diffusion_gym.sde.DiscreteVPSchedule`:
timestep n sits at ``s = (n + 1) / M`` (T = 1), ``log abar`` is linear in s between timesteps, and
the UNet is called at the fractional timestep ``s M - 1``. Its output is turned into the score by
the prediction type (``x_s = alpha x_0 + sigma eps``):

- epsilon:      ``score = -eps / sigma``
- v_prediction: ``eps = sigma x_s + alpha v``
- sample:       ``eps = (x_s - alpha x_0) / sigma``

Conditions are integer indices (a class, or a row of a prompt-embedding table); classifier-free
guidance (Ho & Salimans 2022) mixes the conditional and unconditional noise predictions,
``eps = eps_u + w (eps_c - eps_u)``, in one batched UNet call.

A flow-matching UNet (:class:`DiffusersVelocity`) predicts the velocity ``eps - x0`` of the
rectified-flow path instead, at diffusers' flow timestep ``1000 sigma``; the guidance mixes the
velocities, which is the same mix of the noise predictions (the map between them is affine in the
output at fixed ``x``).
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

import torch
from torch import Tensor, nn

from diffusion_gym.parametrization import convert
from diffusion_gym.sde import DiscreteVPSchedule, RectifiedFlowSchedule, Schedule

PredictionType = Literal["epsilon", "v_prediction", "sample"]
FLOW_TIMESTEP_SCALE = 1000.0
"""A flow-matching network sees ``1000 sigma`` at noise scale sigma: diffusers'
``FlowMatchEulerDiscreteScheduler`` feeds ``sigma * num_train_timesteps`` (1000)."""


class Conditioning(Protocol):
    """Maps condition indices (B,) to the UNet's keyword arguments, and gives the null condition."""

    num_conditions: int

    def unet_kwargs(self, cond: Tensor) -> dict[str, Tensor]: ...

    def null_kwargs(self, batch: int, device: torch.device) -> dict[str, Tensor]: ...


class ClassLabels(nn.Module):
    """Class-conditional ``UNet2DModel`` (``num_class_embeds``): condition i is class label i, and
    ``null_class`` is the label the model was trained on for "no class" (label dropout)."""

    def __init__(self, num_classes: int, null_class: int) -> None:
        super().__init__()
        self.num_conditions, self.null_class = int(num_classes), int(null_class)

    def unet_kwargs(self, cond: Tensor) -> dict[str, Tensor]:
        return {"class_labels": cond}

    def null_kwargs(self, batch: int, device: torch.device) -> dict[str, Tensor]:
        return {"class_labels": torch.full((batch,), self.null_class, dtype=torch.int64, device=device)}


class PromptEmbeddings(nn.Module):
    """``UNet2DConditionModel``: condition i is row i of a prompt-embedding table (P, L, D); the null
    condition is the embedding of the empty (or negative) prompt, shape (L, D), or None for a model
    never guided with one (:meth:`null_kwargs` then refuses)."""

    def __init__(self, prompt_embeds: Tensor, null_embeds: Tensor | None) -> None:
        super().__init__()
        if prompt_embeds.ndim != 3 or (null_embeds is not None and null_embeds.shape != prompt_embeds.shape[1:]):
            raise ValueError(
                f"expected prompt embeddings (P, L, D) and a null embedding (L, D), got "
                f"{tuple(prompt_embeds.shape)} and {None if null_embeds is None else tuple(null_embeds.shape)}"
            )
        self.register_buffer("prompt_embeds", prompt_embeds)
        self.register_buffer("null_embeds", null_embeds)
        self.num_conditions = prompt_embeds.shape[0]

    def unet_kwargs(self, cond: Tensor) -> dict[str, Tensor]:
        return {"encoder_hidden_states": self.prompt_embeds[cond]}

    def null_kwargs(self, batch: int, device: torch.device) -> dict[str, Tensor]:
        if self.null_embeds is None:
            raise ValueError("this model has no null condition: classifier-free guidance needs negative embeddings")
        return {"encoder_hidden_states": self.null_embeds.expand(batch, *self.null_embeds.shape)}


class DiffusersModel(nn.Module):
    """What every diffusers network wrapper shares: the network, how condition indices reach it,
    classifier-free guidance and one sample's shape. Its subclasses say what the output is
    (:class:`DiffusersScore`: noise, v or x0 on a VP schedule; :class:`DiffusersVelocity`: the
    rectified-flow velocity) and so give ``predict_noise``; the score follows from it.

    Args:
        unet: the network, called as ``unet(x, timestep=..., **conditioning, return_dict=False)``: a
            ``UNet2DModel`` / ``UNet2DConditionModel``, an ``SD3Transformer2DModel``, or a wrapper of
            that signature (:class:`~diffusion_gym.base_models.diffusers_transformer.PackedFluxTransformer`).
            (The attribute keeps the name ``unet`` whatever the network: checkpoints' keys start with it.)
        conditioning: how condition indices reach the network (None: unconditional).
        guidance_scale: classifier-free guidance weight w (1: the conditional model alone).
        event_shape: one sample's shape; defaults to ``(in_channels, sample_size, sample_size)``.
    """

    schedule: Schedule

    def __init__(
        self,
        unet: nn.Module,
        conditioning: Conditioning | None = None,
        guidance_scale: float = 1.0,
        event_shape: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        if guidance_scale != 1.0 and conditioning is None:
            raise ValueError("classifier-free guidance needs a conditional model")
        self.unet = unet
        self.conditioning = conditioning
        self.guidance_scale = float(guidance_scale)
        if event_shape is None:
            size = unet.config.sample_size
            size = (size, size) if isinstance(size, int) else tuple(size)
            event_shape = (unet.config.in_channels, *size)
        self.event_shape: tuple[int, ...] = tuple(event_shape)
        self.num_conditions: int | None = None if conditioning is None else conditioning.num_conditions

    def _unet(self, x: Tensor, timestep: Tensor, kwargs: dict[str, Any]) -> Tensor:
        # Under torch.autocast the network returns its low-precision dtype: back to x's, so that the guidance
        # mix and the conversions run in full precision (a no-op without autocast).
        return self.unet(x, timestep=timestep, **kwargs, return_dict=False)[0].to(x.dtype)

    def _guided(self, x: Tensor, timestep: Tensor, cond: Tensor | None) -> Tensor:
        """The network's output at ``timestep``, conditional on ``cond`` and guided."""
        if self.conditioning is None:
            out = self._unet(x, timestep, {})
        elif cond is None:
            raise ValueError("this model is conditional: pass cond (condition indices of shape (B,))")
        elif self.guidance_scale == 1.0:
            out = self._unet(x, timestep, self.conditioning.unet_kwargs(cond))
        else:
            cond_kwargs = self.conditioning.unet_kwargs(cond)
            null_kwargs = self.conditioning.null_kwargs(x.shape[0], x.device)
            both = {k: torch.cat([cond_kwargs[k], null_kwargs[k]]) for k in cond_kwargs}
            out_c, out_u = self._unet(torch.cat([x, x]), torch.cat([timestep, timestep]), both).chunk(2)
            out = out_u + self.guidance_scale * (out_c - out_u)
        return out

    def _alpha_sigma(self, s: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        shape = (-1,) + (1,) * (x.ndim - 1)
        return self.schedule.alpha(s).reshape(shape), self.schedule.sigma(s).reshape(shape)

    @staticmethod
    def _times(s: Tensor | float, x: Tensor) -> Tensor:
        """A 0-d time, or one per row as (B,) (a (B, 1) column is accepted too)."""
        s = torch.as_tensor(s, dtype=x.dtype, device=x.device)
        if s.ndim and s.numel() != x.shape[0]:
            raise ValueError(
                f"diffusion time must be a scalar or one per row ({x.shape[0]}), got shape {tuple(s.shape)}"
            )
        return s.reshape(-1) if s.ndim else s

    def predict_noise(self, s: Tensor | float, x: Tensor, cond: Tensor | None = None) -> Tensor:
        """The (guided) noise prediction ``E[eps | x_s]``."""
        raise NotImplementedError

    def score(self, s: Tensor | float, x: Tensor, cond: Tensor | None = None) -> Tensor:
        """``-eps(x_s) / sigma_s``."""
        s = self._times(s, x)
        return -self.predict_noise(s, x, cond) / self._alpha_sigma(s, x)[1]


class DiffusersScore(DiffusersModel):
    """The score of a diffusers UNet (epsilon, v or sample prediction) on a continuous-time schedule.

    Args:
        unet: a ``UNet2DModel`` or ``UNet2DConditionModel``.
        schedule: the scheduler's ``alphas_cumprod`` on continuous time.
        prediction_type: what the UNet predicts.
        conditioning, guidance_scale, event_shape: as :class:`DiffusersModel`'s.
    """

    def __init__(
        self,
        unet: nn.Module,
        schedule: DiscreteVPSchedule,
        prediction_type: PredictionType = "epsilon",
        conditioning: Conditioning | None = None,
        guidance_scale: float = 1.0,
        event_shape: tuple[int, ...] | None = None,
    ) -> None:
        if prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"prediction_type must be epsilon, v_prediction or sample, got {prediction_type!r}")
        super().__init__(unet, conditioning, guidance_scale, event_shape)
        self.schedule = schedule
        self.prediction_type = prediction_type

    def predict_noise(self, s: Tensor | float, x: Tensor, cond: Tensor | None = None) -> Tensor:
        """The (guided) noise prediction ``eps(x_s)``."""
        s = self._times(s, x)
        return self._to_noise(s, x, self._guided(x, self.schedule.timestep(s).expand(x.shape[0]), cond))

    def _to_noise(self, s: Tensor, x: Tensor, out: Tensor) -> Tensor:
        if self.prediction_type == "epsilon":
            return out
        alpha, sigma = self._alpha_sigma(s, x)
        if self.prediction_type == "v_prediction":
            return sigma * x + alpha * out
        return (x - alpha * out) / sigma


class DiffusersVelocity(DiffusersModel):
    """A flow-matching diffusers network (a UNet, SD3's or FLUX's transformer): the velocity
    ``v = E[eps - x0 | x_s]`` of the rectified-flow path ``x_s = (1 - sigma_s) x0 + sigma_s eps``
    (:class:`~diffusion_gym.sde.RectifiedFlowSchedule`), the network called at
    ``timestep_scale * sigma_s`` (diffusers' ``FlowMatchEulerDiscreteScheduler``: 1000). Declares
    ``parametrization = "velocity"``: the env steps its flow integrators with :meth:`predict` and
    converts exactly where it needs another form."""

    parametrization = "velocity"

    def __init__(
        self,
        unet: nn.Module,
        schedule: RectifiedFlowSchedule,
        conditioning: Conditioning | None = None,
        guidance_scale: float = 1.0,
        timestep_scale: float = FLOW_TIMESTEP_SCALE,
        event_shape: tuple[int, ...] | None = None,
    ) -> None:
        if not isinstance(schedule, RectifiedFlowSchedule):
            raise TypeError(f"a velocity model needs a RectifiedFlowSchedule, got {type(schedule).__name__}")
        super().__init__(unet, conditioning, guidance_scale, event_shape)
        self.schedule = schedule
        self.timestep_scale = float(timestep_scale)

    def predict(self, s: Tensor | float, x: Tensor, cond: Tensor | None = None) -> Tensor:
        """The (guided) velocity at diffusion time ``s``."""
        s = self._times(s, x)
        return self._guided(x, (self.timestep_scale * self.schedule.sigma(s)).expand(x.shape[0]), cond)

    def predict_noise(self, s: Tensor | float, x: Tensor, cond: Tensor | None = None) -> Tensor:
        """``E[eps | x_s] = x_s + alpha_s v``."""
        s = self._times(s, x)
        alpha, sigma = self._alpha_sigma(s, x)
        return convert(self.predict(s, x, cond), x, alpha, sigma, "velocity", "eps")
