"""Typed values at the boundary: one rule that turns what a user wrote into the type a field declares.

Every input a run takes (agent configs, suite fields, CLI options, env and task keywords) is
declared with an ordinary type annotation, with ranges as :class:`Range` metadata in
``typing.Annotated`` (:data:`PositiveInt`, :data:`PositiveFloat`, ...). :func:`coerce` checks one
value against one annotation; :func:`validate_fields` checks a dataclass (a config's
``__post_init__`` calls it), :func:`validated` a function's arguments, :func:`argument` an argparse
option. The rule, the same everywhere:

- booleans from ``True``/``False``, ``0``/``1`` and the usual spellings (``yes``/``no``, ``on``/``off``,
  ``true``/``false``, ``1``/``0``, any case): ``--set anneal_lr=no`` is False, not a truthy string;
- integers from integers only, never from a bool or a float (``seeds = 2.7`` is refused, not 2);
- floats from numbers, never from a bool, and finite (NaN and inf refused);
- ``Literal`` values exactly, ``X | None`` as either, ``tuple[X, ...]`` / ``list[X]`` element by element;
- anything else (models, callables, tensors) passes through to the code that uses it.

Errors are ``ValueError``s naming the field, the accepted values and what was given, raised before
any work.
"""

from __future__ import annotations

import argparse
import ast
import collections.abc
import dataclasses
import functools
import inspect
import math
import sys
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union

import numpy as np


@dataclass(frozen=True)
class Range:
    """Bounds of a number (any of them None: unbounded on that side)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def holds(self, value: float) -> bool:
        return (
            (self.ge is None or value >= self.ge)
            and (self.gt is None or value > self.gt)
            and (self.le is None or value <= self.le)
            and (self.lt is None or value < self.lt)
        )

    def describe(self) -> str:
        bounds = ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt))
        return " and ".join(f"{op} {_number(bound)}" for op, bound in bounds if bound is not None)


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) >= 1e6 else f"{x:g}"


PositiveInt = Annotated[int, Range(ge=1)]
NonNegativeInt = Annotated[int, Range(ge=0)]
PositiveFloat = Annotated[float, Range(gt=0)]
NonNegativeFloat = Annotated[float, Range(ge=0)]
Seed = Annotated[int, Range(ge=0, le=2**64 - 1)]
"""What ``torch.Generator.manual_seed`` takes without wrapping around: an integer in [0, 2**64)."""

TRUE = frozenset({"true", "yes", "on", "1", "y", "t"})
FALSE = frozenset({"false", "no", "off", "0", "n", "f"})


class _Mismatch(Exception):
    """A value that does not fit its annotation (turned into a ValueError naming the field)."""


def coerce(value: Any, hint: Any, name: str) -> Any:
    """``value`` as the annotation ``hint`` declares it (see the module docstring for the rule).

    Raises:
        ValueError: ``"{name}: expected {what hint accepts}, got {value!r}"``.
    """
    try:
        return _coerce(value, hint)
    except _Mismatch:
        raise ValueError(f"{name}: expected {describe(hint)}, got {value!r}") from None


def describe(hint: Any) -> str:
    """What an annotation accepts, in words (the second half of every error)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        ranges = [m.describe() for m in args[1:] if isinstance(m, Range)]
        return " ".join([describe(args[0]), *ranges])
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        named = [describe(a) for a in args if a is not type(None)]
        return " or ".join(named + (["None"] if type(None) in args else []))
    if origin in (tuple, list):
        element = args[0] if args else Any
        return f"a list of {_plural(describe(element))}"
    if origin is collections.abc.Callable:
        return "a function"
    if origin in (dict, Mapping) or hint is dict:
        return (
            f"a table (dict) whose values are {describe(args[1])}"
            if len(args) == 2 and args[1] is not Any
            else "a table (dict)"
        )
    return {
        bool: "a boolean (true/false, yes/no, on/off, 1/0)",
        int: "an integer",
        float: "a finite number",
        str: "a string",
        Path: "a path",
        Any: "anything",
    }.get(hint, getattr(hint, "__name__", str(hint)))


def _plural(what: str) -> str:
    return what.removeprefix("an ").removeprefix("a ").replace("integer", "integers", 1).replace("number", "numbers", 1)


def _coerce(value: Any, hint: Any) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin is Annotated:
        out = _coerce(value, args[0])
        if any(isinstance(m, Range) and not m.holds(out) for m in args[1:]):
            raise _Mismatch
        return out
    if origin is Literal:
        for choice in args:
            if type(value) is type(choice) and value == choice:
                return choice
        raise _Mismatch
    if origin in (Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise _Mismatch
        for member in args:
            if member is type(None):
                continue
            try:
                return _coerce(value, member)
            except _Mismatch:
                continue
        raise _Mismatch
    if origin in (tuple, list):
        if not isinstance(value, (tuple, list)):
            raise _Mismatch
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise _Mismatch
            return tuple(_coerce(v, a) for v, a in zip(value, args, strict=True))
        element = args[0] if args else Any
        items = [_coerce(v, element) for v in value]
        return tuple(items) if origin is tuple else items
    if origin in (dict, Mapping) or hint is dict:
        if not isinstance(value, Mapping):
            raise _Mismatch
        if len(args) == 2:
            return {_coerce(k, args[0]): _coerce(v, args[1]) for k, v in value.items()}
        return dict(value)
    if origin is collections.abc.Callable:
        if callable(value):
            return value
        raise _Mismatch
    if origin is not None:  # Sequence[...] and other constructs: the code that uses the value checks it
        return value
    if hint is bool:
        if isinstance(value, (bool, np.bool_)):
            return bool(value)
        if isinstance(value, (int, np.integer)) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in TRUE | FALSE:
            return value.strip().lower() in TRUE
        raise _Mismatch
    if hint is int:
        if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
            return int(value)
        raise _Mismatch
    if hint is float:
        if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_)):
            out = float(value)
            if math.isfinite(out):
                return out
        raise _Mismatch
    if hint is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    if hint is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise _Mismatch
    if isinstance(hint, type) and not getattr(hint, "_is_protocol", False):
        if isinstance(value, hint):
            return value
        raise _Mismatch
    return value  # protocols, type aliases of callables, forward references: checked where used


