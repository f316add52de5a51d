"""A benchmark suite: one small TOML file of agents, tasks and budgets, expanded into runs.

A run is one agent x task x seed x N_train. The file (see ``benchmarks/suites/quick.toml``) holds

- ``seeds``, ``agents`` (the names to run, in order), optionally ``imports`` (modules to import
  first: an external agent registers itself there with :func:`agents.register_agent`) and
  ``include`` (TOML files, relative to this one, whose tables this file's are merged over: settings
  two suites share, written once; ``suites/shared/``);
- ``[claims]``: what the report tests (:class:`Claims`): ``ours``, the agent whose claims are
  tested, ``baselines``, the agents it is compared with, ``families`` (family -> agents: on each task
  ours is also compared with the strongest agent of each family there, and the report sets the
  families side by side), ``stable``, the agents whose learning curve
  must stay above J(pre) (``stability_se`` standard errors, default 3), and ``threshold``, the gap
  whose reward queries measure sample efficiency (default 0.5); every name one of ``agents``;
- ``[agent_settings.NAME]``: the registered agent NAME is (``agent = "..."``; default: NAME itself)
  and config overrides for every task (``num_envs`` and ``reward_queries`` there set the run's budget);
  ``tuned = "<env id>"`` starts from the pick of NAME's recorded search on that task
  (``agents/tuning/<env id>.json``), the table's other keys over it;
- ``[tasks.KEY]``: the env id and its kwargs, the training grids ``n_train``, the budget
  (``num_envs``, ``reward_queries``), the learning-curve and final evaluations (``curve_points``,
  ``curve_n``, ``eval_steps``, ``eval_n``, ``optimum_n``), the references' sizes (``oracle_n``:
  episodes of the optimal control, default ``eval_n``; ``best_grid``: cells per axis of J_best's
  dynamic programme, default 256), ``policy_net``, ``agents`` (the subset of the suite's agents
  that run on this task; default: all) and, under
  ``[tasks.KEY.agent_settings.NAME]``, per-task config overrides (``tuned`` there: that task's pick,
  over the agent's settings for every task); ``agent_settings_from = "OTHER"`` starts them from task
  OTHER's (for the agents this task runs), this task's own over them: a twin task is set once.

Any table may hold ``[cpu]`` / ``[cuda]`` sub-tables, merged over it on that device: one suite
file describes the GPU run and its smaller CPU counterpart.
"""

from __future__ import annotations

import dataclasses
import importlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from diffusion_gym.tasks import get_task
from diffusion_gym.validation import PositiveFloat, PositiveInt, Range, coerce, from_table, validate_fields

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SUITES_DIR = Path(__file__).parent / "suites"
DEVICE_TABLES = ("cpu", "cuda")
RUN_BUDGET = ("num_envs", "reward_queries")
"""Keys of an agent's settings that set its run's budget instead of its config."""


@dataclass(frozen=True)
class SuiteTask:
    """One task of a suite (see the module docstring for the fields). Every field is checked against
    its annotation when it is made (:mod:`diffusion_gym.validation`): ``reward_queries = 32.5`` or a
    grid listed twice in ``n_train`` is refused, naming the field."""

    key: str
    env: str
    n_train: list[PositiveInt]
    num_envs: PositiveInt
    reward_queries: PositiveInt
    curve_points: PositiveInt
    curve_n: PositiveInt
    eval_steps: list[PositiveInt]
    eval_n: PositiveInt
    optimum_n: PositiveInt
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    policy_net: str | None = None
    agent_settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    oracle_n: PositiveInt | None = None
    best_grid: Annotated[int, Range(ge=16)] = 256
    agents: list[str] | None = None

    def __post_init__(self) -> None:
        validate_fields(self)
        for name in ("n_train", "eval_steps", "agents"):
            values = getattr(self, name) or []
            if twice := sorted({v for v in values if values.count(v) > 1}):
                # Two runs (or rows) with one id: the report would count them as two seeds.
                raise ValueError(f"{name} lists {twice} more than once")
        if not set(self.n_train) <= set(self.eval_steps):
            raise ValueError("every n_train grid must be in eval_steps (scored there)")
        if self.optimum_n < self.eval_n:
            raise ValueError("optimum_n must be >= eval_n (the pretrained image metrics)")

    @property
    def oracle_episodes(self) -> int:
        """Episodes of the optimal control per grid (Gaussian-mixture tasks): ``oracle_n``, else ``eval_n``."""
        return self.eval_n if self.oracle_n is None else self.oracle_n


