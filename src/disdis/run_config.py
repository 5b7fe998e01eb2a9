"""The root configuration of a run: data, networks, diffusion, anchoring, training, evaluation.

Each section is the typed config of its part (``disdis.nn.units.UnitsConfig``
and so on); this module composes them and checks that they fit together (the
U-Net's input is the first stage's latent, the extractor's input is the data's
image, the tokens are the U-Net's context). A run directory keeps the resolved
config as ``config.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from disdis import presets
from disdis.anchoring import AnchoringConfig
from disdis.config import apply_overrides, config_from_dict, read_yaml
from disdis.diffusion import DiffusionConfig
from disdis.errors import ConfigError
from disdis.metrics.suite import Sampling
from disdis.nn.first_stage import FirstStageConfig
from disdis.nn.unet import UNetConfig
from disdis.nn.units import UnitsConfig
from disdis.train.config import TrainConfig


@dataclass
class DataConfig:
    path: str = ""                          # dataset file or folder (any kind disdis.data opens)
    kind: Optional[str] = None              # inferred from the file when null
    resolution: Optional[int] = 64          # images are resized to this (null: native)
    subgrid: Optional[dict[str, list[int]]] = None  # keep only these classes of these factors


@dataclass
class EvalConfig(Sampling):
    """``disdis evaluate``: the metric protocol (:class:`disdis.metrics.suite.Sampling`, defaults
    disentanglement_lib's) plus how the run's images are encoded and, for CelebA-type data, FID."""
    batch_size: int = 256                   # images per encoding batch
    representation: Literal["tokens_pca", "scalar"] = "tokens_pca"  # docs/method.md, "Evaluation"
    fid_images: int = 10000                 # data without a factor grid (CelebA): generated and real images for FID
    inception_weights: Optional[str] = None  # local FID Inception weights (else $DISDIS_INCEPTION_WEIGHTS; none: no FID)

    key_prefix = "eval."

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("batch_size", "fid_images"):
            if getattr(self, key) < 1:
                raise ConfigError(f"eval.{key}: expected a positive integer, got {getattr(self, key)!r}")


@dataclass
class FirstStageTrainConfig(TrainConfig):
    """How a diffusion run trains its own first stage when ``first_stage_run`` is not given.

    Project choices (the released autoencoder came pretrained): ~4 epochs of Shapes3D at batch
    64 with the autoencoder betas of latent diffusion and a short EMA.
    """
    batch_size: int = 64
    total_kimg: float = 2048.0
    adam_betas: tuple[float, float] = (0.5, 0.9)
    ema_halflife_kimg: float = 10.0
    checkpoint_every_kimg: float = 64.0
    log_every_kimg: float = 3.2


@dataclass
class RunConfig:
    name: str = "run"
    stage: Literal["first_stage", "diffusion"] = "diffusion"
    model: str = "disentangled_diffusion"   # see disdis.models.MODELS
    run_dir: Optional[str] = None           # null: a new numbered folder under runs_root
    runs_root: str = "runs"
    first_stage_run: Optional[str] = None   # stage diffusion: a trained first stage (run folder or checkpoint);
                                            # null: the run trains its own first, with first_stage_train
    data: DataConfig = field(default_factory=DataConfig)
    first_stage: FirstStageConfig = field(default_factory=FirstStageConfig)
    units: UnitsConfig = field(default_factory=UnitsConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    anchoring: AnchoringConfig = field(default_factory=AnchoringConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    first_stage_train: FirstStageTrainConfig = field(default_factory=FirstStageTrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# keys that moved to another section: read from older config files, refused as overrides
MOVED = {**{f"train.{key}": f"anchoring.{key}" for key in ("refit_every", "refit_unit", "refit_source", "refit_images")},
         "eval.ddim_steps": "diffusion.ddim_steps"}


def load_run_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read a run config (YAML + ``key=value`` overrides) and check that its sections agree."""
    for item in overrides:
        key = item.partition("=")[0]
        if key in MOVED:
            raise ConfigError(f"{key}: this setting is now {MOVED[key]}")
    data = read_run_file(path) if path is not None else {}
    cfg = config_from_dict(RunConfig, apply_overrides(data, overrides))
    check_run_config(cfg)
    return cfg


def read_run_file(path: str | Path) -> dict:
    """A run config file (or preset) as a dict, with the keys of older versions in their new places."""
    return _move_keys(read_yaml(presets.resolve(path)))


def _move_keys(data: dict) -> dict:
    """``data`` with the keys of :data:`MOVED` in their new sections (where both are set, the new one wins)."""
    for old, new in MOVED.items():
        (section, key), (target, _) = old.split("."), new.split(".")
        if key in (data.get(section) or {}):
            value = data[section].pop(key)
            data.setdefault(target, {}).setdefault(key, value)
        (data.get("first_stage_train") or {}).pop(key, None)
    return data


def check_run_config(cfg: RunConfig) -> None:
    """Raise ConfigError naming the key when sections do not fit together."""
    if not cfg.data.path:
        raise ConfigError("data.path: required (a dataset file or folder, e.g. data.path=3dshapes.h5)")
    if cfg.stage == "first_stage":
        if cfg.first_stage.kind == "identity":
            raise ConfigError("first_stage.kind: 'identity' has nothing to train (stage=first_stage)")
        return
    res = cfg.data.resolution
    if res is not None and cfg.units.resolution != res:
        raise ConfigError(f"units.resolution: {cfg.units.resolution} differs from data.resolution {res}")
    if cfg.units.in_channels != cfg.first_stage.in_channels:
        raise ConfigError(f"units.in_channels: {cfg.units.in_channels} differs from first_stage.in_channels "
                          f"{cfg.first_stage.in_channels}")
    latent_channels = cfg.first_stage.in_channels if cfg.first_stage.kind == "identity" else cfg.first_stage.latent_channels
    factor = 1 if cfg.first_stage.kind == "identity" else 2 ** (len(cfg.first_stage.channel_mult) - 1)
    for key in ("in_channels", "out_channels"):
        if getattr(cfg.unet, key) != latent_channels:
            raise ConfigError(f"unet.{key}: {getattr(cfg.unet, key)} differs from the first stage's "
                              f"{latent_channels} latent channels")
    if res is not None and cfg.unet.resolution * factor != res:
        raise ConfigError(f"unet.resolution: {cfg.unet.resolution} does not match the latent size "
                          f"{res // factor} (data.resolution {res} / first-stage downsampling {factor})")
    if cfg.diffusion.ddim_steps > cfg.diffusion.num_steps:
        raise ConfigError(f"diffusion.ddim_steps: {cfg.diffusion.ddim_steps} is more than the "
                          f"{cfg.diffusion.num_steps} diffusion steps")
    if cfg.unet.context_tokens not in (0, cfg.units.num_units):
        raise ConfigError(f"unet.context_tokens: expected 0 or units.num_units ({cfg.units.num_units}), "
                          f"got {cfg.unet.context_tokens}")
    if cfg.unet.context_dim != cfg.units.token_dim:
        raise ConfigError(f"unet.context_dim: {cfg.unet.context_dim} differs from units.token_dim {cfg.units.token_dim}")
