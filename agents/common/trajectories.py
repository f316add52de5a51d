"""Whole episodes of the batched env, stored time-major, with what exact transition densities need."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from diffusion_gym import kernel
from diffusion_gym.envs.vector import DiffusionSDEVectorEnv
from diffusion_gym.parametrization import to_pair

ActFn = Callable[[int, dict[str, Tensor]], Tensor]
"""``act(k, obs) -> action``: the agent's action in [-1, 1] at step k (env units)."""


@dataclass
class Trajectories:
    """N steps of B episodes; index [k] is step k (time-major).

    Attributes:
        states: ``Y_0 .. Y_N``, shape (N + 1, B, *event_shape).
        deltas: the score corrections applied, (N, B, *event_shape).
        means: the pretrained transition means ``m_k``, (N, B, *event_shape).
        rewards: the env's rewards (running KL price, plus the terminal reward at the last step), (N, B).
        kl: the per-step KL, (N, B).
        cond: the episodes' conditions (B,), or None.
        terminal_reward, gold_reward, objective: per episode, (B,); gold is None without a gold.
        denoised_reward: the reward at Tweedie's estimate of every state (N, B), kept by the critic
            that reads it (:class:`~agents.common.networks.DenoisedRewardCritic`) the first time it
            scores these trajectories; None until then.
    """

    states: Tensor
    deltas: Tensor
    means: Tensor
    rewards: Tensor
    kl: Tensor
    cond: Tensor | None
    terminal_reward: Tensor
    gold_reward: Tensor | None
    objective: Tensor
    denoised_reward: Tensor | None = None

    @property
    def n_steps(self) -> int:
        return self.deltas.shape[0]

    @property
    def batch(self) -> int:
        return self.deltas.shape[1]

    def returns_to_go(self) -> Tensor:
        """``G_k = sum_{j >= k} r_j``, shape (N, B)."""
        return self.rewards.flip(0).cumsum(0).flip(0)

    def subset(self, idx: Tensor) -> Trajectories:
        """The episodes ``idx``."""
        return Trajectories(
            states=self.states[:, idx],
            deltas=self.deltas[:, idx],
            means=self.means[:, idx],
            rewards=self.rewards[:, idx],
            kl=self.kl[:, idx],
            cond=None if self.cond is None else self.cond[idx],
            terminal_reward=self.terminal_reward[idx],
            gold_reward=None if self.gold_reward is None else self.gold_reward[idx],
            objective=self.objective[idx],
            denoised_reward=None if self.denoised_reward is None else self.denoised_reward[:, idx],
        )

    def denoised(self, env: DiffusionSDEVectorEnv) -> Tensor:
        """The pretrained model's estimate ``x0_hat = E[x0 | Y_k]`` at every step k < N (Tweedie's
        ``(Y_k + sigma_s^2 s_pre) / alpha_s`` on VP), flattened time-major to N * B rows, from its
        prediction recovered from the stored means (``f_pre = (m_k - a_k Y_k) / b_k``): no model evaluation."""
        disc = env.discretization
        shape = (-1, 1, *([1] * (self.states.ndim - 2)))
        alpha = env.schedule.alpha(disc.s).view(shape)
        prediction = kernel.path_score(disc, self.states, self.means)
        if disc.output == "score":  # Tweedie's formula with the schedule's own sigma^2 (expm1: exact near data)
            return ((self.states[:-1] + env.schedule.sigma2(disc.s).view(shape) * prediction) / alpha).flatten(0, 1)
        sigma = env.schedule.sigma(disc.s).view(shape)
        x0, _ = to_pair(disc.output, prediction, self.states[:-1], alpha, sigma)  # type: ignore[arg-type]
        return x0.flatten(0, 1)

    def step_inputs(self, env: DiffusionSDEVectorEnv) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(t_k, Y_k, c)`` of every step k < N and episode, flattened time-major to N * B rows."""
        n, b = self.n_steps, self.batch
        t = env.discretization.t[:-1].repeat_interleave(b)
        return t, self.states[:-1].flatten(0, 1), None if self.cond is None else self.cond.repeat(n)


@torch.no_grad()
def collect(env: DiffusionSDEVectorEnv, act: ActFn, options: dict | None = None) -> Trajectories:
    """Reset ``env`` (continuing its random stream) and run one episode of every row with ``act``."""
    if not env.record_transitions:
        raise ValueError("collect needs an env built with record_transitions=True")
    obs, _ = env.reset(options=options)
    states, deltas, means, rewards, kls = [obs["x"]], [], [], [], []
    cond = obs.get("cond")
    for k in range(env.n_steps):
        obs, reward, _, _, info = env.step(act(k, obs))
        states.append(obs["x"])
        deltas.append(info["delta"])
        means.append(info["pretrained_mean"])
        rewards.append(reward)
        kls.append(info["kl"])
    return Trajectories(
        states=torch.stack(states),
        deltas=torch.stack(deltas),
        means=torch.stack(means),
        rewards=torch.stack(rewards),
        kl=torch.stack(kls),
        cond=cond,
        terminal_reward=info["terminal_reward"],
        gold_reward=info.get("gold_reward"),
        objective=info["objective"],
    )


def policy_deltas(agent: Any, traj: Trajectories) -> Tensor:
    """The agent's current (differentiable) deltas at every stored state, (N, B, *event_shape)."""
    return field_deltas(agent, traj.states[:-1], traj.cond)


def field_deltas(agent: Any, states: Tensor, cond: Tensor | None) -> Tensor:
    """The agent's (differentiable) deltas at states ``states[k]`` (N, B, ...) at grid time ``t_k``, in
    one call of its policy over all N * B rows, (N, B, *event_shape)."""
    env = agent.env
    n, b = states.shape[:2]
    t = env.discretization.t[:n].repeat_interleave(b)
    actions = agent.mean_action(t, states.flatten(0, 1), None if cond is None else cond.repeat(n))
    return kernel.path_delta(env.discretization, actions.view(states.shape))


def transition_log_probs(
    env: DiffusionSDEVectorEnv, traj: Trajectories, deltas: Tensor, compile: bool = False
) -> Tensor:
    """``log N(Y_{k+1}; m_k + c_k delta_k, v_k I)`` of every stored transition under ``deltas``, (N, B),
    in one call of the kernel (``compile``: its ``torch.compile``d version, one graph per shape)."""
    fn = _compiled_path_log_prob() if compile else kernel.path_log_prob
    return fn(env.discretization, traj.states[1:], traj.means, deltas)


@functools.cache
def _compiled_path_log_prob() -> Any:
    return torch.compile(kernel.path_log_prob)


def per_step_kl(env: DiffusionSDEVectorEnv, deltas: Tensor) -> Tensor:
    """Each step's KL to the pretrained transition under ``deltas`` (N, B, ...), differentiable, (N, B)."""
    return kernel.path_kl(env.discretization, deltas)


def running_kl(env: DiffusionSDEVectorEnv, deltas: Tensor) -> Tensor:
    """Each episode's KL to the pretrained path measure under ``deltas`` (N, B, ...), differentiable in
    them: the running price that agents differentiate pathwise, (B,)."""
    return kernel.path_kl(env.discretization, deltas).sum(0)
