"""The package's layering, as the architecture document states it (docs/architecture.md)."""

import re
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "disdis"


def _sources(folder: Path):
    return [(p, p.read_text()) for p in sorted(folder.rglob("*.py"))]


def test_only_the_command_line_imports_the_commands():
    offenders = [str(p.relative_to(SRC)) for p, text in _sources(SRC)
                 if "disdis.commands" in text and p.parent.name != "commands" and p.name != "cli.py"]
    assert offenders == []


def test_the_training_loop_knows_no_method():
    for path, text in _sources(SRC / "train"):
        code = re.sub(r'""".*?"""', "", text, flags=re.S)  # docstrings may name examples
        assert "hasattr(model" not in code, path
        if path.name in ("loop.py", "config.py", "optim.py", "ema.py", "checkpoint.py"):
            assert not re.search(r"anchor", code, re.I), f"{path.name} mentions anchoring"
