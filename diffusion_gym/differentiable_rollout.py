"""The env's chain with gradients: for agents that differentiate the objective through the sampler
(reward-gradient methods: DRaFT, AlignProp; the reward gradient of Adjoint Matching).

The Gym ``step`` runs without gradients (its observations are copies); this composes the same
pieces, the env's base model (:meth:`~diffusion_gym.envs.vector.DiffusionSDEVectorEnv.predict`), the
kernel's step functions (:mod:`diffusion_gym.kernel`) and the env's reward, with autograd on:

    delta_k  = action_scale_k * clip(action(t_k, Y_k, c), -1, 1)
    Y_{k+1}  = a_k Y_k + b_k f_pre(s_k, Y_k) + c_k delta_k + sqrt(v_k) xi_k
    J        = r(Y_N, c) - kl_coef * sum_k w_k ||delta_k||^2

so ``objective.mean().backward()`` is the pathwise (reparametrised) gradient of the env's objective
in the policy's parameters, the noise held fixed. Drawn from one generator in the env's order
(conditions, ``Y_0``, then each step's noise), an episode here is the env's episode from the same
generator state, to float precision. Every episode queries the reward once (its gradient included).

Truncation (DRaFT-K, Clark, Vicol, Swersky, Fleet 2023, arXiv 2309.17400, section 4): with
``grad_steps = K < N`` the states up to ``Y_{N-K}`` are constants (the first N - K steps run without
a graph through the chain; the model is evaluated there without gradients), so the reward's gradient
flows through the last K transitions only. Every step's KL keeps its direct gradient in ``delta_k``
at its (constant) state, so the price binds on every step. ``checkpoint=True`` recomputes each
differentiated step in the backward pass instead of storing its activations
(:func:`torch.utils.checkpoint.checkpoint`): what a UNet base needs for long chains.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint as checkpointed

from diffusion_gym import kernel
from diffusion_gym.envs.vector import DiffusionSDEVectorEnv
from diffusion_gym.rewards.protocol import is_differentiable

ActionFn = Callable[[Tensor, Tensor, Tensor | None], Tensor]
"""``action(t, x, cond)``: the policy's action (in [-1, 1]; clipped like the env's) at env times
``t`` (B,) for states ``x`` (B, ...), differentiable in its parameters."""


@dataclass
class PathwiseRollout:
    """B episodes with their graph: every tensor but ``gold_reward`` and ``noise`` is differentiable
    in the policy's parameters (``states`` from ``Y_{N-K}`` on).

    Attributes:
        states: ``Y_0 .. Y_N``, (N + 1, B, *event_shape).
        deltas: the score corrections, (N, B, ...).
        pretrained_means: ``m_k = a_k Y_k + b_k f_pre(Y_k)``, (N, B, ...).
        kl: each step's KL to the pretrained transition, (N, B).
        cond: the conditions (B,), or None.
        noise: the standard normals ``xi_k``, (N, B, ...) (``Y_0`` is ``states[0]``).
        terminal_reward, objective: (B,); ``objective = terminal_reward - kl_coef * kl.sum(0)``.
        gold_reward: the gold utility of ``Y_N`` without gradient, or None.
    """

    states: Tensor
    deltas: Tensor
    pretrained_means: Tensor
    kl: Tensor
    cond: Tensor | None
    noise: Tensor
    terminal_reward: Tensor
    objective: Tensor
    gold_reward: Tensor | None


def check_differentiable_reward(env: DiffusionSDEVectorEnv, who: str) -> None:
    """Raise a ValueError naming ``who`` if the env's terminal reward has no gradient (JPEG size)."""
    if not is_differentiable(env.reward_model):
        raise ValueError(
            f"{who} needs the gradient of the terminal reward, and {type(env.reward_model).__name__} has none "
            "(it declares differentiable = False): use a policy-gradient agent on this task"
        )


