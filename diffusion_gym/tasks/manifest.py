"""Record the sha256 of every file a task ships (``SHA256SUMS.json`` beside its ``weights/`` folder),
which every read of them checks (:func:`diffusion_gym.checkpoints.verify_shipped`).

    python -m diffusion_gym.tasks.manifest --task digits     # after regenerating its weights or references
    python -m diffusion_gym.tasks.manifest --all

Each entry keeps the command that regenerates its file: new files get the one ``--command`` names.
"""

from __future__ import annotations

import argparse
import json
from importlib.resources import files
from pathlib import Path
from typing import Any

from diffusion_gym.checkpoints import MANIFEST, sha256
from diffusion_gym.tasks.spec import TASKS, TaskSpec, get_task


def package_tasks(task: TaskSpec) -> list[TaskSpec]:
    """The registered tasks that share ``task``'s package (one manifest covers them all: the VP and
    the flow mixture tasks ship the same proxies and a table each)."""
    return [t for t in TASKS.values() if t.package == task.package] or [task]


def shipped_files(task: TaskSpec) -> list[Path]:
    """What ``task``'s package ships: every file of its ``weights/`` folder and the references table of
    every task in it."""
    root = Path(str(files(task.package)))
    found = sorted(p for p in (root / "weights").glob("*") if p.is_file())
    for spec in package_tasks(task):
        if spec.references is not None:
            table = root / spec.references.partition(":")[2]
            found += [table] if table.is_file() else []
    return found


def record(task: TaskSpec, command: str | None = None) -> dict[str, Any]:
    """Write ``task``'s manifest: each shipped file's sha256, with its regenerating command kept (or
    ``command`` for files it did not list)."""
    root = Path(str(files(task.package)))
    path = root / MANIFEST
    old = json.loads(path.read_text()).get("files", {}) if path.is_file() else {}
    entries = {}
    for item in shipped_files(task):
        name = item.relative_to(root).as_posix()
        kept = old.get(name, {}).get("command") or command
        if kept is None:
            raise ValueError(f"{name} of task {task.name} is new: give --command, the command that regenerates it")
        entries[name] = {"sha256": sha256(item), "command": kept}
    table = {"task": ", ".join(t.name for t in package_tasks(task)), "files": entries}
    path.write_text(json.dumps(table, indent=1) + "\n")
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--task", help="a registered task's name or env id")
    which.add_argument("--all", action="store_true", help="every registered task that ships files")
    parser.add_argument("--command", default=None, help="the regenerating command of files not yet listed")
    args = parser.parse_args(argv)
    tasks = [get_task(args.task)] if args.task else [t for t in TASKS.values() if shipped_files(t)]
    tasks = list({t.package: t for t in tasks}.values())  # one manifest per package
    for task in tasks:
        table = record(task, args.command)
        print(f"{task.name}: {len(table['files'])} files recorded")


if __name__ == "__main__":
    main()
