"""What the environment needs from a pretrained diffusion model."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor

from diffusion_gym.sde import Schedule


@runtime_checkable
class ScoreModel(Protocol):
    """A pretrained score ``s_pre(s, x, c) ~ grad_x log p_s(x | c)``, batched, in diffusion time.

    Attributes:
        schedule: the path the model was trained on (a VP schedule, or the rectified flow).
        event_shape: the shape of one sample (``(2,)`` for 2-D points, ``(C, H, W)`` for images).
    """

    schedule: Schedule
    event_shape: tuple[int, ...]

    def score(self, s: Tensor, x: Tensor, cond: Tensor | None = None) -> Tensor:
        """The score at diffusion time ``s`` (a 0-d tensor or one time per row) for ``x`` of shape
        ``(B, *event_shape)``; returns a tensor shaped like ``x``.

        A model that predicts another form (a flow-matching model's velocity, an eps or x0 model)
        says so in an attribute ``parametrization`` (:mod:`diffusion_gym.parametrization`) and gives
        it by ``predict(s, x, cond)``; the env converts it exactly, in one place
        (:meth:`~diffusion_gym.envs.vector.DiffusionSDEVectorEnv.predict`)."""
        ...
