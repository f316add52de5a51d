"""Reading weight files and checkpoints with errors that say which file is wrong and what it should hold.

A truncated download, an interrupted save or a file of another kind otherwise surfaces as torch's
zip-reader message, a pickle or safetensors header error, or a ``KeyError`` deep in the caller. Here
each becomes a ``FileNotFoundError`` or ``ValueError`` naming the file and what was expected, raised
``from`` the original error so that its message and traceback are kept.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

ModuleT = TypeVar("ModuleT", bound=nn.Module)


def _require_keys(data: Any, keys: Iterable[str], source: Path, expected: str) -> None:
    """Raise ValueError unless ``data`` (read from ``source``) is a dict with ``keys``; ``expected`` is
    what it should be, with its article (``"a my_agent agent checkpoint"``)."""
    if not isinstance(data, dict):
        raise ValueError(f"{source} holds a {type(data).__name__}, not {expected}")
    missing = [k for k in keys if k not in data]
    if missing:
        has = sorted(map(str, data))
        shown = ", ".join(has[:8]) + (f", ... ({len(has)} keys)" if len(has) > 8 else "")
        raise ValueError(f"{source} is not {expected}: it lacks the keys {missing} (it has: {shown or 'none'})")


def load_checkpoint(path: str | Path, what: str, keys: Iterable[str] = ()) -> dict[str, Any]:
    """The dict a ``torch.save`` checkpoint holds, read onto the CPU (a trusted file: full unpickling).

    Args:
        path: the checkpoint file.
        what: what it should be, for the messages (e.g. ``"my_agent agent checkpoint"``).
        keys: the keys the dict must have.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is truncated, corrupt or not a torch checkpoint, or holds something other
            than a dict with ``keys``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {what} at {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=False)
    except OSError:
        raise
    except Exception as err:  # zip reader, pickle, EOF, decoding or size errors, depending on the bytes
        raise ValueError(f"{path} is not a readable {what} (truncated or not a torch checkpoint): {err}") from err
    _require_keys(data, keys, path, f"a {what}")
    return data


def read_metadata(weights: str | Path, what: str, keys: Iterable[str] = ()) -> dict[str, Any]:
    """The JSON metadata (architecture, config) stored beside a ``.safetensors`` weight file.

    Args:
        weights: the weight file; the metadata is the same name with the suffix ``.json``.
        what: the model the weights are of, for the messages.
        keys: the keys the metadata must have.

    Raises:
        FileNotFoundError: no JSON beside the weights.
        ValueError: the JSON is unreadable or lacks ``keys``.
    """
    meta = Path(weights).with_suffix(".json")
    if not meta.is_file():
        raise FileNotFoundError(f"{meta} not found: the weights of {what} need their JSON metadata beside them")
    try:
        data = json.loads(meta.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{meta} is not the JSON metadata of {what}: {err}") from err
    _require_keys(data, keys, meta, f"the JSON metadata of {what}")
    return data


def load_weights(path: str | Path, what: str) -> dict[str, Tensor]:
    """The tensors of a ``.safetensors`` file, on the CPU.

    Args:
        path: the weight file.
        what: the model the weights are of, for the messages.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is truncated, corrupt or not a safetensors file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights of {what} at {path}")
    try:
        return load_file(path)
    except SafetensorError as err:
        raise ValueError(
            f"{path} is not readable (truncated or not a safetensors file): expected the safetensors weights of "
            f"{what}: {err}"
        ) from err


def load_weights_into(model: ModuleT, path: str | Path, what: str) -> ModuleT:
    """``model`` with the weights of a ``.safetensors`` file loaded (strictly: same keys and shapes).

    Args:
        model: the freshly built model the weights are for.
        path: the weight file.
        what: the model, for the messages.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is unreadable, or its tensors do not fit ``model`` (other keys or shapes).
    """
    state = load_weights(path, what)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:  # load_state_dict's missing / unexpected keys and size mismatches
        raise ValueError(f"{path} does not hold the weights of {what} (another model or architecture): {err}") from err
    return model
