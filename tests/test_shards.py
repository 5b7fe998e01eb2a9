"""``train.shards``: the step's batch over threads of one process (disdis.train.shards, disdis.draws)."""

import threading

import pytest
import torch
from torch import nn

from disdis import draws
from disdis.errors import ConfigError
from disdis.models.method import Method
from disdis.train import TrainConfig, TrainStep
from disdis.train.loop import check_step
from disdis.train.sampler import step_seed
from disdis.train.shards import SHARD_STREAM, ShardedStep, ShardError, merge_outputs


class Shardable(Method):
    """float64: a BatchNorm encoder (running statistics), a draw through disdis.draws, a per-image
    output; ``global_draw`` draws from torch's global generator instead; ``fail`` raises in shard 0
    before its BatchNorm."""

    capabilities = frozenset({"shards"})
    networks = ("encoder",)

    def __init__(self, global_draw: bool = False, fail: bool = False, meet: threading.Barrier | None = None):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 3)).double()
        self.global_draw, self.fail, self.meet = global_draw, fail, meet
        self.threads_seen: list[tuple[int, int]] = []  # (thread, its torch threads) per forward

    def forward(self, x):
        self.threads_seen.append((threading.get_ident(), torch.get_num_threads()))
        if self.meet is not None:  # the shards' forwards must be running at the same time to pass
            self.meet.wait(timeout=30)
        if self.fail and len(x) and x[0, 0] == 0:
            raise RuntimeError("shard failed")
        noise = torch.randn(x.shape, dtype=x.dtype) if self.global_draw else \
            torch.randn(x.shape, dtype=x.dtype, generator=draws.generator())
        y = self.encoder(x + 0.1 * noise)
        return {"loss": y.square().mean(), "units": y.detach(), "extra": y.detach().abs().mean()}


def _batch(n=10):
    return torch.linspace(-1, 1, n * 6, dtype=torch.float64).view(n, 6).sin() + 0.1


def test_draws_come_from_the_threads_own_generator():
    assert draws.generator() is None
    gen, seen = torch.Generator(), []
    with draws.drawing_from(gen):
        assert draws.generator() is gen
        other = threading.Thread(target=lambda: seen.append(draws.generator()))
        other.start()
        other.join()
    assert seen == [None] and draws.generator() is None


def test_sharded_gradients_are_the_shards_run_one_after_the_other():
    """The reference: each shard's weighted loss back-propagated in turn on the main thread, with the
    shard's generator, BatchNorm updated shard 0 then shard 1 (an independent, sequential computation)."""
    torch.manual_seed(0)
    model, images, step = Shardable(), _batch(), 3
    reference = Shardable()
    reference.load_state_dict(model.state_dict())
    for i, chunk in enumerate(images.tensor_split(2)):
        gen = torch.Generator().manual_seed(step_seed(7, step, SHARD_STREAM + i))
        with draws.drawing_from(gen):
            (reference(chunk)["loss"] * len(chunk) / len(images)).backward()
    sharded = ShardedStep(model, 2, seed=7)
    try:
        out, grads = sharded(images, step)
    finally:
        sharded.close()
    start, spans, end = sharded.timeline  # where the step's time went, for benchmarks/train_step.py --breakdown
    assert len(spans) == 2 and all(start <= a <= b <= end for a, b in spans)
    ref_grads = dict(reference.named_parameters())
    names = {id(p): n for n, p in model.named_parameters()}
    assert len(grads) == len(ref_grads)
    for p, g in grads:
        torch.testing.assert_close(g, ref_grads[names[id(p)]].grad, rtol=1e-12, atol=1e-14)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(model.encoder[1], name), getattr(reference.encoder[1], name),
                                   rtol=1e-12, atol=1e-14)
    assert out["units"].shape == (10, 3) and out["loss"].dim() == 0
    assert not model.encoder[1]._forward_hooks and not model.encoder[1]._forward_pre_hooks  # close() took them off


