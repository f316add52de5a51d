"""Building the pieces a run needs, for the CLIs and the benchmarks alike: an env of a registered
task and an agent of the zoo with its config overridden."""

from __future__ import annotations

import dataclasses
from typing import Any

import gymnasium as gym

import diffusion_gym  # noqa: F401  (registers the tasks)
from agents import all_agents
from agents.common.agent import Agent
from diffusion_gym.envs.vector import DiffusionSDEVectorEnv
from diffusion_gym.validation import from_table


def make_env(env_id: str, num_envs: int, **kwargs: Any) -> DiffusionSDEVectorEnv:
    """The batched env of a registered task (``gym.make_vec``'s vector entry point, unwrapped)."""
    return gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="vector_entry_point", **kwargs).unwrapped


def config_fields(name: str) -> set[str]:
    """The config fields of agent ``name`` (what a suite's or a search's settings may set)."""
    registry = all_agents()
    if name not in registry:
        raise ValueError(f"unknown agent {name!r}; known: {sorted(registry)}")
    return {f.name for f in dataclasses.fields(registry[name][1])}


def make_config(name: str, overrides: dict[str, Any]) -> Any:
    """Agent ``name``'s config, its defaults updated by ``overrides`` and every field checked against
    its annotation (:mod:`diffusion_gym.validation`): what to call before any work."""
    registry = all_agents()
    if name not in registry:
        raise ValueError(f"unknown agent {name!r}; known: {sorted(registry)}")
    config_cls = registry[name][1]
    return from_table(config_cls, overrides, f"{name} config")


def build_agent(name: str, env: DiffusionSDEVectorEnv, config: Any) -> Agent:
    """An agent of the zoo (or SB3) on ``env``, from its config or from overrides of its defaults."""
    if isinstance(config, dict):
        config = make_config(name, config)
    return all_agents()[name][0](env, config)