@dataclass(frozen=True)
class RunSpec:
    """One run: an agent (its label and zoo name, with its config overrides) on a task at N_train with a seed."""

    task: SuiteTask
    label: str
    agent: str
    overrides: dict[str, Any]
    seed: int
    n_train: int
    num_envs: int
    reward_queries: int

    @property
    def run_id(self) -> str:
        return f"{self.task.key}/{self.label}/N{self.n_train}/seed{self.seed}"


GAP_THRESHOLDS = (0.5, 0.1)
"""Normalized gaps whose first crossing every run records: 50% and 90% of the gap closed."""


@dataclass(frozen=True)
class Claims:
    """What the report tests on every task (see the module docstring)."""

    ours: str
    baselines: list[str] = field(default_factory=list)
    families: dict[str, list[str]] = field(default_factory=dict)
    stable: list[str] = field(default_factory=list)
    threshold: Literal[GAP_THRESHOLDS] = GAP_THRESHOLDS[0]  # type: ignore[valid-type]
    stability_se: PositiveFloat = 3.0

    def __post_init__(self) -> None:
        validate_fields(self)
        if self.ours in self.baselines:
            raise ValueError("baselines must not name ours")
        if not self.baselines and not any(set(members) - {self.ours} for members in self.families.values()):
            raise ValueError("baselines or families must name at least one agent other than ours")
        seen: dict[str, str] = {}
        for family, members in self.families.items():
            for agent in members:
                if agent in seen:
                    raise ValueError(f"families: {agent!r} is in both {seen[agent]!r} and {family!r}")
                seen[agent] = family

    def members(self) -> list[str]:
        """Every agent the claims name."""
        return [self.ours, *self.baselines, *(a for m in self.families.values() for a in m), *self.stable]


def _claims(path: Path, table: dict[str, Any] | None, agents: dict[str, Any]) -> Claims | None:
    if table is None:
        return None
    claims = from_table(Claims, table, f"{path}: [claims]")
    names = claims.members()
    if unknown := [n for n in names if n not in agents]:
        raise ValueError(f"{path}: [claims] names agents the suite does not run: {unknown}; it runs {list(agents)}")
    return claims


@dataclass(frozen=True)
class Suite:
    """A parsed suite for one device type."""

    name: str
    path: Path
    description: str
    seeds: list[int]
    agents: dict[str, tuple[str, dict[str, Any]]]
    tasks: dict[str, SuiteTask]
    throughput: dict[str, Any] | None = None
    claims: Claims | None = None

    @property
    def source(self) -> str:
        """What finds this suite's file again: its name where it is a shipped suite, else its path."""
        shipped = self.path.resolve().parent == SUITES_DIR.resolve()
        return self.name if shipped else str(self.path.resolve())

    def runs(self) -> list[RunSpec]:
        """Every agent x task x seed x N_train, tasks outermost (a task's optimum is computed once)."""
        from agents.common.build import config_fields

        out = []
        for task in self.tasks.values():
            for n_train in task.n_train:
                for label, (agent, overrides) in self.agents.items():
                    if task.agents is not None and label not in task.agents:
                        continue
                    for seed in self.seeds:
                        merged = dict(overrides)
                        if task.policy_net is not None and "policy_net" in config_fields(agent):
                            merged.setdefault("policy_net", task.policy_net)
                        merged |= task.agent_settings.get(label, {})
                        budget = {key: merged.pop(key, getattr(task, key)) for key in RUN_BUDGET}
                        out.append(RunSpec(task, label, agent, merged, seed, n_train, **budget))
        return out


