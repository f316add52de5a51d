"""What a denoising model predicts, and the exact map between its four usual forms (docs/design.md,
section 2).

On a path ``x_s = alpha_s x0 + sigma_s eps`` a model predicts one of

- ``"score"``: ``grad_x log p_s(x) = -E[eps | x] / sigma_s``;
- ``"eps"``: ``E[eps | x]``;
- ``"x0"``: ``E[x0 | x]``;
- ``"velocity"``: ``E[eps - x0 | x]``, the rectified-flow velocity (the linear path ``alpha = 1 - sigma``
  of diffusers' ``FlowMatchEulerDiscreteScheduler``).

Every form determines the pair ``(E[x0 | x], E[eps | x])`` through ``x = alpha E[x0] + sigma E[eps]``,
so each conversion goes through that pair: :func:`to_pair` and :func:`from_pair` are the one place
that knows the formulas. A conversion divides by ``alpha`` or ``sigma`` where the source form does
not hold the other member of the pair; at pure noise (``alpha = 0``) a score or an eps prediction
holds no information about ``x0``, so a flow integrator that needs the velocity there needs a model
that predicts x0 or the velocity itself.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

Parametrization = Literal["score", "eps", "x0", "velocity"]
PARAMETRIZATIONS: tuple[str, ...] = ("score", "eps", "x0", "velocity")


def to_pair(kind: Parametrization, output: Tensor, x: Tensor, alpha: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
    """``(E[x0 | x], E[eps | x])`` from a model's ``output`` of form ``kind`` at ``x`` on the path
    ``(alpha, sigma)`` (tensors broadcasting against ``x``; the velocity needs ``alpha = 1 - sigma``)."""
    if kind == "score":
        eps = -sigma * output
        return (x - sigma * eps) / alpha, eps
    if kind == "eps":
        return (x - sigma * output) / alpha, output
    if kind == "x0":
        return output, (x - alpha * output) / sigma
    if kind == "velocity":
        return x - sigma * output, x + alpha * output
    raise ValueError(f"unknown parametrization {kind!r}; expected one of {PARAMETRIZATIONS}")


def from_pair(kind: Parametrization, x0: Tensor, eps: Tensor, sigma: Tensor) -> Tensor:
    """The form ``kind`` of the prediction ``(E[x0 | x], E[eps | x])``."""
    if kind == "score":
        return -eps / sigma
    if kind == "eps":
        return eps
    if kind == "x0":
        return x0
    if kind == "velocity":
        return eps - x0
    raise ValueError(f"unknown parametrization {kind!r}; expected one of {PARAMETRIZATIONS}")


def convert(
    output: Tensor, x: Tensor, alpha: Tensor, sigma: Tensor, source: Parametrization, target: Parametrization
) -> Tensor:
    """A prediction of form ``source`` as form ``target`` (the identity when they are the same)."""
    if source == target:
        return output
    x0, eps = to_pair(source, output, x, alpha, sigma)
    return from_pair(target, x0, eps, sigma)


def prediction(model: Any, s: Tensor, x: Tensor, target: Parametrization) -> Tensor:
    """``model``'s prediction at diffusion time ``s`` (a scalar) as form ``target``: from its ``score``
    or, where it declares another :attr:`parametrization`, its ``predict``, converted on its own
    schedule's path. (The env converts with its precomputed path: :meth:`~diffusion_gym.envs.vector.
    DiffusionSDEVectorEnv.predict`; this is for code that steps a model off the env, e.g. the
    dynamic programme's float64 copy.)"""
    kind: Parametrization = getattr(model, "parametrization", "score")
    out = model.score(s, x) if kind == "score" else model.predict(s, x)
    st = torch.as_tensor(s, dtype=x.dtype, device=x.device)
    return convert(out, x, model.schedule.alpha(st), model.schedule.sigma(st), kind, target)
