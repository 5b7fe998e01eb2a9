"""The training loop on tiny stand-in models: exact resume, data order, EMA, schedules, NaN stop."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from disdis.errors import ConfigError
from disdis.train import NonFiniteLossError, TrainConfig, train
from disdis.train.checkpoint import list_checkpoints, load_checkpoint
from disdis.train.ema import EMA
from disdis.train.loop import _Schedule
from disdis.train.logger import read_csv_log
from disdis.train.sampler import StepBatchSampler
from train_standins import TinyDenoiser, TinyImages

STEP_KIMG = 16 / 1000  # one step of batch 16


def config(**kw):
    base = dict(batch_size=16, total_kimg=12 * STEP_KIMG, lr=3e-3, ema_halflife_kimg=0.1, checkpoint_every_kimg=4 * STEP_KIMG,
                log_every_kimg=4 * STEP_KIMG, keep_checkpoints=5, num_workers=0, device="cpu")
    return TrainConfig(**{**base, **kw})


def run(cfg, run_dir, resume=False, seed=0, method=TinyDenoiser, **options):
    torch.manual_seed(seed)
    return train(method(**options), TinyImages(64), cfg, run_dir, resume=resume)


@pytest.mark.parametrize("source", ["subset", "recent"])
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path, source):
    cfg = config()
    run(cfg, tmp_path / "a", refit_source=source)
    # "interrupted" after 6 steps: the newest checkpoint (step 6) is lost, resume from step 4
    run(dataclasses.replace(cfg, total_kimg=6 * STEP_KIMG), tmp_path / "b", refit_source=source)
    # a run's length changes none of its steps: the shorter run's step 4 is the longer one's
    # (benchmarks/target_by_kimg.py reads a checkpoint at K kimg as the run of train.total_kimg=K)
    early_a, _ = load_checkpoint(tmp_path / "a/checkpoints/ckpt-000000004.safetensors")
    early_b, _ = load_checkpoint(tmp_path / "b/checkpoints/ckpt-000000004.safetensors")
    assert sorted(early_a) == sorted(early_b) and all(torch.equal(early_a[k], early_b[k]) for k in early_a)
    (tmp_path / "b/checkpoints/ckpt-000000006.safetensors").unlink()
    run(cfg, tmp_path / "b", resume=True, seed=123, refit_source=source)  # a different global seed must not matter
    a, meta_a = load_checkpoint(tmp_path / "a/checkpoints/ckpt-000000012.safetensors")
    b, meta_b = load_checkpoint(tmp_path / "b/checkpoints/ckpt-000000012.safetensors")
    # the anchors are module state: in the weights and in the EMA copy, fitted
    assert sorted(a) == sorted(b) and a["model/anchor_state.fitted"] == a["ema/anchor_state.fitted"] == 1
    assert ("hook/anchor_refit/recent_tokens" in a) == (source == "recent")
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert meta_a.pop("train_seconds") > 0 and meta_b.pop("train_seconds") > 0  # wall time, not state
    assert meta_a == meta_b
    # the log reads as if the run had never stopped
    steps = [row["step"] for row in read_csv_log(tmp_path / "b/logs/train.csv")]
    assert steps == [4, 8, 12]
    # one fit per epoch (4 steps), saved under the run
    assert sorted(p.name for p in (tmp_path / "a/fits").iterdir()) == [f"fit-{s:09d}.safetensors" for s in (4, 8, 12)]


def test_resume_of_a_finished_run_does_nothing(tmp_path):
    cfg = config(total_kimg=4 * STEP_KIMG)
    run(cfg, tmp_path)
    before = load_checkpoint(tmp_path / "checkpoints/ckpt-000000004.safetensors")[0]
    result = run(cfg, tmp_path, resume=True)
    assert result.step == 4 and [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["ckpt-000000004.safetensors"]
    after = load_checkpoint(tmp_path / "checkpoints/ckpt-000000004.safetensors")[0]
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_time_budget_stops_with_a_checkpoint_and_counts_over_resumes(tmp_path, capsys):
    """train.max_minutes: the run stops, saved, once its training time (summed over sessions) reaches the
    budget; resumed, a spent run does nothing, and a larger budget continues it."""
    cfg = config(total_kimg=5000 * STEP_KIMG, max_minutes=0.0005)  # 30 ms of a 5000-step run
    first = run(cfg, tmp_path)
    newest = list_checkpoints(tmp_path / "checkpoints")[-1]
    meta = load_checkpoint(newest)[1]
    assert 0 < first.step < 5000 and meta["step"] == first.step and meta["train_seconds"] >= 0.03
    assert "time budget reached" in capsys.readouterr().err
    again = run(cfg, tmp_path, resume=True)
    assert again.step == first.step and "minutes are spent" in capsys.readouterr().err
    budget = meta["train_seconds"] + 0.05
    longer = run(dataclasses.replace(cfg, max_minutes=budget / 60), tmp_path, resume=True)
    meta = load_checkpoint(list_checkpoints(tmp_path / "checkpoints")[-1])[1]
    assert longer.step > first.step and meta["train_seconds"] >= budget


class ExplodingDenoiser(TinyDenoiser):
    """Its loss becomes NaN from the 7th call on."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, images):
        out = super().forward(images)
        self.calls += 1
        if self.calls >= 7:
            out["loss"] = out["loss"] * float("nan")
        return out


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    torch.manual_seed(0)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss \(nan\) at step 6.*ckpt-000000004"):
        train(ExplodingDenoiser(), TinyImages(64), config(), tmp_path)
    found = list_checkpoints(tmp_path / "checkpoints")
    assert [p.name for p in found] == ["ckpt-000000004.safetensors"]
    tensors, _ = load_checkpoint(found[-1])
    assert all(torch.isfinite(v).all() for v in tensors.values() if v.is_floating_point())


