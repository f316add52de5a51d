"""GRPO for diffusion and flow models: group-relative policy optimisation (Flow-GRPO, Liu et al. 2025,
arXiv 2505.05470; DanceGRPO, Xue et al. 2025, arXiv 2505.07818; MixGRPO's sliding window, Li et al.
2025, arXiv 2507.21802).

G episodes share a condition (a class or prompt; on an unconditional task the whole batch is one
group); each episode's advantage is its terminal reward standardised within its group (Flow-GRPO's
eq. 5), the same for all its steps:

    A_i = (r_i - mean_G r) / std_G r,
    L   = -sum_{k in S} E[min(rho_k A, clip(rho_k, 1 - eps, 1 + eps) A)] + beta sum_{k in S} E[KL_k(delta_theta)],

with ``rho_k`` the exact per-step transition ratio, ``KL_k = w_k ||delta_theta(t_k, Y_k)||^2`` the env's
own KL of step k to the pretrained transition (Flow-GRPO's eq. 6 with the exact Gaussian KL, its
``|dt|`` in ``w_k``), and ``S`` the steps trained: all of them, the first fraction of them (Flow-GRPO's
``timestep_fraction``) or a window of consecutive steps that slides along the chain as training
proceeds (MixGRPO). ``beta = None`` prices the KL as the env's objective does, in the
advantages' units (``kl_coef / std_G``); a number is Flow-GRPO's fixed coefficient. With
``shared_noise`` the episodes of a group start from one ``Y_0`` (DanceGRPO), so their rewards differ
by the chain's noise alone. Unlike DDPO's advantage (the episode's whole return, KL included) the
advantage here is the reward's alone, the KL a separate, differentiated term.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from agents.common.agent import AgentConfig, FieldAgent, Stats
from agents.common.ppo_clip import clipped_ratio, ppo_clip_updates
from agents.common.trajectories import Trajectories, collect, per_step_kl
from diffusion_gym import distributed
from diffusion_gym.validation import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt


@dataclass
class GRPOConfig(AgentConfig):
    """GRPO settings.

    Attributes:
        epochs: passes over each batch of trajectories.
        minibatches: minibatches per pass (split along episodes).
        clip: the ratio clip range.
        adv_clip: advantages are clipped to [-adv_clip, adv_clip].
        group_size: G, episodes per condition on a conditional task (``num_envs`` a multiple of it);
            0: the episodes that drew the same condition form a group. An unconditional task's group
            is the whole batch unless ``shared_noise`` asks for groups of G.
        beta: the KL coefficient; None: the env's ``kl_coef`` divided by the group's reward s.d.
        timestep_fraction: the fraction of the N steps trained, the first ones (Flow-GRPO's).
        window: MixGRPO's window of consecutive steps trained (0: no window).
        window_shift_every: iterations between moves of the window by ``window_stride`` steps (it wraps
            around to the chain's start after its end).
        window_stride: steps the window moves each time.
        shared_noise: the episodes of a group start from one ``Y_0`` (needs groups: ``group_size > 0``).
    """

    lr: NonNegativeFloat = 1e-3
    epochs: PositiveInt = 1
    minibatches: PositiveInt = 4
    clip: PositiveFloat = 0.1
    adv_clip: PositiveFloat = 5.0
    group_size: NonNegativeInt = 0
    beta: NonNegativeFloat | None = None
    timestep_fraction: PositiveFloat = 1.0
    window: NonNegativeInt = 0
    window_shift_every: PositiveInt = 25
    window_stride: PositiveInt = 1
    shared_noise: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.timestep_fraction > 1:
            raise ValueError(f"timestep_fraction must lie in (0, 1], got {self.timestep_fraction}")
        if self.window and self.timestep_fraction < 1:
            raise ValueError("window and timestep_fraction < 1 are two ways to pick the trained steps: set one")
        if self.shared_noise and not self.group_size:
            raise ValueError("shared_noise needs groups of a given size: set group_size > 0")


def group_advantages(rewards: Tensor, groups: Tensor) -> tuple[Tensor, Tensor]:
    """``(r - mean_g) / std_g`` within each group (labels ``groups``, (B,)), and each episode's ``std_g``;
    a group's s.d. is floored at 1e-8 (a group of equal rewards has zero advantages)."""
    labels, inverse, counts = torch.unique(groups, return_inverse=True, return_counts=True)
    sums = torch.zeros(len(labels), dtype=rewards.dtype, device=rewards.device).index_add_(0, inverse, rewards)
    means = (sums / counts)[inverse]
    squares = torch.zeros_like(sums).index_add_(0, inverse, (rewards - means) ** 2)
    std = (squares / (counts - 1).clamp_min(1)).sqrt().clamp_min(1e-8)[inverse]
    return (rewards - means) / std, std


def trained_steps(config: GRPOConfig, n_steps: int, iteration: int) -> Tensor:
    """The mask (N,) of the steps trained at ``iteration``: all; the first ``int(timestep_fraction * N)``
    (Flow-GRPO's ``timestep_fraction``: 0.99 of 10 steps trains steps 0-8); or MixGRPO's window of
    consecutive steps, moved by ``window_stride`` every ``window_shift_every`` iterations and rolled back
    to the start after the chain's end."""
    mask = torch.zeros(n_steps, dtype=torch.bool)
    if config.window:
        width = min(config.window, n_steps)
        start = (iteration // config.window_shift_every * config.window_stride) % (n_steps - width + 1)
        mask[start : start + width] = True
    elif config.timestep_fraction < 1:  # Flow-GRPO: the first steps, in order (the last ones are dropped)
        mask[: max(1, int(config.timestep_fraction * n_steps))] = True
    else:
        mask[:] = True
    return mask


def kl_term(env: Any, deltas: Tensor, mask: Tensor) -> Tensor:
    """Each episode's KL to the pretrained transitions over the trained steps, ``sum_{k in S} w_k
    ||delta_k||^2`` (B,): with every step trained, the env's summed KL of the episode."""
    return (per_step_kl(env, deltas) * mask).sum(0)


class GRPO(FieldAgent):
    """GRPO (see the module docstring)."""

    name = "grpo"

    def __init__(self, env: Any, config: GRPOConfig | None = None) -> None:
        config = config or GRPOConfig()
        super().__init__(env, config, critic=None)
        if config.group_size and self.env.num_envs % config.group_size:
            raise ValueError(
                f"group_size {config.group_size} must divide num_envs {self.env.num_envs} (whole groups per batch)"
            )

    def collect_trajectories(self) -> Trajectories:
        """Groups of ``group_size`` rows: one condition each (drawn from the env's), one ``Y_0`` each with
        ``shared_noise``; otherwise the env's own draws."""
        cfg, env = self.config, self.env
        if not cfg.group_size or (env.conditions is None and not cfg.shared_noise):
            return collect(env, self.behaviour_action)
        n_groups = env.num_envs // cfg.group_size
        options: dict[str, Tensor] = {}
        if env.conditions is not None:
            pick = torch.randint(len(env.conditions), (n_groups,), generator=self.generator, device=env.device)
            options["cond"] = env.conditions[pick].repeat_interleave(cfg.group_size)
        if cfg.shared_noise:
            y0 = torch.randn((n_groups, *env.event_shape), generator=self.generator, device=env.device, dtype=env.dtype)
            options["y0"] = y0.repeat_interleave(cfg.group_size, dim=0)
        return collect(env, self.behaviour_action, options)

    def groups(self, traj: Trajectories) -> Tensor:
        """Each episode's group label (B,) over the whole batch (every rank's episodes, in rank order)."""
        cfg, b = self.config, traj.batch
        if cfg.group_size:  # consecutive rows; labels distinct across ranks
            local = torch.arange(b, device=traj.objective.device) // cfg.group_size
            return distributed.gather(local + distributed.rank() * (b // cfg.group_size))
        if traj.cond is None:
            return torch.zeros(b * self.world_size, dtype=torch.int64, device=traj.objective.device)
        return distributed.gather(traj.cond)

    def update(self, traj: Trajectories) -> Stats:
        cfg, env = self.config, self.env
        with torch.no_grad():
            advantages, std = group_advantages(distributed.gather(traj.terminal_reward), self.groups(traj))
            advantages = distributed.local_part(advantages).clamp(-cfg.adv_clip, cfg.adv_clip)
            std = distributed.local_part(std)
            if cfg.beta is None:
                # A group without spread (one episode, equal rewards) prices its KL at the batch's scale.
                batch_std = distributed.gather(traj.terminal_reward).std().clamp_min(1e-8)
                beta = env.kl_coef / torch.where(std > 1e-8, std, batch_std)
            else:
                beta = torch.full_like(advantages, cfg.beta)
        mask = trained_steps(cfg, traj.n_steps, self.iteration).to(env.device)[:, None]  # (N, 1)

        def loss(sub: Trajectories, idx: Tensor, deltas: Tensor, ratio: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
            trained = torch.where(mask, ratio, ratio.detach())  # untrained steps: no gradient, no objective
            policy_loss, clip_fraction = clipped_ratio(trained, advantages[idx] * mask, cfg.clip)
            kl_loss = (beta[idx] * kl_term(env, deltas, mask)).mean()
            stats = {"policy_loss": policy_loss, "kl_loss": kl_loss, "clip_fraction": clip_fraction}
            return policy_loss + kl_loss, stats

        stats: Stats = dict(ppo_clip_updates(self, traj, cfg.epochs, cfg.minibatches, loss))
        return stats | {"trained_steps": mask.sum().to(torch.float32), "reward_std": std.mean()}
