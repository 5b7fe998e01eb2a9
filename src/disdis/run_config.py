"""The root configuration of a run: its data, its method, training and evaluation.

``method: {name: ..., ...}`` picks the method's dataclass from the registry
(:mod:`disdis.models`); ``requires: {NAME: RUN}`` names the runs whose trained modules it
builds on (a first stage). Sizes that follow from other settings are derived where not
written. A run directory keeps the resolved config as ``config.yaml``. Files of older
versions (flat ``units``/``unet``/... sections, ``stage``, ``first_stage_run``) are read
into this layout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from disdis import presets
from disdis.config import apply_overrides, config_from_dict, merge_sections, read_yaml
from disdis.errors import ConfigError
from disdis.metrics.suite import Sampling
from disdis.models import DEFAULT_METHOD, MethodConfig
from disdis.models.disentangled_diffusion import DisentangledDiffusionConfig
from disdis.train.config import TrainConfig


@dataclass
class DataConfig:
    path: str = ""                          # dataset file or folder (any kind disdis.data opens)
    kind: Optional[str] = None              # inferred from the file when null
    resolution: Optional[int] = 64          # images are resized to this (null: native)
    subgrid: Optional[dict[str, list[int]]] = None  # keep only these classes of these factors

    def __post_init__(self) -> None:  # the settings alone (the file is checked when opened)
        from disdis.data.kinds import check_kind
        check_kind(self.kind, "data.kind")
        if self.resolution is not None and self.resolution < 1:
            raise ConfigError(f"data.resolution: expected a positive number of pixels (or null: the "
                              f"file's own), got {self.resolution}")


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
class RunConfig:
    name: str = "run"
    run_dir: Optional[str] = None           # null: a new numbered folder under runs_root
    runs_root: str = "runs"
    requires: dict[str, str] = field(default_factory=dict)  # dependency -> run folder or checkpoint
                                            # (first_stage: RUN); one the method needs and this leaves
                                            # out, the run trains itself, in RUN/<dependency>
    data: DataConfig = field(default_factory=DataConfig)
    method: MethodConfig = field(default_factory=DisentangledDiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# the sections a method's config holds, at the top level in files of older versions
OLD_METHOD_SECTIONS = ("first_stage", "units", "unet", "diffusion", "anchoring", "first_stage_train")
# keys that moved: read from older config files, refused as overrides. MOVED holds settings (one
# value each), MOVED_SECTIONS sections, whose keys moved with them (units.x -> method.units.x).
MOVED = {**{f"train.{key}": f"method.anchoring.{key}" for key in ("refit_every", "refit_unit", "refit_source", "refit_images")},
         "eval.ddim_steps": "method.diffusion.ddim_steps", "stage": "method.name", "model": "method.name",
         "first_stage_run": "requires.first_stage"}
MOVED_SECTIONS = {**{section: f"method.{section}" for section in OLD_METHOD_SECTIONS},
                  "model": "method"}  # model.x: the model's settings are the method's


def moved_key(key: str) -> str | None:
    """Where the override key ``key`` of an older version lives now (None: it did not move)."""
    if key in MOVED:
        return MOVED[key]
    for old, new in MOVED_SECTIONS.items():
        if key == old or key.startswith(old + "."):
            return new + key[len(old):]
    return None


def load_run_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = (), check: bool = True) -> RunConfig:
    """Read a run config (YAML + ``key=value`` overrides), derive the sizes it leaves out and check
    every key and that the sections agree; without ``check`` a config that names no data.path yet
    passes (``--print-config`` shows a preset before the data is chosen)."""
    for item in overrides:
        key = item.partition("=")[0]
        new = moved_key(key)
        if new is not None:
            raise ConfigError(f"{key}: this setting is now {new}")
        for old, value_key in MOVED.items():  # a setting of one value has no keys below it
            if key.startswith(old + "."):
                raise ConfigError(f"{key}: {old} was a single setting, now {value_key}; it has no "
                                  f"{key[len(old) + 1:]!r} (give {value_key}=...)")
    data = read_run_file(path) if path is not None else {}
    cfg = run_config_from_dict(apply_overrides(data, overrides))
    check_run_config(cfg, require_data=check)
    return cfg


def run_config_from_dict(data: dict) -> RunConfig:
    """The typed config of a (new-layout) dict, with the method's derived sizes filled in."""
    data = dict(data)
    method = data.get("method", {})
    if isinstance(method, dict):
        data_cfg = config_from_dict(DataConfig, data.get("data") or {}, "data")
        data["method"] = MethodConfig.schema(method, "method").derive(dict(method), data_cfg)
    return config_from_dict(RunConfig, data)