def test_sampler_splits_the_global_batch_and_resumes_in_place():
    full = StepBatchSampler(50, 8, seed=1)
    halves = [StepBatchSampler(50, 8, seed=1, rank=r, world_size=2) for r in range(2)]
    it_full, it_halves = iter(full), [iter(h) for h in halves]
    seen = []
    for step in range(14):  # 6 steps per epoch (2 images left out each epoch)
        batch = next(it_full)
        assert batch == next(it_halves[0]) + next(it_halves[1]) == full.global_batch(step).tolist()
        seen.append(batch)
    assert len(set(sum(seen[:6], []))) == 48  # an epoch visits distinct images
    assert seen[6:12] != seen[:6]  # and the next epoch is a new permutation
    resumed = iter(StepBatchSampler(50, 8, seed=1, start_step=9))
    assert [next(resumed) for _ in range(5)] == seen[9:14]
    with pytest.raises(ConfigError, match="divisible"):
        StepBatchSampler(50, 9, seed=1, world_size=2)


def test_ema_matches_the_half_life_in_images():
    net = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(net.weight)
    ema = EMA(net, halflife_images=1000, warmup=False)
    with torch.no_grad():
        net.weight.fill_(1.0)
    for _ in range(10):  # 10 steps of 100 images = one half-life
        ema.update(net, images_per_step=100)
    assert math.isclose(float(ema.module.weight), 0.5, rel_tol=1e-6)
    warm = EMA(net, halflife_images=1e9, warmup=True)
    assert warm.decay(512) == pytest.approx(0.1)  # (1 + 0) / (10 + 0)


def test_ema_scope_averages_the_named_modules_only():
    """ema_modules: ["a"] averages a's weights; b's weights in the copy follow the live model."""
    net = torch.nn.Sequential()
    net.add_module("a", torch.nn.Linear(1, 1, bias=False))
    net.add_module("b", torch.nn.Linear(1, 1, bias=False))
    for p in net.parameters():
        torch.nn.init.zeros_(p)
    ema = EMA(net, halflife_images=1000, warmup=False, modules=["a"])
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(1.0)
    for _ in range(10):
        ema.update(net, images_per_step=100)
    assert math.isclose(float(ema.module.a.weight), 0.5, rel_tol=1e-6)
    assert float(ema.module.b.weight) == 1.0
    everything = EMA(net, halflife_images=1000, warmup=False)
    assert everything.averaged == {"a.weight", "b.weight"}
    with pytest.raises(ConfigError, match="train.ema_modules.*'unet'"):
        EMA(net, halflife_images=1000, modules=["unet"])