@functools.cache
def _hints(owner: Any) -> dict[str, Any]:
    """The annotations of a class or function, resolved; one that names a type its module imports only
    for type checkers (``if TYPE_CHECKING:``) is unchecked (``Any``) rather than an error."""
    try:
        return typing.get_type_hints(owner, include_extras=True)
    except NameError:
        pass
    hints: dict[str, Any] = {}
    owners = reversed(owner.__mro__) if isinstance(owner, type) else [owner]
    for part in owners:
        module = sys.modules.get(getattr(part, "__module__", ""), None)
        namespace = {**vars(module)} if module is not None else {}
        for name, annotation in getattr(part, "__annotations__", {}).items():
            try:
                hints[name] = typing.get_type_hints(
                    types.SimpleNamespace(__annotations__={name: annotation}), namespace, include_extras=True
                )[name]
            except (NameError, TypeError, SyntaxError):
                hints[name] = Any
    return hints


def validate_fields(obj: Any) -> None:
    """Coerce every field of the dataclass instance ``obj`` in place by its annotation (frozen ones
    too); errors name ``ClassName.field``. Call it from ``__post_init__``."""
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        value = coerce(getattr(obj, f.name), hints[f.name], f"{type(obj).__name__}.{f.name}")
        object.__setattr__(obj, f.name, value)


T = TypeVar("T")


def from_table(cls: type[T], table: Mapping[str, Any], where: str) -> T:
    """The dataclass ``cls`` from a table of its fields (a TOML table, a JSON object, CLI pairs):
    unknown keys and bad values are refused naming ``where`` and the field."""
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    known = {f.name for f in fields}
    if unknown := sorted(set(table) - known):
        raise ValueError(f"{where}: unknown fields {unknown}; {cls.__name__} has {sorted(known)}")
    required = {f.name for f in fields if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    if missing := sorted(required - set(table)):
        raise ValueError(f"{where}: missing {missing}")
    try:
        return cls(**table)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None


F = TypeVar("F", bound=Callable[..., Any])


def validated(func: F) -> F:
    """Check a function's arguments against its annotations on every call (:func:`coerce`), passing
    the coerced values on; errors name the parameter. ``inspect.signature`` still sees the original."""
    signature = inspect.signature(func)

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as err:
            raise TypeError(f"{func.__qualname__}: {err}") from None
        hints = _hints(func)
        for name, value in bound.arguments.items():
            if name in hints and signature.parameters[name].kind not in (
                inspect.Parameter.VAR_POSITIONAL,
                inspect.Parameter.VAR_KEYWORD,
            ):
                bound.arguments[name] = coerce(value, hints[name], name)
        return func(*bound.args, **bound.kwargs)

    return wrapper  # type: ignore[return-value]


def check_keywords(
    functions: tuple[Callable[..., Any], ...], kwargs: Mapping[str, Any], allowed: set[str]
) -> dict[str, Any]:
    """``kwargs`` coerced by the annotation of the parameter of that name in the first of ``functions``
    that has one, without calling anything: a keyword not in ``allowed``, or a bad value, is refused
    before the object is built (a suite's tasks are checked when it loads, not when their turn comes)."""
    out = {}
    for name, value in kwargs.items():
        owner = next((f for f in functions if name in inspect.signature(f).parameters), None)
        if owner is None or name not in allowed:
            raise ValueError(f"unknown keyword {name!r}; the task and its env take {sorted(allowed)}")
        hint = _hints(owner).get(name)
        out[name] = value if hint is None else coerce(value, hint, name)
    return out


def literal(text: str) -> Any:
    """A CLI value: a Python literal (``3e-4``, ``(64, 64)``, ``True``, ``None``) or else the string itself
    (``no``, ``reward``), to be coerced by the field's annotation."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def argument(hint: Any) -> Callable[[str], Any]:
    """An argparse ``type=`` for an option declared by ``hint``: ``--num-envs 0`` is refused, naming
    the option (argparse adds it) and what it accepts; a list may be written ``10,20,50``."""

    sequence = typing.get_origin(hint) in (list, tuple)

    def parse(text: str) -> Any:
        if sequence and not text.strip().startswith(("[", "(")):
            value: Any = [literal(part) for part in text.split(",")]  # --eval-steps 10,20,50
        else:
            value = text if hint is str or hint is Path else literal(text)
        try:
            return _coerce(value, hint)
        except _Mismatch:
            raise argparse.ArgumentTypeError(f"expected {describe(hint)}, got {text!r}") from None

    parse.__name__ = describe(hint)
    return parse
