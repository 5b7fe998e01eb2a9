"""The typed configuration: YAML + dotted overrides, strict keys and types."""

from dataclasses import dataclass, field
from typing import Literal, Optional, Union

import pytest
import yaml

from disdis.config import config_to_dict, load_config, save_config
from disdis.errors import ConfigError


@dataclass
class Inner:
    lr: float = 1e-4
    steps: int = 10
    resolutions: Union[Literal["all"], list[int]] = "all"


@dataclass
class Outer:
    name: str = "run"
    inner: Inner = field(default_factory=Inner)
    seed: Optional[int] = None
    use_ema: bool = True
    channels: tuple[int, ...] = (1, 2, 4)


def write(tmp_path, data):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_yaml_and_overrides(tmp_path):
    path = write(tmp_path, {"name": "a", "inner": {"steps": 5}})
    cfg = load_config(Outer, path, ["inner.lr=3e-4", "seed=7", "inner.resolutions=[16, 8]", "channels=[1,2]"])
    assert cfg.name == "a" and cfg.inner.steps == 5 and cfg.inner.lr == 3e-4 and cfg.seed == 7
    assert cfg.inner.resolutions == [16, 8] and cfg.channels == (1, 2) and cfg.use_ema is True


def test_int_accepted_for_float_and_yaml_string_float(tmp_path):
    cfg = load_config(Outer, write(tmp_path, {"inner": {"lr": "1e-3"}}), ["inner.steps=3"])
    assert cfg.inner.lr == 1e-3
    assert load_config(Outer, None, ["inner.lr=1"]).inner.lr == 1.0


@pytest.mark.parametrize("override, message", [
    ("inner.lrr=1", "unknown key 'inner.lrr'"),
    ("nosuch=1", "unknown key 'nosuch'"),
    ("inner.steps=abc", "inner.steps: expected an integer"),
    ("inner.steps=1.5", "inner.steps: expected an integer"),
    ("use_ema=maybe", "use_ema: expected true/false"),
    ("inner.resolutions=some", "inner.resolutions: expected"),
    ("inner=3", "inner: expected a section"),
    ("noequals", "expected key=value"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(".", r"\.")):
        load_config(Outer, None, [override])


def test_missing_and_bad_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(Outer, tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(Outer, bad)


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(Outer, None, ["inner.steps=9", "channels=[3]"])
    save_config(cfg, tmp_path / "resolved.yaml")
    again = load_config(Outer, tmp_path / "resolved.yaml")
    assert again == cfg
    assert config_to_dict(again)["channels"] == [3]


def test_atomic_write_leaves_the_old_file_on_failure(tmp_path):
    from disdis.io import atomic_path, write_text_atomic
    path = write_text_atomic(tmp_path / "a.yaml", "old")
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.yaml"]
    with atomic_path(tmp_path / "b.png") as tmp:
        assert tmp.suffix == ".png" and tmp.parent == tmp_path
        tmp.write_text("x")
    assert (tmp_path / "b.png").read_text() == "x"


def test_typed_mapping_values_are_converted():
    from disdis.train.config import TrainConfig
    cfg = load_config(TrainConfig, None, ["group_eps={extractor: 1e-3}"])
    assert cfg.group_eps == {"extractor": 1e-3}
    with pytest.raises(ConfigError, match="lr_scale.unet: expected a number"):
        load_config(TrainConfig, None, ["lr_scale={unet: fast}"])
