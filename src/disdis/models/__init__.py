"""Models by name, built from a run configuration.

``disentangled_diffusion`` is the paper's method; EncDiff and the single
ablations are configurations of it (``anchoring.enabled``, ``unet.skip_dropout``).
The first stage trains as the model ``first_stage`` (``stage: first_stage``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from torch import nn

from disdis.errors import ConfigError

if TYPE_CHECKING:
    from disdis.nn.first_stage import FirstStage
    from disdis.run_config import RunConfig

Builder = Callable[["RunConfig", "FirstStage | None"], nn.Module]
MODELS: dict[str, Builder] = {}


def register(name: str) -> Callable[[Builder], Builder]:
    def add(builder: Builder) -> Builder:
        MODELS[name] = builder
        return builder
    return add


def build_model(cfg: RunConfig, first_stage: FirstStage | None = None) -> nn.Module:
    """The model that ``cfg`` trains: ``first_stage`` for that stage, else ``cfg.model``.

    ``first_stage`` is the (trained) first stage a diffusion model builds on; None builds it
    from ``cfg.first_stage`` with fresh weights (right for ``kind: identity``).
    """
    name = "first_stage" if cfg.stage == "first_stage" else cfg.model
    if name not in MODELS:
        raise ConfigError(f"model: unknown model {name!r} (known: {', '.join(sorted(MODELS))})")
    return MODELS[name](cfg, first_stage)


@register("first_stage")
def _first_stage(cfg: RunConfig, first_stage: FirstStage | None) -> nn.Module:
    from disdis.models.first_stage import FirstStageTraining
    return FirstStageTraining(cfg.first_stage)


@register("disentangled_diffusion")
def _disentangled_diffusion(cfg: RunConfig, first_stage: FirstStage | None) -> nn.Module:
    from disdis.models.disentangled_diffusion import DisentangledDiffusion
    from disdis.nn.first_stage import build_first_stage
    return DisentangledDiffusion(first_stage or build_first_stage(cfg.first_stage), cfg.units, cfg.unet,
                                 cfg.diffusion, cfg.anchoring)
