"""Output paths checked before any work: a run that trains for an hour must not learn at its end that
it cannot write its checkpoint, its log or its results."""

from __future__ import annotations

import os
from pathlib import Path


def _writable_ancestor(path: Path, field: str) -> None:
    """Raise ValueError unless the first existing folder above ``path`` is a writable folder."""
    folder = path.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise ValueError(f"{field}: cannot create {path}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{field}: cannot write {path}: {folder} is not writable")


def check_output_file(path: str | Path, field: str) -> Path:
    """``path`` as a file this process can write (it may exist; its folders are made later).

    Raises:
        ValueError: naming ``field``, if ``path`` is a folder or cannot be written.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{field}: {path} is a folder, expected a file")
    if path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"{field}: {path} exists and is not writable")
    _writable_ancestor(path, field)
    return path


def check_output_dir(path: str | Path, field: str) -> Path:
    """``path`` as a folder this process can write into (made later if missing).

    Raises:
        ValueError: naming ``field``, if ``path`` is a file or cannot be written.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{field}: {path} is a file, expected a folder")
    if path.is_dir() and not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"{field}: {path} is not writable")
    if not path.exists():
        _writable_ancestor(path, field)
    return path
