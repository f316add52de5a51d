"""What Gaussian action noise costs in KL: the price an outside RL library pays for its exploration.

    python -m benchmarks.action_noise

The env charges the exact KL of the action actually taken (docs/design.md, section 1), so a
library that explores by adding ``N(0, sd^2)`` noise to each action component pays
``kl_coef * action_scale^2 * sd^2 * D * sum_k w_k`` nats per episode in expectation, whatever its mean
policy does. This measures it by rollouts of pure noise (mean action 0) on each task at its
suite grid, beside the gain over the pretrained model that is there to be had (the reachable
reference's, else J*'s, where the task ships them).
"""

from __future__ import annotations

import argparse

import gymnasium as gym
import torch

import diffusion_gym  # noqa: F401  (registers the tasks)
from diffusion_gym.references import References
from diffusion_gym.tasks import get_task
from diffusion_gym.validation import PositiveInt, Seed, argument

TASKS = (
    ("DiffusionSDE-Mixture-v0", {"dim": 8, "n_steps": 20}),
    ("DiffusionSDE-v0", {"n_steps": 20, "integrator": "exponential"}),
    ("DiffusionSDE-Digits-v0", {}),
)
NOISE = (0.01, 0.05, 0.1, 0.3)


@torch.no_grad()
def noise_cost(env_id: str, kwargs: dict, sd: float, num_envs: int, seed: int) -> tuple[float, float, float]:
    """``(mean KL per episode, its standard error, kl_coef)`` of actions ``sd * N(0, I)`` on ``env_id``."""
    env = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="vector_entry_point", **kwargs).unwrapped
    generator = torch.Generator().manual_seed(seed)
    env.reset(seed=seed)
    for _ in range(env.n_steps):
        _, _, _, _, info = env.step(sd * torch.randn((env.num_envs, *env.event_shape), generator=generator))
    kl = info["kl_total"].double()
    return kl.mean().item(), kl.std().item() / kl.numel() ** 0.5, env.kl_coef


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--num-envs", type=argument(PositiveInt), default=1024, help="episodes per task and noise level"
    )
    parser.add_argument("--seed", type=argument(Seed), default=0)
    args = parser.parse_args(argv)
    if args.num_envs < 2:
        parser.error("--num-envs must be >= 2")
    rows = []
    print("| task | kwargs | action noise sd | KL per episode (nats) | KL price (kl_coef x KL) | gain on offer |")
    print("|---|---|---|---|---|---|")
    for env_id, kwargs in TASKS:
        shipped = get_task(env_id).shipped_references(kwargs)
        gain = None
        if shipped is not None:
            refs = References.from_row(shipped)
            gain = (refs.reachable or refs.optimum.j_star).mean - refs.optimum.j_pretrained.mean
        for sd in NOISE:
            kl, se, kl_coef = noise_cost(env_id, kwargs, sd, args.num_envs, args.seed)
            rows.append({"env": env_id, "kwargs": kwargs, "sd": sd, "kl": kl, "kl_se": se, "price": kl_coef * kl})
            offer = "–" if gain is None else f"{gain:.3f}"
            print(f"| {env_id} | {kwargs} | {sd} | {kl:.3f} ± {se:.3f} | {kl_coef * kl:.3f} | {offer} |", flush=True)
    return rows


if __name__ == "__main__":
    main()