def test_lr_warmup_is_linear_in_images():
    """lr_warmup_kimg: the factor rises linearly from lr_warmup_start to 1 over that many images
    (EncDiff: 10k steps of 128, from 1e-6), then stays at 1."""
    from disdis.train.optim import lr_factor
    cfg = config(batch_size=128, lr_warmup_kimg=1280, lr_warmup_start=1e-6)
    assert lr_factor(cfg, 0) == pytest.approx(1e-6)
    assert lr_factor(cfg, 5000) == pytest.approx(1e-6 + (1 - 1e-6) * 0.5)
    assert lr_factor(cfg, 10000) == lr_factor(cfg, 10 ** 6) == 1.0
    assert lr_factor(config(), 0) == 1.0  # no warm-up by default (released)


def test_schedule_counts_images():
    from disdis.anchoring import AnchoringConfig
    from disdis.models.anchor_refit import AnchorRefit
    from disdis.train.hooks import HookContext
    cfg = config(batch_size=512, total_kimg=51200, checkpoint_every_kimg=512, log_every_kimg=25.6)
    sched = _Schedule.build(cfg, num_items=480000)
    assert (sched.total, sched.checkpoint, sched.log, sched.steps_per_epoch) == (100000, 1000, 50, 937)
    ctx = HookContext(None, None, cfg, torch.device("cpu"), False, None, None, sched.steps_per_epoch)

    def refit_interval(**anchoring):
        return AnchorRefit(type("M", (), {"anchoring": AnchoringConfig(**anchoring)})()).interval(ctx)
    assert refit_interval(refit_every=1) == 937 and refit_interval(refit_every=256, refit_unit="kimg") == 500


@pytest.mark.parametrize("key, value, message", [
    ("batch_size", 0, "train.batch_size"), ("total_kimg", -1, "train.total_kimg"),
    ("log_every_kimg", 0, "train.log_every_kimg"), ("grad_clip", 0.0, "train.grad_clip"),
    ("max_minutes", 0, "train.max_minutes"),
])
def test_bad_train_settings(key, value, message):
    with pytest.raises(ConfigError, match=message):
        config(**{key: value})


def test_step_seed_streams_differ():
    from disdis.models.anchor_refit import FIT_STREAM
    from disdis.train.sampler import step_seed
    seeds = {step_seed(0, s, r) for s in range(5) for r in (0, 1, FIT_STREAM)}
    assert len(seeds) == 15 and all(0 <= s < 2**63 for s in seeds)
    assert np.isscalar(step_seed(0, 1, 0))


def test_frozen_modules_do_not_move_during_freeze_kimg(tmp_path, shapes3d_grid_npz, capsys):
    """train.freeze_modules: [extractor] for the first 0.16 kimg (10 steps): the extractor's weights
    are those of step 0 until then and move after; the U-Net moves from the start."""
    from disdis.cli import main
    from disdis.train.checkpoint import list_checkpoints, load_checkpoint
    from train_standins import tiny_run_config, write_yaml
    cfg = tiny_run_config(shapes3d_grid_npz, tmp_path / "run", train={"freeze_modules": ["extractor"], "freeze_kimg": 0.16,
                                                                      "probe_images": 0})
    assert main(["train", write_yaml(tmp_path / "t.yaml", cfg), "train.checkpoint_every_kimg=0.16"]) == 0
    (first, _), (second, _) = [load_checkpoint(p) for p in list_checkpoints(tmp_path / "run" / "checkpoints")[-2:]]
    assert main(["train", write_yaml(tmp_path / "t.yaml", cfg), f"run_dir={tmp_path / 'init'}", "train.total_kimg=0.016"]) == 0
    init, _ = load_checkpoint(list_checkpoints(tmp_path / "init" / "checkpoints")[-1])
    key, unet_key = "model/extractor.fc.1.weight", "model/unet.out.2.weight"
    assert torch.equal(first[key], init[key]) and not torch.equal(second[key], first[key])
    assert not torch.equal(first[unet_key], init[unet_key])
    assert main(["train", write_yaml(tmp_path / "t.yaml", cfg), f"run_dir={tmp_path / 'bad'}",
                 "train.freeze_modules=[encoder]"]) != 0
    assert "train.freeze_modules: the model has no submodule 'encoder'" in capsys.readouterr().err


