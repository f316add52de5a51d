"""The agent zoo: continuous-time PPO and q-learning ("Scores as Actions"), DDPO, DPOK, GRPO, the
reward-gradient methods (DRaFT-K, AlignProp), Adjoint Matching, DiffusionNFT, any SB3 agent, and the
continuous-time optimal control of Gaussian-mixture tasks as a reference (``oracle``), all behind
one API (:class:`agents.common.agent.Agent`): ``Agent(env, config)``, ``learn``, ``policy``,
``evaluate``, ``save`` / ``load``.

    from agents import AGENTS
    agent_cls, config_cls = AGENTS["ct_ppo"]
    agent = agent_cls(venv, config_cls(seed=0)).learn(reward_queries=200_000)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from agents.adjoint_matching import AdjointMatching, AdjointMatchingConfig
from agents.common.agent import Agent, AgentConfig
from agents.ct_ppo import CTPPO, CTPPOConfig
from agents.ct_q_learning import CTQLearning, CTQLearningConfig
from agents.ddpo import DDPO, DDPOConfig
from agents.dpok import DPOK, DPOKConfig
from agents.grpo import GRPO, GRPOConfig
from agents.nft import NFT, NFTConfig
from agents.oracle import Oracle, OracleConfig
from agents.reward_gradient import RewardGradient, RewardGradientConfig

AGENTS: dict[str, tuple[type[Agent], type[AgentConfig]]] = {
    "adjoint_matching": (AdjointMatching, AdjointMatchingConfig),
    "ct_ppo": (CTPPO, CTPPOConfig),
    "ct_q_learning": (CTQLearning, CTQLearningConfig),
    "ddpo": (DDPO, DDPOConfig),
    "dpok": (DPOK, DPOKConfig),
    "grpo": (GRPO, GRPOConfig),
    "nft": (NFT, NFTConfig),
    "oracle": (Oracle, OracleConfig),
    "reward_gradient": (RewardGradient, RewardGradientConfig),
}


def register_agent(
    name: str,
    agent_cls: type[Agent],
    config_cls: type[AgentConfig],
    search: Mapping[str, list[Any]] | None = None,
) -> None:
    """Add an external agent to the zoo (the benchmarks and the CLI then know it by ``name``).

    Args:
        name: its name in suites, ``agents.train --agent`` and ``agents.tune --agents``.
        agent_cls: the agent (an :class:`~agents.common.agent.Agent`).
        config_cls: its config dataclass.
        search: its hyperparameter grid (setting -> values), searched by ``agents.tune`` on every task
            whose tuning file does not name it (:mod:`agents.tuning`).
    """
    AGENTS[name] = (agent_cls, config_cls)
    if search is not None:
        from agents.tuning import Search, register_search

        register_search(name, Search(name, {k: list(v) for k, v in search.items()}))


def all_agents() -> dict[str, tuple[Callable[..., Any], type[AgentConfig]]]:
    """Every agent the CLI and the benchmarks know: the zoo's, registered ones and SB3's."""
    return {**AGENTS, **sb3_agents()}


def sb3_agents() -> dict[str, tuple[Callable[..., Any], type[AgentConfig]]]:
    """The SB3 agents (imported on demand: SB3 is slow to import)."""
    from agents.sb3 import SB3Agent, SB3Config

    return {"sb3": (SB3Agent, SB3Config)}


__all__ = ["AGENTS", "Agent", "AgentConfig", "all_agents", "register_agent", "sb3_agents"]
