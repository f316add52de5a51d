"""Data parallelism across processes with ``torch.distributed``, launched by ``torchrun``: the process
group, each rank's device and seed, and the collectives that training and evaluation use.

Every rank runs the same program on its own share of the envs (docs/design.md, section 6). In a
single process (no ``torchrun``, or one process per node and one node) every function here is the
identity or a no-op, so single-process runs take exactly the code paths they took before and
their numbers do not change. The collectives must be called by every rank, in the same order.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

TIMEOUT = timedelta(minutes=60)
"""How long a collective waits for the other ranks before the job fails."""


def launched() -> bool:
    """Whether this process was started by ``torchrun`` (or anything that sets its environment) with
    more than one process in the job."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: str | torch.device = "cpu") -> torch.device:
    """Join the process group that ``torchrun`` describes (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
    ``MASTER_ADDR`` / ``MASTER_PORT``: single- or multi-node rendezvous is torchrun's own) and return
    this rank's device: ``cuda:LOCAL_RANK`` when ``device`` is a CUDA device, else ``device``. NCCL
    on GPUs, gloo on CPUs. Outside ``torchrun``, ``device`` unchanged.
    """
    device = torch.device(device)
    if not launched():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        # Rank 0 alone writes reports and times the env between runs while the others wait at a
        # barrier: minutes, beyond NCCL's default 10-minute timeout for a collective.
        if device.type == "cuda":
            dist.init_process_group("nccl", device_id=device, timeout=TIMEOUT)
        else:
            dist.init_process_group("gloo", timeout=TIMEOUT)
    return device


def shutdown() -> None:
    """Leave the process group, if this process joined one, once every rank is done with it (a rank
    tearing its connections down while another still uses them would fail that one)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def world_size() -> int:
    """The number of ranks training together (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """Rank 0: the one that prints and writes checkpoints, TensorBoard and results."""
    return rank() == 0


def rank_seed(seed: int | None) -> int | None:
    """This rank's seed for a random stream seeded by ``seed``: ``seed`` itself on rank 0 (a single
    process keeps its streams), else one hashed from ``(seed, rank)`` by ``SeedSequence``, so that no
    two ranks draw the same noise. None stays None (an unseeded stream continues)."""
    if seed is None or rank() == 0:
        return seed
    # The tag keeps these apart from the evaluation seeds, which hash (purpose, keys) the same way.
    return int(np.random.SeedSequence([int(seed), rank(), _RANK_TAG]).generate_state(1, np.uint64)[0] >> 1)


_RANK_TAG = 0x5EED_0F_4A4B


def split(n: int) -> int:
    """This rank's equal share of ``n`` rows (every rank the same; ``n`` must divide evenly)."""
    w = world_size()
    if n % w:
        raise ValueError(f"{n} does not split evenly over {w} ranks: choose a multiple of {w}")
    return n // w


def _comm_device(x: Tensor) -> torch.device:
    """Where a collective on ``x`` runs: NCCL needs the rank's GPU, gloo works on CPU tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu") if x.device.type != "cpu" else x.device


def gather(x: Tensor, dim: int = 0) -> Tensor:
    """Every rank's ``x`` (the same shape on each) concatenated along ``dim`` in rank order, on every
    rank and on ``x``'s device; ``x`` itself in a single process. Batch statistics are computed on
    it so that they are the whole batch's, as a single process computes them."""
    if world_size() == 1:
        return x
    local = x.detach().to(_comm_device(x)).contiguous()
    parts = [torch.empty_like(local) for _ in range(world_size())]
    dist.all_gather(parts, local)
    return torch.cat(parts, dim).to(x.device)


def local_part(full: Tensor, dim: int = 0) -> Tensor:
    """This rank's rows of a tensor :func:`gather` assembled (the inverse of gathering along ``dim``)."""
    if world_size() == 1:
        return full
    return full.tensor_split(world_size(), dim)[rank()]


def average_gradients(params: Iterable[Tensor]) -> None:
    """Replace each gradient by its mean over ranks, in one all-reduce of the flattened gradients (the
    reduction ``DistributedDataParallel`` performs, without its buckets). Parameters without a
    gradient (frozen ones: a LoRA policy's base UNet) take no part."""
    if world_size() == 1:
        return

    def mean(flat: Tensor) -> None:
        dist.all_reduce(flat)
        flat /= world_size()

    _flat_in_place([p.grad for p in params if p.grad is not None], mean)


def broadcast_parameters(params: Iterable[Tensor]) -> None:
    """Copy rank 0's values of ``params`` to every rank (the start of a data-parallel run)."""
    if world_size() == 1:
        return
    _flat_in_place(list(params), lambda flat: dist.broadcast(flat, src=0))


def _flat_in_place(tensors: list[Tensor], collective: Callable[[Tensor], Any]) -> None:
    """Run ``collective`` on one flat copy of ``tensors`` (one message, not one per tensor) and copy
    its result back into them."""
    if not tensors:
        return
    flat = torch.cat([t.detach().reshape(-1) for t in tensors])
    comm = flat.to(_comm_device(flat))
    collective(comm)
    offset = 0
    with torch.no_grad():
        for t in tensors:
            t.copy_(comm[offset : offset + t.numel()].view_as(t))
            offset += t.numel()


def reduce_stats(stats: dict[str, float]) -> dict[str, float]:
    """An iteration's logged scalars averaged over ranks (ranks hold equal batches, so a mean of their
    means is the batch's), maxima (keys ending in ``_max``) maximised; unchanged in one process."""
    if world_size() == 1:
        return stats
    keys = sorted(stats)
    values = torch.tensor([stats[k] for k in keys], dtype=torch.float64)
    is_max = torch.tensor([k.endswith("_max") for k in keys])
    device = _comm_device(values)
    means = torch.where(is_max, 0.0, values).to(device)
    maxima = torch.where(is_max, values, -torch.inf).to(device)
    dist.all_reduce(means)
    dist.all_reduce(maxima, op=dist.ReduceOp.MAX)
    out = torch.where(is_max, maxima.cpu(), means.cpu() / world_size())
    return dict(zip(keys, out.tolist(), strict=True))


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` in a single process."""
    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (``obj`` itself in a single process)."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    """Wait until every rank gets here (a no-op in a single process)."""
    if world_size() > 1:
        dist.barrier()
