"""The transition kernel: the one implementation of the step math (docs/design.md, section 2).

Every integrator of :mod:`diffusion_gym.sde` steps by a Gaussian whose mean is affine in the
action, so with the constants of a :class:`~diffusion_gym.sde.Discretization` (which carries the
action scale on its grid) step k is

    delta_k  = action_scale_k * action_k                       (the score correction)
    m_k      = a_k Y_k + b_k s_pre(s_k, Y_k)                   (the pretrained mean)
    Y_{k+1}  = m_k + c_k delta_k + sqrt(v_k) xi_k,  xi_k ~ N(0, I)
    KL_k     = w_k ||delta_k||^2,  w_k = c_k^2 / (2 v_k)       (controlled vs pretrained transition)
    log p_k  = log N(Y_{k+1}; m_k + c_k delta_k, v_k I)
    M_k      = (c_k / sqrt(v_k)) delta_k . xi_k                 (the noise's martingale term)

with ``c_k = b_k`` for the VP integrators (the correction is added to the score) and ``c_k != b_k``
where the drift weighs the score otherwise than the diffusion does (the flow SDEs).

These are pure functions: the env steps with the single-step ones (Python-float constants, no
tensor reads, nothing that syncs; ``torch.mul(x, c)`` rather than ``c * x``, whose reflected
operator goes through Python), the agents score whole stored trajectories with the path ones
(time-major, leading dimension N, one call for all steps).
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from diffusion_gym.sde import Discretization

# --------------------------------------------------------------------------------------------------
# One step k (batch first).


def step_delta(disc: Discretization, k: int, action: Tensor) -> Tensor:
    """``delta_k = action_scale_k * action``: the score correction of an in-bounds action."""
    return torch.mul(action, disc.constants[k].action_scale)


def step_mean(disc: Discretization, k: int, x: Tensor, score: Tensor, delta: Tensor | None = None) -> Tensor:
    """``a_k x + b_k score + c_k delta``: the transition's mean from ``x`` with the base model's ``score``
    there (the pretrained mean ``m_k`` when ``delta`` is None)."""
    c = disc.constants[k]
    if delta is None or c.control_scale == c.score_scale:  # b (score + delta): one rounding, as ever on VP
        return torch.add(torch.mul(x, c.drift_scale), score if delta is None else score + delta, alpha=c.score_scale)
    mean = torch.add(torch.mul(x, c.drift_scale), score, alpha=c.score_scale)
    return mean.add_(delta, alpha=c.control_scale)


def step_shift(disc: Discretization, k: int, pretrained_mean: Tensor, delta: Tensor) -> Tensor:
    """``m_k + c_k delta``: the controlled mean from the pretrained one."""
    return torch.add(pretrained_mean, delta, alpha=disc.constants[k].control_scale)


def step_sample(disc: Discretization, k: int, mean: Tensor, noise: Tensor) -> Tensor:
    """``mean + sqrt(v_k) xi``: the next state given standard normal ``noise``."""
    return torch.add(mean, noise, alpha=disc.constants[k].noise_std)


def step_kl(disc: Discretization, k: int, delta: Tensor) -> Tensor:
    """``w_k ||delta||^2``: the KL of the controlled to the pretrained transition, shape (B,)."""
    squares = (delta * delta).flatten(1)
    # Row sums as a matrix-vector product: several times faster on CPU than a sum over a short last dim.
    return torch.mv(squares, _ones(squares.shape[1], squares.device, squares.dtype)).mul_(disc.constants[k].kl_weight)


def step_martingale(disc: Discretization, k: int, y_next: Tensor, mean: Tensor, delta: Tensor) -> Tensor:
    """``(c_k / v_k) delta . (y_next - mean)`` = ``(c_k / sqrt(v_k)) delta_k . xi_k``: step k's term of the
    discrete stochastic integral ``int g delta . dB``, shape (B,). ``delta_k`` is a function of ``Y_k``
    and ``xi_k`` is independent of it, so the sum has mean zero exactly: a control variate."""
    c = disc.constants[k]
    return (delta * (y_next - mean)).flatten(1).sum(1).mul_(c.control_scale / c.noise_std**2)


def step_log_prob(disc: Discretization, k: int, y_next: Tensor, mean: Tensor) -> Tensor:
    """``log N(y_next; mean, v_k I)``, summed over all but the batch dimension, shape (B,)."""
    return gaussian_log_prob(y_next, mean, disc.noise_std[k])


@functools.cache
def _ones(n: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """A read-only vector of ones (only ever an operand): allocated once per size, device and dtype."""
    return torch.ones(n, device=device, dtype=dtype)


# --------------------------------------------------------------------------------------------------
# Whole paths: time-major tensors of N steps, (N, B, *event_shape), scored in one call.


def _per_step(coef: Tensor, like: Tensor) -> Tensor:
    """Step coefficients (N,) shaped to broadcast against ``like`` (N, B, ...)."""
    return coef[: like.shape[0]].view(-1, *([1] * (like.ndim - 1))).to(like.dtype)


def path_delta(disc: Discretization, actions: Tensor) -> Tensor:
    """``delta_k = action_scale_k * action_k`` at every step, (N, B, ...)."""
    return _per_step(disc.action_scale, actions) * actions


def path_kl(disc: Discretization, deltas: Tensor) -> Tensor:
    """``w_k ||delta_k||^2`` at every step, differentiable in ``deltas`` (N, B, ...), shape (N, B)."""
    return disc.kl_weight[: deltas.shape[0], None].to(deltas.dtype) * deltas.flatten(2).square().sum(2)


def path_log_prob(disc: Discretization, next_states: Tensor, pretrained_means: Tensor, deltas: Tensor) -> Tensor:
    """``log N(Y_{k+1}; m_k + c_k delta_k, v_k I)`` of every stored transition, (N, B).

    Args:
        disc: the grid's coefficients.
        next_states: ``Y_1 .. Y_N``, (N, B, ...).
        pretrained_means: ``m_0 .. m_{N-1}``, (N, B, ...).
        deltas: the corrections whose transition density is wanted (differentiable), (N, B, ...).
    """
    # addcmul rounds m + c delta once, as step_shift does: the density is about the very mean the env sampled from.
    mean = torch.addcmul(pretrained_means, _per_step(disc.control_scale, deltas), deltas)
    return gaussian_log_prob(next_states, mean, _per_step(disc.noise_std, mean), batch_dims=2)


def path_score(disc: Discretization, states: Tensor, pretrained_means: Tensor) -> Tensor:
    """The base model's score at every stored state, recovered from the pretrained means
    (``s_pre = (m_k - a_k Y_k) / b_k``): no model evaluation, (N, B, ...)."""
    y = states[: pretrained_means.shape[0]]
    return (pretrained_means - _per_step(disc.drift_scale, y) * y) / _per_step(disc.score_scale, y)


def gaussian_log_prob(y: Tensor, mean: Tensor, std: Tensor | float, batch_dims: int = 1) -> Tensor:
    """``log N(y; mean, std^2 I)`` summed over all but the first ``batch_dims`` dimensions; ``std`` is a
    scalar or one value per leading index, shaped to broadcast against ``y``."""
    std = torch.as_tensor(std, dtype=y.dtype, device=y.device)
    z = (y - mean) / std
    d = math.prod(z.shape[batch_dims:])
    log_std = torch.log(std).reshape(std.shape[:batch_dims] if std.ndim else ())
    return -0.5 * z.flatten(batch_dims).pow(2).sum(-1) - d * (log_std + 0.5 * math.log(2 * math.pi))