def _on_device(table: dict[str, Any], device_type: str) -> dict[str, Any]:
    """``table`` without its device sub-tables, with the one for ``device_type`` merged over it."""
    base = {k: v for k, v in table.items() if k not in DEVICE_TABLES}
    return base | table.get(device_type, {})


def _read(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A suite file's tables, with the files its ``include`` lists (paths relative to it) merged
    under them, table by table: what two suites share is written once."""
    if path.resolve() in seen:
        raise ValueError(f"{path}: included from itself ({' -> '.join(map(str, seen))})")
    try:
        table = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{seen[-1] if seen else path}: no suite file {path}") from None
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path}: not valid TOML ({err})") from None
    includes = table.pop("include", [])
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise ValueError(f"{path}: include must be a list of file names, got {includes!r}")
    for name in includes:
        table = _merged(_read(path.parent / name, (*seen, path.resolve())), table)
    return table


def _merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over``'s keys over ``base``'s, sub-tables merged the same way."""
    out = dict(base)
    for key, value in over.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def suite_path(name_or_path: str | Path) -> Path:
    """A suite's file: a path, or the name of a file in ``benchmarks/suites/``."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        return path
    path = SUITES_DIR / f"{name_or_path}.toml"
    if not path.exists():
        known = sorted(p.stem for p in SUITES_DIR.glob("*.toml"))
        raise FileNotFoundError(f"no suite {name_or_path!r}; known: {known}, or give a .toml path")
    return path


def load_suite(name_or_path: str | Path, device_type: str = "cpu", seeds: int | None = None) -> Suite:
    """Parse and check a suite file for ``device_type`` ("cpu" or "cuda").

    Args:
        name_or_path: a suite name (``quick``, ``full``) or a TOML file.
        device_type: which device sub-tables apply.
        seeds: overrides the file's seed count (seeds are 0..seeds-1).

    Raises:
        ValueError: unknown keys, missing fields, or an agent no registry knows.
    """
    from agents import all_agents

    path = suite_path(name_or_path)
    raw = _on_device(_read(path), device_type)
    top = {"description", "seeds", "agents", "agent_settings", "tasks", "imports", "throughput", "claims"}
    unknown = set(raw) - top
    if unknown:
        raise ValueError(f"{path}: unknown top-level keys {sorted(unknown)}")
    for module in raw.get("imports", []):
        importlib.import_module(module)  # registers external agents

    settings = raw.get("agent_settings", {})
    if unknown_settings := set(settings) - set(raw.get("agents", [])):
        raise ValueError(f"{path}: [agent_settings] for agents not in `agents`: {sorted(unknown_settings)}")
    registry = {name: config for name, (_, config) in all_agents().items()}
    agents: dict[str, tuple[str, dict[str, Any]]] = {}
    for label in raw.get("agents", []):
        table = _tuned(path, f"[agent_settings.{label}]", label, _on_device(settings.get(label, {}), device_type))
        agent = table.pop("agent", label)
        if agent not in registry:
            raise ValueError(f"{path}: agent {label!r} is {agent!r}, unknown; known: {sorted(registry)}")
        _check_settings(path, label, registry[agent], table)
        agents[label] = (agent, table)

    tasks = {}
    for key, table in raw.get("tasks", {}).items():
        table = _on_device(_settings_from(path, key, table, raw.get("tasks", {})), device_type)
        overrides = {name: _on_device(t, device_type) for name, t in table.get("agent_settings", {}).items()}
        if unknown_agents := set(overrides) - set(agents):
            raise ValueError(f"{path}: task {key!r} overrides agents not in the suite: {sorted(unknown_agents)}")
        for label, t in overrides.items():
            t = overrides[label] = _tuned(path, f"[tasks.{key}.agent_settings.{label}]", label, t)
            if t.pop("agent", agents[label][0]) != agents[label][0]:
                raise ValueError(f"{path}: [tasks.{key}.agent_settings.{label}] picks another agent than {label!r} is")
            _check_settings(path, label, registry[agents[label][0]], t)
        if unknown_agents := set(table.get("agents", [])) - set(agents):
            raise ValueError(f"{path}: task {key!r} names agents not in the suite: {sorted(unknown_agents)}")
        if "agents" in table and (idle := set(overrides) - set(table["agents"])):
            raise ValueError(f"{path}: task {key!r} has settings for agents it does not run: {sorted(idle)}")
        fields = {"key": key} | table | {"agent_settings": overrides}
        tasks[key] = from_table(SuiteTask, fields, f"{path}: task {key!r}")
        try:  # its env id and keywords too, before any task runs (the file keeps what it says)
            get_task(tasks[key].env).check_kwargs(tasks[key].env_kwargs)
        except (KeyError, ValueError) as err:
            raise ValueError(f"{path}: task {key!r}: {err.args[0]}") from None
    if not tasks or not agents:
        raise ValueError(f"{path}: a suite needs at least one task and one agent")
    n_seeds = coerce(raw.get("seeds", 1) if seeds is None else seeds, PositiveInt, f"{path}: seeds")
    return Suite(
        name=path.stem,
        path=path,
        description=raw.get("description", ""),
        seeds=list(range(n_seeds)),
        agents=agents,
        tasks=tasks,
        throughput=raw.get("throughput"),
        claims=_claims(path, raw.get("claims"), agents),
    )


def _settings_from(path: Path, key: str, table: dict[str, Any], tasks: dict[str, Any]) -> dict[str, Any]:
    """Task ``key``'s table with its ``agent_settings_from = "OTHER"`` replaced by OTHER's agent
    settings (those of the agents ``key`` runs, device sub-tables included) under its own."""
    if "agent_settings_from" not in table:
        return table
    table = dict(table)
    other = table.pop("agent_settings_from")
    if other not in tasks or other == key or "agent_settings_from" in tasks[other]:
        known = sorted(k for k in tasks if k != key and "agent_settings_from" not in tasks[k])
        raise ValueError(f"{path}: task {key!r} agent_settings_from is {other!r}; expected one of {known}")
    runs = table.get("agents")
    inherited = {n: t for n, t in tasks[other].get("agent_settings", {}).items() if runs is None or n in runs}
    table["agent_settings"] = _merged(inherited, table.get("agent_settings", {}))
    return table


def _tuned(path: Path, where: str, label: str, table: dict[str, Any]) -> dict[str, Any]:
    """``table`` with its ``tuned = "<env id>"`` replaced by the pick of ``label``'s recorded search on
    that task (the table's own keys over it, the pick's agent as ``agent``)."""
    if "tuned" not in table:
        return table
    from agents.tuning import picked

    table = dict(table)
    try:
        agent, base = picked(table.pop("tuned"), label)
    except ValueError as err:
        raise ValueError(f"{path}: {where} tuned: {err}") from None
    return base | {"agent": agent} | table


def _check_settings(path: Path, label: str, config_cls: type, settings: dict[str, Any]) -> None:
    """Agent settings must be fields of the agent's config, with values it takes (the config is
    made once here to check them: the suite fails on load, not at its hundredth run), or the run's
    budget keys, positive integers."""
    fields = {f.name for f in dataclasses.fields(config_cls)} | set(RUN_BUDGET)
    if unknown := set(settings) - fields:
        raise ValueError(f"{path}: settings {sorted(unknown)} of {label!r} are not fields of {config_cls.__name__}")
    where = f"{path}: [agent_settings.{label}]"
    for key in RUN_BUDGET:
        if key in settings:
            coerce(settings[key], PositiveInt, f"{where} {key}")
    from_table(config_cls, {k: v for k, v in settings.items() if k not in RUN_BUDGET}, where)
