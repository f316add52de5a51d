"""Compute the references a task ships (its ``TaskSpec.references`` table), once per configuration.

    python -m diffusion_gym.tasks.references --task mixture --set dim=8 --steps 20 --n 262144 --oracle-n 8192
    python -m diffusion_gym.tasks.references --task digits --steps 10 20 --n 32768
    python -m diffusion_gym.tasks.references --task mixture --set dim=8 --steps 20 --missing   # add J*_0

Each entry holds J*, J(pre) (their errors, covariance, effective sample size), J*_0 (nested Monte
Carlo with its jackknife's bias estimate; in continuous time too where the control is exact) and, on
tasks with an optimal control, J_oracle and the control's row (:func:`~diffusion_gym.references.compute_references`
with the seeds kept for shipped tables), keyed by the task's law configuration and the action box
(:meth:`~diffusion_gym.tasks.spec.TaskSpec.configuration`, ``control_configuration``), stamped with
the sha256 of the weights the configuration loads (``models_sha256``) and the command that made it.
The runners read them through :meth:`~diffusion_gym.tasks.spec.TaskSpec.shipped_references`. (The
digits table's entries were made by this computation's former home,
``diffusion_gym/tasks/digits/references.py`` at de99b4a, with a batch of 1,024.)
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

from diffusion_gym.optimal_control import MixtureOptimalControl
from diffusion_gym.references import References, compute_references
from diffusion_gym.scoring import eval_batch
from diffusion_gym.tasks.manifest import record
from diffusion_gym.tasks.spec import TaskSpec, get_task
from diffusion_gym.validation import PositiveInt, argument


def shipped_entry(
    task: TaskSpec,
    n_steps: int,
    n_samples: int,
    oracle_n: int,
    device: str = "cpu",
    initial_n: int | None = None,
    existing: dict[str, Any] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """One entry of a task's shipped table: the references of configuration ``kwargs`` at ``n_steps``
    (J*, J(pre) from ``n_samples`` pretrained episodes; J*_0 from ``initial_n`` (default ``n_samples``)
    nested chains; J_oracle from ``oracle_n`` episodes of the optimal control where the task has one),
    keyed by the configuration and stamped with the sha256 of the weights it loads. With ``existing`` (an
    entry of the table for this configuration), its references are kept and only what it lacks is
    computed."""
    kwargs = kwargs | {"n_steps": n_steps}
    # One batch for each (the optimal control's is the expensive one: no episode past oracle_n is drawn).
    env = task.make_vector_env(eval_batch(n_samples, device), **(kwargs | {"device": device}))
    oracle_env = None
    if MixtureOptimalControl.applies(env):
        oracle_env = task.make_vector_env(eval_batch(oracle_n, device), **(kwargs | {"device": device}))
    refs = compute_references(
        env,
        n_samples=n_samples,
        oracle_n=oracle_n,
        best=False,
        oracle_env=oracle_env,
        seeds="shipped",
        initial_n=n_samples if initial_n is None else initial_n,
        shipped=existing,
    )
    entry = dict(existing or {}) | {"config": task.configuration(kwargs)}
    if refs.j_oracle is not None:
        entry["control"] = task.control_configuration(kwargs)
    return entry | refs.to_row() | {"models_sha256": task.models_sha256(kwargs)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Compute and write a task's shipped references (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True, help="a registered task's name or env id")
    parser.add_argument("--steps", type=argument(PositiveInt), nargs="+", required=True, help="grids (N)")
    parser.add_argument(
        "--n", type=argument(PositiveInt), default=262_144, help="pretrained episodes per grid (J*, J(pre))"
    )
    parser.add_argument(
        "--oracle-n", type=argument(PositiveInt), default=4096, help="optimal-control episodes per grid (J_oracle)"
    )
    parser.add_argument(
        "--initial-n", type=argument(PositiveInt), default=None, help="nested chains for J*_0 (default: --n)"
    )
    parser.add_argument(
        "--missing",
        action="store_true",
        help="keep each configuration's entry and compute only what it lacks (J*_0 for a table made before it)",
    )
    parser.add_argument("--set", nargs="*", default=[], help="key=value task and env keywords (JSON values)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    task = get_task(args.task)
    if task.references is None:
        parser.error(f"task {task.name} ships no references (TaskSpec.references is None)")
    if args.n < 2 or args.oracle_n < 2:
        parser.error("--n and --oracle-n must be >= 2")
    kwargs: dict[str, Any] = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set expects key=value, got {item!r}")
        try:
            kwargs[key] = json.loads(value)
        except json.JSONDecodeError:
            kwargs[key] = value
    package, _, name = task.references.partition(":")
    path = files(package) / name
    table = json.loads(path.read_text()) if path.is_file() else {"entries": []}
    words = sys.argv[1:] if argv is None else argv
    command = "python -m diffusion_gym.tasks.references " + shlex.join(words)
    for n_steps in args.steps:
        start = time.perf_counter()
        existing = None
        if args.missing:
            existing = task.shipped_references(kwargs | {"n_steps": n_steps})
            if existing is None:
                parser.error(f"--missing: no entry of {task.name} for {kwargs} at N = {n_steps} to complete")
        entry = shipped_entry(task, n_steps, args.n, args.oracle_n, args.device, args.initial_n, existing, **kwargs)
        stamp = {"seconds": time.perf_counter() - start, "command": command, "torch": torch.__version__}
        if existing is not None:  # J*, J(pre) and J_oracle are the entry's; J*_0 is this command's
            stamp = {"j_star_0_seconds": stamp["seconds"], "j_star_0_command": command}
        entry |= stamp
        table["entries"] = [  # the entry it replaces: the same configuration (an older one, by the same rule)
            e
            for e in table["entries"]
            if not (task.same_configuration(e["config"], entry["config"]) and e.get("control") == entry.get("control"))
        ] + [entry]
        refs = References.from_row(entry)
        line = f"{task.name} {kwargs} N = {n_steps}: J* = {refs.optimum.j_star}, J(pre) = {refs.optimum.j_pretrained}"
        line += f", ESS {refs.optimum.ess:.0f} of {refs.optimum.j_star.n}"
        if refs.j_star_0 is not None:
            line += f", J*_0 = {refs.j_star_0} (jackknife bias {entry['j_star_0_bias']:+.4f})"
        if refs.j_oracle is not None:
            line += f", J_oracle = {refs.j_oracle} (episodes' s.e. {entry['oracle']['j_oracle_se_episodes']:.4f})"
        print(line + f", {entry['seconds']:.0f} s", flush=True)
        path.write_text(json.dumps(table, indent=1) + "\n")  # type: ignore[attr-defined]
        record(task)  # the package's manifest: the table's new sha256
    return table


if __name__ == "__main__":
    main()
