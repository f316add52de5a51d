"""The continuous-time optimal control as a zoo entry: ``delta*(t, y) = grad_y log h(t, y)`` (Doob's
h-transform), exact for Gaussian-mixture tasks up to quadrature (:mod:`diffusion_gym.optimal_control`).

It is a reference, not a learner: nothing is trained and no reward is queried, but it reads the
task's base model and reward as white boxes, which no agent may. On a grid it scores J_oracle(N)
(docs/design.md, section 1); the benchmark reports it as the "optimal control" row of every
Gaussian-mixture task.

    python -m agents.train --agent oracle --env DiffusionSDE-v0 --reward-queries 0 --eval-steps 10,20,50
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from agents.common.agent import Agent, AgentConfig, Callback
from diffusion_gym.optimal_control import MixtureOptimalControl
from diffusion_gym.validation import PositiveInt


@dataclass
class OracleConfig(AgentConfig):
    """Quadrature of the optimal control.

    Attributes:
        gauss_hermite: Gauss-Hermite nodes per dimension of each component's posterior.
        max_nodes: above this many tensor-rule nodes, this many antithetic posterior draws instead.
    """

    gauss_hermite: PositiveInt = 4
    max_nodes: PositiveInt = 512


class Oracle(Agent):
    """The optimal control of the env's task, aimed at the env's final time (see the module docstring).

    Raises:
        TypeError: the env's base model is not a Gaussian mixture.
    """

    name = "oracle"
    trains = False

    def __init__(self, env: Any, config: OracleConfig | None = None) -> None:
        super().__init__(env, config or OracleConfig())
        cfg = self.config
        self.control = MixtureOptimalControl.for_env(
            self.env, gauss_hermite=cfg.gauss_hermite, max_nodes=cfg.max_nodes, seed=cfg.seed
        )

    def mean_action(self, t: Tensor, x: Tensor, cond: Tensor | None) -> Tensor:
        return self.control.action(self.env, t, x)

    def learn(
        self,
        reward_queries: int,
        callback: Callback | None = None,
        checkpoint: str | Path | None = None,
        checkpoint_every: int = 10,
    ) -> Agent:
        """Nothing to learn: the control is computed from the task, with no reward queries."""
        if checkpoint is not None:
            self.save(checkpoint)
        return self