class _PassThrough(torch.nn.Module):
    """Stands where DDP would (built by the step around the model); counts how often it is built and which
    parameters needed a gradient then."""
    built: list = []

    def __init__(self, model):
        super().__init__()
        self.model = model
        _PassThrough.built.append(sum(p.requires_grad for p in model.parameters()))

    def forward(self, images):
        return self.model(images)


def test_held_modules_leave_the_graph_and_the_wrapper_is_built_again_when_the_hold_changes():
    """The held encoder stops requiring gradients for the first 3 steps, on one process and under a
    wrapper (DDP's place), which the step builds anew when the hold begins and when it ends, each time
    around the parameters that then need a gradient; weights, EMA and Adam moments after 6 steps are
    the same, bit for bit, either way."""
    from disdis.train.loop import TrainStep
    from train_standins import TwoGroupAutoencoder
    cfg = config(freeze_modules=["encoder"], freeze_kimg=3 * STEP_KIMG, seed=5)
    images = TinyImages(16).images
    runs = []
    _PassThrough.built = []
    for wrap in (None, _PassThrough):
        torch.manual_seed(0)
        model = TwoGroupAutoencoder()
        step = TrainStep(model, cfg, torch.device("cpu"), wrap=wrap, freeze_steps=3)
        start = {k: v.clone() for k, v in model.state_dict().items()}
        for i in range(6):
            step(images, i)
            assert any(p.requires_grad for p in model.encoder.parameters()) == (i >= 3)
            assert torch.equal(model.encoder[1].weight, start["encoder.1.weight"]) == (i < 3)
        assert all(p.requires_grad for p in model.parameters())
        runs.append((model.state_dict(), step.ema.module.state_dict(), step.optimizer.state_dict()["state"]))
    everything, held = len(list(model.parameters())), len(list(model.parameters())) - len(list(model.encoder.parameters()))
    assert _PassThrough.built == [everything, held, everything]  # at the start, when holding, when released
    (weights, ema, moments), (weights_ref, ema_ref, moments_ref) = runs
    assert all(torch.equal(weights[k], weights_ref[k]) and torch.equal(ema[k], ema_ref[k]) for k in weights)
    assert all(torch.equal(moments[i][k], moments_ref[i][k]) for i in moments_ref for k in moments_ref[i])


def test_a_run_that_ends_while_holding_returns_every_parameter_trainable(tmp_path):
    model = TinyDenoiser()
    train(model, TinyImages(64), config(total_kimg=2 * STEP_KIMG, freeze_modules=["encoder"], freeze_kimg=4 * STEP_KIMG),
          tmp_path / "run")
    assert all(p.requires_grad for p in model.parameters())


def test_lr_scale_gives_named_submodules_their_own_group():
    from disdis.train.optim import default_param_groups
    net = torch.nn.Sequential()
    net.add_module("a", torch.nn.Linear(2, 2))
    net.add_module("b", torch.nn.Linear(2, 2))
    cfg = config(lr=1e-3, lr_scale={"a": 0.1})
    with pytest.raises(ConfigError, match="train.adam_eps"):
        config(adam_eps=0)
    rest, a = default_param_groups(net, cfg)
    assert a["lr"] == pytest.approx(1e-4) and {id(p) for p in a["params"]} == {id(p) for p in net.a.parameters()}
    assert rest["lr"] == 1e-3 and {id(p) for p in rest["params"]} == {id(p) for p in net.b.parameters()}
    rest, b = default_param_groups(net, config(lr=1e-3, group_eps={"b": 1e-3}))
    assert b["eps"] == 1e-3 and b["lr"] == 1e-3 and {id(p) for p in b["params"]} == {id(p) for p in net.b.parameters()}
    (only,) = default_param_groups(net, config(lr=1e-3))  # the released single group
    assert len(only["params"]) == 4 and only["lr"] == 1e-3
    with pytest.raises(ConfigError, match="train.lr_scale.a"):
        config(lr_scale={"a": 0})
    with pytest.raises(ConfigError, match="train.lr_scale: the model has no submodule 'c'"):
        default_param_groups(net, config(lr_scale={"c": 0.5}))


