"""An agent's state outside its training loop: checkpoints (behind :meth:`Agent.save` / :meth:`Agent.load`)
and evaluation, which must leave the training env's random stream as it found it.

A checkpoint is a dict with the keys ``agent`` (its name), ``config``, ``modules`` (without frozen
parameters: a LoRA policy's copy of the base UNet), ``optimizers``, ``reward_queries``,
``iteration``, ``rng`` (every rank's random states in rank order, so that a resumed run ends where
an uninterrupted run ends) and ``identity``: what run it belongs to (:func:`run_identity`: the
agent, its config, the world size and the env's :func:`~diffusion_gym.envs.identity.env_identity`),
so that a run resumed under another task, grid, KL price, batch or model is refused, naming the field.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from diffusion_gym import distributed
from diffusion_gym.checkpoints import load_checkpoint
from diffusion_gym.envs.identity import differences, env_identity
from diffusion_gym.envs.vector import DiffusionSDEVectorEnv
from diffusion_gym.evaluation import Estimate, rollout
from diffusion_gym.tasks.spec import env_configuration

if TYPE_CHECKING:
    from agents.common.agent import Agent

_RUN_ONLY = {"progress", "logdir", "compile"}
"""Config fields that may differ between a run and its resumption."""


def state_dict(agent: Agent, rng: list[dict[str, Tensor]] | None = None) -> dict[str, Any]:
    """The checkpoint: weights, optimisers, counters and ``rng``, every rank's random states in rank
    order (default: this process's alone)."""
    return {
        "agent": agent.name,
        "config": asdict(agent.config),
        "modules": {k: _trainable_state(m) for k, m in agent.modules.items()},
        "optimizers": {k: o.state_dict() for k, o in agent.optimizers.items()},
        "reward_queries": agent.reward_queries,
        "iteration": agent.iteration,
        "rng": rng if rng is not None else [agent.rng_state()],
        "identity": run_identity(agent),
    }


def run_identity(agent: Agent) -> dict[str, Any]:
    """What run a checkpoint belongs to: the agent, its config (without the settings that may change
    on resume), the world size, the env's identity (task, batch, grid, KL price, weights) and the
    task's configuration (its keywords: the mixture's ``dim``, the digits' ``guidance_scale``)."""
    config = {k: v for k, v in asdict(agent.config).items() if k not in _RUN_ONLY}
    env = env_identity(agent.env) | {"configuration": env_configuration(agent.env)}
    return {"agent": agent.name, "config": config, "world_size": agent.world_size, "env": env}


def load_state_dict(agent: Agent, state: dict[str, Any]) -> None:
    """Restore a checkpoint into ``agent``, refusing another agent, config or number of ranks."""
    if state["agent"] != agent.name:
        raise ValueError(f"checkpoint of a {state['agent']} agent, not {agent.name}")
    if "rng" not in state:  # written before checkpoints held every rank's random states
        legacy = {"torch": state["torch_rng"], "generator": state["generator"], "env": state["env_rng"]}
        state = state | {"rng": [legacy]}
    if len(state["rng"]) != agent.world_size:
        # Another number of ranks splits the batch and the random streams otherwise: another run.
        raise ValueError(
            f"checkpoint written by {len(state['rng'])} rank(s), this run has {agent.world_size}: "
            "resume with the same number of processes"
        )
    if "identity" not in state:  # written before checkpoints knew their run: the config alone is checked
        ours = asdict(agent.config)
        if changed := [k for k, v in state["config"].items() if k not in _RUN_ONLY and ours.get(k) != v]:
            raise ValueError(f"checkpoint's config differs from this agent's in {changed}")
    check_identity(agent, state.get("identity"))
    for k, m in agent.modules.items():
        missing, unexpected = m.load_state_dict(state["modules"][k], strict=False)
        if unexpected or set(missing) - _frozen(m):
            raise ValueError(f"checkpoint does not match {k}: missing {missing}, unexpected {unexpected}")
    for k, o in agent.optimizers.items():
        o.load_state_dict(state["optimizers"][k])
    agent.reward_queries, agent.iteration = state["reward_queries"], state["iteration"]
    agent.set_rng_state(state["rng"][distributed.rank()])


def check_identity(agent: Agent, saved: dict[str, Any] | None, as_json: bool = False) -> None:
    """Refuse to resume ``agent`` from a checkpoint of another run (``saved``: its :func:`run_identity`,
    as JSON gives it back if ``as_json``), naming every field that differs; warn where the checkpoint
    predates identities (None)."""
    if saved is None:
        warnings.warn(
            "checkpoint predates run identities: its task, grid and batch cannot be checked against this run's",
            stacklevel=3,
        )
        return
    # Another task, grid, KL price, batch, model or config would silently continue another run.
    ours = run_identity(agent)
    if as_json:
        ours = json.loads(json.dumps(ours, default=str))
    if changed := differences(saved, ours):
        raise ValueError(
            "checkpoint of another run: " + "; ".join(changed) + ". Resume it with the settings it was "
            "written with, or train afresh with another --checkpoint"
        )


def save(agent: Agent, path: str | Path) -> None:
    """Write the checkpoint atomically (a temporary file renamed over ``path``). Under ``torchrun``
    every rank must call it: the ranks' random states are gathered and rank 0 writes the file."""
    rng = distributed.all_gather_object(agent.rng_state())
    if distributed.is_main():
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(agent.state_dict(rng), tmp)
        os.replace(tmp, path)
    distributed.barrier()


def load(agent: Agent, path: str | Path) -> None:
    """Restore the checkpoint :func:`save` wrote at ``path`` (errors name the file and what is wrong)."""
    state = load_checkpoint(path, f"{agent.name} agent checkpoint", keys=("agent", "config", "modules"))
    try:
        agent.load_state_dict(state)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


@torch.no_grad()
def evaluate(agent: Agent, env: DiffusionSDEVectorEnv | None, n: int, seed: int) -> dict[str, Estimate]:
    """Objective, proxy and gold reward and KL of ``agent``'s deterministic policy on ``env`` (default:
    its training env, whose random stream is left as it was), with standard errors."""
    env = getattr(env, "unwrapped", env) or agent.env
    state = env.rng_state()
    out = rollout(env, agent.act, n, seed=seed).summary()
    env.set_rng_state(state)
    return {"proxy" if k == "terminal_reward" else k: v for k, v in out.items()}


def _frozen(module: nn.Module) -> set[str]:
    return {name for name, p in module.named_parameters() if not p.requires_grad}


def _trainable_state(module: nn.Module) -> dict[str, Tensor]:
    """A module's state without its frozen parameters (a LoRA policy's copy of the base UNet)."""
    frozen = _frozen(module)
    return {k: v for k, v in module.state_dict().items() if k not in frozen}
