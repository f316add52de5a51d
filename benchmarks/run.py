"""Run a suite: every agent x task x seed x N_train, scored against the known optimum at every grid.

For each task and grid, J* and J(pretrained) come from one set of pretrained samples on that grid
(so the pretrained sampler's own discretization error counts neither for nor against an agent).
Each run trains with a learning curve (the deterministic policy evaluated at ``curve_points``
budgets; evaluation time is excluded from the wall time), then scores the trained policy at every
``eval_steps`` grid. Everything lands in ``results.json`` (schema: ``benchmarks/README.md``),
rewritten after every run; ``report.md`` and the plots are generated from it.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shlex
import shutil
import sys
import time
import warnings
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from agents.common.agent import Agent
from agents.common.build import build_agent, make_env
from benchmarks.env_throughput import device_name, measure
from benchmarks.suite import RunSpec, Suite, SuiteTask
from diffusion_gym import distributed
from diffusion_gym.dynamic_programming import best_policy, solvable
from diffusion_gym.evaluation import Estimate, Rollouts, crossing, rollout
from diffusion_gym.optimal_control import MixtureOptimalControl
from diffusion_gym.optimum import Optimum, References, optimum_from_rewards
from diffusion_gym.scoring import derive_seed, estimates, eval_batch, gaps, score_policy
from diffusion_gym.tasks import get_task

SCHEMA_VERSION = 2
GAP_THRESHOLDS = (0.5, 0.1)
"""Normalized gaps whose first crossing is recorded: 50% and 90% of the gap closed."""
SAMPLES_PER_CLASS = 8
POINTS_SAVED = 4096


# ------------------------------------------------------------------------------------------------
# Image metrics: the task spec's feature map and reference features, where it has them.


def image_metrics(
    env_id: str, x: torch.Tensor, cond: torch.Tensor | None, cache: dict[str, Any]
) -> dict[str, float] | None:
    """Frechet distance to held-out data and per-class diversity of final samples ``x`` of classes
    ``cond`` (image tasks; None for others)."""
    from diffusion_gym.metrics import frechet_distance, per_class_diversity

    if env_id not in cache:
        cache[env_id] = get_task(env_id).features()
    if cache[env_id] is None:
        return None
    features, reference = cache[env_id]
    f = features(x)
    labels = cond.cpu() if cond is not None else torch.zeros(len(f), dtype=torch.int64)
    return {"frechet": frechet_distance(f, reference), "diversity": per_class_diversity(f, labels)}


# ------------------------------------------------------------------------------------------------


def _eval_env(task: SuiteTask, n_steps: int, n: int, device: torch.device) -> Any:
    return make_env(task.env, eval_batch(n, device), **(task.env_kwargs | {"n_steps": n_steps, "device": device}))


def _saved_samples(r: Rollouts) -> dict[str, torch.Tensor]:
    """A few samples per class (image tasks) or the first few thousand points, for the sample plots."""
    if r.cond is None:
        return {"x": r.x[:POINTS_SAVED].float()}
    idx = torch.cat([torch.nonzero(r.cond == c).flatten()[:SAMPLES_PER_CLASS] for c in r.cond.unique()])
    return {"x": r.x[idx].float(), "cond": r.cond[idx]}


def task_baseline(task: SuiteTask, device: torch.device, out: Path, cache: dict[str, Any]) -> dict[str, Any]:
    """The references at every grid the task trains or is scored at (docs/design.md, section 1): J*
    and J(pre) from pretrained samples, J_best by dynamic programming on 2-D tasks (with its error
    estimate and the same recursion's J(pre) as a check), and the continuous-time optimal control
    scored like an agent on Gaussian-mixture tasks (J_oracle, the report's "optimal control" row);
    and the pretrained sampler's gold reward and image metrics. The pretrained samples of each
    training grid are saved for the plots."""
    grids = sorted(set(task.eval_steps) | set(task.n_train))
    optimum: dict[str, Any] = {}
    pretrained: dict[str, Any] = {}
    oracle: dict[str, Any] = {}
    spec = get_task(task.env)
    for n_steps in grids:
        shipped = spec.shipped_optimum(task.env_kwargs | {"n_steps": n_steps})
        if shipped is None and spec.references is not None:
            warnings.warn(
                f"{task.key}: {spec.name} ships J* for some configurations, not for {task.env_kwargs} at "
                f"N = {n_steps}; estimating it from {task.optimum_n} pretrained samples (see the report's "
                "effective sample size)",
                stacklevel=2,
            )
        # With shipped references the pretrained samples serve only the pretrained row and plots.
        n_pre = task.optimum_n if shipped is None else task.eval_n
        env = _eval_env(task, n_steps, n_pre, device)
        pre = rollout(env, None, n_pre, seed=derive_seed("optimum", n_steps))
        if shipped is None:
            optimum[str(n_steps)] = optimum_from_rewards(pre.terminal_reward, env.kl_coef).row()
        else:
            keys = ("j_star", "j_star_se", "j_pretrained", "j_pretrained_se", "covariance", "n", "ess", "command")
            optimum[str(n_steps)] = {k: shipped[k] for k in keys}
        optimum[str(n_steps)]["kl_coef"] = env.kl_coef
        if solvable(env):
            solution = best_policy(env, n_grid=task.best_grid)
            optimum[str(n_steps)] |= {"j_best": solution.j_best, "j_best_error": solution.error}
            optimum[str(n_steps)] |= {"j_best_pretrained": solution.j_pretrained, "j_best_cells": solution.n_grid**2}
        if MixtureOptimalControl.applies(env):
            env_o = _eval_env(task, n_steps, task.oracle_episodes, device)
            control = MixtureOptimalControl.for_env(env_o)
            r = rollout(env_o, control.policy(env_o), task.oracle_episodes, seed=derive_seed("oracle", n_steps))
            j_oracle = Estimate.of(r.objective)
            optimum[str(n_steps)] |= {"j_oracle": j_oracle.mean, "j_oracle_se": j_oracle.se, "j_oracle_n": j_oracle.n}
            oracle[str(n_steps)] = estimates(r.summary()) | gaps(j_oracle, _references(optimum[str(n_steps)]))
        if n_steps in task.n_train:
            row = estimates(pre.summary())
            path = out / "samples" / f"{task.key}__pretrained__N{n_steps}.pt"
            if distributed.is_main():  # the rollouts are gathered on every rank; one writes
                # From as many samples as an agent's (the Frechet distance is biased at small sample counts).
                m = task.eval_n
                row["image"] = image_metrics(task.env, pre.x[:m], None if pre.cond is None else pre.cond[:m], cache)
                path.parent.mkdir(parents=True, exist_ok=True)
                torch.save(_saved_samples(pre) | {"terminal_reward": pre.terminal_reward.float()}, path)
            row["samples"] = str(path.relative_to(out))
            pretrained[str(n_steps)] = row
    return {
        "spec": _jsonable(asdict(task)),
        "env": task.env,
        "env_kwargs": task.env_kwargs,
        "n_train": task.n_train,
        "num_envs": task.num_envs,
        "reward_queries": task.reward_queries,
        "eval_steps": task.eval_steps,
        "eval_n": task.eval_n,
        "curve_n": task.curve_n,
        "optimum_n": task.optimum_n,
        "optimum": optimum,
        "reachable": _reachable_key(optimum),
        "oracle": oracle,
        "pretrained": pretrained,
    }


def _reachable_key(optimum: dict[str, Any]) -> str | None:
    """Which reference the reachable gap uses on this task: "j_best", "j_oracle" or None (also when
    on some grid it does not beat the pretrained model: then the task is scored against J* alone)."""
    entries = list(optimum.values())
    for key in ("j_best", "j_oracle"):
        if entries and all(key in e for e in entries):
            return key if all(e[key] > e["j_pretrained"] for e in entries) else None
    return None


def _references(entry: dict[str, Any]) -> References:
    """The references of one grid from its ``optimum`` entry of results.json."""
    optimum = Optimum.from_row(entry)
    j_best = Estimate(entry["j_best"], entry["j_best_error"], entry["j_best_cells"]) if "j_best" in entry else None
    j_oracle = Estimate(entry["j_oracle"], entry["j_oracle_se"], entry["j_oracle_n"]) if "j_oracle" in entry else None
    return References(optimum, j_best, j_oracle)


class LearningCurve:
    """The zoo callback that evaluates the deterministic policy at fixed reward-query budgets,
    ``budget * (i / curve_points)^2`` (the first iteration at or past each).

    Evaluation time is measured and excluded from the run's wall time; the points also go to the
    run's TensorBoard directory as ``eval/*`` scalars (rank 0's job under ``torchrun``, where every
    rank evaluates its share of the episodes).
    """

    def __init__(self, spec: RunSpec, refs: References, device: torch.device, logdir: Path) -> None:
        """Call :meth:`begin` before training."""
        task = spec.task
        # Quadratic spacing: most of the gap closes early, where a fixed-gap crossing needs resolution.
        self.points = [round(spec.reward_queries * (i / task.curve_points) ** 2) for i in range(task.curve_points + 1)]
        self.next = 1  # the first point (0 queries) is evaluated before training
        self.env = _eval_env(task, spec.n_train, task.curve_n, device)
        self.n, self.run_seed, self.n_train = task.curve_n, spec.seed, spec.n_train
        self.refs = refs
        self.device = device
        self.train_peak = 0
        self.curve: list[dict[str, float]] = []
        self.start, self.eval_seconds = math.nan, 0.0
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(logdir), filename_suffix=".eval") if distributed.is_main() else None

    def begin(self, agent: Agent) -> None:
        """Evaluate the untrained policy (the pretrained model, 0 queries) and start the clock."""
        self.start = time.perf_counter()
        self.evaluate(agent)
        self.start, self.eval_seconds = time.perf_counter(), 0.0

    def train_seconds(self) -> float:
        return time.perf_counter() - self.start - self.eval_seconds

    def evaluate(self, agent: Agent) -> None:
        t0 = time.perf_counter()
        seconds = t0 - self.start - self.eval_seconds
        if self.device.type == "cuda":  # the peak of training alone: evaluation batches are larger
            self.train_peak = max(self.train_peak, torch.cuda.max_memory_allocated(self.device))
        seed = derive_seed("curve", self.run_seed, self.n_train, len(self.curve))
        row, _ = score_policy(self.env, agent, self.refs, self.n, seed)
        point = {"reward_queries": agent.reward_queries, "seconds": seconds} | row
        self.curve.append(point)
        for key in ("objective", "proxy", "gold", "kl", "gap", "reachable_gap"):
            if key in point and self.writer is not None:
                self.writer.add_scalar(f"eval/{key}", point[key], agent.reward_queries)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.eval_seconds += time.perf_counter() - t0

    def peak_mib(self) -> float | None:
        """Peak GPU memory of training, evaluations excluded (None off-GPU)."""
        if self.device.type != "cuda":
            return None
        return max(self.train_peak, torch.cuda.max_memory_allocated(self.device)) / 2**20

    def __call__(self, agent: Agent, stats: dict[str, float]) -> bool:
        if self.next < len(self.points) and agent.reward_queries >= self.points[self.next]:
            self.evaluate(agent)
            while self.next < len(self.points) and self.points[self.next] <= agent.reward_queries:
                self.next += 1  # points an iteration jumped over are not evaluated twice
        return True

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def run_one(
    spec: RunSpec, baseline: dict[str, Any], device: torch.device, out: Path, cache: dict[str, Any]
) -> dict[str, Any]:
    """Train one agent on one task with one seed at N_train, then score it at every grid (under
    ``torchrun``: data-parallel, each rank with its share of the run's ``num_envs``)."""
    task = spec.task
    logdir = out / "tensorboard" / spec.run_id
    if distributed.is_main():
        shutil.rmtree(logdir, ignore_errors=True)  # a rerun into the same directory starts a fresh log
    distributed.barrier()
    env_kwargs = task.env_kwargs | {"n_steps": spec.n_train, "device": device}
    env = make_env(task.env, distributed.split(spec.num_envs), **env_kwargs)
    torch.manual_seed(spec.seed)
    agent = build_agent(spec.agent, env, spec.overrides | {"seed": spec.seed, "logdir": str(logdir), "progress": False})
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)

    curve = LearningCurve(spec, _references(baseline["optimum"][str(spec.n_train)]), device, logdir)
    curve.begin(agent)
    agent.learn(spec.reward_queries, callback=curve)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    train_seconds = curve.train_seconds()
    peak = curve.peak_mib()
    if curve.curve[-1]["reward_queries"] < agent.reward_queries:
        curve.evaluate(agent)
    curve.close()

    t0 = time.perf_counter()
    final: dict[str, Any] = {}
    image = None
    samples = None
    for n_steps in task.eval_steps:
        env_n = _eval_env(task, n_steps, task.eval_n, device)
        seed = derive_seed("final", spec.seed, spec.n_train, n_steps)
        refs = _references(baseline["optimum"][str(n_steps)])
        final[str(n_steps)], r = score_policy(env_n, agent, refs, task.eval_n, seed)
        if n_steps == spec.n_train:
            path = out / "samples" / f"{spec.run_id.replace('/', '__')}.pt"
            samples = str(path.relative_to(out))
            if distributed.is_main():
                image = image_metrics(task.env, r.x, r.cond, cache)
                torch.save(_saved_samples(r), path)
    eval_seconds = time.perf_counter() - t0 + curve.eval_seconds
    pts = curve.curve
    return {
        "id": spec.run_id,
        "spec": run_fingerprint(spec),
        "task": task.key,
        "env": task.env,
        "agent": spec.label,
        "zoo_agent": spec.agent,
        "seed": spec.seed,
        "n_train": spec.n_train,
        "config": _jsonable(asdict(agent.config)),
        "num_envs": spec.num_envs,
        "reward_queries": agent.reward_queries,
        "train_seconds": train_seconds,
        "eval_seconds": eval_seconds,
        "peak_gpu_mib": peak,
        "curve": pts,
        "to_gap": {
            str(g): {"reward_queries": crossing(pts, g, "reward_queries"), "seconds": crossing(pts, g, "seconds")}
            for g in GAP_THRESHOLDS
        },
        "to_reachable_gap": {
            str(g): {key: crossing(pts, g, key, "reachable_gap") for key in ("reward_queries", "seconds")}
            for g in GAP_THRESHOLDS
        }
        if baseline.get("reachable")
        else None,
        "final": final,
        "image": image,
        "samples": samples,
        "tensorboard": str(logdir.relative_to(out)),
    }


def run_fingerprint(spec: RunSpec) -> dict[str, Any]:
    """What makes a finished run reusable by ``--resume``: its agent, settings, budget and task."""
    return _jsonable(
        {
            "agent": spec.agent,
            "overrides": spec.overrides,
            "num_envs": spec.num_envs,
            "reward_queries": spec.reward_queries,
        }
    )


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def run_suite(
    suite: Suite,
    device: str | torch.device = "cpu",
    out: str | Path = "benchmark_results",
    resume: bool = False,
    command: str | None = None,
) -> dict[str, Any]:
    """Run every run of ``suite`` (and its throughput section, if any); write ``results.json``, the
    report and the plots under ``out``; return the results.

    Args:
        suite: from :func:`benchmarks.suite.load_suite`.
        device: where envs and agents run.
        out: the output directory.
        resume: keep the finished runs of ``out/results.json`` (same suite, device, number of
            processes and settings) and run the rest; raises if the file holds another suite, device
            or number of processes, or a task changed.
        command: recorded in the results (default: this process's command line).

    Under ``torchrun`` every rank calls this: the runs train data-parallel, and rank 0 alone writes.
    """
    device = torch.device(device)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    results: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "suite": suite.name,
        "description": suite.description,
        "command": command or " ".join(["python", "-m", "benchmarks", *map(shlex.quote, sys.argv[1:])]),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": device_name(device),
        "device_type": device.type,
        "nproc": distributed.world_size(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "seeds": suite.seeds,
        "agents": {label: {"agent": agent, "settings": s} for label, (agent, s) in suite.agents.items()},
        "gap_thresholds": list(GAP_THRESHOLDS),
        "tasks": {},
        "runs": [],
        "throughput": [],
    }
    previous_seconds = 0.0
    # Rank 0's view of the results decides for every rank, so that all run the same list.
    old = distributed.broadcast_object(json.loads(path.read_text()) if resume and path.exists() else None)
    if old is not None:
        ours = (suite.name, results["device"], results["nproc"])
        if (old.get("suite"), old.get("device"), old.get("nproc", 1)) != ours:
            raise ValueError(
                f"{path} holds suite {old.get('suite')!r} on {old.get('device')!r} x {old.get('nproc', 1)} "
                f"processes, not {suite.name!r} on {results['device']!r} x {results['nproc']}: resume only the "
                "same suite on the same device and number of processes, or choose another --out"
            )
        for key, task in old["tasks"].items():
            if key in suite.tasks and task.get("spec") != _jsonable(asdict(suite.tasks[key])):
                raise ValueError(f"task {key!r} changed since {path} was written; rerun it without --resume")
        current = {spec.run_id: run_fingerprint(spec) for spec in suite.runs()}
        results["tasks"] = {k: v for k, v in old["tasks"].items() if k in suite.tasks}
        results["runs"] = [r for r in old["runs"] if current.get(r["id"]) == r.get("spec")]
        results["started"], previous_seconds = old["started"], old.get("seconds", 0.0)
    done = {run["id"] for run in results["runs"]}
    runs = [spec for spec in suite.runs() if spec.run_id not in done]
    if distributed.world_size() > 1:
        runs, results["skipped"] = _data_parallel_runs(runs)
    throughput = _throughput_jobs(suite, device) if distributed.is_main() else []

    cache: dict[str, Any] = {}
    start = time.perf_counter() - previous_seconds
    bar = tqdm(
        total=len(runs) + len(throughput),
        desc=f"suite {suite.name}",
        unit="run",
        dynamic_ncols=True,
        disable=not distributed.is_main(),
    )
    for spec in runs:
        if spec.task.key not in results["tasks"]:
            bar.set_postfix_str(f"{spec.task.key}: J* and J(pre) at every grid")
            results["tasks"][spec.task.key] = task_baseline(spec.task, device, out, cache)
        bar.set_postfix_str(spec.run_id)
        results["runs"].append(run_one(spec, results["tasks"][spec.task.key], device, out, cache))
        results["seconds"] = time.perf_counter() - start
        if distributed.is_main():
            _write_json(path, results)
        bar.update()
    for job in throughput:
        bar.set_postfix_str(f"throughput {job['task']} batch {job['batch']}")
        results["throughput"].append(measure(**job, device=device) | {"task": job["task"]})
        bar.update()
    bar.close()
    results["seconds"] = time.perf_counter() - start
    if distributed.is_main():
        write_outputs(out, results)
    distributed.barrier()
    return results


def _data_parallel_runs(runs: list[RunSpec]) -> tuple[list[RunSpec], list[dict[str, str]]]:
    """The runs whose agents train data-parallel, and a record of those left out (SB3's: one process
    only), with a warning naming them."""
    from agents import all_agents

    registry = all_agents()
    keep, skipped = [], []
    for spec in runs:
        reason = getattr(registry[spec.agent][0], "single_process", None)
        if reason is None:
            keep.append(spec)
        else:
            skipped.append({"id": spec.run_id, "agent": spec.label, "reason": reason})
    if skipped and distributed.is_main():
        labels = sorted({s["agent"] for s in skipped})
        warnings.warn(
            f"{len(skipped)} runs of {', '.join(labels)} left out: they train in one process only "
            f"({skipped[0]['reason']}); run them without --nproc, into another --out",
            stacklevel=2,
        )
    return keep, skipped


def write_outputs(out: Path, results: dict[str, Any]) -> None:
    """The plots, then ``results.json`` (listing them), then ``report.md`` rendered from it."""
    from benchmarks.plots import write_plots
    from benchmarks.report import write_report

    _write_json(out / "results.json", results)  # the plots read it
    results["plots"] = write_plots(out)
    _write_json(out / "results.json", results)
    write_report(out)


def _throughput_jobs(suite: Suite, device: torch.device) -> list[dict[str, Any]]:
    """The env-throughput measurements of the suite's ``[throughput]`` table, one per task and batch."""
    table = suite.throughput
    if not table:
        return []
    jobs = []
    for task, spec in table.items():
        spec = {k: v for k, v in spec.items() if k not in ("cpu", "cuda")} | spec.get(device.type, {})
        for batch in spec["batches"]:
            jobs.append({"task": task, "batch": batch, "steps": spec["steps"], "repeats": spec["repeats"]})
    return jobs