def test_lr_scale_and_warmup_run_trains_and_resumes(tmp_path, shapes3d_grid_npz):
    """A run with an extractor group at 0.1 x lr and a 40-step warm-up trains, checkpoints the two
    groups at their warmed-up rates of the last step (19 of 40) and resumes."""
    from disdis.cli import main
    from disdis.train.checkpoint import list_checkpoints, load_checkpoint
    from train_standins import tiny_run_config, write_yaml
    cfg = tiny_run_config(shapes3d_grid_npz, tmp_path / "run", train={"lr_scale": {"extractor": 0.1}, "total_kimg": 0.16,
                                                                      "probe_images": 0, "lr_warmup_kimg": 0.64})
    assert main(["train", write_yaml(tmp_path / "t.yaml", cfg)]) == 0
    assert main(["train", "--resume", str(tmp_path / "run"), "train.total_kimg=0.32"]) == 0
    _, meta = load_checkpoint(list_checkpoints(tmp_path / "run" / "checkpoints")[-1])
    factor = 1e-6 + (1 - 1e-6) * 19 / 40
    assert [g["lr"] for g in meta["optimizer_groups"]] == pytest.approx([2e-3 * factor, 2e-4 * factor])
    assert meta["step"] == 20


def test_a_method_without_anchoring_with_two_groups_and_a_hook_resumes_exactly(tmp_path):
    """The loop knows no method: a stand-in autoencoder whose decoder is its own Adam group (betas
    (0.5, 0.9), half the rate, no decay) and whose loss weight a stateful hook sets every 3 steps
    ends a killed-and-resumed run with the weights, moments and hook state of an uninterrupted one."""
    from train_standins import TwoGroupAutoencoder
    cfg = config()
    run(cfg, tmp_path / "a", method=TwoGroupAutoencoder)
    run(dataclasses.replace(cfg, total_kimg=6 * STEP_KIMG), tmp_path / "b", method=TwoGroupAutoencoder)
    (tmp_path / "b/checkpoints/ckpt-000000006.safetensors").unlink()  # resume from step 4: mid-way between hook calls
    run(cfg, tmp_path / "b", resume=True, seed=5, method=TwoGroupAutoencoder)
    a, meta_a = load_checkpoint(tmp_path / "a/checkpoints/ckpt-000000012.safetensors")
    b, meta_b = load_checkpoint(tmp_path / "b/checkpoints/ckpt-000000012.safetensors")
    assert sorted(a) == sorted(b) and "hook/loss_average/total" in a and not any("anchor" in k for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert meta_a.pop("train_seconds") > 0 and meta_b.pop("train_seconds") > 0  # wall time, not state
    assert meta_a == meta_b
    encoder, decoder = meta_a["optimizer_groups"]
    assert (encoder["lr"], tuple(encoder["betas"]), encoder["weight_decay"]) == (3e-3, (0.9, 0.999), 0.01)
    assert (decoder["lr"], tuple(decoder["betas"]), decoder["weight_decay"]) == (1.5e-3, (0.5, 0.9), 0.0)
    assert float(a["model/loss_weight"]) != 1.0  # the hook ran


def test_loader_workers_are_capped_at_the_cpus_this_process_may_use():
    import os
    from disdis.train.loop import _workers
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert _workers(0) == 0 and _workers(1) == 1 and _workers(cpus + 6) == cpus