def test_without_randomness_or_batch_statistics_the_shards_give_the_full_batch_gradient():
    """The analytic identity grad mean_B = sum_i (n_i / B) grad mean_(shard i), for uneven shards."""
    torch.manual_seed(1)
    model = Shardable().eval()  # BatchNorm on running statistics: every image on its own
    model.encoder[1].running_var.fill_(2.0)
    x = _batch(11)
    model.forward = lambda b: {"loss": model.encoder(b).square().mean()}  # no draws
    sharded = ShardedStep(model, 3, seed=0)
    try:
        _, grads = sharded(x, 0)
    finally:
        sharded.close()
    full = torch.autograd.grad(model.encoder(x).square().mean(), [p for p, _ in grads])
    for (_, g), f in zip(grads, full):
        torch.testing.assert_close(g, f, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("threads, shards, workers, each", [(2, 2, 2, 1), (1, 2, 1, 1), (4, 2, 2, 2)])
def test_each_shard_runs_on_its_share_of_the_threads_and_the_main_count_stays(threads, shards, workers, each):
    """Each shard on a thread of its own with its share of torch's threads; with fewer threads than shards
    the shards take turns on the threads there are (the gradients the same as on a thread each)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model = Shardable(meet=threading.Barrier(shards) if workers == shards else None)
        sharded = ShardedStep(model, shards, seed=0)
        _, grads = sharded(_batch(), 0)
        sharded.close()
        idents = {ident for ident, _ in model.threads_seen}
        assert len(idents) == workers and threading.get_ident() not in idents
        assert [count for _, count in model.threads_seen] == [each] * shards and torch.get_num_threads() == threads
        model.meet = None
    finally:
        torch.set_num_threads(before)
    torch.manual_seed(0)
    reference = Shardable()
    reference.load_state_dict(model.state_dict())
    sharded = ShardedStep(reference, shards, seed=0)  # on one thread per shard (or as many as there are)
    _, expected = sharded(_batch(), 0)
    sharded.close()
    for (_, g), (_, e) in zip(grads, expected):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-14)


def test_a_draw_from_the_global_generator_in_a_shard_is_an_error():
    sharded = ShardedStep(Shardable(global_draw=True), 2, seed=0)
    try:
        with pytest.raises(ShardError, match="global generator"):
            sharded(_batch(), 0)
    finally:
        sharded.close()


def test_a_failing_shard_raises_its_own_error_and_the_other_stops_waiting():
    images = _batch()
    images[0, 0] = 0.0  # shard 0 fails before its BatchNorm, for which shard 1 waits
    sharded = ShardedStep(Shardable(fail=True), 2, seed=0)
    try:
        with pytest.raises(RuntimeError, match="shard failed"):
            sharded(images, 0)
    finally:
        sharded.close()


def test_outputs_merge_by_shard_size():
    outs = [{"loss": torch.tensor(1.0), "units": torch.zeros(3, 2), "n": 2.0},
            {"loss": torch.tensor(4.0), "units": torch.ones(1, 2), "n": 6.0}]
    merged = merge_outputs(outs, [3, 1])
    assert merged["loss"].item() == pytest.approx(1.75) and merged["n"] == pytest.approx(3.0)
    assert torch.equal(merged["units"], torch.cat([torch.zeros(3, 2), torch.ones(1, 2)]))


def test_a_sharded_train_step_is_reproducible_bit_for_bit():
    def two_steps():
        torch.manual_seed(0)
        model = Shardable()
        step = TrainStep(model, TrainConfig(batch_size=10, lr=1e-2, shards=2), torch.device("cpu"))
        losses = [step(_batch(), n).loss for n in range(2)]
        step.close()
        return losses, model.state_dict()
    (la, a), (lb, b) = two_steps(), two_steps()
    assert la == lb and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("model, train, match", [
    (nn.Linear(2, 2), {}, "does not declare"),
    (Shardable(), {"compile": True}, "not with train.compile"),
])
def test_check_step_refuses_what_shards_cannot_run(model, train, match):
    with pytest.raises(ConfigError, match=match):
        check_step(model, TrainConfig(shards=2, **train))


def test_check_step_refuses_dropout_and_torchrun(monkeypatch):
    model = Shardable()
    model.encoder.append(nn.Dropout(0.1))
    with pytest.raises(ConfigError, match="dropout 'encoder.4'"):
        check_step(model, TrainConfig(shards=2))
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="one process only"):
        check_step(Shardable(), TrainConfig(shards=2))
    check_step(Shardable(), TrainConfig(shards=1))
    with pytest.raises(ConfigError, match="train.shards: expected from 1 to batch_size"):
        TrainConfig(shards=5, batch_size=4)
