"""Run configurations shipped with the package: ``disdis train shapes3d data.path=...``.

A preset is a YAML file in this folder, named by its stem (``shapes3d``, ``demo``, ...). In a
source checkout the same files are reachable as ``configs/*.yaml``. Any argument naming an
existing file is read as that file; otherwise it is looked up here.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from disdis.errors import ConfigError


def names() -> list[str]:
    """The stems of the packaged presets, sorted."""
    return sorted(p.name.removesuffix(".yaml") for p in resources.files(__name__).iterdir() if p.name.endswith(".yaml"))


def resolve(name_or_path: str | Path) -> Path:
    """An existing config file as given, or the packaged preset of that name (``.yaml`` optional)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    stem = path.name.removesuffix(".yaml")
    if path.parent == Path(".") and stem in names():
        return Path(str(resources.files(__name__) / f"{stem}.yaml"))
    raise ConfigError(f"{name_or_path}: no such config file, and not a preset (presets: {', '.join(names())})")