def differentiable_rollout(
    env: DiffusionSDEVectorEnv,
    action: ActionFn,
    generator: torch.Generator | None = None,
    *,
    y0: Tensor | None = None,
    noise: Tensor | None = None,
    cond: Tensor | None = None,
    grad_steps: int | None = None,
    checkpoint: bool = False,
) -> PathwiseRollout:
    """One episode of each of the env's ``num_envs`` rows with autograd through the chain (see the
    module docstring). The env's own state and random stream are not touched.

    Args:
        env: the batched env (its base model, grid, reward and KL price).
        action: the policy (:data:`ActionFn`).
        generator: draws what ``y0``, ``noise`` and ``cond`` leave out, in the env's order.
        y0: the initial states (B, ...); with ``noise``, common random numbers across calls.
        noise: the steps' standard normals (N, B, ...).
        cond: the conditions (B,) on a conditional task.
        grad_steps: K, the number of last steps the gradient flows through (None: all N).
        checkpoint: recompute each differentiated step in the backward pass (saves memory).

    Raises:
        ValueError: a reward without gradient, ``grad_steps`` outside 1..N, or tensors of the wrong shape.
    """
    check_differentiable_reward(env, "a differentiable rollout")
    n, disc = env.n_steps, env.discretization
    k_grad = n if grad_steps is None else int(grad_steps)
    if not 1 <= k_grad <= n:
        raise ValueError(f"grad_steps must lie in 1..{n} (the env's N), got {grad_steps}")
    shape = (env.num_envs, *env.event_shape)
    if (y0 is None or noise is None or (cond is None and env.conditions is not None)) and generator is None:
        raise ValueError("differentiable_rollout needs a generator for what y0, noise and cond leave out")
    if cond is None:  # drawn in the env's order: the conditions, then Y_0
        cond = env.draw_conditions(generator)  # type: ignore[arg-type]
    if y0 is None:
        y0 = env.draw_initial_states(generator)  # type: ignore[arg-type]
    if tuple(y0.shape) != shape:
        raise ValueError(f"y0 must have shape {shape}, got {tuple(y0.shape)}")
    if noise is not None and tuple(noise.shape) != (n, *shape):
        raise ValueError(f"noise must have shape {(n, *shape)}, got {tuple(noise.shape)}")

    def step(k: int, y: Tensor, xi: Tensor, through_state: bool = True) -> tuple[Tensor, Tensor, Tensor]:
        """Step k; without ``through_state`` the model runs without a graph and the next state does not
        depend on ``delta`` (a constant state), which keeps its direct gradient for the KL."""
        delta = kernel.step_delta(disc, k, action(disc.t[k].expand(env.num_envs), y, cond).clamp(-1.0, 1.0))
        with torch.set_grad_enabled(through_state and torch.is_grad_enabled()):
            mean = env.pretrained_mean(k, y, cond)
        shift = delta if through_state else delta.detach()
        return kernel.step_sample(disc, k, kernel.step_shift(disc, k, mean, shift), xi), delta, mean

    states, deltas, means, xis = [y0], [], [], []
    y = y0
    for k in range(n):
        xi = (
            noise[k]
            if noise is not None
            else torch.randn(shape, generator=generator, device=env.device, dtype=env.dtype)
        )
        if k < n - k_grad:  # a constant state: the chain's graph starts at Y_{N-K}
            y, delta, mean = step(k, y, xi, through_state=False)
        elif checkpoint and torch.is_grad_enabled():
            y, delta, mean = checkpointed(step, k, y, xi, use_reentrant=False)
        else:
            y, delta, mean = step(k, y, xi)
        states.append(y)
        deltas.append(delta)
        means.append(mean)
        xis.append(xi)
    kl = kernel.path_kl(disc, torch.stack(deltas))
    terminal = env.reward_model(y, cond)
    gold = None
    if env.gold_model is not None:
        with torch.no_grad():
            gold = env.gold_model(y.detach(), cond)
    return PathwiseRollout(
        states=torch.stack(states),
        deltas=torch.stack(deltas),
        pretrained_means=torch.stack(means),
        kl=kl,
        cond=cond,
        noise=torch.stack(xis),
        terminal_reward=terminal,
        objective=terminal - env.kl_coef * kl.sum(0),
        gold_reward=gold,
    )
