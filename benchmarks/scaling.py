"""Data-parallel scaling: reward queries per second of training with 1, 2, ... processes under
``torchrun`` (docs/design.md, section 6), the same run (agent, task, whole-job batch and budget)
at every process count, so the ratio is the speed-up of one algorithm.

    python -m benchmarks.scaling --device cpu --nproc 1,2                # one thread per process
    python -m benchmarks.scaling --device cuda --nproc 1,2,4,8 --num-envs 8192 --reward-queries 163840

Each measurement is a fresh ``torchrun`` job (one process too, through the same launcher): every
rank builds its share of the envs and the agent, trains one warm-up iteration, then the clock (rank
0's, between barriers) times the rest of the budget. Process counts are interleaved over
``--repeats`` rounds and the median of each is reported, with the speed-up over the smallest count
measured in the same invocation (these machines are noisy; no figure is compared across runs).
Beside it, two ceilings that take the speed-up apart: without communication or contention, P
times the rate of one process alone on a 1/P share of the batch (the same iterations); without
communication, the summed rate of P such processes side by side, each training its own agent (what
running P processes at once costs the machine). What separates the last from the data-parallel
rate is the collectives: one gradient all-reduce per optimiser step, the ranks waiting for each other.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from diffusion_gym.validation import PositiveInt, argument


def worker(args: argparse.Namespace) -> None:
    """One rank of one measurement (started by ``torchrun``); rank 0 writes ``args.out``. With
    ``--independent`` the processes do not join a group: each trains its own agent on the given batch,
    side by side, and writes its own result (``args.out`` + ``.RANK``)."""
    import torch

    from agents.common.build import build_agent, make_env
    from agents.train import parse_assignments
    from diffusion_gym import distributed

    rank = int(os.environ.get("RANK", "0"))
    if args.independent:
        os.environ["WORLD_SIZE"] = "1"  # no group: torchrun only starts the processes together
        device = torch.device(args.device)
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    else:
        device = distributed.setup(args.device)
    env_kwargs = {"n_steps": args.n_steps, "device": str(device)} | parse_assignments(args.env_kwargs)
    env = make_env(args.env, distributed.split(args.num_envs), **env_kwargs)
    agent = build_agent(args.agent, env, {"seed": 0, "progress": False})
    agent.learn(args.num_envs)  # warm-up: first-iteration allocations (and compilation) are not timed
    distributed.barrier()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    agent.learn(args.num_envs + args.reward_queries)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    distributed.barrier()
    seconds = time.perf_counter() - start
    latency = _all_reduce_latency(device) if distributed.world_size() > 1 else 0.0
    if distributed.is_main():
        queries = agent.reward_queries - args.num_envs
        result = {"nproc": distributed.world_size(), "queries": queries, "seconds": seconds, "latency_s": latency}
        out = f"{args.out}.{rank}" if args.independent else args.out
        Path(out).write_text(json.dumps(result | {"queries_per_s": queries / seconds}) + "\n")
    distributed.shutdown()


def _all_reduce_latency(device: Any, repeats: int = 100) -> float:
    """Seconds per all-reduce of one number: the floor of every optimiser step's gradient averaging."""
    import torch
    import torch.distributed as dist

    x = torch.zeros(1, device=device)
    for _ in range(10):
        dist.all_reduce(x)
    start = time.perf_counter()
    for _ in range(repeats):
        dist.all_reduce(x)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / repeats


def measure(args: argparse.Namespace, kind: str, nproc: int, out: Path) -> dict[str, Any]:
    """One ``torchrun`` job on this node: ``kind`` "parallel" (``nproc`` ranks training one agent on
    the whole batch), "alone" (one process on a 1/``nproc`` share of the batch and budget: the same
    iterations) or "side_by_side" (``nproc`` such processes at once, each its own agent). Returns the
    queries per second (summed over side-by-side processes) and the idle all-reduce latency."""
    env = os.environ.copy()
    if args.device == "cpu":
        env["OMP_NUM_THREADS"] = str(args.threads)  # torchrun's own default for P > 1 is 1; the same for P = 1
    share = 1 if kind == "parallel" else nproc
    procs = 1 if kind == "alone" else nproc
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"]
    command += ["-m", "benchmarks.scaling", "--worker", "--out", str(out), *_run_args(args, share)]
    command += ["--independent"] if kind == "side_by_side" else []
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"torchrun with {procs} processes failed:\n{done.stderr[-4000:]}")
    if kind != "side_by_side":
        return json.loads(out.read_text())
    parts = [json.loads(Path(f"{out}.{r}").read_text()) for r in range(procs)]
    return {"queries_per_s": sum(p["queries_per_s"] for p in parts), "latency_s": 0.0}


