"""The policy of the field agents, apart from the algorithms that train it (as Stable-Baselines3 keeps
its policies apart from its algorithms): a registry of networks ``f(t, x, c)``, the action
``tanh(f)`` and the score correction ``delta = action_scale(t) * action`` the env applies.

A policy network must output zero at initialisation (the policy starts at the pretrained model).

    register_policy("mine", lambda env, config: MyField(env.event_shape, env.T))
    agent = CTPPO(env, CTPPOConfig(policy_net="mine"))
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import torch
from torch import Tensor, nn

from agents.common.lora import LoRAScoreField
from agents.common.networks import FieldConv, FieldMLP
from diffusion_gym.base_models.diffusers_unet import DiffusersModel
from diffusion_gym.envs.vector import DiffusionSDEVectorEnv

if TYPE_CHECKING:
    from agents.common.agent import AgentConfig

Builder = Callable[[DiffusionSDEVectorEnv, "AgentConfig"], nn.Module]
"""``builder(env, config) -> network``; :func:`make_policy` moves it to the env's device and dtype."""
Fits = Callable[[DiffusionSDEVectorEnv], bool]
"""Whether a policy suits an env's base model (what ``policy_net="auto"`` asks)."""
ActionFn = Callable[[Tensor, Tensor, Tensor | None], Tensor]
"""``mean_action(t, x, cond)``: an action in (-1, 1) for env times ``t`` (B,) and states ``x``."""
T = TypeVar("T")


@dataclass(frozen=True)
class PolicySpec:
    """A registered policy: how to build its network, and which envs ``"auto"`` may give it to."""

    builder: Builder
    fits: Fits | None = None


POLICIES: dict[str, PolicySpec] = {}
"""The policy networks ``AgentConfig.policy_net`` names, in registration order."""


def register_policy(name: str, builder: Builder, fits: Fits | None = None) -> None:
    """Make ``builder`` the policy ``policy_net=name``; with ``fits``, ``"auto"`` picks it for the envs
    ``fits`` accepts (before the policies registered after it)."""
    if name == "auto":
        raise ValueError("'auto' is not a policy's name: it picks one")
    POLICIES[name] = PolicySpec(builder, fits)


def pick(registry: Mapping[str, T], name: str, field: str, also: tuple[str, ...] = ()) -> T:
    """``registry[name]``; an unknown name is a ValueError naming the config field and the names it
    takes (``also``, then the registered ones)."""
    if name not in registry:
        raise ValueError(f"{field} must be one of {[*also, *sorted(registry)]}, got {name!r}")
    return registry[name]


def auto_policy(env: DiffusionSDEVectorEnv) -> str:
    """The first registered policy whose ``fits`` accepts ``env``, else the MLP."""
    return next((name for name, spec in POLICIES.items() if spec.fits is not None and spec.fits(env)), "mlp")


def make_policy(env: DiffusionSDEVectorEnv, config: AgentConfig) -> nn.Module:
    """The policy network ``config.policy_net`` names, on the env's device and dtype, zero at initialisation.

    Raises:
        ValueError: no policy of that name is registered.
    """
    name = auto_policy(env) if config.policy_net == "auto" else config.policy_net
    return pick(POLICIES, name, "policy_net", also=("auto",)).builder(env, config).to(env.device, env.dtype)


def squash(field: Tensor) -> Tensor:
    """The action in (-1, 1) of a policy network's output."""
    return torch.tanh(field)


def correction(
    env: DiffusionSDEVectorEnv, mean_action: ActionFn, t: Tensor | float, x: Tensor, cond: Tensor | None
) -> Tensor:
    """The score correction ``delta(t, x, c) = action_scale(t) * mean_action(t, x, c)``, batched (a
    scalar ``t`` applies to every row)."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])
    scale = env.action_scale_at(t).view(-1, *([1] * (x.ndim - 1)))
    return scale * mean_action(t, x, cond)


def _mlp(env: DiffusionSDEVectorEnv, config: AgentConfig) -> nn.Module:
    return FieldMLP(env.event_shape, env.T, env.num_conditions, config.hidden)


def _conv(env: DiffusionSDEVectorEnv, config: AgentConfig) -> nn.Module:
    return FieldConv(env.event_shape, env.T, env.num_conditions)  # ``hidden`` does not apply


def _lora(env: DiffusionSDEVectorEnv, config: AgentConfig) -> nn.Module:
    return LoRAScoreField(env.score_model, env.action_scale_at, rank=config.lora_rank)


def _unet_base(env: DiffusionSDEVectorEnv) -> bool:
    return isinstance(env.score_model, DiffusersModel)


register_policy("mlp", _mlp)  # an MLP of time, flattened state and condition: fits anything, auto's fallback
register_policy("conv", _conv)  # a small convolutional field for image states
register_policy("lora", _lora, fits=_unet_base)  # the base UNet with LoRA adapters
