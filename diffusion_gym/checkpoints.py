"""Reading weight files and checkpoints with errors that say which file is wrong and what it should hold.

A truncated download, an interrupted save or a file of another kind otherwise surfaces as torch's
zip-reader message, a pickle or safetensors header error, or a ``KeyError`` deep in the caller. Here
each becomes a ``FileNotFoundError`` or ``ValueError`` naming the file and what was expected, raised
``from`` the original error so that its message and traceback are kept.

**Shipped files are verified.** A task package records the sha256 of every file it ships (its
weights, their metadata, its references) in ``SHA256SUMS.json`` beside its ``weights/`` folder, with
the command that regenerates each; every read of a listed file checks it (:func:`verify_shipped`),
so a flipped byte is an error naming the file and that command, not a silently different model.
``python -m diffusion_gym.tasks.manifest --task NAME`` records them anew after a regeneration.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

ModuleT = TypeVar("ModuleT", bound=nn.Module)

MANIFEST = "SHA256SUMS.json"
"""The file of a task package that records the sha256 (and the regenerating command) of what it ships."""


def sha256(path: str | Path) -> str:
    """The hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest_of(path: str | Path) -> tuple[Path, dict[str, Any]] | None:
    """``(manifest file, its entry for path)`` where a package's :data:`MANIFEST` in ``path``'s folder or
    the one above lists ``path`` (by its path relative to the manifest's folder), else None."""
    path = Path(path).resolve()
    for folder in (path.parent, path.parent.parent):
        manifest = folder / MANIFEST
        if manifest.is_file():
            try:
                table = json.loads(manifest.read_text())
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                raise ValueError(f"{manifest} is not a readable manifest of shipped files: {err}") from err
            entry = table.get("files", {}).get(path.relative_to(folder).as_posix())
            if entry is not None:
                return manifest, entry
    return None


def verify_shipped(path: str | Path) -> None:
    """Check a shipped file against the sha256 its package records (files no manifest lists pass).

    Raises:
        ValueError: the bytes differ from the recorded ones: names the file and the command that
            regenerates it.
    """
    found = manifest_of(path)
    if found is None:
        return
    manifest, entry = found
    stat = Path(path).stat()
    if _digest(str(Path(path).resolve()), stat.st_mtime_ns, stat.st_size) != entry["sha256"]:
        raise ValueError(
            f"{path} does not match the sha256 recorded in {manifest} (a corrupted or changed file): restore it "
            f"from the package, or regenerate it with `{entry.get('command', 'its task folder')}` and record it "
            "with `python -m diffusion_gym.tasks.manifest`"
        )


@functools.lru_cache(maxsize=256)
def _digest(path: str, mtime_ns: int, size: int) -> str:
    """A file's sha256, computed once per version of it (its modification time and size)."""
    return sha256(path)


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
    verify_shipped(meta)
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
        ValueError: the file is truncated, corrupt or not a safetensors file, or a shipped file whose
            bytes differ from the recorded ones (:func:`verify_shipped`).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights of {what} at {path}")
    verify_shipped(path)
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
