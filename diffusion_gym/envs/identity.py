"""What an env is, as a checkpoint records it: its env id, the grid, the KL price, the action box,
the batch and the sha256 of the models' weights (the task's keywords are the task layer's:
:func:`diffusion_gym.tasks.spec.env_configuration`). A run resumed from a checkpoint must be the
run that wrote it; :func:`differences` says which field is not.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import nn

_WEIGHTS_CACHE = "_identity_weights_sha256"


def weights_sha256(*models: Any) -> str:
    """The sha256 of the models' tensors (names, dtypes, shapes and bytes; parameters and buffers, in
    order), and of the class of any model without a state dict."""
    digest = hashlib.sha256()
    for model in models:
        if model is None:
            digest.update(b"none\0")
            continue
        digest.update(type(model).__qualname__.encode() + b"\0")
        state = model.state_dict() if isinstance(model, nn.Module) else {}
        for name, tensor in state.items():
            t = tensor.detach().contiguous().reshape(-1)
            digest.update(f"{name}:{t.dtype}:{tuple(tensor.shape)}\0".encode())
            digest.update(t.view(torch.uint8).cpu().numpy().tobytes())
    return digest.hexdigest()


def env_identity(env: Any) -> dict[str, Any]:
    """The batched env's identity (JSON values): ``task`` (its env id, None if built by hand),
    ``num_envs`` (this process's batch), ``n_steps``, ``grid_sha256``, ``integrator``, ``noise_level``, ``kl_coef``,
    ``action_scale``, ``dtype`` and ``weights_sha256`` (the base model, the reward and the gold
    utility; computed once per env)."""
    task_id = getattr(getattr(env, "spec", None), "id", None)
    if not hasattr(env, _WEIGHTS_CACHE):
        setattr(env, _WEIGHTS_CACHE, weights_sha256(env.score_model, env.reward_model, env.gold_model))
    scale = env._action_scale
    return {
        "task": task_id,
        "num_envs": env.num_envs,
        "n_steps": env.n_steps,
        "grid_sha256": hashlib.sha256(env.grid.numpy().tobytes()).hexdigest(),
        "integrator": env.integrator,
        "noise_level": env.noise_level,
        "kl_coef": env.kl_coef,
        "action_scale": getattr(scale, "__qualname__", None) if callable(scale) else float(scale),
        "dtype": str(env.dtype).removeprefix("torch."),
        "weights_sha256": getattr(env, _WEIGHTS_CACHE),
    }


def differences(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    """Every field where two identities differ, as ``"field: A there, B here"`` (nested fields dotted;
    a field only one of them has counts as differing)."""
    out = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {_short(a)} there, {_short(b)} here")
    return out


def _short(value: Any) -> str:
    return f"{value[:12]}..." if isinstance(value, str) and len(value) == 64 else repr(value)  # a sha256
