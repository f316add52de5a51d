"""The learning curve: the deterministic policy scored against its grid's references at fixed
reward-query budgets while an agent learns (``agents.tune`` and the benchmarks alike)."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch

from agents.common.agent import Agent
from diffusion_gym import distributed
from diffusion_gym.references import References
from diffusion_gym.scoring import derive_seed, score_policy

LOGGED = ("objective", "proxy", "gold", "kl", "gap", "reachable_gap")
"""The curve's scalars written to TensorBoard as ``eval/*``."""


class LearningCurve:
    """The zoo callback that evaluates the deterministic policy at ``budget * (i / points)^2`` reward
    queries (the first iteration at or past each; quadratic spacing: most of the gap closes early,
    where a fixed-gap crossing needs resolution), the untrained policy at 0 (:meth:`begin`).

    Evaluation time is measured and excluded from :meth:`train_seconds` (and from each point's
    ``seconds``); with a ``logdir`` the points also go to TensorBoard (rank 0's job under
    ``torchrun``, where every rank evaluates its share of the episodes).

    Args:
        env: the batched env the points are scored on (its grid is the training grid).
        refs: the references of that grid.
        budget: the run's reward-query budget.
        points: evaluations after the first.
        n: episodes per evaluation.
        seed: the run's seed (each point's noise is derived from it, the grid and the point).
        logdir: TensorBoard directory, or None.
    """

    def __init__(
        self, env: Any, refs: References, budget: int, points: int, n: int, seed: int, logdir: str | Path | None = None
    ) -> None:
        self.points = [round(budget * (i / points) ** 2) for i in range(points + 1)]
        self.next = 1
        self.env, self.refs, self.n, self.run_seed = env, refs, n, seed
        self.n_train = getattr(env, "unwrapped", env).n_steps
        self.device = getattr(env, "unwrapped", env).device
        self.train_peak = 0
        self.curve: list[dict[str, float]] = []
        self.start, self.eval_seconds = math.nan, 0.0
        self.writer = None
        if logdir is not None and distributed.is_main():
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(logdir), filename_suffix=".eval")

    def begin(self, agent: Agent) -> None:
        """Evaluate the untrained policy (the pretrained model, 0 queries) and start the clock."""
        self.start = time.perf_counter()
        self.evaluate(agent)
        self.start, self.eval_seconds = time.perf_counter(), 0.0

    def train_seconds(self) -> float:
        """Seconds since :meth:`begin`, evaluations excluded."""
        return time.perf_counter() - self.start - self.eval_seconds

    def evaluate(self, agent: Agent) -> None:
        """Score the policy now and append the point."""
        t0 = time.perf_counter()
        seconds = t0 - self.start - self.eval_seconds
        if self.device.type == "cuda":  # the peak of training alone: evaluation batches are larger
            self.train_peak = max(self.train_peak, torch.cuda.max_memory_allocated(self.device))
        seed = derive_seed("curve", self.run_seed, self.n_train, len(self.curve))
        row, _ = score_policy(self.env, agent, self.refs, self.n, seed)
        point = {"reward_queries": agent.reward_queries, "seconds": seconds} | row
        self.curve.append(point)
        if self.writer is not None:
            for key in LOGGED:
                if key in point:
                    self.writer.add_scalar(f"eval/{key}", point[key], agent.reward_queries)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.eval_seconds += time.perf_counter() - t0

    def peak_mib(self) -> float | None:
        """Peak GPU memory of training, evaluations excluded (None off-GPU)."""
        if self.device.type != "cuda":
            return None
        return max(self.train_peak, torch.cuda.max_memory_allocated(self.device)) / 2**20

    def finish(self, agent: Agent) -> None:
        """Evaluate the final policy unless the last point already did, and close the log."""
        if self.curve[-1]["reward_queries"] < agent.reward_queries:
            self.evaluate(agent)
        if self.writer is not None:
            self.writer.close()

    def __call__(self, agent: Agent, stats: dict[str, float]) -> bool:
        if self.next < len(self.points) and agent.reward_queries >= self.points[self.next]:
            self.evaluate(agent)
            while self.next < len(self.points) and self.points[self.next] <= agent.reward_queries:
                self.next += 1  # points an iteration jumped over are not evaluated twice
        return True
