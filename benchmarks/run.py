"""Run a suite: every agent x task x seed x N_train, scored against the known optimum at every grid.

For each task and grid the references are that grid's (:mod:`diffusion_gym.references`: the ones the
task ships for the configuration, else computed here; so the pretrained sampler's own
discretization error counts neither for nor against an agent).
Each run trains with a learning curve (the deterministic policy evaluated at ``curve_points``
budgets; evaluation time is excluded from the wall time), then scores the trained policy at every
``eval_steps`` grid. Everything lands in ``results.json`` (schema: ``benchmarks/README.md``),
rewritten after every run; ``report.md`` and the plots are generated from it.
"""

from __future__ import annotations

import json
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

from agents.common.build import build_agent, make_env
from agents.common.curve import LearningCurve
from benchmarks.env_throughput import device_name, measure
from benchmarks.results_file import SCHEMA_VERSION, read_results, write_results
from benchmarks.suite import GAP_THRESHOLDS, RunSpec, Suite, SuiteTask
from diffusion_gym import distributed
from diffusion_gym.evaluation import Rollouts, crossing, rollout
from diffusion_gym.references import References, compute_references, task_reachable
from diffusion_gym.scoring import derive_seed, estimates, eval_batch, score_policy
from diffusion_gym.tasks import get_task

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
    """The references at every grid the task trains or is scored at (:mod:`diffusion_gym.references`
    decides and computes them, or reads the ones the task ships), the optimal control's row where the
    task has one, and the pretrained sampler's row: its rewards and image metrics. The pretrained
    samples of each training grid are saved for the plots."""
    grids = sorted(set(task.eval_steps) | set(task.n_train))
    optimum: dict[str, Any] = {}
    pretrained: dict[str, Any] = {}
    oracle: dict[str, Any] = {}
    refs_by_grid: list[References] = []
    spec = get_task(task.env)
    for n_steps in grids:
        shipped = spec.shipped_references(task.env_kwargs | {"n_steps": n_steps})
        if shipped is None and spec.references is not None:
            warnings.warn(
                f"{task.key}: {spec.name} ships references for some configurations, not for {task.env_kwargs} at "
                f"N = {n_steps}; estimating them from {task.optimum_n} pretrained samples (see the report's "
                "effective sample size)",
                stacklevel=2,
            )
        # With shipped references the pretrained samples serve only the pretrained row and plots.
        n_pre = task.optimum_n if shipped is None else task.eval_n
        env = _eval_env(task, n_steps, n_pre, device)
        pre = rollout(env, None, n_pre, seed=derive_seed("optimum", n_steps))
        refs = compute_references(
            env if shipped is not None else _eval_env(task, n_steps, task.oracle_episodes, device),
            n_samples=n_pre,
            oracle_n=task.oracle_episodes,
            best_grid=task.best_grid,
            shipped=shipped,
            pretrained=pre if shipped is None else None,
        )
        refs_by_grid.append(refs)
        optimum[str(n_steps)] = refs.to_row() | {"kl_coef": env.kl_coef}
        if (scored := refs.scored_oracle()) is not None:
            oracle[str(n_steps)] = scored
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
        "reachable": task_reachable(refs_by_grid),
        "oracle": oracle,
        "pretrained": pretrained,
    }


def grid_references(baseline: dict[str, Any], n_steps: int) -> References:
    """The references of one grid from a task's record in results.json."""
    return References.from_row(baseline["optimum"][str(n_steps)])


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

    curve_env = _eval_env(task, spec.n_train, task.curve_n, device)
    refs = grid_references(baseline, spec.n_train)
    curve = LearningCurve(curve_env, refs, spec.reward_queries, task.curve_points, task.curve_n, spec.seed, logdir)
    curve.begin(agent)
    agent.learn(spec.reward_queries, callback=curve)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    train_seconds = curve.train_seconds()
    peak = curve.peak_mib()
    curve.finish(agent)

    t0 = time.perf_counter()
    final: dict[str, Any] = {}
    image = None
    samples = None
    for n_steps in task.eval_steps:
        env_n = _eval_env(task, n_steps, task.eval_n, device)
        seed = derive_seed("final", spec.seed, spec.n_train, n_steps)
        final[str(n_steps)], r = score_policy(env_n, agent, grid_references(baseline, n_steps), task.eval_n, seed)
        if n_steps == spec.n_train:
            path = out / "samples" / f"{spec.run_id.replace('/', '__')}.pt"
            samples = str(path.relative_to(out))
            if distributed.is_main():
                image = image_metrics(task.env, r.x, r.cond, cache)
                path.parent.mkdir(exist_ok=True)  # a resumed suite may hold results.json alone
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


TASK_RUN_FIELDS = ("agents", "agent_settings")
"""Fields of a task's spec that say what runs on it: each run's :func:`run_fingerprint` covers them."""


def task_fingerprint(spec: dict[str, Any]) -> dict[str, Any]:
    """What makes a task's references and scores reusable by ``--resume``: its spec (as recorded) less
    :data:`TASK_RUN_FIELDS`, so that agents can join a finished suite."""
    return {k: v for k, v in spec.items() if k not in TASK_RUN_FIELDS}


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


