"""The hyperparameter searches every agent gets on a task: grids and budgets live with the agents, not
with the tasks (a task knows no agents).

One TOML file per task, ``agents/tuning/<env id>.toml``, beside the recorded searches
(``<env id>.json`` / ``.md``, written by ``python -m agents.tune``):

- ``[budget]``: envs per batch, reward queries per run, final-evaluation episodes, the pretrained
  samples for J* and J(pre), the learning curve's points and episodes, the policy network, and the
  ``env_kwargs`` the searches make the task with (a suite task's: ``{ dim = 8 }`` searches mixture8);
- ``[searches.LABEL]``: the zoo ``agent`` (default: LABEL), the ``grid`` (every combination is a run),
  ``fixed`` settings every run of the search shares, and the ``family`` whose searches compete for
  one default (variants of one agent).

An agent registered from outside (:func:`agents.register_agent` with ``search=``) brings its grid
along; it is searched on every task whose file does not name it.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

TUNING_DIR = Path(__file__).parent
BUDGET_KEYS = (
    "num_envs",
    "reward_queries",
    "eval_n",
    "optimum_n",
    "curve_points",
    "curve_n",
    "policy_net",
    "env_kwargs",
)
SIZE_KEYS = BUDGET_KEYS[:6]
"""The budget's sizes, each a positive integer that every task's search must state."""


@dataclass(frozen=True)
class Search:
    """One agent's search: the zoo agent, its grid (every combination is a run), settings fixed for all
    runs, and the family of variants whose picks compete for one default (default: the search alone)."""

    agent: str
    grid: dict[str, list[Any]]
    fixed: dict[str, Any] = field(default_factory=dict)
    family: str | None = None


REGISTERED: dict[str, Search] = {}
"""Searches that external agents brought with them (:func:`register_search`), by label."""


def register_search(label: str, search: Search) -> None:
    """Search ``search`` on every task whose tuning file does not name ``label``."""
    REGISTERED[label] = search


def tuning_file(env_id: str) -> Path:
    return TUNING_DIR / f"{env_id}.toml"


def _load(env_id: str) -> dict[str, Any]:
    path = tuning_file(env_id)
    if not path.is_file():
        return {}
    try:
        table = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path}: not valid TOML ({err})") from None
    if unknown := set(table) - {"budget", "searches"}:
        raise ValueError(f"{path}: unknown tables {sorted(unknown)}; expected [budget] and [searches.LABEL]")
    if unknown := set(table.get("budget", {})) - set(BUDGET_KEYS):
        raise ValueError(f"{path}: [budget] has unknown keys {sorted(unknown)}; known: {list(BUDGET_KEYS)}")
    if not isinstance(table.get("budget", {}).get("env_kwargs", {}), Mapping):
        raise ValueError(f"{path}: [budget] env_kwargs must be a table of env keywords, e.g. {{ dim = 8 }}")
    return table


def searches(env_id: str) -> dict[str, Search]:
    """The task's searches by label: its tuning file's, then the registered agents' it does not name."""
    path = tuning_file(env_id)
    out: dict[str, Search] = {}
    for label, table in _load(env_id).get("searches", {}).items():
        if unknown := set(table) - {"agent", "grid", "fixed", "family"}:
            raise ValueError(f"{path}: [searches.{label}] has unknown keys {sorted(unknown)}")
        if not isinstance(table.get("grid"), Mapping) or not all(isinstance(v, list) for v in table["grid"].values()):
            raise ValueError(f"{path}: [searches.{label}] needs grid = {{ setting = [values, ...] }}")
        fixed = dict(table.get("fixed", {}))
        out[label] = Search(table.get("agent", label), dict(table["grid"]), fixed, table.get("family"))
    return out | {label: s for label, s in REGISTERED.items() if label not in out}


def budget(env_id: str) -> dict[str, Any]:
    """The task's search sizes (its tuning file's ``[budget]``; empty where it has none)."""
    return dict(_load(env_id).get("budget", {}))


def picked(env_id: str, label: str) -> tuple[str, dict[str, Any]]:
    """``(agent, settings)`` of search ``label``'s pick on task ``env_id``, as ``agents.tune`` recorded it
    (``agents/tuning/<env id>.json``): what a suite's ``tuned = "<env id>"`` stands for.

    Raises:
        ValueError: no record for the task, or no pick for ``label`` in it (naming the file).
    """
    import json

    path = TUNING_DIR / f"{env_id}.json"
    if not path.is_file():
        raise ValueError(f"no recorded search for {env_id!r} ({path} is missing): python -m agents.tune --env {env_id}")
    try:
        picks = json.loads(path.read_text())["picks"]
    except (json.JSONDecodeError, KeyError) as err:
        raise ValueError(f"{path}: not a search record ({err})") from None
    if label not in picks:
        raise ValueError(f"{path} has no pick for {label!r}; it has {sorted(picks)}")
    return picks[label]["agent"], dict(picks[label]["settings"])
