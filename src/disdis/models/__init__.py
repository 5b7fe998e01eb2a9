"""Methods by name: each a config dataclass (a run's ``method`` section) that builds its model.

A run's ``method: {name: ..., ...}`` section picks its dataclass from :data:`METHODS` by
``name`` (docs/architecture.md). The dataclass holds every setting of the method, checks
that they fit the run's data, names the runs it depends on (``requires``) and builds the
model (a :class:`disdis.models.method.Method`) from the trained modules of those runs.

``disentangled_diffusion`` is the paper's method (EncDiff and the single ablations are
configurations of it); ``first_stage`` trains the autoencoder it builds on, ``autoencoder`` the
warm start of its extractor.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, ClassVar

from disdis.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

    from disdis.run_config import DataConfig, RunConfig

METHODS: dict[str, type[MethodConfig]] = {}
DEFAULT_METHOD = "disentangled_diffusion"


def register(cls: type[MethodConfig]) -> type[MethodConfig]:
    """Class decorator: make a method config findable by its ``name`` default."""
    METHODS[cls.name] = cls
    return cls


@dataclass
class MethodConfig:
    """The ``method`` section of a run. Subclasses set ``name``'s default and add their settings."""
    name: str = ""

    # dependencies -> the kind of run that provides them (checked when a run names one in requires)
    dependency_kinds: ClassVar[dict[str, str]] = {}
    # dependencies that only start a submodule the run trains on: its checkpoints keep that submodule's
    # weights (the others are frozen and recorded by reference), and a resumed run does not read them
    initialises: ClassVar[frozenset[str]] = frozenset()
    # the setting (under ``method.``) that fixes how many channels the images fed to the model have
    channels_key: ClassVar[str] = "in_channels"

    @classmethod
    def schema(cls, data: Any, key: str) -> type[MethodConfig]:
        """The dataclass of the method ``data`` names (the default method when it names none); a section
        typed as one particular method (DisDiff's ``ldm``) is that method's."""
        if cls is not MethodConfig:
            if isinstance(data, dict) and data.get("name", cls.name) != cls.name:
                raise ConfigError(f"{key}.name: expected {cls.name!r} here, got {data['name']!r}")
            return cls
        name = data.get("name", DEFAULT_METHOD) if isinstance(data, dict) else DEFAULT_METHOD
        if name not in METHODS:
            raise ConfigError(f"{key}.name: unknown method {name!r} (known: {', '.join(sorted(METHODS))})")
        return METHODS[name]

    @classmethod
    def derive(cls, section: dict, data: DataConfig) -> dict:
        """``section`` with the sizes that follow from other settings filled in where not written."""
        return section

    def check(self, data: DataConfig) -> None:
        """Raise ConfigError naming the key when the settings do not fit the data or each other."""

    def image_channels(self) -> int:
        """How many channels the images fed to the model have (``channels_key``'s value)."""
        return functools.reduce(getattr, self.channels_key.split("."), self)

    def needs(self) -> tuple[str, ...]:
        """The dependencies (other runs' trained modules) this configuration builds on."""
        return ()

    def own_dependency(self, name: str, run: RunConfig) -> RunConfig:
        """The config of the run that trains dependency ``name`` inside this run, when ``requires``
        does not name one."""
        raise ConfigError(f"requires.{name}: {self.name} cannot train its {name} itself; name a run")

    def export(self, model: nn.Module, name: str) -> nn.Module:
        """What a run that requires this one as ``name`` receives from its trained ``model``: by default
        the submodule of that name (a first stage's ``first_stage``)."""
        return getattr(model, name)

    def adopt(self, name: str, source: RunConfig) -> MethodConfig:
        """This config with the settings it shares with dependency run ``source`` taken from it."""
        return self

    def build(self, dependencies: dict[str, nn.Module]) -> nn.Module:
        """The model, built on the trained modules of its dependencies (by name; fresh ones where
        a dependency has nothing to train)."""
        raise NotImplementedError


def build_model(cfg: RunConfig, dependencies: dict[str, nn.Module] | None = None) -> nn.Module:
    """The model ``cfg`` trains, built on ``dependencies`` (the trained modules of the runs it
    requires, by name)."""
    try:
        return cfg.method.build(dict(dependencies or {}))
    except ConfigError as err:  # a network's own check names its key from its section down: unet.num_heads
        message = str(err)
        section = message.partition(".")[0]
        if section in {f.name for f in fields(cfg.method)}:
            raise ConfigError(f"method.{message}") from None
        raise


def _import_methods() -> None:
    from disdis.models import (autoencoder, disdiff, disentangled_diffusion, first_stage,  # noqa: F401  (register on import)
                               latent_diffusion, vae)


_import_methods()