OUTPUTS = ("results.json", "report.md", "plots", "samples", "tensorboard")
"""What a suite's run writes under its ``--out``: all of it belongs to the one results.json there."""


def check_out(out: Path, resume: bool, overwrite: bool) -> None:
    """Check ``out`` before any work: a results.json already there is another run's record, kept
    unless ``resume`` (continue it: :func:`run_suite` checks it is the same suite) or ``overwrite``
    (replace it: :func:`prepare_out`).

    Raises:
        ValueError: ``out`` holds results and neither flag is given, or both are.
    """
    if resume and overwrite:
        raise ValueError("--resume continues the results in --out and --overwrite replaces them: give one")
    path = out / "results.json"
    if not path.exists() or resume:
        return
    if not overwrite:
        try:
            held = f"suite {json.loads(path.read_text()).get('suite')!r}"
        except (OSError, ValueError, AttributeError):
            held = "results that cannot be read"
        raise ValueError(
            f"{path} already holds {held}: --resume continues it, --overwrite replaces it (with its report, "
            "plots, samples and logs), or choose another --out"
        )


def prepare_out(out: Path, resume: bool, overwrite: bool) -> None:
    """:func:`check_out`, then, with ``overwrite``, remove what the previous run wrote (results,
    report, plots, samples and logs), so that nothing of it is left beside the new run's."""
    check_out(out, resume, overwrite)
    if not overwrite or not (out / "results.json").exists():
        return
    if distributed.is_main():
        for name in OUTPUTS:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    distributed.barrier()


def machine(device: torch.device) -> dict[str, Any]:
    """The machine a run is on: the CPU model (another CPU type gives other last digits for the same
    seeds), the GPU's name where the run uses one, the OS and the thread count."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {"cpu": cpu, "gpu": gpu, "platform": platform.platform(), "threads": torch.get_num_threads()}


def run_suite(
    suite: Suite,
    device: str | torch.device = "cpu",
    out: str | Path = "benchmark_results",
    resume: bool = False,
    command: str | None = None,
    overwrite: bool = False,
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
        overwrite: replace the results already in ``out`` (:func:`prepare_out`); without it or
            ``resume``, results there are refused.

    Under ``torchrun`` every rank calls this: the runs train data-parallel, and rank 0 alone writes.
    """
    device = torch.device(device)
    out = Path(out)
    prepare_out(out, resume, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    results: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "suite": suite.name,
        "suite_file": suite.source,
        "description": suite.description,
        "command": command or " ".join(["python", "-m", "benchmarks", *map(shlex.quote, sys.argv[1:])]),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": device_name(device),
        "device_type": device.type,
        "nproc": distributed.world_size(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": machine(device),
        "seeds": suite.seeds,
        "agents": {label: {"agent": agent, "settings": s} for label, (agent, s) in suite.agents.items()},
        "gap_thresholds": list(GAP_THRESHOLDS),
        "claims": None if suite.claims is None else asdict(suite.claims),
        "tasks": {},
        "runs": [],
        "throughput": [],
    }
    previous_seconds = 0.0
    # Rank 0's view of the results decides for every rank, so that all run the same list.
    old = distributed.broadcast_object(read_results(path) if resume and path.exists() else None)
    if old is not None:
        ours = (suite.name, results["device"], results["nproc"])
        if (old.get("suite"), old.get("device"), old.get("nproc", 1)) != ours:
            raise ValueError(
                f"{path} holds suite {old.get('suite')!r} on {old.get('device')!r} x {old.get('nproc', 1)} "
                f"processes, not {suite.name!r} on {results['device']!r} x {results['nproc']}: resume only the "
                "same suite on the same device and number of processes, or choose another --out"
            )
        specs = {key: _jsonable(asdict(task)) for key, task in suite.tasks.items()}
        for key, task in old["tasks"].items():
            if key in specs and task_fingerprint(task.get("spec", {})) != task_fingerprint(specs[key]):
                raise ValueError(f"task {key!r} changed since {path} was written; rerun it without --resume")
        current = {spec.run_id: run_fingerprint(spec) for spec in suite.runs()}
        results["tasks"] = {k: v | {"spec": specs[k]} for k, v in old["tasks"].items() if k in suite.tasks}
        results["runs"] = [r for r in old["runs"] if current.get(r["id"]) == r.get("spec")]
        results["started"], previous_seconds = old["started"], old.get("seconds", 0.0)
        before = old.get("machine", results["machine"])
        if _hardware(before) != _hardware(results["machine"]):  # the thread count is a setting, not a machine
            if distributed.is_main():
                warnings.warn(
                    f"{path} was started on {_hardware(before)}, this part runs on {_hardware(results['machine'])}: "
                    "the same seeds give other last digits on another CPU type; the results record both",
                    stacklevel=2,
                )
            results["earlier_machines"] = [*old.get("earlier_machines", []), before]
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
            write_results(path, results)
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


def _hardware(machine: dict[str, Any]) -> dict[str, Any]:
    """The CPU model and GPU of a :func:`machine` record: what changes the last digits of a result."""
    return {"cpu": machine.get("cpu"), "gpu": machine.get("gpu")}


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

    write_results(out / "results.json", results)  # the plots read it
    results["plots"] = write_plots(out)
    write_results(out / "results.json", results)
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
