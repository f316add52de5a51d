"""Train the shipped Bradley-Terry proxies of ``DiffusionSDE-Mixture-v0``, one per dimension.

python -m diffusion_gym.tasks.mixture.train_proxy                  # rewrites the shipped weights (D = 2, 8, 32)
python -m diffusion_gym.tasks.mixture.train_proxy --dim 16 --out DIR  # or trains other dimensions elsewhere
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from diffusion_gym.tasks.mixture import WEIGHTS_DIR
from diffusion_gym.tasks.mixture.rewards import SHIPPED_DIMS, ProxyConfig, save_proxy, train_proxy
from diffusion_gym.validation import PositiveInt, Seed, argument


def main(argv: list[str] | None = None) -> dict[int, dict[str, float]]:
    """Train, save and print the metrics of the proxy of every requested dimension; returns them by dimension."""
    defaults = ProxyConfig()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--dim", type=int, nargs="+", default=list(SHIPPED_DIMS), help="dimensions (default: the shipped ones)"
    )
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: the package's weights)")
    parser.add_argument("--seed", type=argument(Seed), default=defaults.seed)
    parser.add_argument("--pairs", type=argument(PositiveInt), default=defaults.n_pairs)
    parser.add_argument("--heldout", type=argument(PositiveInt), default=defaults.n_heldout)
    parser.add_argument("--steps", type=argument(PositiveInt), default=defaults.steps)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--device", default="cpu", help="where the proxy is fitted (the data are drawn on the CPU)")
    args = parser.parse_args(argv)
    if any(d < 2 for d in args.dim):
        parser.error(f"every --dim must be >= 2, got {args.dim}")
    out = args.out if args.out is not None else WEIGHTS_DIR
    results = {}
    for dim in args.dim:
        config = replace(
            defaults, dim=dim, seed=args.seed, n_pairs=args.pairs, n_heldout=args.heldout, steps=args.steps
        )
        model, metrics = train_proxy(dim, config, progress=not args.quiet, device=args.device)
        save_proxy(model, config, metrics, out)
        print(f"dim {dim}:")
        for k, v in metrics.items():
            print(f"  {k}: {v:.4f}")
        results[dim] = metrics
    print(f"saved to {out}")
    return results


if __name__ == "__main__":
    main()
