"""Checkpoint files: round trip, atomic writes, and rejection of truncated or corrupt files."""

import os

import pytest
import torch

from disdis.train import checkpoint as ckpt


def sample_tensors():
    g = torch.Generator().manual_seed(0)
    return {"model/w": torch.randn(4, 3, generator=g), "model/step": torch.tensor(7),
            "optim/0/exp_avg": torch.randn(5, generator=g).to(torch.bfloat16), "flag": torch.tensor([True, False])}


def test_round_trip_is_exact(tmp_path):
    path = ckpt.save_checkpoint(ckpt.checkpoint_path(tmp_path, 12), sample_tensors(), {"step": 12, "groups": [{"lr": 1e-4}]})
    tensors, meta = ckpt.load_checkpoint(path)
    assert meta == {"step": 12, "groups": [{"lr": 1e-4}]}
    for key, value in sample_tensors().items():
        assert tensors[key].dtype == value.dtype and torch.equal(tensors[key], value)
    assert ckpt.list_checkpoints(tmp_path) == [path] and path.name == "ckpt-000000012.safetensors"


def test_truncated_checkpoint_is_rejected_with_a_clear_error(tmp_path):
    path = ckpt.save_checkpoint(tmp_path / "ckpt-000000001.safetensors", sample_tensors(), {"step": 1})
    data = path.read_bytes()
    for size in (len(data) - 10, len(data) // 2, 5, 0):
        path.write_bytes(data[:size])
        with pytest.raises(ckpt.CheckpointError, match="truncated or corrupt"):
            ckpt.load_checkpoint(path)


def test_flipped_byte_is_caught_by_the_checksum(tmp_path):
    path = ckpt.save_checkpoint(tmp_path / "ckpt-000000001.safetensors", sample_tensors(), {"step": 1})
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # inside the tensor data, after the header
    path.write_bytes(bytes(data))
    with pytest.raises(ckpt.CheckpointError, match="checksum"):
        ckpt.load_checkpoint(path)


def test_other_safetensors_files_are_not_checkpoints(tmp_path):
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(2)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(ckpt.CheckpointError, match="not a disdis checkpoint"):
        ckpt.load_checkpoint(tmp_path / "x.safetensors")
    with pytest.raises(ckpt.CheckpointError, match="not found"):
        ckpt.load_checkpoint(tmp_path / "missing.safetensors")


def test_interrupted_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    first = ckpt.save_checkpoint(ckpt.checkpoint_path(tmp_path, 1), sample_tensors(), {"step": 1})

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the process dies between writing and renaming
    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(ckpt.checkpoint_path(tmp_path, 2), sample_tensors(), {"step": 2})
    assert ckpt.list_checkpoints(tmp_path) == [first]
    assert ckpt.load_checkpoint(first)[1] == {"step": 1}
    # a stray temporary file from a hard kill is ignored
    (tmp_path / ".ckpt-000000003.safetensors.tmp-99").write_bytes(b"partial")
    assert ckpt.list_checkpoints(tmp_path) == [first]


def test_prune_keeps_the_newest(tmp_path):
    for step in (1, 2, 3):
        ckpt.save_checkpoint(ckpt.checkpoint_path(tmp_path, step), {"x": torch.zeros(1)}, {"step": step})
    ckpt.prune_checkpoints(tmp_path, keep=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["ckpt-000000002.safetensors", "ckpt-000000003.safetensors"]


def test_optimizer_state_round_trip():
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, betas=(0.5, 0.9))
    for _ in range(3):
        net(torch.randn(4, 3)).square().sum().backward()
        opt.step()
    tensors, groups = ckpt.optimizer_state(opt)
    import json
    groups = json.loads(json.dumps(groups))  # as stored: JSON
    fresh = torch.optim.AdamW(net.parameters(), lr=5.0)
    ckpt.load_optimizer_state(fresh, tensors, groups)
    a, b = opt.state_dict(), fresh.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for i in a["state"]:
        for k in a["state"][i]:
            assert torch.equal(a["state"][i][k], b["state"][i][k])
