"""Train one agent of the zoo on one task, then score it against the optimum at several grids.

    python -m agents.train --agent ct_ppo --env DiffusionSDE-v0 --n-steps 20 --reward-queries 300000 --device cuda
    python -m agents.train --agent ddpo --set clip=0.05 lr=3e-4 --logdir runs/ddpo --checkpoint runs/ddpo.pt
    python -m agents.train --agent ct_ppo --env DiffusionSDE-Digits-v0 --num-envs 64 --env-kwargs n_steps=20

A checkpoint that exists is resumed (the same run continues). The policy is then evaluated at
every ``--eval-steps`` grid against the references estimated on that same grid (J*, J(pre), and
J_best and J_oracle where the task has them: docs/design.md, section 1) with both normalized gaps,
and the results are printed and optionally written as JSON.

Data-parallel under ``torchrun`` (docs/design.md, section 6), on one node or many:

    torchrun --standalone --nproc_per_node 4 -m agents.train --agent ddpo --device cuda --num-envs 2048
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 --rdzv-id run1 \
        -m agents.train --agent ct_ppo --device cuda --checkpoint /shared/ct_ppo.pt

``--num-envs`` and ``--eval-n`` are the whole job's (each rank steps its equal share), so a run means
the same algorithm whatever the number of processes; rank ``r`` runs on ``cuda:LOCAL_RANK`` (or the
CPU), and rank 0 alone prints and writes the checkpoint, TensorBoard and ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from agents.common.agent import Agent
from agents.common.build import build_agent, make_config, make_env
from diffusion_gym import distributed
from diffusion_gym.output_paths import check_output_dir, check_output_file
from diffusion_gym.references import compute_references
from diffusion_gym.scoring import derive_seed, eval_batch, score_policy
from diffusion_gym.tasks import get_task
from diffusion_gym.validation import PositiveInt, Seed, argument, literal


def parse_assignments(items: list[str], option: str = "--set") -> dict[str, Any]:
    """``["lr=3e-4", "hidden=(64, 64)"]`` -> ``{"lr": 0.0003, "hidden": (64, 64)}``: Python literals, else
    the strings themselves (``anneal_lr=no``), for the fields' annotations to check."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{option}: expected key=value, got {item!r}")
        if key in out:
            raise ValueError(f"{option}: {key} is given twice")
        out[key] = literal(value)
    return out


