"""Checkpoints: one safetensors file per save holding weights and trainer state.

A checkpoint is a flat dict of tensors (``model/...``, ``ema/...``,
``optim/...``, ``hook/<name>/...``: whatever the loop keeps) plus a JSON
document of plain values (step, optimizer hyperparameters, ...), stored in the
safetensors header. Loading never executes code from the file. A SHA-256 of
the tensor bytes is stored alongside, so a truncated or corrupted file is
rejected with a clear error instead of loading garbage.

Writes are atomic: the file is written under a temporary name in the same
directory, flushed to disk, then renamed over the final name, so a process
killed mid-save leaves every earlier checkpoint intact.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from disdis.errors import DisdisError
from disdis.io import atomic_path

FORMAT = "disdis-checkpoint-1"
_NAME = re.compile(r"^ckpt-(\d{9})\.safetensors$")


class CheckpointError(DisdisError):
    """A checkpoint file that is missing, truncated, corrupted or not a disdis checkpoint."""


def checkpoint_path(directory: str | Path, step: int) -> Path:
    return Path(directory) / f"ckpt-{step:09d}.safetensors"


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Checkpoints in ``directory``, oldest first (temporary files of an interrupted save are ignored)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if _NAME.match(p.name))


def save_checkpoint(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Atomically write ``tensors`` and the JSON-serialisable ``meta`` to ``path``."""
    path = Path(path)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    header = {"format": FORMAT, "meta": json.dumps(meta), "sha256": _digest(tensors)}
    with atomic_path(path, durable=True) as tmp:
        save_file(tensors, str(tmp), metadata=header)
    return path


def read_meta(path: str | Path) -> dict[str, Any] | None:
    """The meta of a checkpoint without reading its tensors; None when the file is unreadable."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
        return json.loads(header["meta"]) if header.get("format") == FORMAT else None
    except Exception:  # unreadable: the loop's own loading reports it and falls back
        return None


def read_digest(path: str | Path) -> str:
    """The SHA-256 of a checkpoint's tensors, from its header (what :func:`load_checkpoint` verifies)."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
    except Exception as err:
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(err).__name__})") from None
    if header.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a disdis checkpoint")
    return header["sha256"]


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint written by :func:`save_checkpoint`; returns (tensors on the CPU, meta)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    except Exception as err:  # safetensors reports truncation in several ways
        raise CheckpointError(f"{path}: not a readable checkpoint, the file is truncated or corrupt "
                              f"({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None
    if header.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a disdis checkpoint (format {header.get('format')!r}, expected {FORMAT!r})")
    if _digest(tensors) != header.get("sha256"):
        raise CheckpointError(f"{path}: checksum mismatch, the file is corrupt")
    return tensors, json.loads(header["meta"])


def prune_checkpoints(directory: str | Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints."""
    for old in list_checkpoints(directory)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)


def with_prefix(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}/{k}": v for k, v in tensors.items()}


def strip_prefix(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    start = f"{prefix}/"
    return {k[len(start):]: v for k, v in tensors.items() if k.startswith(start)}


def optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """Split an optimizer's state into tensors (per-parameter moments) and JSON (hyperparameters)."""
    state = optimizer.state_dict()
    tensors = {}
    for index, slots in state["state"].items():
        for name, value in slots.items():
            tensors[f"{index}/{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return tensors, state["param_groups"]


def load_optimizer_state(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                         groups: list[dict[str, Any]]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        index, name = key.split("/", 1)
        state.setdefault(int(index), {})[name] = value
    for group in groups:
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    # the saved moments are contiguous; give each its parameter's layout (e.g. channels-last), as fused
    # optimizers expect moments laid out like their parameters
    for param, slots in optimizer.state.items():
        for name, value in slots.items():
            if torch.is_tensor(value) and value.shape == param.shape:
                slots[name] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    sha = hashlib.sha256()
    for key in sorted(tensors):
        value = tensors[key]
        sha.update(f"{key}:{str(value.dtype)}:{tuple(value.shape)};".encode())
        sha.update(value.reshape(-1).view(torch.uint8).numpy())
    return sha.hexdigest()
