"""Progress bars for long work (rate and ETA), quiet when output is not a terminal
unless asked, so logs of batch jobs stay readable."""

from __future__ import annotations

import sys
from typing import Iterable, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress(iterable: Iterable[T] | None = None, *, total: int | None = None, desc: str = "",
             unit: str = "it", disable: bool | None = None, **kwargs) -> tqdm:
    """A tqdm bar on stderr with rate and ETA; ``disable=None`` hides it when stderr is not a TTY
    and no bar was requested with DISDIS_PROGRESS=1."""
    if disable is None:
        import os
        forced = os.environ.get("DISDIS_PROGRESS")
        disable = (forced == "0") if forced is not None else not sys.stderr.isatty()
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable, file=sys.stderr,
                dynamic_ncols=True, mininterval=0.5, **kwargs)
