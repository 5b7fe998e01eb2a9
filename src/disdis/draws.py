"""Where a training forward's random draws come from.

By default every draw uses torch's global generator, which the training loop seeds at each step
(exact resume). A step split over threads (``train.shards``, :mod:`disdis.train.shards`) cannot
share that one generator and stay reproducible: the order of the threads' draws would depend on
their timing. Each shard's thread therefore sets a generator of its own here, and code that draws
in a training forward passes ``generator=draws.generator()``, which is ``None`` (torch's global
generator, as before) outside a shard.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch

_local = threading.local()


def generator() -> torch.Generator | None:
    """This thread's generator for training draws; ``None`` (the global one) unless a shard set one."""
    return getattr(_local, "generator", None)


@contextlib.contextmanager
def drawing_from(gen: torch.Generator | None) -> Iterator[None]:
    """Within the block, this thread's training draws come from ``gen``."""
    previous = generator()
    _local.generator = gen
    try:
        yield
    finally:
        _local.generator = previous
