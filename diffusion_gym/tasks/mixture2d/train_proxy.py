"""Train the shipped Bradley-Terry proxy of ``DiffusionSDE-v0``.

python -m diffusion_gym.tasks.mixture2d.train_proxy            # rewrites the shipped weights
python -m diffusion_gym.tasks.mixture2d.train_proxy --out DIR  # or writes them elsewhere
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from diffusion_gym.tasks.mixture2d import WEIGHTS_DIR
from diffusion_gym.tasks.mixture2d.rewards import ProxyConfig, save_proxy, train_proxy
from diffusion_gym.validation import PositiveInt, Seed, argument


def main(argv: list[str] | None = None) -> dict[str, float]:
    defaults = ProxyConfig()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: the package's weights)")
    parser.add_argument("--seed", type=argument(Seed), default=defaults.seed)
    parser.add_argument("--pairs", type=argument(PositiveInt), default=defaults.n_pairs)
    parser.add_argument("--heldout", type=argument(PositiveInt), default=defaults.n_heldout)
    parser.add_argument("--steps", type=argument(PositiveInt), default=defaults.steps)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--device", default="cpu", help="where the proxy is fitted (the data are drawn on the CPU)")
    args = parser.parse_args(argv)
    config = replace(defaults, seed=args.seed, n_pairs=args.pairs, n_heldout=args.heldout, steps=args.steps)
    model, metrics = train_proxy(config, progress=not args.quiet, device=args.device)
    out = args.out if args.out is not None else WEIGHTS_DIR
    save_proxy(model, config, metrics, out)
    for k, v in metrics.items():
        print(f"{k}: {v:.4f}")
    print(f"saved to {out}")
    return metrics


if __name__ == "__main__":
    main()
