"""Train the shipped Bradley-Terry proxies of ``DiffusionSDE-Digits-v0`` (alignment, thickness, JPEG).

python -m diffusion_gym.tasks.digits.train_proxies                 # all three, into the package
python -m diffusion_gym.tasks.digits.train_proxies --only thickness --out DIR
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import torch

from diffusion_gym.evaluation import rollout
from diffusion_gym.tasks.digits import WEIGHTS_DIR
from diffusion_gym.tasks.digits.env import make_vector_env
from diffusion_gym.tasks.digits.rewards import PROXIES, ProxyConfig, save_proxy, train_proxy
from diffusion_gym.validation import PositiveInt, Seed, argument


def base_model_samples(n: int, seed: int, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` samples of the digits base model with zero action (classes in turn), and their classes."""
    env = make_vector_env(min(n, 1000), utility="thickness", reward="gold", device=device)
    cond = torch.arange(n) % 10
    samples = rollout(env, None, n, seed=seed + 1, cond=cond)
    return samples.x.cpu(), cond


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    defaults = ProxyConfig()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: the package's weights)")
    parser.add_argument("--only", choices=PROXIES, action="append", help="train only these (repeatable)")
    parser.add_argument("--pairs", type=argument(PositiveInt), default=defaults.n_pairs)
    parser.add_argument("--heldout", type=argument(PositiveInt), default=defaults.n_heldout)
    parser.add_argument("--steps", type=argument(PositiveInt), default=defaults.steps)
    parser.add_argument("--base-samples", type=argument(PositiveInt), default=defaults.n_base_samples)
    parser.add_argument("--seed", type=argument(Seed), default=defaults.seed)
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--device", default="cpu", help="where the base model samples (the proxies fit on the CPU)")
    args = parser.parse_args(argv)
    config = replace(
        defaults,
        seed=args.seed,
        n_pairs=args.pairs,
        n_heldout=args.heldout,
        steps=args.steps,
        n_base_samples=args.base_samples,
    )
    out = args.out if args.out is not None else WEIGHTS_DIR
    base = base_model_samples(config.n_base_samples, config.seed, args.device) if config.n_base_samples else None
    results = {}
    for name in args.only or PROXIES:
        model, metrics = train_proxy(name, config, base, progress=not args.quiet)
        save_proxy(name, model, config, metrics, out)
        results[name] = metrics
        print(name, " ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    print(f"saved to {out}")
    return results


if __name__ == "__main__":
    main()
