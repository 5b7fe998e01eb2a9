"""Atomic file writes: a reader sees the old file or the new one, never a part of it."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from disdis.errors import DisdisError


@contextmanager
def atomic_path(path: str | Path, make_parents: bool = True, durable: bool = False) -> Iterator[Path]:
    """A temporary path beside ``path`` (``.NAME.XXXX.partial.SUFFIX``: the same suffix, so writers
    that go by it pick the format) that replaces ``path`` when the block ends without an error and
    is removed otherwise. Without ``make_parents`` a missing folder is an error. ``durable``: the
    file is flushed to disk before the rename and the rename after it (a checkpoint survives a
    power cut, not only a killed process)."""
    path = Path(path).absolute()
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    elif not path.parent.is_dir():
        raise DisdisError(f"{path}: output folder {path.parent} does not exist")
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".partial{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        if durable:
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
        if durable:
            _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # not supported on every platform
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomic(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)
