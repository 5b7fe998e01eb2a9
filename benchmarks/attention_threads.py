"""Does the CPU attention kernel gain from threads? ``F.scaled_dot_product_attention``, forward and
backward, at each attention shape a config's model runs (read off one forward pass), on 1 thread and on N.

    python benchmarks/attention_threads.py [--config configs/demo.yaml] [--set key=value ...]
                                           [--batch 128] [--threads 2] [--calls 30]

Per shape (batch, heads, queries, keys, head width; how often one forward pass runs it), the
milliseconds of one forward + backward: on 1 thread; on N threads; and one rank's share on 1 thread
(batch / N, the work each of N DDP processes does); then N threads against 1 (1/N: the threads split
the work perfectly; 1.00: they gain nothing), N threads against the share (1.00: perfectly; N:
nothing) and the system time per call on N threads (threads waiting on each other show up there, as
futex calls). Inputs are laid out as the U-Net makes them (heads split off the channels of a (B, L, C)
activation, a strided view), timed as medians over ``--calls`` calls.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from unittest import mock

import torch
import torch.nn.functional as F


def attention_shapes(config: str, overrides: list[str], batch: int) -> dict[tuple, int]:
    """{(B, heads, L, M, head width): calls per forward pass} of the model a run config builds."""
    from disdis.models import build_model
    from disdis.run_config import load_run_config
    cfg = load_run_config(config, ["data.path=unused", *overrides])
    torch.manual_seed(0)
    model = build_model(cfg).train()
    res = cfg.data.resolution or cfg.method.units.resolution
    images = torch.rand(batch, cfg.method.units.in_channels, res, res) * 2 - 1
    shapes: dict[tuple, int] = {}
    sdpa = F.scaled_dot_product_attention

    def record(q, k, v, *args, **kwargs):
        key = (*q.shape[:3], k.shape[2], q.shape[3])
        shapes[key] = shapes.get(key, 0) + 1
        return sdpa(q, k, v, *args, **kwargs)
    with torch.no_grad(), mock.patch.object(F, "scaled_dot_product_attention", record):
        if hasattr(model, "setup"):
            model.setup(images)
        model(images)
    return shapes


def time_calls(shape: tuple, threads: int, calls: int) -> tuple[float, float]:
    """(median seconds, mean system seconds) of one forward + backward at ``shape`` on ``threads`` threads."""
    b, h, n, m, d = shape
    torch.set_num_threads(threads)
    # the projections' (B, L, C) outputs, heads split off the channels: strided views, as in the U-Net
    inputs = [torch.randn(b, length, h * d, requires_grad=True) for length in (n, m, m)]
    grad = torch.randn(b, h, n, d)

    def call() -> None:
        q, k, v = (t.view(b, -1, h, d).transpose(1, 2) for t in inputs)
        torch.autograd.grad(F.scaled_dot_product_attention(q, k, v), inputs, grad)
    for _ in range(3):
        call()
    times, sys_start = [], resource.getrusage(resource.RUSAGE_SELF).ru_stime
    for _ in range(calls):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times), (resource.getrusage(resource.RUSAGE_SELF).ru_stime - sys_start) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/demo.yaml", help="run config file (default %(default)s)")
    parser.add_argument("--set", nargs="*", default=[], metavar="key=value", help="overrides of the run config")
    parser.add_argument("--batch", type=int, default=128, help="images per batch (default %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="N (default %(default)s)")
    parser.add_argument("--calls", type=int, default=30, help="timed calls per cell (median reported)")
    args = parser.parse_args()
    if args.threads < 2 or args.batch % args.threads:
        parser.error(f"--threads {args.threads}: at least 2, dividing --batch {args.batch}")
    shapes = attention_shapes(args.config, args.set, args.batch)
    if not shapes:
        raise SystemExit(f"{args.config}: its model runs no attention")
    n = args.threads
    print(f"torch {torch.__version__}; forward + backward of F.scaled_dot_product_attention, ms per call")
    header = (f"{'B, heads, L, M, width':<24} {'per pass':>8} {'1 thread':>9} {f'{n} threads':>10} "
              f"{f'share 1/{n}':>10} {f'{n} / 1':>7} {f'{n} / share':>10} {f'sys ms ({n})':>11}")
    print(header)
    print("-" * len(header))
    for shape, count in sorted(shapes.items(), key=lambda item: -item[0][2] * item[0][3]):
        one, _ = time_calls(shape, 1, args.calls)
        many, sys_many = time_calls(shape, n, args.calls)
        share, _ = time_calls((shape[0] // n, *shape[1:]), 1, args.calls)
        print(f"{', '.join(map(str, shape)):<24} {count:>8} {1e3 * one:>9.3f} {1e3 * many:>10.3f} {1e3 * share:>10.3f} "
              f"{many / one:>7.2f} {many / share:>10.2f} {1e3 * sys_many:>11.3f}", flush=True)


if __name__ == "__main__":
    main()
