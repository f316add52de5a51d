"""What the environment needs from a reward: a batched terminal score of samples."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor


@runtime_checkable
class RewardModel(Protocol):
    """A terminal reward ``r(x, c)``: ``x`` of shape ``(B, *event_shape)`` to a tensor of shape ``(B,)``."""

    def __call__(self, x: Tensor, cond: Tensor | None = None) -> Tensor: ...
