"""``results.json``, the one record of a suite's run: its schema version, how it is read (every error
naming the file and what is wrong with it) and how it is written (atomically).

Schema versions: 1, the first runner; 2 added every grid's references (J_best, J_oracle) and the
optimal control's rows; 3 the suite's ``[claims]`` (and ``machine``, the CPU model and GPU the
run was on, where recorded). The report reads 2 and 3 (``python -m benchmarks rescore DIR`` brings a
2 to 3); 1 is refused, naming the command that reruns it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 3
READABLE = (2, 3)
"""The schema versions the report and ``rescore`` read."""

REQUIRED = {
    "results": ("suite", "tasks", "runs"),
    "task": ("env", "env_kwargs", "eval_steps", "eval_n", "curve_n", "optimum"),
    "run": ("id", "task", "agent", "seed", "n_train", "curve", "final", "to_gap"),
}
"""The keys without which a results file cannot be reported, at its three levels."""


def read_results(path: str | Path) -> dict[str, Any]:
    """The results at ``path`` (a ``results.json`` or the folder holding one), checked for the keys
    the report reads.

    Raises:
        FileNotFoundError: no such file (naming it).
        ValueError: not JSON, truncated, not a results object, a schema version this code does not
            read, or a key missing (naming the file, the version, the run or task, and the key).
    """
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"no results file {path}") from None
    try:
        results = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON (truncated or overwritten?): {err}") from None
    if not isinstance(results, dict):
        raise ValueError(f"{path} is not a suite's results (a JSON object), it holds a {type(results).__name__}")
    version = results.get("schema_version")
    if version not in READABLE:
        rerun = f"python -m benchmarks run --suite {results.get('suite', 'SUITE')} --out {path.parent} --overwrite"
        raise ValueError(
            f"{path} has schema_version {version!r}; this version of diffusion-gym reads {list(READABLE)} "
            f"(version 2 after `python -m benchmarks rescore {path.parent}`). Rerun it: {rerun}"
        )
    _require(path, version, "results", results)
    for key, task in results["tasks"].items():
        _require(path, version, f"task {key!r}", task, REQUIRED["task"])
    for i, run in enumerate(results["runs"]):
        _require(path, version, f"run {run.get('id', i)!r}", run, REQUIRED["run"])
        if run["task"] not in results["tasks"]:
            raise ValueError(f"{path}: run {run['id']!r} is of task {run['task']!r}, which the file does not hold")
    return results


def _require(path: Path, version: int, what: str, table: Any, keys: tuple[str, ...] | None = None) -> None:
    keys = REQUIRED["results"] if keys is None else keys
    if not isinstance(table, dict):
        raise ValueError(f"{path}: {what} is not a JSON object")
    if missing := [k for k in keys if k not in table]:
        raise ValueError(f"{path} (schema_version {version}): {what} has no {missing}; the file is incomplete")


def write_results(path: Path, results: dict[str, Any]) -> None:
    """Write ``results`` to ``path`` atomically (a temporary file renamed over it): a run killed while
    writing leaves the previous file whole."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=1) + "\n")
    os.replace(tmp, path)
