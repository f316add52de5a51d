"""Running a function on several gloo ranks from a test, as ``torchrun`` would start them: each child
gets torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``PORT``) and
joins the group through :func:`diffusion_gym.distributed.setup`, the code path of a real launch."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any

import torch
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child(rank: int, world: int, port: int, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    from diffusion_gym import distributed

    distributed.setup("cpu")
    fn(*args)
    distributed.shutdown()  # not after a failure: the failed rank exits and the others are stopped


def run_ranks(fn: Callable[..., Any], *args: Any, world: int = 2) -> None:
    """``fn(*args)`` on ``world`` CPU ranks of one gloo group (``fn`` importable at module level); a
    rank's exception is raised here with its traceback."""
    mp.start_processes(_child, args=(world, free_port(), fn, args), nprocs=world, join=True, start_method="spawn")
