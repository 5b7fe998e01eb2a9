"""How much does work on the second core slow the first? The demo's sharded step runs two halves of
the batch at once, one per core; this separates what the two cores share.

    python benchmarks/core_contention.py [--config configs/demo.yaml] [--set key=value ...] [--batch 64]
                                         [--held] [--passes 6] [--rounds 4]

Three workloads, each on one thread: ``step``, the training loop's step (``benchmarks/train_step.py``'s
model step: forward, backward, AdamW, EMA) on ``--batch`` images with ``train.shards: 1``, which is what
each of the demo's two shards does with half its batch of 128 (``--held``: with the config's
``train.freeze_modules`` held, as in the demo's first 32 kimg); ``matmul``, a 2048^3 fp32 matmul (bound
by arithmetic: the reference rate of ``train_step.py``); ``copy``, an in-place multiply of a 256 MiB
buffer (bound by memory bandwidth). Each is timed on the main thread, ``--passes`` passes per round:

- alone: nothing else runs;
- beside a thread: a second thread of this process runs the same workload without pause (the
  shards' way: one process, so the GIL, the allocator and the page tables are shared too); its own
  passes are timed as well ("partner"), since a shared GIL need not slow both threads alike;
- beside a process: a second process runs it (only the machine is shared: caches, memory bandwidth).

Rounds alternate the three, so a drifting load meets each alike; each cell is the median pass over all
rounds, and the slowdowns are beside / alone. A slowdown under a process partner that matches the
thread partner's puts the two-core loss in the machine (the memory side, or other tenants); one that
is larger beside a thread puts it in the process (the GIL: Python between the ops runs one thread at a
time). The partner starts before and stops after each timed round.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import threading
import time

import torch

from disdis.errors import DisdisError

COPY_BYTES = 256 << 20


def workload(name: str, args: argparse.Namespace):
    """A callable doing one pass of the named workload on the calling thread (torch threads: 1)."""
    torch.set_num_threads(1)
    if name == "matmul":
        a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
        return lambda: torch.mm(a, b)
    if name == "copy":
        buffer = torch.ones(COPY_BYTES // 4)
        return lambda: buffer.mul_(1.0)
    from train_step import prepare
    step, _ = prepare(args.config, "eager", args.batch, 2, torch.device("cpu"), False, step_overrides(args), held=args.held)
    return step


def step_overrides(args: argparse.Namespace) -> list[str]:
    return [*args.set, "train.shards=1"]  # one shard's work, on one thread


def _partner_thread(run, stop: threading.Event, times: list[float]) -> None:
    torch.set_num_threads(1)
    while not stop.is_set():
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)


def _partner_process(name: str, args: argparse.Namespace, ready, go, stop) -> None:
    run = workload(name, args)
    run()
    ready.set()
    while True:
        go.wait()
        while go.is_set() and not stop.is_set():
            run()
        if stop.is_set():
            return


def timed(run, passes: int) -> list[float]:
    times = []
    for _ in range(passes):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return times


def contention(name: str, args: argparse.Namespace) -> dict[str, float]:
    """Median seconds per pass of ``name`` alone, beside a thread (this thread's and the partner's
    passes), beside a process."""
    run, other = workload(name, args), workload(name, args)  # the thread partner's own copy of the work
    ctx = mp.get_context("spawn")  # the partner builds its own workload: nothing shared but the machine
    ready, go, stop = ctx.Event(), ctx.Event(), ctx.Event()
    partner = ctx.Process(target=_partner_process, args=(name, args, ready, go, stop), daemon=True)
    partner.start()
    while not ready.wait(1.0):
        if not partner.is_alive():
            raise SystemExit(f"core_contention: the partner process for {name!r} stopped (exit code {partner.exitcode})")
    cells = {"alone": [], "thread": [], "partner": [], "process": []}
    try:
        for _ in range(args.rounds):
            cells["alone"] += timed(run, args.passes)
            halt = threading.Event()
            thread = threading.Thread(target=_partner_thread, args=(other, halt, cells["partner"]))
            thread.start()
            cells["thread"] += timed(run, args.passes)
            halt.set()
            thread.join()
            go.set()
            time.sleep(0.2)  # the partner is under way
            cells["process"] += timed(run, args.passes)
            go.clear()
    finally:
        stop.set()
        go.set()
        partner.join()
    return {key: statistics.median(values) for key, values in cells.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/demo.yaml", help="run config file (default: the demo's)")
    parser.add_argument("--set", nargs="*", default=["method.cache_latents=true"], metavar="key=value",
                        help="overrides of the config (default: method.cache_latents=true, the demo's setting)")
    parser.add_argument("--batch", type=int, default=64, help="the step's images (default 64: one demo shard)")
    parser.add_argument("--held", action="store_true", help="the step with train.freeze_modules held")
    parser.add_argument("--passes", type=int, default=6, help="timed passes per round and cell")
    parser.add_argument("--rounds", type=int, default=4, help="rounds of alone, beside a thread, beside a process")
    parser.add_argument("--workloads", nargs="+", choices=["matmul", "copy", "step"], default=["matmul", "copy", "step"])
    args = parser.parse_args()
    if args.passes < 1 or args.rounds < 1 or args.batch < 1:
        parser.error("--passes, --rounds and --batch: 1 or more")
    if "step" in args.workloads:  # the config and overrides checked before any work
        from disdis.run_config import load_run_config
        try:
            load_run_config(args.config, ["data.path=unused", *step_overrides(args)])
        except DisdisError as err:
            parser.error(str(err))
    print(f"torch {torch.__version__}; one thread per workload; medians of {args.rounds} x {args.passes} passes")
    header = (f"{'workload':<28} {'alone ms':>9} {'thread ms':>10} {'partner ms':>11} {'process ms':>11} "
              f"{'slowdown thread':>16} {'partner':>8} {'process':>8}")
    print(header)
    print("-" * len(header))
    for name in args.workloads:
        cell = contention(name, args)
        label = name if name != "step" else f"step, batch {args.batch}" + (", held" if args.held else "")
        print(f"{label:<28} {1e3 * cell['alone']:>9.1f} {1e3 * cell['thread']:>10.1f} {1e3 * cell['partner']:>11.1f} "
              f"{1e3 * cell['process']:>11.1f} {cell['thread'] / cell['alone']:>15.2f}x "
              f"{cell['partner'] / cell['alone']:>7.2f}x {cell['process'] / cell['alone']:>7.2f}x", flush=True)


if __name__ == "__main__":
    main()
