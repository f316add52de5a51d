"""Small networks of (time, state, condition): the score-correction field and the value function."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn


class TimeFeatures(nn.Module):
    """Fourier features of environment time t in [0, T]: ``[t/T, sin(2^i pi t/T), cos(2^i pi t/T)]``."""

    def __init__(self, T: float, n_frequencies: int = 6) -> None:
        super().__init__()
        self.T = float(T)
        self.register_buffer("frequencies", math.pi * 2.0 ** torch.arange(n_frequencies, dtype=torch.float32))
        self.dim = 1 + 2 * n_frequencies

    def forward(self, t: Tensor) -> Tensor:
        u = (t.reshape(-1, 1) / self.T).to(self.frequencies.dtype)
        angles = u * self.frequencies
        return torch.cat([u, torch.sin(angles), torch.cos(angles)], dim=1)


def context(
    time: TimeFeatures, embedding: nn.Embedding | None, t: Tensor, x: Tensor, cond: Tensor | None
) -> list[Tensor]:
    """Per-row time features and, for a conditional network, the condition's embedding, in x's dtype."""
    parts = [time(t).to(x.dtype).expand(x.shape[0], -1)]
    if embedding is not None:
        if cond is None:
            raise ValueError("this network is conditional: pass cond")
        parts.append(embedding(cond).to(x.dtype))
    return parts


class FieldMLP(nn.Module):
    """``f(t, x, c)``: an MLP of time features, the flattened state and a condition embedding, with an
    output of the state's shape (the score correction) or a scalar (a value).

    Args:
        event_shape: one state's shape.
        T: the horizon (time features are of t / T).
        num_conditions: embed condition indices if the task is conditional.
        hidden: widths of the hidden layers.
        scalar: output one number per sample instead of a field.
        zero_init: initialise the last layer to zero (the policy starts at zero correction).
    """

    def __init__(
        self,
        event_shape: Sequence[int],
        T: float,
        num_conditions: int | None = None,
        hidden: Sequence[int] = (128, 128),
        scalar: bool = False,
        zero_init: bool = True,
    ) -> None:
        super().__init__()
        self.event_shape = tuple(event_shape)
        self.scalar = scalar
        self.time = TimeFeatures(T)
        cond_dim = 16 if num_conditions is not None else 0
        self.cond = nn.Embedding(num_conditions, cond_dim) if num_conditions is not None else None
        width = math.prod(self.event_shape) + self.time.dim + cond_dim
        layers: list[nn.Module] = []
        for h in hidden:
            layers += [nn.Linear(width, h), nn.SiLU()]
            width = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, 1 if scalar else math.prod(self.event_shape))
        if zero_init:
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def forward(self, t: Tensor, x: Tensor, cond: Tensor | None = None) -> Tensor:
        out = self.head(self.body(torch.cat([x.flatten(1), *context(self.time, self.cond, t, x, cond)], dim=1)))
        return out.squeeze(1) if self.scalar else out.reshape(x.shape[0], *self.event_shape)


class FieldConv(nn.Module):
    """``f(t, x, c)`` for image states: a small convolutional field, the state's shape in and out.

    Time features and the condition embedding enter every layer as per-channel shifts (FiLM-style
    biases); the weights are shared across pixels (translation equivariant away from the zero
    padding's reach): a local edit the reward likes (a thicker stroke) is learnt once for every
    position instead of once per pixel as an MLP must.

    Args:
        event_shape: one state's shape, ``(C, H, W)``.
        T: the horizon (time features are of t / T).
        num_conditions: embed condition indices if the task is conditional.
        width: channels of the hidden convolutions.
        depth: hidden 3x3 convolutions.
        zero_init: initialise the last layer to zero (the policy starts at zero correction).
    """

    def __init__(
        self,
        event_shape: Sequence[int],
        T: float,
        num_conditions: int | None = None,
        width: int = 32,
        depth: int = 3,
        zero_init: bool = True,
    ) -> None:
        super().__init__()
        if len(event_shape) != 3:
            raise ValueError(f"a convolutional field needs (C, H, W) states, got event shape {tuple(event_shape)}")
        channels = int(event_shape[0])
        self.event_shape = tuple(event_shape)
        self.time = TimeFeatures(T)
        self.cond = nn.Embedding(num_conditions, 16) if num_conditions is not None else None
        context = self.time.dim + (16 if num_conditions is not None else 0)
        self.convs = nn.ModuleList(nn.Conv2d(channels if i == 0 else width, width, 3, padding=1) for i in range(depth))
        self.shifts = nn.ModuleList(nn.Linear(context, width) for _ in range(depth))
        self.head = nn.Conv2d(width, channels, 3, padding=1)
        if zero_init:
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def forward(self, t: Tensor, x: Tensor, cond: Tensor | None = None) -> Tensor:
        c = torch.cat(context(self.time, self.cond, t, x, cond), dim=1)
        h = x
        for conv, shift in zip(self.convs, self.shifts, strict=True):
            h = nn.functional.silu(conv(h) + shift(c)[:, :, None, None])
        return self.head(h)


class DenoisedRewardCritic(nn.Module):
    """``V(t, y, c) = cos(pi s / 2T) r(x0_hat, c) + sin(pi s / 2T) g_phi(t, y, c)``, ``s = T - t``: the critic of
    the authors' CT-PPO (ContTimeRL4DM, ``ddpo_continuous/scripts/src/ImageReward_VN.py``, their time
    running the other way). Near the data end it is the terminal reward at the denoised estimate
    ``x0_hat = (y + sigma_s^2 s_pre(s, y)) / alpha_s``, exact at ``s = 0``; towards the noise end a
    learned residual ``g_phi`` (an MLP of time, state and condition) takes over. The reward is frozen.

    Args:
        reward: the task's terminal reward.
        event_shape, T, num_conditions, hidden: the residual's :class:`FieldMLP` arguments.
    """

    def __init__(
        self,
        reward: nn.Module,
        event_shape: Sequence[int],
        T: float,
        num_conditions: int | None = None,
        hidden: Sequence[int] = (128, 128),
    ) -> None:
        super().__init__()
        self.reward = [reward]  # a plain list: the frozen reward is neither a submodule nor checkpointed
        self.T = float(T)
        self.residual = FieldMLP(event_shape, T, num_conditions, hidden, scalar=True, zero_init=False)

    @torch.no_grad()
    def denoised_reward(self, denoised: Tensor, cond: Tensor | None) -> Tensor:
        """``r(x0_hat, c)``: the frozen term, which depends on the trajectories only (computed once per batch)."""
        return self.reward[0](denoised, cond).to(denoised.dtype)

    def forward(self, t: Tensor, x: Tensor, cond: Tensor | None, denoised_reward: Tensor) -> Tensor:
        """``V(t, x, c)`` given ``denoised_reward = r(x0_hat(t, x), c)`` (:meth:`denoised_reward`)."""
        angle = (0.5 * math.pi / self.T) * (self.T - t.reshape(-1)).to(x.dtype)
        return torch.cos(angle) * denoised_reward + torch.sin(angle) * self.residual(t, x, cond)