def read_run_file(path: str | Path, seen: tuple[str, ...] = ()) -> dict:
    """A run config file (or preset) as a dict, with the keys of older versions in their new places.

    ``base: PRESET_OR_FILE`` reads that config first and lays this one over it, section by section
    (a ``method`` of another name replaces the base's method section: its settings do not carry over).
    """
    data = _move_keys(read_yaml(presets.resolve(path)))
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str) or base in seen:
        raise ConfigError(f"{path}: base: expected the name of another preset or config file, got {base!r}")
    under = read_run_file(base, (*seen, str(base)))
    name = (data.get("method") or {}).get("name")
    if name is not None and name != (under.get("method") or {}).get("name", DEFAULT_METHOD):
        under.pop("method", None)
    return merge_sections(under, data)


def _move_keys(data: dict) -> dict:
    """``data`` in this version's layout: a file of an older one has its method's sections at the top
    level (and ``stage``, ``model``, ``first_stage_run``, the DyGA refit keys in ``train``, the DDIM
    steps in ``eval``); where both an old and a new place are set, the new one wins."""
    for section in ("train", "first_stage_train"):
        for key in ("refit_every", "refit_unit", "refit_source", "refit_images"):
            value = (data.get(section) or {}).pop(key, None)
            if value is not None and section == "train":
                data.setdefault("anchoring", {}).setdefault(key, value)
    if "ddim_steps" in (data.get("eval") or {}):
        data.setdefault("diffusion", {}).setdefault("ddim_steps", data["eval"].pop("ddim_steps"))
    stage, model = data.pop("stage", None), data.pop("model", None)
    old = {section: data.pop(section) for section in OLD_METHOD_SECTIONS if section in data}
    if stage is None and model is None and not old:
        return data
    method = data.setdefault("method", {})
    method.setdefault("name", "first_stage" if stage == "first_stage" else model or DEFAULT_METHOD)
    if method["name"] == "first_stage":  # the other sections of such a file were unused
        old = {"first_stage": old["first_stage"]} if "first_stage" in old else {}
    for section, values in old.items():
        method[section] = {**(values or {}), **(method.get(section) or {})}
    if data.get("first_stage_run"):
        data.setdefault("requires", {}).setdefault("first_stage", data["first_stage_run"])
    data.pop("first_stage_run", None)
    return data


def check_run_config(cfg: RunConfig, require_data: bool = True) -> None:
    """Raise ConfigError naming the key when sections do not fit together (and, with
    ``require_data``, when no data.path is given). Nothing here opens the data."""
    if require_data and not cfg.data.path:
        raise ConfigError("data.path: required (a dataset file or folder, e.g. data.path=3dshapes.h5)")
    unknown = sorted(set(cfg.requires) - set(cfg.method.dependency_kinds))
    if unknown:
        raise ConfigError(f"requires.{unknown[0]}: {cfg.method.name} depends on no {unknown[0]!r} "
                          f"(it can require: {', '.join(sorted(cfg.method.dependency_kinds)) or 'nothing'})")
    unused = sorted({name for name, source in cfg.requires.items() if source} - set(cfg.method.needs()))
    if unused:
        raise ConfigError(f"requires.{unused[0]}: this {cfg.method.name} configuration builds on no {unused[0]} "
                          f"(it builds on: {', '.join(cfg.method.needs()) or 'nothing'})")
    cfg.method.check(cfg.data)
