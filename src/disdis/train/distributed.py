"""Process-group helpers for training under ``torchrun`` (one process per device).

``init()`` reads the environment that torchrun sets (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT) and joins the group with NCCL on GPUs and
gloo on the CPU. Without those variables it is a single process and every helper
below degrades to the identity, so the same training code runs either way.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable

import torch
import torch.distributed as dist


_device = torch.device("cpu")  # where collective buffers live (NCCL needs them on the GPU)


def init(device_type: str) -> torch.device:
    """Join the process group described by torchrun's environment, if any; return this rank's device."""
    global _device
    _device = torch.device("cuda", local_rank()) if device_type == "cuda" else torch.device("cpu")
    if _device.type == "cuda":
        torch.cuda.set_device(_device)
    if launched_world_size() > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if _device.type == "cuda" else "gloo")
    return _device


def launched_world_size() -> int:
    """The number of processes torchrun started (its WORLD_SIZE), whether or not the group is joined yet."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean of ``tensor`` over ranks (a new tensor; the input is untouched)."""
    if not dist.is_initialized():
        return tensor.clone()
    out = tensor.clone()
    dist.all_reduce(out)
    return out / world_size()


def shard(n: int) -> range:
    """This rank's contiguous share of ``range(n)``; shares differ in length by at most one."""
    per = -(-n // world_size())
    return range(min(rank() * per, n), min((rank() + 1) * per, n))


def gather_shards(local: torch.Tensor, n: int) -> torch.Tensor:
    """Concatenate every rank's ``shard(n)`` rows in rank order: the canonical order 0..n-1."""
    if not dist.is_initialized():
        return local
    per = -(-n // world_size())
    padded = local.new_zeros((per, *local.shape[1:]), device=_device)
    padded[: len(local)] = local
    parts = [torch.empty_like(padded) for _ in range(world_size())]
    dist.all_gather(parts, padded)
    return torch.cat(parts)[:n].to(local.device)


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Copy ``src``'s buffers (BatchNorm statistics, ...) to every rank, in place."""
    broadcast_in_place(module.buffers(), src)


def broadcast_in_place(tensors: Iterable[torch.Tensor], src: int = 0) -> None:
    """Copy ``src``'s values of ``tensors`` (parameters, buffers) to every rank, in place."""
    if not dist.is_initialized():
        return
    for tensor in tensors:
        dist.broadcast(tensor.data, src=src)


def broadcast_json(obj: object, src: int = 0) -> object:
    """Send a JSON-serialisable object from ``src`` to every rank (as bytes, never pickled)."""
    if not dist.is_initialized():
        return obj
    data = json.dumps(obj).encode() if rank() == src else b""
    size = torch.tensor([len(data)], dtype=torch.int64, device=_device)
    dist.broadcast(size, src=src)
    buf = torch.zeros(int(size), dtype=torch.uint8, device=_device)
    if rank() == src:
        buf.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    dist.broadcast(buf, src=src)
    return json.loads(buf.cpu().numpy().tobytes())


def broadcast_tensors(tensors: dict[str, torch.Tensor] | None, src: int = 0) -> dict[str, torch.Tensor] | None:
    """Send a dict of tensors (or None) from ``src`` to every rank; returned on the CPU."""
    if not dist.is_initialized():
        return tensors
    spec = None
    if rank() == src and tensors is not None:
        spec = {k: [list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in tensors.items()}
    spec = broadcast_json(spec, src)
    if spec is None:
        return None
    out = {}
    for key, (shape, dtype) in spec.items():
        if rank() == src:
            buf = tensors[key].to(_device).contiguous()
        else:
            buf = torch.empty(shape, dtype=getattr(torch, dtype), device=_device)
        dist.broadcast(buf, src=src)
        out[key] = buf.cpu()
    return out
