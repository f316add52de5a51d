"""What the environment needs from a reward: a batched terminal score of samples."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor


@runtime_checkable
class RewardModel(Protocol):
    """A terminal reward ``r(x, c)``: ``x`` of shape ``(B, *event_shape)`` to a tensor of shape ``(B,)``."""

    def __call__(self, x: Tensor, cond: Tensor | None = None) -> Tensor: ...


def is_differentiable(reward: RewardModel) -> bool:
    """Whether ``reward`` has a gradient in ``x``: False when it, or any module inside it, declares
    ``differentiable = False`` (a JPEG encoder, a scorer that goes through PIL); True otherwise."""
    parts = reward.modules() if hasattr(reward, "modules") else [reward]
    return all(getattr(part, "differentiable", True) for part in parts)
