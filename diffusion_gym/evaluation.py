"""Monte Carlo evaluation of a policy in the batched env: objective, rewards and KL with standard errors."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from diffusion_gym import distributed, kernel
from diffusion_gym.envs.vector import DiffusionSDEVectorEnv

Policy = Callable[[dict[str, Tensor]], Tensor]
"""Maps a batched observation ``{"x": (B, ...), "t": (B, 1)}`` to actions ``(B, ...)`` in [-1, 1]."""


@dataclass(frozen=True)
class Estimate:
    """A Monte Carlo mean with its standard error."""

    mean: float
    se: float
    n: int

    @classmethod
    def of(cls, samples: Tensor) -> Estimate:
        """Mean and standard error (``std / sqrt(n)``) of i.i.d. samples."""
        x = samples.detach().double().flatten()
        n = x.numel()
        se = x.std().item() / math.sqrt(n) if n > 1 else math.inf
        return cls(x.mean().item(), se, n)

    def __str__(self) -> str:
        return f"{self.mean:.4f} ± {self.se:.4f}"


@dataclass
class Rollouts:
    """Per-sample results of complete episodes (on the CPU).

    Attributes:
        objective: each episode's return, ``terminal_reward - kl_coef * kl``.
        terminal_reward: the proxy reward of the final sample.
        gold_reward: the gold utility of the final sample (None if the task has none).
        kl: the path KL to the pretrained sampler (sum of the per-step KLs).
        x: the final samples ``Y_N``.
        cond: each episode's condition, on conditional tasks.
        martingale: each episode's ``sum_k (b_k / sqrt(v_k)) delta_k . xi_k`` (mean zero: a control
            variate of the objective), where the rollout was asked for it.
    """

    objective: Tensor
    terminal_reward: Tensor
    gold_reward: Tensor | None
    kl: Tensor
    x: Tensor
    cond: Tensor | None = None
    martingale: Tensor | None = None

    def summary(self) -> dict[str, Estimate]:
        """Mean and standard error of every per-sample quantity."""
        out = {"objective": Estimate.of(self.objective), "terminal_reward": Estimate.of(self.terminal_reward)}
        if self.gold_reward is not None:
            out["gold_reward"] = Estimate.of(self.gold_reward)
        out["kl"] = Estimate.of(self.kl)
        return out


@torch.no_grad()
def rollout(
    env: DiffusionSDEVectorEnv,
    policy: Policy | None = None,
    n_samples: int | None = None,
    seed: int | None = None,
    cond: Tensor | None = None,
    martingale: bool = False,
) -> Rollouts:
    """Run whole episodes until ``n_samples`` finals are collected (default: one batch).

    Under ``torchrun`` (more than one rank) the episodes are sharded: every rank must call this, runs
    its share from its own seed (:func:`~diffusion_gym.distributed.rank_seed`) and returns all
    ``n_samples`` results gathered in rank order, so every estimate is the same on every rank.

    Args:
        env: the batched env; it is reset here.
        policy: observation to action; None is the pretrained sampler (zero action).
        n_samples: how many final samples; rounded up to whole batches, then truncated.
        seed: seeds the first reset.
        cond: on conditional tasks, the condition of each of the ``n_samples`` episodes (default:
            drawn by the env).
        martingale: also record each episode's martingale term (:attr:`Rollouts.martingale`).
    """
    n = env.num_envs if n_samples is None else int(n_samples)
    if cond is not None:
        cond = torch.as_tensor(cond).flatten()
        if len(cond) != n:
            raise ValueError(f"cond must hold one condition per sample ({n}), got {len(cond)}")
    world = distributed.world_size()
    if world == 1:
        return _rollout(env, policy, n, seed, cond, martingale)
    share = -(-n // world)
    if cond is not None:
        cond = torch.cat([cond, cond[-1:].expand(share * world - n)]).tensor_split(world)[distributed.rank()]
    r = _rollout(env, policy, share, distributed.rank_seed(seed), cond, martingale)

    def gathered(x: Tensor | None) -> Tensor | None:
        return None if x is None else distributed.gather(x)[:n]

    return Rollouts(
        gathered(r.objective),
        gathered(r.terminal_reward),
        gathered(r.gold_reward),
        gathered(r.kl),
        gathered(r.x),
        gathered(r.cond),
        gathered(r.martingale),
    )


def _rollout(
    env: DiffusionSDEVectorEnv,
    policy: Policy | None,
    n: int,
    seed: int | None,
    cond: Tensor | None,
    martingale: bool = False,
) -> Rollouts:
    """:func:`rollout` in one process (``cond``: one condition per sample, or None; the martingale
    term summed in float64)."""
    keys = ("objective", "terminal_reward", "gold_reward", "kl_total", "x", "cond", "martingale")
    parts: dict[str, list[Tensor]] = {key: [] for key in keys}
    if cond is not None:
        cond = torch.cat([cond, cond[-1:].expand(-n % env.num_envs)])  # whole batches
    zero = torch.zeros((env.num_envs, *env.event_shape), device=env.device, dtype=env.dtype)
    disc = env.discretization
    recording = env.record_transitions
    env.record_transitions = recording or martingale
    try:
        for collected in range(0, n, env.num_envs):
            options = None if cond is None else {"cond": cond[collected : collected + env.num_envs]}
            obs, _ = env.reset(seed=seed if collected == 0 else None, options=options)
            if "cond" in obs:
                parts["cond"].append(obs["cond"].cpu())
            total = torch.zeros(env.num_envs, device=env.device, dtype=torch.float64) if martingale else None
            for k in range(env.n_steps):
                obs, _, _, _, info = env.step(zero if policy is None else policy(obs))
                if total is not None:
                    y_next = info.get("final_obs", obs)["x"]
                    mean = kernel.step_shift(disc, k, info["pretrained_mean"], info["delta"])
                    total += kernel.step_martingale(disc, k, y_next, mean, info["delta"])
            final = info.get("final_obs", obs)  # SAME_STEP autoreset already started the next episode
            if total is not None:
                parts["martingale"].append(total.cpu())
            parts["x"].append(final["x"].cpu())
            for key in ("objective", "terminal_reward", "gold_reward", "kl_total"):
                if key in info:
                    parts[key].append(info[key].cpu())
    finally:
        env.record_transitions = recording
    cat = {k: torch.cat(v)[:n] if v else None for k, v in parts.items()}
    return Rollouts(
        cat["objective"],
        cat["terminal_reward"],
        cat["gold_reward"],
        cat["kl_total"],
        cat["x"],
        cat["cond"],
        cat["martingale"],
    )


def crossing(curve: list[dict[str, float]], threshold: float, key: str, gap: str = "gap") -> float | None:
    """``key`` (reward queries or seconds) at which a learning curve's ``gap`` first falls to ``threshold``,
    linearly interpolated between the two evaluations around the crossing; None if it never does.
    (On the point estimates: with few curve samples a crossing is as noisy as the curve.)"""
    if curve and curve[0][gap] <= threshold:
        return curve[0][key]
    for before, after in zip(curve, curve[1:], strict=False):
        if after[gap] <= threshold < before[gap]:
            frac = (before[gap] - threshold) / (before[gap] - after[gap])
            return before[key] + frac * (after[key] - before[key])
    return None
