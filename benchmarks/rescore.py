"""Rescore a finished suite against the references its tasks ship now, without training again.

    python -m benchmarks rescore benchmarks/results/quick-cpu

A results.json holds every policy's objective with its standard error (final scores at every grid,
learning-curve points), so every gap follows from the references alone. For each task and grid
whose configuration ships references (:meth:`~diffusion_gym.tasks.spec.TaskSpec.shipped_references`)
this replaces J*, J(pre) and, where shipped, J*_0 (which the gap is then measured against), J_oracle
and the optimal control's row with the shipped ones (J_best, computed by the run's dynamic
programme, is kept), then recomputes every gap, every queries-to-gap crossing and the task's
reachable reference, takes the ``[claims]`` of the suite's file where it is usable and every agent
they name ran (claims are computed from the results, so a suite's claims can be extended after its
runs, e.g. by ``families``), and says so in ``results["rescores"]`` (the report's header repeats it).
Objectives, rewards, KL, timings and samples are untouched.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmarks.suite import load_suite
from diffusion_gym.evaluation import Estimate, crossing
from diffusion_gym.references import References, task_reachable
from diffusion_gym.tasks import get_task

GAP_FIELDS = ("gap", "gap_se", "gap_se_policy", "reachable_gap", "reachable_gap_se", "reachable_gap_se_policy")


def rescored_references(old: References, shipped: References) -> References:
    """``old`` with what ``shipped`` holds: J*, J(pre), their command and, where shipped, J*_0 and J_oracle."""
    refs = replace(old, optimum=shipped.optimum, command=shipped.command)
    if shipped.initial_law is not None:
        refs = replace(refs, initial_law=shipped.initial_law)
    if shipped.j_oracle is not None:
        refs = replace(refs, j_oracle=shipped.j_oracle, oracle=shipped.oracle, oracle_command=shipped.oracle_command)
    return refs


def _regap(row: dict[str, Any], refs: References, n: int) -> None:
    """Replace a scored row's gaps by those against ``refs`` (from its objective and standard error)."""
    for key in GAP_FIELDS:
        row.pop(key, None)
    row |= refs.gaps(Estimate(row["objective"], row["objective_se"], n))


def rescore(results: dict[str, Any], command: str) -> list[str]:
    """Rescore ``results`` in place (see the module docstring); returns the grids rescored, as ``task/N``."""
    from benchmarks.results_file import SCHEMA_VERSION
    from benchmarks.run import GAP_THRESHOLDS

    changed: list[str] = []
    refs_of: dict[str, dict[str, References]] = {}
    for key, task in results["tasks"].items():
        spec = get_task(task["env"])
        refs_of[key] = {}
        for n, row in task["optimum"].items():
            refs = References.from_row(row)
            shipped = spec.shipped_references(task["env_kwargs"] | {"n_steps": int(n)})
            if shipped is not None:
                refs = rescored_references(refs, References.from_row(shipped))
                changed.append(f"{key}/N{n}")
            task["optimum"][n] = refs.to_row() | {"kl_coef": row["kl_coef"]}
            refs_of[key][n] = refs
            if (scored := refs.scored_oracle()) is not None:
                task.setdefault("oracle", {})[n] = scored
            elif n in task.get("oracle", {}):  # the run's own optimal-control row: its gaps against the new J*
                _regap(task["oracle"][n], refs, task["oracle"][n].get("n", refs.optimum.j_star.n))
        task["reachable"] = task_reachable(refs_of[key].values())
    for run in results["runs"]:
        task = results["tasks"][run["task"]]
        for n, row in run["final"].items():
            _regap(row, refs_of[run["task"]][n], task["eval_n"])
        for point in run["curve"]:
            _regap(point, refs_of[run["task"]][str(run["n_train"])], task["curve_n"])
        points = run["curve"]
        run["to_gap"] = {
            str(g): {k: crossing(points, g, k) for k in ("reward_queries", "seconds")} for g in GAP_THRESHOLDS
        }
        run["to_reachable_gap"] = (
            {
                str(g): {k: crossing(points, g, k, "reachable_gap") for k in ("reward_queries", "seconds")}
                for g in GAP_THRESHOLDS
            }
            if task["reachable"]
            else None
        )
    claims = _suite_claims(results)
    adopted = claims is not None and claims != results.get("claims")
    if adopted:
        results["claims"] = claims
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    results.setdefault("rescores", []).append({"date": date, "command": command, "grids": changed, "claims": adopted})
    results["schema_version"] = SCHEMA_VERSION
    return changed


def _suite_claims(results: dict[str, Any]) -> dict[str, Any] | None:
    """The ``[claims]`` of the suite the results name (its file as recorded, or a shipped suite of its
    name), where that file is found and every agent it names ran; else None, with a warning saying why
    (the claims recorded stay)."""
    source = results.get("suite_file", results["suite"])
    try:
        suite = load_suite(source, results.get("device_type", "cpu"))
    except (FileNotFoundError, ValueError) as err:
        message = f"suite {source!r}: its file is not usable, the claims recorded stay: {err}"
        warnings.warn(message, stacklevel=3)
        return None
    if suite.claims is None:
        return None
    claims = asdict(suite.claims)
    ran = set(results.get("agents", {}))
    if missing := [a for a in suite.claims.members() if a not in ran]:
        warnings.warn(f"the suite's [claims] name agents these results did not run: {missing}", stacklevel=3)
        return None
    return claims


def main(out: Path) -> list[str]:
    """Rescore ``out/results.json`` and rewrite it, the learning-curve plot (the one plot that draws the
    references: the others need the run's samples, which a committed suite does not hold, and do not
    change) and the report."""
    from benchmarks.plots import plot_curves
    from benchmarks.report import write_report
    from benchmarks.results_file import read_results, write_results

    path = out / "results.json"
    results = read_results(path)
    changed = rescore(results, f"python -m benchmarks rescore {out}")
    write_results(path, results)
    if results["runs"]:
        (out / "plots").mkdir(exist_ok=True)
        plot_curves(results, out / "plots" / "curves.png")
    write_report(out)
    return changed
