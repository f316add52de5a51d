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


def make_env(env_id: str, num_envs: int, **kwargs: Any) -> DiffusionSDEVectorEnv:
    """The batched env of a registered task (``gym.make_vec``'s vector entry point, unwrapped)."""
    return gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="vector_entry_point", **kwargs).unwrapped


def config_fields(name: str) -> set[str]:
    """The config fields of agent ``name`` (what a suite's or a search's settings may set)."""
    registry = all_agents()
    if name not in registry:
        raise ValueError(f"unknown agent {name!r}; known: {sorted(registry)}")
    return {f.name for f in dataclasses.fields(registry[name][1])}


def build_agent(name: str, env: DiffusionSDEVectorEnv, overrides: dict[str, Any]) -> Agent:
    """An agent of the zoo (or SB3) with its default config updated by ``overrides`` (lists become
    tuples where the field's default is one, as TOML and JSON give them)."""
    registry = all_agents()
    if name not in registry:
        raise ValueError(f"unknown agent {name!r}; known: {sorted(registry)}")
    agent_cls, config_cls = registry[name]
    fields = {f.name for f in dataclasses.fields(config_cls)}
    unknown = set(overrides) - fields
    if unknown:
        raise ValueError(f"{config_cls.__name__} has no fields {sorted(unknown)}; it has {sorted(fields)}")
    defaults = {f.name: f.default for f in dataclasses.fields(config_cls)}
    overrides = {
        k: tuple(v) if isinstance(v, list) and isinstance(defaults[k], tuple) else v for k, v in overrides.items()
    }
    return agent_cls(env, config_cls(**overrides))