def _run_args(args: argparse.Namespace, share: int = 1) -> list[str]:
    run = ["--agent", args.agent, "--env", args.env, "--n-steps", str(args.n_steps), "--device", args.device]
    run += ["--num-envs", str(args.num_envs // share), "--reward-queries", str(args.reward_queries // share)]
    return run + (["--env-kwargs", *args.env_kwargs] if args.env_kwargs else [])


def main(argv: list[str] | None = None) -> list[dict[str, Any]] | None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agent", required=True, help="a zoo agent's name (agents.train --agent)")
    parser.add_argument("--env", default="DiffusionSDE-v0")
    parser.add_argument("--n-steps", type=argument(PositiveInt), default=20)
    parser.add_argument("--env-kwargs", nargs="*", default=["integrator=exponential"])
    parser.add_argument(
        "--num-envs", type=argument(PositiveInt), default=512, help="the whole job's, split over processes"
    )
    parser.add_argument(
        "--reward-queries", type=argument(PositiveInt), default=5120, help="timed, after one warm-up iteration"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--nproc", default="1,2", help="comma-separated process counts")
    parser.add_argument("--threads", type=argument(PositiveInt), default=1, help="CPU threads per process")
    parser.add_argument("--repeats", type=argument(PositiveInt), default=3)
    parser.add_argument("--json", type=Path, default=None, help="write the measurements here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--independent", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return None

    counts = [int(p) for p in args.nproc.split(",")]
    if counts[0] != 1:
        parser.error("--nproc must start with 1: the one-process run is the baseline")
    # Each count's data-parallel job; for P > 1 also one process alone on a 1/P share (times P: the rate
    # with neither communication nor contention) and P such processes side by side (contention alone).
    jobs = [("parallel", p) for p in counts] + [(kind, p) for p in counts[1:] for kind in ("alone", "side_by_side")]
    rates: dict[tuple[str, int], list[float]] = {job: [] for job in jobs}
    latency: dict[int, list[float]] = {p: [] for p in counts}
    with tempfile.TemporaryDirectory() as tmp, tqdm(total=len(jobs) * args.repeats, desc="scaling") as bar:
        for r in range(args.repeats):
            for kind, p in jobs:
                m = measure(args, kind, p, Path(tmp) / f"{kind}-{p}-{r}.json")
                rates[kind, p].append(m["queries_per_s"])
                if kind == "parallel":
                    latency[p].append(m["latency_s"])
                bar.update()
    base = statistics.median(rates["parallel", 1])
    rows = []
    for p in counts:
        rate = statistics.median(rates["parallel", p])
        row = {"nproc": p, "queries_per_s": rate, "all": rates["parallel", p], "speedup": rate / base}
        row["alone"] = p * statistics.median(rates["alone", p]) / base if p > 1 else 1.0
        row["side_by_side"] = statistics.median(rates["side_by_side", p]) / base if p > 1 else 1.0
        rows.append(row | {"all_reduce_latency_s": statistics.median(latency[p])})
    threads = f", {args.threads} thread(s) per process" if args.device == "cpu" else ""
    print(
        f"{args.agent} on {args.env}, N = {args.n_steps}, {args.num_envs} envs in all, {args.reward_queries} "
        f"timed queries, device {args.device}{threads}"
    )
    print(
        f"| processes | reward queries / s (median of {args.repeats}) | speed-up | without communication "
        "or contention | without communication | all-reduce latency, idle |"
    )
    print("|---|---|---|---|---|---|")
    for row in rows:
        lat = f"{row['all_reduce_latency_s'] * 1e3:.2f} ms" if row["nproc"] > 1 else "-"
        print(
            f"| {row['nproc']} | {row['queries_per_s']:,.0f} | {row['speedup']:.2f} | {row['alone']:.2f} "
            f"| {row['side_by_side']:.2f} | {lat} |"
        )
    if args.json is not None:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "rows": rows}, indent=1) + "\n")
    return rows


if __name__ == "__main__":
    main()
