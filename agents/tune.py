"""The small, equal hyperparameter search every agent gets on a task, recorded in agents/tuning/.

    python -m agents.tune --env DiffusionSDE-v0
    python -m agents.tune --env DiffusionSDE-Digits-v0 --agents ct_ppo,ct_ppo_reward,ct_ppo_reward_pretrained

Every agent tries the settings of its grid with the same reward-query budget, seed and grid (N = 20,
the task's integrator, the env keywords of its tuning budget); the grids and budgets are the task's tuning file,
``agents/tuning/<env id>.toml`` (:mod:`agents.tuning`). Each run is scored by the
normalized gap against J* and, where the task has one, against the reachable reference (J_best,
else J_oracle; docs/design.md, section 1), and by the reward queries its learning curve needs to
reach a reachable gap of 0.5. The JSON and the markdown table keep every run.

Selection: within each search the best setting is the one with the lowest final gap; settings
within two standard errors of it are ties, broken by the fewest queries to a gap of 0.5. The
searches of one zoo agent's variants (CT-PPO's critics) are pooled the same way: the winner is its
default. ``--agents`` reruns some searches and keeps the others' recorded runs when they were made
with the same budget.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
from pathlib import Path
from typing import Any

import torch

from agents.common.agent import Agent
from agents.common.build import build_agent, config_fields, make_config, make_env
from agents.common.curve import LearningCurve
from agents.tuning import SIZE_KEYS, Search, budget, searches
from diffusion_gym import distributed
from diffusion_gym.evaluation import crossing
from diffusion_gym.output_paths import check_output_dir
from diffusion_gym.references import References, compute_references
from diffusion_gym.scoring import derive_seed, eval_batch, score_policy
from diffusion_gym.tasks import get_task
from diffusion_gym.validation import PositiveInt, Seed, argument, coerce

GAP = 0.5
"""The reachable gap whose first crossing on the learning curve is recorded."""


def score_run(agent: Agent, refs: References, n: int, seed: int) -> dict[str, Any]:
    """The trained policy's objective, KL, gold reward and both gaps."""
    row, _ = score_policy(agent.env, agent, refs, n, derive_seed("final", seed, agent.env.n_steps, agent.env.n_steps))
    keep = ("gap", "gap_se", "objective", "objective_se", "kl", "reachable_gap", "reachable_gap_se")
    return {k: row[k] for k in keep if k in row} | {"gold": row.get("gold")}


