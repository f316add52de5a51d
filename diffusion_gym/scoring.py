"""Scoring a policy against the references of its grid: the one routine behind ``agents.train``,
``agents.tune`` and the benchmarks (docs/design.md, section 1), with one seed scheme and one
evaluation batch size per device."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from diffusion_gym import distributed
from diffusion_gym.evaluation import Estimate, Rollouts, rollout

if TYPE_CHECKING:
    from diffusion_gym.references import References

SEED_PURPOSES = {
    "optimum": 1,
    "curve": 2,
    "final": 3,
    "oracle": 4,
    "shipped": 5,
    "shipped_oracle": 6,
    "initial": 7,
    "shipped_initial": 8,
}
"""What a derived seed is for: the references' pretrained samples, a learning-curve point, a final
score, the optimal control's episodes, J*_0's nested chains, and the same three of references
shipped with a task."""


def derive_seed(purpose: str, *keys: int) -> int:
    """A seed for one purpose and its keys (run seed, grid, point), hashed by ``SeedSequence`` so that
    no two evaluations share noise."""
    if purpose not in SEED_PURPOSES:
        raise ValueError(f"purpose must be one of {sorted(SEED_PURPOSES)}, got {purpose!r}")
    return int(np.random.SeedSequence([SEED_PURPOSES[purpose], *keys]).generate_state(1, np.uint64)[0] >> 1)


def eval_batch(n: int, device: torch.device | str) -> int:
    """Envs per evaluation batch for ``n`` episodes: at most 65,536 on a GPU, 4,096 on a CPU; under
    ``torchrun``, for this rank's share of them (evaluation is sharded: :func:`~diffusion_gym.evaluation.rollout`)."""
    share = -(-int(n) // distributed.world_size())
    return min(share, 65_536 if torch.device(device).type == "cuda" else 4096)


def estimates(summary: dict[str, Estimate]) -> dict[str, float]:
    """A rollout summary as flat floats (``proxy``, ``gold``, ``objective``, ``kl``, each with ``_se``)."""
    out = {}
    for key, est in summary.items():
        key = {"terminal_reward": "proxy", "gold_reward": "gold"}.get(key, key)
        out[key], out[f"{key}_se"] = est.mean, est.se
    return out


@torch.no_grad()
def score_policy(env: Any, policy: Any, refs: References, n: int, seed: int) -> tuple[dict[str, float], Rollouts]:
    """``n`` episodes of a deterministic policy (an agent, anything with ``act(obs)``, an action map,
    or None for the pretrained sampler) on ``env`` from ``seed``: every estimate with its standard
    error and both gaps (:meth:`References.gaps <diffusion_gym.references.References.gaps>`); and the
    rollouts. ``env``'s random stream is restored."""
    env = getattr(env, "unwrapped", env)
    state = env.rng_state()
    r = rollout(env, getattr(policy, "act", policy), n, seed=seed)
    env.set_rng_state(state)
    summary = r.summary()
    return estimates(summary) | refs.gaps(summary["objective"]), r
