"""Are the cores better used as processes than as threads? The training loop's step with N processes
of one thread each (DDP over gloo, as ``torchrun --nproc_per_node N -m disdis train`` runs it) against
one process of N threads, at the same global batch.

    python benchmarks/ddp_step.py [--config configs/demo.yaml] [--set key=value ...] [--batch 128]
                                  [--processes 2] [--steps 12] [--warmup 3] [--repeats 3] [--held]
                                  [--stage run|extractor] [--at-kimg K] [--by-op K]

Both rows time ``benchmarks/train_step.py``'s model step (the loop's ``TrainStep`` on the model the
config builds, eager, default memory format, ``train.shards: 1``: threads as one process's torch threads,
the batch not cut into shards); the DDP row wraps the model as the loop does, each rank
with batch / N images. ``--stage extractor [--at-kimg K]`` times instead the autoencoder of the
config's extractor warm start, its loss schedule as at K kimg (as ``train_step.py`` does).
``--held`` also times both with the config's ``train.freeze_modules`` held, as the loop holds them:
out of the graph, the DDP wrapper built around the other parameters. Each
row: the median of rank 0's step times (the ranks wait for each other in the gradient all-reduce);
images per second count the global batch. The two rows alternate ``--repeats`` times, each pair's
ratio printed, and the median ratio last: on a shared machine the rate drifts by more than the
difference between the rows within a minute.

``--by-op K`` then says where the threads lose: it profiles the threads' step and one rank's share of
the work (one thread, batch / N, no process group, so no all-reduce) and prints, per op (the profiler's
events: aten ops and recorded functions such as the optimizer's step, each its self time), the
milliseconds per step of each and their ratio (1.0: the N threads split the op perfectly; N: the extra
threads gain nothing; above N: the op runs slower on N threads than on one), the K ops with the largest
excess first, and all ops together.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import time

import torch
import torch.multiprocessing as mp
from torch import nn

from train_step import ModelStep, op_times


def warm_step(args: argparse.Namespace, batch: int, held: bool) -> ModelStep:
    """The model step at ``batch`` images after ``args.warmup`` steps; DDP-wrapped when a process group is up."""
    from disdis.train import TrainStep, distributed
    cpu = torch.device("cpu")
    # threads as one process's torch threads (train.shards: 1), not as the batch's shards
    step = ModelStep(args.config, ["method.cache_latents=true", "train.shards=1", *args.set], batch, "eager", cpu,
                     False, held, args.stage, args.at_kimg)
    if distributed.world_size() > 1:  # the loop's DDP wrapper, built anew when the hold changes
        step.step = TrainStep(step.model, step.step.cfg, cpu, wrap=nn.parallel.DistributedDataParallel,
                              freeze_steps=step.step.freeze_steps)
    for _ in range(args.warmup):
        step()
    return step


def time_step(args: argparse.Namespace, batch: int, held: bool) -> float:
    """Median seconds of ``args.steps`` steps at ``batch`` images, after ``args.warmup``."""
    from disdis.train import distributed
    step = warm_step(args, batch, held)
    distributed.barrier()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _rank(rank: int, world: int, port: int, args: argparse.Namespace, held: bool, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from disdis.train import distributed
    distributed.init("cpu")
    try:
        seconds = time_step(args, args.batch // world, held)
        if rank == 0:
            results.put(seconds)
    finally:
        distributed.shutdown()


def print_by_op(args: argparse.Namespace, held: bool) -> None:
    """The --by-op table: per op, ms per step of the threads' step and of one rank's share of the work."""
    torch.set_num_threads(args.processes)
    threads = op_times(warm_step(args, args.batch, held), args.steps)
    torch.set_num_threads(1)
    rank = op_times(warm_step(args, args.batch // args.processes, held), args.steps)
    torch.set_num_threads(args.processes)
    print(f"\n{'held: ' if held else ''}per op, ms per step: {args.processes} threads at batch {args.batch} against "
          f"one rank's share (1 thread, batch {args.batch // args.processes}, no all-reduce); largest excess first")
    print(f"{'op':<58} {'threads':>8} {'rank':>8} {'ratio':>6}")
    ops = sorted(threads.keys() | rank.keys(), key=lambda op: rank.get(op, 0.0) - threads.get(op, 0.0))
    rows = [(op[:58], threads.get(op, 0.0), rank.get(op, 0.0)) for op in ops[:args.by_op]]
    for name, t, r in rows + [("all ops", sum(threads.values()), sum(rank.values()))]:
        print(f"{name:<58} {1e3 * t:>8.2f} {1e3 * r:>8.2f} {t / r if r else float('inf'):>6.2f}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/demo.yaml", help="run config file (default %(default)s)")
    parser.add_argument("--set", nargs="*", default=[], metavar="key=value", help="overrides of the run config")
    parser.add_argument("--batch", type=int, default=128, help="the global batch (default %(default)s)")
    parser.add_argument("--processes", type=int, default=2, help="DDP processes of one thread each (default %(default)s)")
    parser.add_argument("--steps", type=int, default=12, help="timed steps per row (median reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before timing")
    parser.add_argument("--repeats", type=int, default=3, help="pairs of rows, alternated (default %(default)s)")
    parser.add_argument("--held", action="store_true", help="also time both with train.freeze_modules held")
    parser.add_argument("--stage", choices=["run", "extractor"], default="run",
                        help="the config's own model (run), or the autoencoder of its extractor warm start")
    parser.add_argument("--at-kimg", type=float, default=None,
                        help="--stage extractor: its loss schedule as at this many kimg (default: its total_kimg)")
    parser.add_argument("--by-op", type=int, default=0, metavar="K",
                        help="then profile both and print the K ops where the threads lose most against one rank")
    args = parser.parse_args()
    if args.at_kimg is not None and args.stage != "extractor":
        parser.error("--at-kimg: only with --stage extractor")
    if args.processes < 2 or args.batch % args.processes:
        parser.error(f"--processes {args.processes}: at least 2, dividing --batch {args.batch}")
    print(f"one process of {args.processes} threads against {args.processes} processes of 1 thread (DDP, gloo), "
          f"alternated; global batch {args.batch}")
    print(f"{'row':<20} {'threads s/step':>14} {'img/s':>8} {'DDP s/step':>11} {'img/s':>8} {'DDP / threads':>14}")
    results = mp.get_context("spawn").SimpleQueue()
    for held in (False, True)[:1 + args.held]:
        ratios = []
        for repeat in range(args.repeats):
            torch.set_num_threads(args.processes)
            threads = time_step(args, args.batch, held)
            mp.spawn(_rank, args=(args.processes, _free_port(), args, held, results), nprocs=args.processes, join=True)
            ranks = results.get()
            ratios.append(threads / ranks)
            name = f"{'held ' if held else ''}pair {repeat + 1}"
            print(f"{name:<20} {threads:>14.3f} {args.batch / threads:>8.1f} {ranks:>11.3f} {args.batch / ranks:>8.1f} "
                  f"{'x':>9}{ratios[-1]:.2f}", flush=True)
        print(f"{'held ' if held else ''}median DDP / threads: x{statistics.median(ratios):.2f}")
    for held in (False, True)[:(1 + args.held) * (args.by_op > 0)]:
        print_by_op(args, held)


if __name__ == "__main__":
    main()
