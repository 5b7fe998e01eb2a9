"""A training step split over threads of one process (``train.shards``).

On a CPU of few cores one process's torch threads share the step's many small operations poorly:
on the demo's 2 cores, the step on 2 threads takes 1.22-1.32x the time of one core alone on half
the batch (docs/demo-study.md, "Where two threads lose"). With ``train.shards = N`` the step's
batch is cut into N shards, and each runs its forward and backward on a thread of its own with
1/N of the process's torch threads (torch releases the GIL inside every operation; with fewer
threads than shards, the shards take turns on the threads there are, to the same result); the
gradients are summed in shard order. This is data parallelism as DDP does it over N processes,
without the second process and its all-reduce.

It stays exact and reproducible:

* each shard draws from a generator of its own, seeded from (seed, step, shard) and set with
  :func:`disdis.draws.drawing_from`; torch's global generator must stay untouched, which every
  step checks (a draw from it would depend on the threads' timing);
* modules with running statistics (BatchNorm) normalise each shard by its own statistics, as
  under DDP, and update their running averages shard after shard, in order;
* a method opts in with the ``"shards"`` capability, declaring that its training forward writes
  no other state and draws through :mod:`disdis.draws`.
"""

from __future__ import annotations

import functools
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor, wait

import torch
from torch import nn

from disdis import draws
from disdis.errors import DisdisError
from disdis.train.sampler import step_seed

SHARD_STREAM = 1 << 31  # the random streams of the shards, apart from the ranks' and the hooks'

_local = threading.local()  # .shard: the index of the shard this thread runs, None outside one


class ShardError(DisdisError):
    """A shard's forward broke a rule of sharded steps (a draw from torch's global generator)."""


class _Aborted(Exception):
    """Another shard failed while this one waited for its turn."""


def _init_thread(threads: int, ready: threading.Barrier) -> None:
    torch.get_num_threads()  # ATen sets a thread's count lazily on first use, from the global one:
    torch.set_num_threads(threads)  # do that first, then set this thread's own
    _local.shard = None
    ready.wait()  # one task per thread: the pool starts every thread now, with its count set


def merge_outputs(outs: list[dict], sizes: list[int]) -> dict:
    """The shards' outputs as one step's: scalars averaged by shard size, per-image tensors
    (everything else, batch first) concatenated; all detached."""
    total = sum(sizes)
    merged = {}
    for key in outs[0]:
        values = [out[key].detach() if torch.is_tensor(out[key]) else out[key] for out in outs]
        if torch.is_tensor(values[0]) and values[0].dim() > 0:
            merged[key] = torch.cat(values)
        else:
            merged[key] = sum(value * (size / total) for value, size in zip(values, sizes))
    return merged


class _Turns:
    """Modules with running statistics run shard 0's forward first, then shard 1's, and so on
    (per call, so a module called twice in a forward alternates the same way): their running
    averages are updated in the same order at every step."""

    def __init__(self, model: nn.Module, count: int):
        self.count, self.cond, self.next, self.aborted = count, threading.Condition(), {}, False
        self.handles = []
        for module in model.modules():
            if getattr(module, "running_mean", None) is not None:
                self.handles += [module.register_forward_pre_hook(self._wait),
                                 module.register_forward_hook(self._pass)]

    def reset(self) -> None:
        self.next.clear()
        self.aborted = False

    def abort(self) -> None:
        with self.cond:
            self.aborted = True
            self.cond.notify_all()

    def _wait(self, module: nn.Module, args) -> None:
        shard = getattr(_local, "shard", None)
        if shard is None or not module.training:
            return
        with self.cond:
            while self.next.get(module, 0) != shard:
                if self.aborted:
                    raise _Aborted
                self.cond.wait()

    def _pass(self, module: nn.Module, args, output) -> None:
        shard = getattr(_local, "shard", None)
        if shard is None or not module.training:
            return
        with self.cond:
            self.next[module] = (shard + 1) % self.count
            self.cond.notify_all()

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


class ShardedStep:
    """Forward and backward of ``model`` on a batch cut into ``count`` shards, one thread each.

    ``step(images, step) -> (out, grads)``: the merged output (:func:`merge_outputs`) and, for each
    parameter that requires a gradient, ``(parameter, gradient)``: the gradient of the batch's loss
    (the shards' losses weighted by their share of the batch), summed in shard order; ``None`` where
    no shard has one. ``timeline``: the last step's ``(start, [(shard start, shard end), ...], end)`` in
    ``time.perf_counter`` seconds (``benchmarks/train_step.py --breakdown`` reads where the step waits).
    """

    def __init__(self, model: nn.Module, count: int, seed: int):
        self.model, self.count, self.seed = model, count, seed
        threads = torch.get_num_threads()
        # no more threads than the process has: with fewer, the shards queue (in order, so a shard only
        # ever waits for earlier ones) and the step's result is the same
        workers = self.workers = min(count, threads)
        self.timeline: tuple[float, list[tuple[float, float]], float] | None = None
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="disdis-shard")
        ready = threading.Barrier(workers)
        list(self.pool.map(lambda _: _init_thread(threads // workers, ready), range(workers)))
        torch.set_num_threads(threads)  # the threads' set_num_threads changed the global count
        self.turns = _Turns(model, count)
        weakref.finalize(self, self.pool.shutdown, wait=False)

    def __call__(self, images: torch.Tensor, step: int) -> tuple[dict, list[tuple[nn.Parameter, torch.Tensor | None]]]:
        start = time.perf_counter()
        params = [p for p in self.model.parameters() if p.requires_grad]
        chunks = images.tensor_split(self.count)
        rng = torch.get_rng_state()
        self.turns.reset()
        futures = [self.pool.submit(self._shard, i, chunk, params, len(images), step) for i, chunk in enumerate(chunks)]
        wait(futures)
        failed = [f.exception() for f in futures if f.exception() is not None]
        if failed:  # a failing shard's own error, not that of a shard that stopped waiting for it
            raise next((e for e in failed if not isinstance(e, _Aborted)), failed[0])
        if not torch.equal(rng, torch.get_rng_state()):
            raise ShardError("train.shards: the model drew from torch's global generator inside a shard, where "
                             "the draws' order depends on the threads' timing; draw with disdis.draws.generator()")
        outs, grads, spans = zip(*(f.result() for f in futures))
        present = ([g for g in per_shard if g is not None] for per_shard in zip(*grads))
        summed = [(p, functools.reduce(torch.add, found) if found else None) for p, found in zip(params, present)]
        merged = merge_outputs(list(outs), [len(c) for c in chunks])
        self.timeline = (start, list(spans), time.perf_counter())
        return merged, summed

    def _shard(self, index: int, images: torch.Tensor, params: list[torch.Tensor], total: int, step: int):
        began = time.perf_counter()
        _local.shard = index
        try:
            generator = torch.Generator(images.device).manual_seed(step_seed(self.seed, step, SHARD_STREAM + index))
            with draws.drawing_from(generator):
                out = self.model(images)
            loss = out["loss"] * (len(images) / total)
            grads = torch.autograd.grad(loss, params, allow_unused=True) if params else ()
            return out, grads, (began, time.perf_counter())
        except BaseException:
            self.turns.abort()
            raise
        finally:
            _local.shard = None

    def close(self) -> None:
        """Remove the turn hooks from the model and stop the threads."""
        self.turns.remove()
        self.pool.shutdown(wait=True)