def score_at_grids(
    agent: Agent, env_id: str, env_kwargs: dict[str, Any], steps: list[int], n: int, seed: int
) -> list[dict[str, float]]:
    """The policy's objective, rewards and KL at each grid, with the references there (J*, J(pre), and
    J_best and J_oracle where the task has them) and both normalized gaps (docs/design.md, section 1),
    seeded as the benchmarks seed them (:func:`~diffusion_gym.scoring.derive_seed`). J* and J(pre)
    are the task's shipped ones where it ships them for this configuration, as in the benchmarks."""
    rows = []
    n_train = env_kwargs["n_steps"]
    task = get_task(env_id)
    for n_steps in steps:
        env = make_env(env_id, eval_batch(n, agent.env.device), **(env_kwargs | {"n_steps": n_steps}))
        shipped = task.shipped_references(env_kwargs | {"n_steps": n_steps})
        refs = compute_references(env, n_samples=n, oracle_n=n, shipped=shipped)
        row, _ = score_policy(env, agent, refs, n, derive_seed("final", seed, n_train, n_steps))
        rows.append({"n_steps": n_steps} | {k: v for k, v in refs.to_row().items() if k != "oracle"} | row)
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agent", default="ct_ppo")
    parser.add_argument("--env", default="DiffusionSDE-v0")
    parser.add_argument("--num-envs", type=argument(PositiveInt), default=512, help="the whole job's, split over ranks")
    parser.add_argument("--n-steps", type=argument(PositiveInt), default=None, help="default: the task's N, else 20")
    parser.add_argument("--env-kwargs", nargs="*", default=[], help="key=value env arguments")
    parser.add_argument("--reward-queries", type=argument(PositiveInt), default=300_000)
    parser.add_argument("--seed", type=argument(Seed), default=0)
    parser.add_argument(
        "--device", default="cpu", help="cpu, cuda, cuda:1, ... (envs and agent; under torchrun cuda:LOCAL_RANK)"
    )
    parser.add_argument("--set", nargs="*", default=[], help="key=value config overrides")
    parser.add_argument("--logdir", default=None, help="TensorBoard directory")
    parser.add_argument("--checkpoint", default=None, help="resumed if it exists, written during training")
    parser.add_argument(
        "--eval-steps", type=argument(list[PositiveInt]), default=None, help="comma-separated grids (default: N)"
    )
    parser.add_argument("--eval-n", type=argument(PositiveInt), default=16_384)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args(argv)
    check_arguments(parser, args)
    result = run(args, distributed.setup(args.device))
    if argv is None:  # the command, not a caller that may hold the process group
        distributed.shutdown()  # not after a failure: the failed rank exits and torchrun stops the others
    return result


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The agent's config, the env keywords' form and every output path checked before any work (a
    run must not learn at its end that it cannot write); ``args.config`` is the agent's config and
    ``args.env_kwargs`` a dict. The counts and grids are checked by their argparse types."""
    try:
        overrides = {"seed": args.seed, "logdir": args.logdir} | parse_assignments(args.set)
        args.config = make_config(args.agent, overrides)
        args.env_kwargs = parse_assignments(args.env_kwargs, "--env-kwargs")
        get_task(args.env).check_kwargs(args.env_kwargs)
        checks = (("out", check_output_file), ("checkpoint", check_output_file), ("logdir", check_output_dir))
        for field, check in checks:
            if getattr(args, field) is not None:
                check(getattr(args, field), f"--{field}")
    except (KeyError, ValueError) as err:  # KeyError: no such task
        parser.error(str(err.args[0]))


def run(args: argparse.Namespace, device: Any) -> dict[str, Any]:
    """Train, score, print and write what ``args`` say, on ``device`` (this rank's)."""
    n_steps = args.n_steps if args.n_steps is not None else get_task(args.env).defaults.get("n_steps", 20)
    env_kwargs = {"n_steps": n_steps, "device": str(device)} | args.env_kwargs
    env = make_env(args.env, distributed.split(args.num_envs), **env_kwargs)
    agent = build_agent(args.agent, env, args.config)
    log = print if distributed.is_main() else lambda *a: None
    # Rank 0's view decides for every rank (a node with a stale view of shared storage would part ways).
    if args.checkpoint and distributed.broadcast_object(Path(args.checkpoint).exists()):
        agent.load(args.checkpoint)
        log(f"resumed from {args.checkpoint} at {agent.reward_queries} reward queries")
    start = time.perf_counter()
    agent.learn(args.reward_queries, checkpoint=args.checkpoint)
    seconds = time.perf_counter() - start

    steps = args.eval_steps or [env_kwargs["n_steps"]]
    rows = score_at_grids(agent, args.env, env_kwargs, steps, args.eval_n, args.seed)
    world = distributed.world_size()
    processes = f" on {world} processes" if world > 1 else ""
    log(f"{args.agent} on {args.env}: {agent.reward_queries} reward queries in {seconds:.0f} s (this run){processes}")
    for row in rows:
        gold = f"  gold {row['gold']:.3f}" if "gold" in row else ""
        best = f"  J_best {row['j_best']:.4f}" if "j_best" in row else ""
        oracle = f"  J_oracle {row['j_oracle']:.4f} ± {row['j_oracle_se']:.4f}" if "j_oracle" in row else ""
        reach = (
            f"  reachable gap {row['reachable_gap']:.3f} ± {row['reachable_gap_se']:.3f}"
            if "reachable_gap" in row
            else ""
        )
        log(
            f"  N={row['n_steps']:4d}  J {row['objective']:.4f} ± {row['objective_se']:.4f}"
            f"  J* {row['j_star']:.4f}{best}{oracle}  J(pre) {row['j_pretrained']:.4f}"
            f"  gap {row['gap']:.3f} ± {row['gap_se']:.3f}{reach}  KL {row['kl']:.3f}{gold}"
        )
    result = {"agent": args.agent, "env": args.env, "config": dataclasses.asdict(agent.config), "seconds": seconds}
    result |= {"reward_queries": agent.reward_queries, "num_envs": args.num_envs, "world_size": world}
    result |= {"env_kwargs": env_kwargs, "scores": rows}
    if args.out is not None and distributed.is_main():
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


if __name__ == "__main__":
    main()
