"""RunDir: a run's folder, and where everything in it lives.

    RUN/
      config.yaml          the resolved configuration
      status.json          running / finished / failed, with the step, time and message
      checkpoints/         ckpt-<step>.safetensors (weights and buffers, EMA, optimizer, hooks' state)
      fits/                every anchoring fit, fit-<step>.safetensors
      logs/train.csv       loss, images/s and the probe's scalars per logging interval
      logs/shares.csv      the probe's unit x factor table; logs/fits.csv: one row per fit
      metrics.json         the evaluation's results
      figures/             PNGs
      first_stage/         a dependency the run trained itself (its first stage), itself a run folder

Every module that reads or writes a run goes through this class, so the layout is known
in one place.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from disdis.errors import DisdisError
from disdis.io import write_text_atomic

STATES = ("running", "finished", "failed")


@dataclass(frozen=True)
class RunDir:
    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @classmethod
    def of(cls, source: str | Path | RunDir) -> RunDir:
        """The run of a run folder, or of one of its checkpoint files (``RUN/checkpoints/*``). Another
        file of a run (its config.yaml, metrics.json, ...) is refused, naming the folder to give:
        a file stands for a checkpoint wherever runs are loaded."""
        if isinstance(source, RunDir):
            return source
        source = Path(source)
        if not source.is_file():
            return cls(source)
        if source.parent.name == "checkpoints":
            return cls(source.parent.parent)
        if cls(source.parent).is_run():
            raise DisdisError(f"{source}: give the run folder ({source.parent}), not its {source.name}")
        return cls(source)

    def __str__(self) -> str:
        return str(self.path)

    # ------------------------------------------------------------------ layout
    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def fits(self) -> Path:
        return self.path / "fits"

    def fit(self, step: int) -> Path:
        return self.fits / f"fit-{step:09d}.safetensors"

    def log(self, name: str = "train") -> Path:
        """``logs/NAME.csv``: train (the training log), shares (the probe's table), fits."""
        return self.path / "logs" / f"{name}.csv"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.json"

    def figure(self, name: str) -> Path:
        return self.path / "figures" / f"{name}.png"

    def dependency(self, name: str) -> RunDir:
        """The run folder of dependency ``name`` when this run trains it itself."""
        return RunDir(self.path / name)

    # ------------------------------------------------------------------ contents
    def list_checkpoints(self) -> list[Path]:
        """Checkpoints, oldest first (temporary files of an interrupted save are ignored)."""
        from disdis.train.checkpoint import list_checkpoints
        return list_checkpoints(self.checkpoints)

    def newest_checkpoint(self) -> Path:
        found = self.list_checkpoints()
        if not found:
            raise DisdisError(f"{self.path}: the run has no checkpoint yet")
        return found[-1]

    def is_run(self) -> bool:
        return self.config.is_file()

    # ------------------------------------------------------------------ status
    def set_status(self, state: str, **info) -> None:
        """Record the run's state (running, finished or failed) with the time, host and process."""
        if state not in STATES:
            raise ValueError(f"run status: expected one of {STATES}, got {state!r}")
        record = {"state": state, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": socket.gethostname(),
                  "pid": os.getpid(), **info}
        write_text_atomic(self.path / "status.json", json.dumps(record, indent=2))

    def status(self) -> dict:
        """The recorded status; ``{"state": "new"}`` for a folder that never started training. A
        "running" record whose process is gone (killed) still reads "running": check its pid."""
        path = self.path / "status.json"
        if not path.is_file():
            return {"state": "new"}
        return json.loads(path.read_text())
