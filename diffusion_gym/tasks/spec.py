"""A task as one unit: its env id, how to build its models, its defaults and what the runners need.

A task lives in one folder, ``diffusion_gym/tasks/<name>/``: its base model, rewards, trainers and
weights, and in its ``__init__.py`` one :class:`TaskSpec` passed to :func:`register_task`. The
gym registration, the references (shipped tables), the benchmarks (image metrics) and the
throughput benchmark read the spec; none of them lists tasks. A task knows no agents: how agents
are searched on it lives with the agents (``agents/tuning/``). References to code are
``"module:attribute"`` strings, resolved on first use, so that registering a task imports nothing
heavy (diffusers, a UNet's weights).

    from diffusion_gym.tasks import TaskSpec, register_task

    register_task(TaskSpec(name="ring", env_id="Ring-v0", models="my_package.ring:task_models"))
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.resources
import inspect
import json
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diffusion_gym.checkpoints import verify_shipped
from diffusion_gym.validation import check_keywords

if TYPE_CHECKING:
    from diffusion_gym.envs.single import DiffusionSDEEnv
    from diffusion_gym.envs.vector import DiffusionSDEVectorEnv


def resolve(reference: str) -> Any:
    """The object a ``"package.module:attribute"`` string names."""
    module, sep, attribute = reference.partition(":")
    if not sep:
        raise ValueError(f"expected 'module:attribute', got {reference!r}")
    return getattr(importlib.import_module(module), attribute)


@dataclass(frozen=True)
class TaskSpec:
    """One registered task.

    Attributes:
        name: the task's short name (its folder's), used by the runners' ``--task`` options.
        env_id: the Gymnasium id it registers (``gym.make`` / ``gym.make_vec``).
        models: ``"module:function"``; the function takes the task's own keyword arguments and returns
            ``(score model, terminal reward, gold or None)``. Every other keyword of ``gym.make`` goes
            to the env (:class:`~diffusion_gym.envs.vector.DiffusionSDEVectorEnv`).
        defaults: env keyword defaults of this task (e.g. its N and integrator).
        variant_defaults: env keyword defaults that depend on one of the task's own keywords, as
            ``{keyword: {value: {env keyword: default}}}`` over ``defaults`` (digits:
            ``{"model": {"flow": {"integrator": "flow_sde"}}}``, a flow model's sampler).
        image_features: for image tasks, ``"module:function"`` returning ``(feature map, held-out
            reference features)``: the Frechet distance and per-class diversity of the benchmarks.
        throughput: ``benchmarks.env_throughput``'s sizes for this task, ``(batch, steps)`` pairs.
        references: ``"package:file.json"``, the references computed once per configuration and
            shipped with the task (:meth:`shipped_references`; ``python -m diffusion_gym.tasks.references``),
            for tasks whose J* or J_oracle needs more samples than a benchmark run can afford; None:
            every run estimates them.
        law_neutral: keywords of ``models`` that do not change the pretrained sampler's law or the
            terminal reward (a gold utility reported beside it): every other keyword is part of the
            configuration shipped references are keyed by (:meth:`configuration`).
    """

    name: str
    env_id: str
    models: str
    defaults: Mapping[str, Any] = field(default_factory=dict)
    variant_defaults: Mapping[str, Mapping[Any, Mapping[str, Any]]] = field(default_factory=dict)
    image_features: str | None = None
    throughput: tuple[tuple[int, int], ...] = ((4096, 100),)
    references: str | None = None
    law_neutral: tuple[str, ...] = ()

    @property
    def package(self) -> str:
        """The task's package (its folder): where its weights and shipped tables live."""
        if self.references is not None:
            return self.references.partition(":")[0]
        return self.models.partition(":")[0].rpartition(".")[0]

    def build(self, kwargs: Mapping[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """``(models, env kwargs)``: ``models`` called with the keywords it takes, and the rest over
        ``defaults``.

        Raises:
            TypeError: ``models`` takes ``**kwargs`` or a parameter the env takes too (``device``,
                ``n_steps``, ...): which side a keyword is for would be ambiguous.
        """
        from diffusion_gym.envs.vector import DiffusionSDEVectorEnv

        models = resolve(self.models)
        params = inspect.signature(models).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            raise TypeError(f"{self.models} must name its parameters (no **kwargs): they are the task's env kwargs")
        env_params = inspect.signature(DiffusionSDEVectorEnv).parameters
        shared = set(params) & {k for k, p in env_params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
        if shared:
            raise TypeError(f"{self.models} takes {sorted(shared)}, which the env takes too; rename them")
        own = {k: v for k, v in kwargs.items() if k in params}
        return models(**own), self.defaults_for(kwargs) | {k: v for k, v in kwargs.items() if k not in params}

    def defaults_for(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """The env keyword defaults under ``kwargs``: :attr:`defaults`, then the :attr:`variant_defaults`
        of the values ``kwargs`` (else the model function's own defaults) give their keywords."""
        params = inspect.signature(resolve(self.models)).parameters
        merged = dict(self.defaults)
        for key, table in self.variant_defaults.items():
            value = kwargs[key] if key in kwargs else params[key].default
            merged |= dict(table.get(value, {}))
        return merged

    def check_kwargs(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """The task's keywords checked against the annotations of ``models`` and the env, without
        building either (:func:`~diffusion_gym.validation.check_keywords`); errors name the env id."""
        from diffusion_gym.envs.vector import DiffusionSDEVectorEnv

        models = resolve(self.models)
        allowed = set(inspect.signature(models).parameters) | set(_env_keywords())
        with self._named():
            return check_keywords((models, DiffusionSDEVectorEnv.__init__), kwargs, allowed)

    def make_vector_env(self, num_envs: int, **kwargs: Any) -> DiffusionSDEVectorEnv:
        """The batched env of ``num_envs`` samples (the gym ``vector_entry_point``)."""
        from diffusion_gym.envs.vector import DiffusionSDEVectorEnv

        with self._named():
            models, env_kwargs = self.build(kwargs)
            return DiffusionSDEVectorEnv(num_envs, *models, **env_kwargs)

    def make_env(self, **kwargs: Any) -> DiffusionSDEEnv:
        """The single-sample numpy env (the gym ``entry_point``)."""
        from diffusion_gym.envs.single import DiffusionSDEEnv

        with self._named():
            models, env_kwargs = self.build(kwargs)
            return DiffusionSDEEnv(*models, **env_kwargs)

    @contextlib.contextmanager
    def _named(self) -> Iterator[None]:
        """Errors in the task's or the env's keywords name the env id they were given to."""
        try:
            yield
        except ValueError as err:
            raise ValueError(f"{self.env_id}: {err}") from None

    def law_keys(self) -> tuple[str, ...]:
        """The keywords the pretrained sampler's law, its terminal reward and so J* and J(pre) depend
        on: every keyword of ``models`` and of the env except those declared neutral (the env's
        :data:`~diffusion_gym.envs.vector.LAW_NEUTRAL` and :data:`~diffusion_gym.envs.vector.CONTROL_KEYWORDS`,
        the task's :attr:`law_neutral`). Derived, not listed: a new keyword counts until declared neutral."""
        from diffusion_gym.envs.vector import CONTROL_KEYWORDS, LAW_NEUTRAL

        params = [k for k in inspect.signature(resolve(self.models)).parameters if k not in self.law_neutral]
        env = [k for k in _env_keywords() if k not in LAW_NEUTRAL | CONTROL_KEYWORDS]
        return (*params, *env)

    def configuration(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """What defines the pretrained sampler's law and J* on one grid: the :meth:`law_keys`, each from
        ``kwargs``, else the task's defaults, else the functions' own defaults (JSON-comparable)."""
        return self._values(self.law_keys(), kwargs)

    def control_configuration(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """What else the reachable references (J_best, J_oracle) depend on: the action box."""
        from diffusion_gym.envs.vector import CONTROL_KEYWORDS

        return self._values(sorted(CONTROL_KEYWORDS), kwargs)

    def _values(self, keys: Any, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        from diffusion_gym.envs.vector import DiffusionSDEVectorEnv

        params = inspect.signature(resolve(self.models)).parameters
        env_params = inspect.signature(DiffusionSDEVectorEnv).parameters
        defaults = {k: p.default for k, p in (*env_params.items(), *params.items()) if k in keys}
        merged = defaults | self.defaults_for(kwargs) | dict(kwargs)
        for k in ("dtype", "autocast"):  # "float32" and torch.float32 name one dtype
            if isinstance(merged.get(k), str) and not merged[k].startswith("torch."):
                merged[k] = f"torch.{merged[k]}"
        return {k: _comparable(merged.get(k)) for k in keys}

    def shipped_references(self, kwargs: Mapping[str, Any]) -> dict[str, Any] | None:
        """The shipped references of the configuration ``kwargs`` names (J*, J(pre) with their errors,
        covariance, sample count, effective sample size and the command that computed them; J_oracle
        and the optimal control's row only where the action box matches too), or None when the task
        ships none for it, or when the weights that configuration loads are no longer the ones they
        were computed with (``models_sha256``, :meth:`models_sha256`: a retrained base model or proxy
        makes its own entries stale, and a model added beside it none).

        Warns when the task names a table that is missing (every runner reads it through here).

        Raises:
            ValueError: the table is not valid JSON, or its bytes differ from the sha256 the package
                records (naming the file).
        """
        if self.references is None:
            return None
        package, _, name = self.references.partition(":")
        path = importlib.resources.files(package) / name
        if not path.is_file():
            warnings.warn(
                f"task {self.name} ships its references in {path}, which is missing: every reference is estimated "
                f"by the run instead (restore the package, or: python -m diffusion_gym.tasks.references --task "
                f"{self.name})",
                stacklevel=2,
            )
            return None
        verify_shipped(Path(str(path)))
        try:
            table = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: the shipped references are not valid JSON ({err})") from None
        config, control = self.configuration(kwargs), self.control_configuration(kwargs)
        matches = [e for e in table["entries"] if self.same_configuration(e["config"], config)]
        if not matches:
            return None
        entry = next((e for e in matches if e.get("control") == control), matches[0])
        if "models_sha256" in entry and entry["models_sha256"] != self.models_sha256(kwargs):
            return None  # (a table of one's own without the digest is taken as it is)
        if entry.get("control") != control:
            entry = {k: v for k, v in entry.items() if not k.startswith("j_oracle") and k not in ("oracle", "control")}
        return entry

    def models_sha256(self, kwargs: Mapping[str, Any]) -> str:
        """The sha256 of the weights the configuration ``kwargs`` loads, its base model, terminal
        reward and gold utility (:func:`~diffusion_gym.envs.identity.weights_sha256`, what a
        checkpoint's env identity records), computed once per configuration and version of the
        task's ``weights/`` files."""
        config = json.dumps(self.configuration(kwargs), sort_keys=True)
        return _models_sha256(self.models, config, _weights_stamp(self.package))

    def same_configuration(self, shipped: Mapping[str, Any], config: Mapping[str, Any]) -> bool:
        """Whether a shipped entry's configuration is ``config`` (:meth:`configuration`): equal on every
        key it records, and ``config`` at its default on every law key the entry predates (a keyword
        added since, e.g. the flow SDE's ``noise_level``, does not make the tables stale where it keeps
        its default)."""
        defaults = self.configuration({})
        return all(shipped.get(k, defaults.get(k)) == v for k, v in config.items()) and set(shipped) <= set(config)

    def features(self) -> tuple[Callable[[Any], Any], Any] | None:
        """``(feature map, reference features)`` of an image task, else None."""
        return None if self.image_features is None else resolve(self.image_features)()


def _env_keywords() -> list[str]:
    """The env's keyword-only parameters (its configuration; the batch and models are positional)."""
    from diffusion_gym.envs.vector import DiffusionSDEVectorEnv

    params = inspect.signature(DiffusionSDEVectorEnv).parameters
    return [k for k, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]


def env_configuration(env: Any) -> dict[str, Any] | None:
    """The task configuration an env made by ``gym.make`` / ``gym.make_vec`` was made with: its task's
    law and control keywords (:meth:`TaskSpec.configuration`, :meth:`TaskSpec.control_configuration`)
    from the env's keywords; None for an env made by hand or of an unregistered task."""
    spec = getattr(env, "spec", None)
    try:
        task = get_task(spec.id) if spec is not None else None
    except KeyError:  # an env registered outside the task registry
        return None
    if task is None:
        return None
    kwargs = {k: v for k, v in spec.kwargs.items() if k not in ("task", "num_envs", "vectorization_mode")}
    return task.configuration(kwargs) | task.control_configuration(kwargs)


def _weights_stamp(package: str) -> tuple[tuple[str, int, int], ...]:
    """``(name, mtime_ns, size)`` of each file in ``package``'s ``weights/`` folder: a retrained file
    changes it, so :func:`_models_sha256`'s cache does not outlive the weights it hashed."""
    folder = Path(str(importlib.resources.files(package))) / "weights"
    files = sorted(folder.iterdir()) if folder.is_dir() else []
    return tuple((f.name, f.stat().st_mtime_ns, f.stat().st_size) for f in files if f.is_file())


@functools.lru_cache(maxsize=64)
def _models_sha256(models: str, config: str, stamp: tuple[tuple[str, int, int], ...]) -> str:
    from diffusion_gym.envs.identity import weights_sha256

    build = resolve(models)
    params = inspect.signature(build).parameters
    return weights_sha256(*build(**{k: v for k, v in json.loads(config).items() if k in params}))


def _comparable(value: Any) -> Any:
    """``value`` as JSON gives it back (dtypes and other objects as strings, tuples as lists)."""
    return json.loads(json.dumps(value, default=str))


TASKS: dict[str, TaskSpec] = {}
"""Every registered task by name."""


def make_task_env(task: str, **kwargs: Any) -> DiffusionSDEEnv:
    """Gymnasium's ``entry_point`` of every registered task: the single env of ``TASKS[task]``."""
    return TASKS[task].make_env(**kwargs)


def make_task_vector_env(task: str, num_envs: int, **kwargs: Any) -> DiffusionSDEVectorEnv:
    """Gymnasium's ``vector_entry_point`` of every registered task: the batched env of ``TASKS[task]``."""
    return TASKS[task].make_vector_env(num_envs, **kwargs)


def register_task(spec: TaskSpec, *, override: bool = False) -> TaskSpec:
    """Add ``spec`` to :data:`TASKS` and register its env id with Gymnasium (string entry points with
    ``task=<name>`` in the spec's kwargs, so that ``env.spec`` serialises). Registering the same spec
    again does nothing.

    Args:
        spec: the task.
        override: replace a task of the same name or env id (otherwise that raises).
    """
    from gymnasium.envs.registration import register, registry

    if TASKS.get(spec.name) == spec and spec.env_id in registry:
        return spec
    clash = [t.name for t in TASKS.values() if t.name == spec.name or t.env_id == spec.env_id]
    if clash and not override:
        raise ValueError(f"a task named {spec.name!r} or with env id {spec.env_id!r} is registered: {clash}")
    for name in clash:
        registry.pop(TASKS.pop(name).env_id, None)
    if spec.env_id in registry and not override:
        raise ValueError(f"env id {spec.env_id!r} is registered with Gymnasium by someone else")
    registry.pop(spec.env_id, None)
    register(
        id=spec.env_id,
        entry_point=f"{__name__}:make_task_env",
        vector_entry_point=f"{__name__}:make_task_vector_env",
        kwargs={"task": spec.name},
    )
    TASKS[spec.name] = spec
    return spec


def get_task(key: str) -> TaskSpec:
    """The task of a name or an env id."""
    for spec in TASKS.values():
        if key in (spec.name, spec.env_id):
            return spec
    known = sorted(t.name for t in TASKS.values()) + sorted(t.env_id for t in TASKS.values())
    raise KeyError(f"no task {key!r}; registered: {known}")
