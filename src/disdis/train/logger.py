"""Training logs: one CSV row per logging interval, mirrored to TensorBoard when it is installed.

On resume, rows past the checkpoint the run continues from are dropped, so the
log reads as if the run had never been interrupted.
"""

from __future__ import annotations

import csv
from pathlib import Path

from disdis.io import atomic_path


class CSVLogger:
    def __init__(self, path: str | Path, resume_step: int | None = None, tensorboard: bool = True):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fields: list[str] | None = None
        if resume_step is not None and self.path.is_file():
            self._truncate_after(resume_step)
        elif self.path.exists():
            self.path.unlink()
        self.tensorboard = _tensorboard_writer(self.path.parent) if tensorboard else None

    def log(self, row: dict[str, float | int]) -> None:
        if self.fields is None:
            self.fields = list(row)
        new = not self.path.is_file()
        with open(self.path, "a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.fields, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)
        if self.tensorboard is not None:
            for key, value in row.items():
                if key != "step":
                    self.tensorboard.add_scalar(key, value, global_step=int(row["step"]))
            self.tensorboard.flush()

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()

    def _truncate_after(self, step: int) -> None:
        with open(self.path, newline="") as handle:
            reader = csv.DictReader(handle)
            self.fields = list(reader.fieldnames or [])
            rows = [r for r in reader if r.get("step", "").isdigit() and int(r["step"]) <= step]
        with atomic_path(self.path) as tmp, open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.fields)
            writer.writeheader()
            writer.writerows(rows)


def _tensorboard_writer(directory: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # TensorBoard is optional
        return None
    return SummaryWriter(log_dir=str(directory / "tensorboard"))


def read_csv_log(path: str | Path) -> list[dict[str, float]]:
    """The rows of a CSV log as floats (for tests and reports)."""
    with open(path, newline="") as handle:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(handle)]
