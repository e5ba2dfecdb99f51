"""torchrun / DDP set-up shared by the training loops.

``torchrun --nproc_per_node=N [--nnodes=M --node_rank=R --rdzv_endpoint=HOST:PORT] -m vpdd.cli.<group> ...``
sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous variables; :func:`init_distributed` reads
them (a plain process is rank 0 of 1 and nothing is initialised). The backend is NCCL when CUDA is
available and gloo otherwise (CPU tests run 2 gloo processes). Only rank 0 writes checkpoints and
metrics; every rank loads the same checkpoint when resuming.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # this call created the process group (and should destroy it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto", timeout_s: float = 600.0) -> DistInfo:
    """Join the process group described by torchrun's environment variables (if any)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if use_cuda:
        dev = torch.device("cuda", local_rank if world > 1 else torch.cuda.current_device())
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    owns = False
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
        log.info("joined process group: rank %d of %d (%s, local rank %d)", rank, world, backend, local_rank)
        owns = True
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev, owns_group=owns)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def any_true(flag: bool, info: DistInfo) -> bool:
    """True on every rank if ``flag`` is True on any rank (so all ranks stop together)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def broadcast_object(obj, info: DistInfo, src: int = 0):
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def check_in_sync(tensors: list[torch.Tensor], info: DistInfo) -> None:
    """Raise if ``tensors`` (for example the parameters) differ between ranks (a checksum, all-gathered).

    BatchNorm running statistics are rank-local between DDP's buffer broadcasts; leave them out."""
    if not info.enabled:
        return
    with torch.no_grad():
        total = torch.zeros(2, dtype=torch.float64, device=info.device)
        for i, t in enumerate(tensors):
            if t.is_floating_point():
                total[0] += t.double().sum()
                total[1] += t.double().abs().mul(1 + (i % 7)).sum()
        gathered = [torch.zeros_like(total) for _ in range(info.world_size)]
        dist.all_gather(gathered, total)
    ref = gathered[0]
    for r, g in enumerate(gathered[1:], start=1):
        if not torch.allclose(g, ref, rtol=1e-9, atol=1e-9):
            raise RuntimeError(f"DDP ranks diverged: rank {r} checksum {g.tolist()} != rank 0 {ref.tolist()}")


def cleanup(info: DistInfo) -> None:
    """Leave the process group if :func:`init_distributed` created it."""
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()