def select(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The best run (see the module docstring): lowest final gap, ties within two standard errors
    broken by the fewest queries to a reachable gap of 0.5."""
    key = "reachable_gap" if all("reachable_gap" in r for r in runs) else "gap"
    best = min(runs, key=lambda r: r[key])
    ties = [r for r in runs if r[key] - best[key] <= 2 * math.hypot(r[f"{key}_se"], best[f"{key}_se"])]
    return min(ties, key=lambda r: (math.inf if r["queries_to_gap"] is None else r["queries_to_gap"], r[key]))


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="DiffusionSDE-v0")
    parser.add_argument("--agents", default=None, help="comma-separated search labels (default: every search)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--num-envs", type=argument(PositiveInt), default=None, help="default: the task's tuning budget"
    )
    parser.add_argument("--n-steps", type=argument(PositiveInt), default=20)
    parser.add_argument("--integrator", default=None, help="default: the tuning budget's env_kwargs, else the task's")
    parser.add_argument(
        "--reward-queries", type=argument(PositiveInt), default=None, help="default: the task's tuning budget"
    )
    parser.add_argument("--eval-n", type=argument(PositiveInt), default=None, help="default: the task's tuning budget")
    parser.add_argument(
        "--optimum-n", type=argument(PositiveInt), default=None, help="samples for J* (default: tuning budget)"
    )
    parser.add_argument(
        "--curve-points", type=argument(PositiveInt), default=None, help="default: the task's tuning budget"
    )
    parser.add_argument("--curve-n", type=argument(PositiveInt), default=None, help="default: the task's tuning budget")
    parser.add_argument(
        "--policy-net", default=None, help="mlp | conv | lora | auto (default: the task's tuning budget)"
    )
    parser.add_argument("--seed", type=argument(Seed), default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "tuning")
    parser.add_argument("--render", action="store_true", help="rewrite the markdown table from the JSON and stop")
    args = parser.parse_args(argv)
    if distributed.launched():
        parser.error("agents.tune runs its searches in one process; train one setting with torchrun -m agents.train")
    task_searches = searches(args.env)
    if not task_searches:
        parser.error(f"task {args.env} has no searches (agents/tuning/{args.env}.toml)")
    task_budget = budget(args.env)
    budget_env_kwargs = dict(task_budget.pop("env_kwargs", {}))
    for key, value in task_budget.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if missing := [k for k in SIZE_KEYS if getattr(args, k) is None]:
        flags = ", ".join("--" + k.replace("_", "-") for k in missing)
        parser.error(f"{args.env} has no [budget] in agents/tuning/{args.env}.toml: give {flags}")
    args.policy_net = args.policy_net or "auto"
    path = args.out / f"{args.env}.json"
    if args.render:
        record = read_record(path)
        write_record(args.out, record["meta"], record["runs"])
        return record["runs"]
    labels = (args.agents or ",".join(task_searches)).split(",")
    if unknown := set(labels) - set(task_searches):
        parser.error(f"no search for {sorted(unknown)} on {args.env}; known: {sorted(task_searches)}")

    settings = {label: _settings(task_searches[label], args) for label in labels}
    try:  # every configuration of every grid checked before the first reference is estimated
        for label, rows in settings.items():
            for overrides in rows:
                make_config(task_searches[label].agent, overrides)
        for key in SIZE_KEYS:
            coerce(getattr(args, key), PositiveInt, f"agents/tuning/{args.env}.toml [budget] {key}")
        check_output_dir(args.out, "--out")
    except ValueError as err:
        parser.error(str(err))

    integrator = (
        args.integrator or budget_env_kwargs.get("integrator") or get_task(args.env).configuration({}).get("integrator")
    )
    env_kwargs = {"n_steps": args.n_steps} | budget_env_kwargs | {"integrator": integrator, "device": args.device}
    refs = compute_references(
        make_env(args.env, eval_batch(args.optimum_n, args.device), **env_kwargs),
        n_samples=args.optimum_n,
        oracle_n=args.eval_n,
        shipped=get_task(args.env).shipped_references(env_kwargs),
    )
    meta = {"env": args.env, "env_kwargs": env_kwargs, "num_envs": args.num_envs, "seed": args.seed}
    meta |= {k: getattr(args, k) for k in ("reward_queries", "eval_n", "optimum_n", "curve_points", "curve_n")}
    meta |= {"policy_net": args.policy_net} | refs.to_row()
    kept: list[dict[str, Any]] = []
    if args.agents and path.exists():
        old = read_record(path)
        same = all(
            old["meta"].get(k) == meta[k] for k in ("env_kwargs", "num_envs", "seed", "reward_queries", "eval_n")
        )
        kept = [r for r in old["runs"] if same and r["label"] not in labels]

    runs = []
    for label in labels:
        search = task_searches[label]
        for setting, overrides in zip(_grid(search), settings[label], strict=True):
            torch.manual_seed(args.seed)
            env = make_env(args.env, args.num_envs, **env_kwargs)
            agent = build_agent(search.agent, env, overrides)
            curve_env = make_env(args.env, eval_batch(args.curve_n, args.device), **env_kwargs)
            curve = LearningCurve(curve_env, refs, args.reward_queries, args.curve_points, args.curve_n, args.seed)
            curve.begin(agent)
            agent.learn(args.reward_queries, callback=curve)
            seconds = curve.train_seconds()
            curve.finish(agent)
            run = {"label": label, "agent": search.agent, "fixed": search.fixed, "setting": setting}
            run |= {"seconds": seconds, "reward_queries": agent.reward_queries}
            run |= score_run(agent, refs, args.eval_n, args.seed)
            gap_key = "reachable_gap" if refs.reachable is not None else "gap"
            points = [{k: p[k] for k in ("reward_queries", "gap", "reachable_gap") if k in p} for p in curve.curve]
            run |= {"curve": points, "queries_to_gap": crossing(points, GAP, "reward_queries", gap_key)}
            runs.append(run)
            print(
                f"{label:26s} {setting}  gap {run['gap']:.3f}"
                + (f"  reachable gap {run['reachable_gap']:.3f}" if "reachable_gap" in run else "")
                + f"  J {run['objective']:.3f}  queries to {GAP}: {run['queries_to_gap']}  {seconds:.0f} s",
                flush=True,
            )
    write_record(args.out, meta, kept + runs)
    return runs


def read_record(path: Path) -> dict[str, Any]:
    """A search record (``<out>/<env id>.json``), its errors naming the file."""
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"no search record {path}: run python -m agents.tune first") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not a search record (not valid JSON: {err})") from None
    if not isinstance(record, dict) or not {"meta", "runs"} <= set(record):
        raise ValueError(f"{path} is not a search record (expected an object with 'meta' and 'runs')")
    return record


def _grid(search: Search) -> list[dict[str, Any]]:
    """Every setting of a search's grid, in order."""
    return [dict(zip(search.grid, values, strict=True)) for values in itertools.product(*search.grid.values())]


def _settings(search: Search, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The config overrides of every setting of ``search``'s grid."""
    rows = []
    for setting in _grid(search):
        overrides = search.fixed | setting | {"seed": args.seed, "progress": False}
        if "policy_net" in config_fields(search.agent):  # SB3 builds its own networks
            overrides["policy_net"] = args.policy_net
        rows.append(overrides)
    return rows


def write_record(out: Path, meta: dict[str, Any], runs: list[dict[str, Any]]) -> None:
    """``<out>/<env>.json`` (every run) and ``<out>/<env>.md`` (the table, each search's pick, the defaults),
    from the record alone."""
    env = meta["env"]
    known = searches(env)
    runs = sorted(runs, key=lambda r: list(known).index(r["label"]) if r["label"] in known else len(known))
    out.mkdir(parents=True, exist_ok=True)
    labels = dict.fromkeys(r["label"] for r in runs)
    picks = {label: select([r for r in runs if r["label"] == label]) for label in labels}
    families: dict[str, list[dict[str, Any]]] = {}
    for label, pick in picks.items():
        family = known[label].family if label in known else None
        families.setdefault(family or label, []).append(pick)
    winners = {family: select(p) for family, p in families.items() if len(p) > 1}
    record = {"meta": meta, "picks": {k: _describe(v) for k, v in picks.items()}, "runs": runs}
    record["winners"] = {k: _describe(v) for k, v in winners.items()}
    (out / f"{env}.json").write_text(json.dumps(record, indent=2) + "\n")

    def est(name: str) -> str:
        return f"{meta[name]:.4f} ± {meta[f'{name}_se']:.4f}"

    refs = f"J* = {est('j_star')}, J(pre) = {est('j_pretrained')}"
    # The references' one rule (records before 2026-12-03 hold no sample count: the search's optimum_n).
    reachable = References.from_row({"n": meta["optimum_n"]} | meta).reachable_name is not None
    crossed = "reachable gap" if reachable else "gap"
    if meta.get("j_best") is not None:
        error = meta.get("j_best_se", meta.get("j_best_error"))  # one record names it j_best_error
        refs += f", J_best = {meta['j_best']:.4f} (numerical error {error:.1e})"
    if meta.get("j_oracle") is not None:
        refs += f", J_oracle = {est('j_oracle')}"
    kwargs = meta["env_kwargs"]
    lines = [
        f"# Hyperparameter search on {env}",
        "",
        f"N = {kwargs['n_steps']} ({kwargs['integrator']}), {meta['num_envs']} envs, {meta['reward_queries']} reward "
        f"queries per run, seed {meta['seed']}, policy network {meta.get('policy_net', 'mlp')} (SB3: its own); "
        f"final scores from {meta['eval_n']} episodes, learning curves from {meta['curve_n']} episodes at "
        f"{meta['curve_points']} budgets; {refs}. Written by `python -m agents.tune --env {env}`. "
        "Seconds are training's (records written before 2026-12-03 include the learning curve's evaluations), "
        "with other jobs on the machine.",
        "",
        "Each search's pick (**bold**): the lowest final "
        + ("reachable gap" if reachable else "gap")
        + f"; settings within two standard errors of it tie, and the fewest queries to {crossed} {GAP} wins.",
        "",
        f"| search | setting | gap (J*) | reachable gap | J | KL | queries to {crossed} {GAP} | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        setting = ", ".join(f"{k}={v}" for k, v in run["setting"].items())
        if run is picks[run["label"]]:
            setting = f"**{setting}**"
        reach = f"{run['reachable_gap']:.3f} ± {run['reachable_gap_se']:.3f}" if "reachable_gap" in run else "–"
        queries = "not reached" if run.get("queries_to_gap") is None else f"{run['queries_to_gap']:,.0f}"
        lines.append(
            f"| {run['label']} | {setting} | {run['gap']:.3f} ± {run['gap_se']:.3f} | {reach} | "
            f"{run['objective']:.3f} ± {run['objective_se']:.3f} | {run['kl']:.3f} | {queries} | {run['seconds']:.0f} |"
        )
    fixed = {label: s.fixed for label, s in known.items() if s.fixed and label in picks}
    if fixed:
        lines += ["", "Settings fixed per search: " + "; ".join(f"{k}: {v}" for k, v in fixed.items()) + "."]
    for family, w in winners.items():
        setting = ", ".join(f"{k}={v}" for k, v in w["setting"].items())
        lines += ["", f"Across {family}'s variants the pick is **{w['label']}** ({setting})."]
    (out / f"{env}.md").write_text("\n".join(lines) + "\n")


def _describe(run: dict[str, Any]) -> dict[str, Any]:
    return {"label": run["label"], "agent": run["agent"], "settings": run["fixed"] | run["setting"]}


if __name__ == "__main__":
    main()
