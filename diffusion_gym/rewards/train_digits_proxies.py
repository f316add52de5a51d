"""Train the shipped Bradley-Terry proxies of ``DiffusionSDE-Digits-v0`` (alignment, thickness, JPEG).

python -m diffusion_gym.rewards.train_digits_proxies                 # all three, into the package
python -m diffusion_gym.rewards.train_digits_proxies --only thickness --out DIR
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from diffusion_gym.rewards.digits import PROXIES, ProxyConfig, save_proxy, train_proxy
from diffusion_gym.rewards.digits_classifier import weights_dir


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    defaults = ProxyConfig()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: the package's weights)")
    parser.add_argument("--only", choices=PROXIES, action="append", help="train only these (repeatable)")
    parser.add_argument("--pairs", type=int, default=defaults.n_pairs)
    parser.add_argument("--heldout", type=int, default=defaults.n_heldout)
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    config = replace(defaults, seed=args.seed, n_pairs=args.pairs, n_heldout=args.heldout, steps=args.steps)
    out = args.out if args.out is not None else weights_dir()
    results = {}
    for name in args.only or PROXIES:
        model, metrics = train_proxy(name, config, progress=not args.quiet)
        save_proxy(name, model, config, metrics, out)
        results[name] = metrics
        print(name, " ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    print(f"saved to {out}")
    return results


if __name__ == "__main__":
    main()
