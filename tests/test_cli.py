"""The command line as users start it: `python -m disdis` (what `torchrun -m disdis` runs)."""

import subprocess
import sys


def test_module_entry_point_runs_the_cli():
    out = subprocess.run([sys.executable, "-m", "disdis", "--help"], capture_output=True, text=True, check=True)
    for command in ("data", "train", "evaluate", "interchange", "demo"):
        assert command in out.stdout
