"""Compute the J* and J(pre) that ship with ``DiffusionSDE-Digits-v0`` (``references.json``).

J* rests on the weights ``exp(r / kl_coef)`` of pretrained samples; with the headroom the task needs
(J* - J(pre) of about one pretrained standard deviation) only ~1% of the samples carry them, so a
trustworthy J* (effective sample size >= 200) takes tens of thousands of UNet episodes, more than a
benchmark run affords. They are computed once here, per configuration, and the benchmarks read them
(:meth:`~diffusion_gym.tasks.spec.TaskSpec.shipped_optimum`).

    python -m diffusion_gym.tasks.digits.references --n 32768 --steps 10 20
    python -m diffusion_gym.tasks.digits.references --n 32768 --steps 20 --set kl_coef=0.5
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from importlib.resources import files
from typing import Any

import torch

from diffusion_gym.evaluation import rollout
from diffusion_gym.optimum import optimum_from_rewards
from diffusion_gym.scoring import derive_seed
from diffusion_gym.tasks.digits import TASK
from diffusion_gym.tasks.spec import weights_fingerprint

TABLE = "references.json"


def shipped_entry(n_samples: int, batch: int = 1024, device: str = "cpu", **kwargs: Any) -> dict[str, Any]:
    """J*, J(pre), their errors and covariance, and the effective sample size, from ``n_samples``
    pretrained episodes of the configuration ``kwargs`` (which must name ``n_steps``)."""
    env = TASK.make_vector_env(min(batch, n_samples), device=device, **kwargs)
    pre = rollout(env, None, n_samples, seed=derive_seed("shipped", int(kwargs["n_steps"])))
    row = optimum_from_rewards(pre.terminal_reward, env.kl_coef).row()
    return (
        {"config": TASK.configuration(kwargs)}
        | row
        | {"weights_sha256": weights_fingerprint("diffusion_gym.tasks.digits")}
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=32_768, help="pretrained episodes per grid")
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 20], help="grids (N)")
    parser.add_argument("--set", nargs="*", default=[], help="key=value task and env keywords (JSON values)")
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    kwargs = {}
    for item in args.set:
        key, _, value = item.partition("=")
        try:
            kwargs[key] = json.loads(value)
        except json.JSONDecodeError:
            kwargs[key] = value
    path = files("diffusion_gym.tasks.digits") / TABLE
    table = json.loads(path.read_text()) if path.is_file() else {"entries": []}
    command = "python -m diffusion_gym.tasks.digits.references " + shlex.join(sys.argv[1:] if argv is None else argv)
    for n_steps in args.steps:
        start = time.perf_counter()
        entry = shipped_entry(args.n, args.batch, args.device, **(kwargs | {"n_steps": n_steps}))
        entry |= {"seconds": time.perf_counter() - start, "command": command, "torch": torch.__version__}
        table["entries"] = [e for e in table["entries"] if e["config"] != entry["config"]] + [entry]
        print(
            f"N = {n_steps}: J* = {entry['j_star']:.4f} ± {entry['j_star_se']:.4f}, J(pre) = "
            f"{entry['j_pretrained']:.4f} ± {entry['j_pretrained_se']:.4f}, ESS {entry['ess']:.0f} of {entry['n']}, "
            f"{entry['seconds']:.0f} s",
            flush=True,
        )
    path.write_text(json.dumps(table, indent=1) + "\n")  # type: ignore[attr-defined]
    return table


if __name__ == "__main__":
    main()
