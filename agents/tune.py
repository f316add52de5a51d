"""The small, equal hyperparameter search every agent gets on a task, recorded in agents/tuning/.

    python -m agents.tune --env DiffusionSDE-v0
    python -m agents.tune --env DiffusionSDE-Digits-v0

Every agent tries the same number of settings (a 2x2 grid over its learning rate and its one
algorithm-specific knob: the clip range of the PPO-type agents, the temperature of q-learning) with
the same reward-query budget, seed and grid (N = 20, the exponential integrator), and is scored by
its normalized optimality gap at that N. The JSON and the markdown table keep every run; on
DiffusionSDE-v0 the best setting of each agent is its documented default. On the digits task the
grid starts from the published DDPO defaults (learning rate 3e-4, clip 1e-4) and the budget is what
two CPU cores afford, with the MLP policy (see ``BUDGETS``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path
from typing import Any

import torch

from agents.train import build_agent, make_env
from diffusion_gym.optimum import optimal_objective

GRIDS: dict[str, dict[str, dict[str, list[Any]]]] = {
    "DiffusionSDE-v0": {
        "ct_ppo": {"lr": [3e-4, 1e-3], "clip": [0.3, 1.0]},
        "ddpo": {"lr": [3e-4, 1e-3], "clip": [0.01, 0.1]},
        "dpok": {"lr": [3e-4, 1e-3], "clip": [0.01, 0.1]},
        "ct_q_learning": {"lr": [3e-4, 1e-3], "temperature": [0.25, 1.0]},
    },
    "DiffusionSDE-Digits-v0": {
        "ct_ppo": {"lr": [3e-4, 1e-3], "clip": [0.1, 0.3]},
        "ddpo": {"lr": [3e-4, 1e-3], "clip": [1e-4, 0.1]},
        "dpok": {"lr": [3e-4, 1e-3], "clip": [1e-4, 0.1]},
        # exp(q / gamma) explores at a KL price of gamma D T / 2 per episode (D: the state's dimension):
        # the 2-D grid's temperatures times 2 / 64 give the same exploration price on 8x8 digits.
        "ct_q_learning": {"lr": [3e-4, 1e-3], "temperature": [0.25 / 32, 1.0 / 32]},
    },
}
"""Per task, each agent's 2x2 grid."""

BUDGETS: dict[str, dict[str, Any]] = {
    "DiffusionSDE-v0": {
        "num_envs": 512,
        "reward_queries": 100_000,
        "eval_n": 8192,
        "optimum_n": 65_536,
        "policy_net": "mlp",
    },
    # On 2 CPU cores the LoRA UNet policy runs ~8 episodes/s (a few hundred queries in a tuning run's
    # minute, where it raised KL faster than reward); the MLP field on the 64 pixels runs ~80/s.
    "DiffusionSDE-Digits-v0": {
        "num_envs": 64,
        "reward_queries": 4096,
        "eval_n": 1024,
        "optimum_n": 4096,
        "policy_net": "mlp",
    },
}
"""Per task: envs per batch, reward queries per run, evaluation episodes, the pretrained samples that
estimate J* and J(pre), and the policy network."""


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="DiffusionSDE-v0")
    parser.add_argument("--agents", default=None, help="comma-separated (default: every agent of the task's grid)")
    parser.add_argument("--num-envs", type=int, default=None, help="default: BUDGETS[env]")
    parser.add_argument("--n-steps", type=int, default=20)
    parser.add_argument("--integrator", default="exponential")
    parser.add_argument("--reward-queries", type=int, default=None, help="default: BUDGETS[env]")
    parser.add_argument("--eval-n", type=int, default=None, help="default: BUDGETS[env]")
    parser.add_argument("--optimum-n", type=int, default=None, help="samples for J* (default: BUDGETS[env])")
    parser.add_argument("--policy-net", default=None, help="mlp | lora | auto (default: BUDGETS[env])")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "tuning")
    args = parser.parse_args(argv)
    if args.env not in GRIDS:
        parser.error(f"no grid for {args.env}; known: {sorted(GRIDS)}")
    for key, value in BUDGETS[args.env].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    grids = GRIDS[args.env]

    env_kwargs = {"n_steps": args.n_steps, "integrator": args.integrator}
    optimum = optimal_objective(
        make_env(args.env, min(4096, args.optimum_n), **env_kwargs), n_samples=args.optimum_n, seed=args.seed + 1
    )
    names = (args.agents or ",".join(grids)).split(",")
    if unknown := set(names) - set(grids):
        parser.error(f"no grid for agents {sorted(unknown)} on {args.env}; known: {sorted(grids)}")
    runs = []
    for name in names:
        grid = grids[name]
        for values in itertools.product(*grid.values()):
            setting = dict(zip(grid, values, strict=True))
            torch.manual_seed(args.seed)
            overrides = setting | {"seed": args.seed, "policy_net": args.policy_net}
            agent = build_agent(name, make_env(args.env, args.num_envs, **env_kwargs), overrides)
            agent.config.progress = False
            start = time.perf_counter()
            agent.learn(args.reward_queries)
            seconds = time.perf_counter() - start
            result = agent.evaluate(n=args.eval_n, seed=args.seed + 7)
            gap = optimum.normalized_gap(result["objective"])
            run = {"agent": name, "setting": setting, "seconds": seconds, "gap": gap.mean, "gap_se": gap.se}
            run |= {"objective": result["objective"].mean, "objective_se": result["objective"].se}
            run |= {"kl": result["kl"].mean, "gold": result["gold_reward"].mean if "gold_reward" in result else None}
            run["policy_net"] = type(agent.actor).__name__
            runs.append(run)
            print(f"{name:14s} {setting}  gap {gap}  J {result['objective']}  {seconds:.0f} s", flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"env": args.env, "env_kwargs": env_kwargs, "num_envs": args.num_envs, "seed": args.seed}
    meta |= {
        "reward_queries": args.reward_queries,
        "j_star": optimum.j_star.mean,
        "j_pretrained": optimum.j_pretrained.mean,
    }
    (args.out / f"{args.env}.json").write_text(json.dumps({"meta": meta, "runs": runs}, indent=2) + "\n")
    lines = [
        f"# Hyperparameter search on {args.env}",
        "",
        f"N = {args.n_steps} ({args.integrator}), {args.num_envs} envs, {args.reward_queries} reward queries per run, "
        f"seed {args.seed}, policy network {runs[-1]['policy_net']}; scored by the normalized optimality gap at N "
        f"(J* = {optimum.j_star}, J(pre) = {optimum.j_pretrained}). "
        f"Written by `python -m agents.tune --env {args.env}`.",
        "",
        "| agent | setting | gap | J | KL | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for run in runs:
        setting = ", ".join(f"{k}={v}" for k, v in run["setting"].items())
        lines.append(
            f"| {run['agent']} | {setting} | {run['gap']:.3f} ± {run['gap_se']:.3f} | "
            f"{run['objective']:.3f} ± {run['objective_se']:.3f} | {run['kl']:.3f} | {run['seconds']:.0f} |"
        )
    (args.out / f"{args.env}.md").write_text("\n".join(lines) + "\n")
    return runs


if __name__ == "__main__":
    main()
