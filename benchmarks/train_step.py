"""Throughput of one full training step, and how close it gets to the machine's
matrix-multiply rate.

    python benchmarks/train_step.py [--config configs/shapes3d.yaml configs/demo.yaml]
                                    [--set key=value ...] [--batch 32] [--steps 3] [--warmup 1]
                                    [--variants eager channels_last] [--compile] [--held] [--threads N]
                                    [--vary key=value1,value2,...]
                                    [--stage run|extractor] [--at-kimg K] [--device cuda] [--bf16]
                                    [--breakdown] [--alternate R]

Each config is a run config file; the model is the one the training loop builds from it
(``disdis.models.build_model``, untrained first stage, the anchor state fitted once on the
model's own tokens of random images when anchoring is on, so the step pays the DyGA
shift), and the step is the loop's own :class:`disdis.train.TrainStep`: forward with the
loss, the loss all-reduce, backward, AdamW over the method's groups, hooks, the EMA update; with the
config's ``train.shards`` (the demo's: 2) forward and backward run on the shards' threads, each with
``--threads`` / shards torch threads (``--vary train.shards=1,2`` compares).
``configs/shapes3d.yaml`` is the paper's model at 64x64; ``configs/demo.yaml`` is what the
demo's budget buys.

Variants (each with the loop's fused AdamW): ``eager`` (default memory format),
``channels_last`` (modules and images channels-last, oneDNN's fast convolution layout),
``compiled`` (channels_last plus ``train.compile``: torch.compile of the method's networks, the
extractor and the U-Net, or the autoencoder's extractor and decoder; compile time is in the "setup s" column). ``--device cuda --bf16`` runs the
same step on a GPU under bf16 autocast (as the training loop does there); the reference
rate is then a bf16 matmul. ``--vary key=a,b`` times each config once per value of one more override
(``--vary method.unet.num_heads=4,2``: the demo's U-Net with 4 and with 2 attention heads), in the
same run, for ratios under one load. ``--held`` adds, for each variant, the step that holds the config's
``train.freeze_modules`` still (the demo holds its extractor for 32 kimg): on one process they
leave the graph, so the step runs their forward and no backward. ``--set method.cache_latents=true``
times the step whose frozen first stage is read from the latent cache (the demo's setting).
``--stage extractor`` times instead the autoencoder a config's extractor warm start trains first
(``method.extractor_init: autoencoder``; in the demo about half the training time on 2 cores), with its
loss schedule as it stands at ``--at-kimg`` (default: the end of its training; in the demo's, past
the hold, a frozen copy of the extractor runs forward only and counts as a held module).

FLOPs are counted with torch.utils.flop_counter.FlopCounterMode (matmuls,
convolutions, attention) on one forward pass: the step does 3x the forward FLOPs
of the trained networks (forward + backward) plus one forward of the frozen
encoder and of held modules. Achieved FLOP/s = step FLOPs / step time, shown beside the rate of a
large fp32 matmul (2048^3, median of repeats) measured in the same process with
the same threads, right before and after each row's timed steps. Timings are medians over ``--steps`` timed steps after
``--warmup`` untimed ones; on a shared machine they vary with its load.

``--alternate R`` builds every row first and then times them in R rounds, row after row, each row's
median over all its rounds and the mean of the matmul rates taken beside them: on a machine whose
load drifts within a minute, the rows' ratios are then measured under one load.

``--breakdown`` (CPU) then profiles ``--steps`` more steps of each row (torch.profiler, each aten op's
self time, on every thread) and counts the FLOPs of one whole step (backward included, so layers whose
input needs no gradient count what they do), and prints per class of op (convolution, matmul, attention,
everything else) its time per step, its FLOP rate and that rate as a share of the matmul's: where the
step's time goes that does no matrix arithmetic. With ``train.shards`` the times are summed over the
shards' threads ("thread-ms") and each rate is set against the matmul rate's share of one shard's
threads; a timeline follows (medians over ``--steps`` more steps): the time before the shards start,
each shard's forward and backward, how long the slowest ran after the first was done (the other
core's wait), the gradients' sum after the last, and the rest of the step (the optimizer, hooks, EMA).
The profiled step is a little slower than the timed one (eager), or much slower (compiled: the
profiler records each generated kernel); the shares are the point.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count


def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _sdpa_cpu_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None,
                             **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


# FlopCounterMode knows the CUDA attention kernels; the CPU flash kernels need the same formulas
CUSTOM_FLOPS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flops,
                torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_cpu_backward_flops}

# --breakdown: the classes of aten ops that do the FLOPs; the rest of the step's time (element-wise ops,
# norms, copies, the optimizer, autograd's bookkeeping) is "other"
OP_CLASSES = ("convolution", "matmul", "attention", "other")
MATMULS = {"mm", "addmm", "bmm", "baddbmm"}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rate(device: torch.device, dtype: torch.dtype, repeats: int = 7) -> float:
    """FLOP/s of an n x n x n matmul in ``dtype`` (median of repeats; n = 2048 on CPU, 8192 on GPU)."""
    n = 8192 if device.type == "cuda" else 2048
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        times.append(time.perf_counter() - start)
    return 2 * n ** 3 / statistics.median(times)


class ModelStep:
    """The loop's training step on the model a run config builds (see the module docstring)."""

    def __init__(self, path: str, overrides: list[str], batch: int, variant: str, device: torch.device, bf16: bool,
                 held: bool = False, stage: str = "run", at_kimg: float | None = None):
        import dataclasses

        from disdis.models import build_model
        from disdis.run_config import load_run_config
        from disdis.train import TrainStep
        cfg = load_run_config(path, ["data.path=unused", *overrides])
        if stage == "extractor":
            if "extractor" not in cfg.method.needs():
                raise SystemExit(f"{path}: --stage extractor: the config trains no extractor warm start")
            cfg = cfg.method.own_dependency("extractor", cfg)
        torch.manual_seed(0)
        self.model = build_model(cfg).to(device).train()
        res = cfg.data.resolution or cfg.method.units.resolution
        self.images = torch.rand(batch, cfg.method.units.in_channels, res, res, device=device) * 2 - 1
        if variant in ("channels_last", "compiled"):
            self.model.to(memory_format=torch.channels_last)
            self.images = self.images.contiguous(memory_format=torch.channels_last)
        train_cfg = dataclasses.replace(cfg.train, batch_size=batch, bf16=bf16)
        self.held = []
        if stage == "extractor":  # its loss schedule (and hold) as at at_kimg
            step = round((cfg.train.total_kimg if at_kimg is None else at_kimg) * 1000 / batch)
            # the data's size (the TC term's N) does not change the step's cost: the demo grid's 729, as
            # random images, which a hold that gathers the code encodes
            data = torch.utils.data.TensorDataset(torch.rand(729, *self.images.shape[1:]) * 2 - 1)
            ctx = SimpleNamespace(cfg=train_cfg, optimizer=None, resume_step=step, dataset=data, device=device)
            if hasattr(self.model, "unit_kl"):  # every unit in use at the hold: the held copy's cost is the same for any
                self.model.unit_kl.fill_(float("inf"))
            for hook in self.model.hooks():
                hook.open(ctx)
            if getattr(self.model, "hold_taken", False):
                self.held = ["held_extractor"]
        with torch.no_grad():
            if hasattr(self.model, "setup"):
                self.model.setup(self.images)
            if getattr(cfg.method, "anchoring", None) and cfg.method.anchoring.enabled:
                tokens = self.model.unit_tokens(self.images).float().transpose(0, 1).contiguous()
                self.model.anchor_state.load(self.model.fit_anchors(tokens, seed=0))
        if getattr(cfg.method, "cache_latents", False):  # the encoder runs once, here, as the LatentCache hook has it
            self.model.fill_latent_cache([self.images])
        if variant == "compiled":  # as train.compile does
            self.model.compile_networks()
        # held: every timed step holds train.freeze_modules still, as the demo's first 32 kimg do
        self.held += list(cfg.train.freeze_modules) if held else []
        self.step = TrainStep(self.model, train_cfg, device, freeze_steps=10 ** 9 if held else 0)
        self.count = 0

    def __call__(self) -> float:
        result = self.step(self.images, self.count)
        self.count += 1
        return float(result.loss)

    def step_flops(self) -> tuple[int, int]:
        """(forward FLOPs of the trained networks, FLOPs of the step): 3x the forward of what is
        trained (forward + backward), plus one forward of the frozen encoder and of held modules."""
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=CUSTOM_FLOPS) as counter:
            if hasattr(self.model, "latents"):
                self.model.latents(self.images)
        encode = counter.get_total_flops()
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=CUSTOM_FLOPS) as counter:
            self.model(self.images)
        counts, name = counter.get_flop_counts(), type(self.model).__name__
        held = sum(sum(counts.get(f"{name}.{module}", {}).values()) for module in self.held)
        trained = counter.get_total_flops() - encode
        return trained, 3 * (trained - held) + held + encode


def op_class(name: str) -> str:
    """The --breakdown class of an aten op ("aten::addmm" -> "matmul"); "other" for the rest."""
    op = name.removeprefix("aten::").removeprefix("aten.").split(".")[0]
    if "convolution" in op:  # forward and backward (autograd's "ConvolutionBackward0" wrapper is bookkeeping)
        return "convolution"
    if op in MATMULS:
        return "matmul"
    return "attention" if "scaled_dot_product" in op else "other"


def op_times(step: "ModelStep", steps: int) -> dict[str, float]:
    """Seconds per step of each op (its profiled self time, averaged over ``steps`` steps, summed over the
    threads that ran it: the shards' too); together, the profiled steps' time on all threads."""
    from torch._C._profiler import _ExperimentalConfig
    from torch.profiler import ProfilerActivity, profile
    every_thread = dict(activities=[ProfilerActivity.CPU], experimental_config=_ExperimentalConfig(profile_all_threads=True))
    with profile(**every_thread):  # the profiler's first start-up is slow: not in the count
        step()
    with profile(**every_thread) as prof:
        for _ in range(steps):
            step()
    return {event.key: event.self_cpu_time_total / 1e6 / steps for event in prof.key_averages()}


def step_flop_counts(step: "ModelStep") -> dict:
    """FLOPs per aten op of one whole step (backward included). A FLOP counter sees only its own thread:
    with shards, the same forward and backward of the whole batch run here instead."""
    with FlopCounterMode(display=False, custom_mapping=CUSTOM_FLOPS) as counter:
        if step.step.shards is None:
            step()
        else:
            params = [p for p in step.model.parameters() if p.requires_grad]
            torch.autograd.grad(step.model(step.images)["loss"], params, allow_unused=True)
    return counter.get_flop_counts()["Global"]


def breakdown(step: "ModelStep", steps: int, peak: float) -> list[dict]:
    """Per class of op: ms per step (profiled self time; with shards, summed over the shards' threads),
    GFLOP per step, the rate (with shards, against the matmul rate's share of one shard's threads); then
    the whole step, and the step as it would be if "other" took no time (the most that fusing or removing
    everything but the matrix arithmetic could reach)."""
    flops = dict.fromkeys(OP_CLASSES, 0)
    for op, count in step_flop_counts(step).items():
        flops[op_class(str(op))] += count
    seconds = dict.fromkeys(flops, 0.0)
    for op, sec in op_times(step, steps).items():
        seconds[op_class(op)] += sec
    total, flop = sum(seconds.values()), sum(flops.values())
    lane_peak = peak / (step.step.shards.workers if step.step.shards is not None else 1)

    def row(op: str, sec: float, count: int) -> dict:
        return dict(op=op, ms=1e3 * sec, share=sec / total, gflop=count / 1e9,
                    pct=100 * count / sec / lane_peak if sec else 0.0)
    return ([row(cls, seconds[cls], flops[cls]) for cls in OP_CLASSES]
            + [row("step", total, flop), row("step - other", total - seconds["other"], flop)])


def shard_timeline(step: "ModelStep", steps: int) -> list[dict]:
    """Where a sharded step's time goes, medians over ``steps`` steps (ms): before the shards start, until
    the last has started, each shard's forward and backward, the wait for the slowest after the first is
    done, the gradients' sum and the outputs' merge after the last, and the rest of the step (the
    optimizer, the hooks, the EMA) after that."""
    parts = []
    for _ in range(steps):
        began = time.perf_counter()
        step()
        ended = time.perf_counter()
        start, spans, end = step.step.shards.timeline
        firsts, lasts = [a for a, _ in spans], [b for _, b in spans]
        parts.append({"before the shards": start - began, "until all have started": max(firsts) - start,
                      **{f"shard {i}": b - a for i, (a, b) in enumerate(spans)},
                      "the slowest, after the first": max(lasts) - min(lasts),
                      "after the last (sum, merge)": end - max(lasts), "the rest of the step": ended - end,
                      "step": ended - began})
    return [dict(part=key, ms=1e3 * statistics.median(p[key] for p in parts)) for key in parts[0]]


def prepare(name: str, variant: str, batch: int, warmup: int, device: torch.device, bf16: bool,
            overrides: list[str] = (), held: bool = False, stage: str = "run",
            at_kimg: float | None = None) -> tuple[ModelStep, float]:
    """A row's step after its warm-up steps, and the seconds both took (compilation happens here)."""
    build_start = time.perf_counter()
    step = ModelStep(name, list(overrides), batch, variant, device, bf16, held, stage, at_kimg)
    for _ in range(warmup):
        step()
    return step, time.perf_counter() - build_start


def timed(step: ModelStep, steps: int, device: torch.device, dtype: torch.dtype) -> tuple[list[float], float]:
    """The seconds of ``steps`` steps, and the matmul rate taken right before and after them (their mean):
    on a shared machine the load drifts, and the ratio is only meaningful against a rate measured under
    the same load."""
    peak_before = matmul_rate(device, dtype)
    times = []
    for _ in range(steps):
        synchronize(device)  # on a GPU the step only queues its kernels: time them to their end
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times, (peak_before + matmul_rate(device, dtype)) / 2


def result(name: str, variant: str, batch: int, step: ModelStep, times: list[float], peak: float, setup: float,
           held: bool = False, stage: str = "run", by_op: bool = False, steps: int = 0) -> dict:
    """A row of the table: the median step against the matmul rate (``--breakdown``: profiled per class of op)."""
    seconds = statistics.median(times)
    trained, step_flops = step.step_flops()
    return dict(config=Path(name).stem + ("/ae" if stage == "extractor" else ""), variant=variant + (", held" if held else ""), batch=batch, img_s=batch / seconds, s_step=seconds,
                fwd=trained / batch, step=step_flops / batch, rate=step_flops / seconds,
                peak=peak, pct=100 * step_flops / seconds / peak, setup=setup,
                ops=breakdown(step, steps, peak) if by_op else [],
                timeline=shard_timeline(step, steps) if by_op and step.step.shards is not None else [])


def run(name: str, variant: str, batch: int, steps: int, warmup: int, device: torch.device, bf16: bool,
        overrides: list[str] = (), held: bool = False, stage: str = "run", at_kimg: float | None = None,
        by_op: bool = False) -> dict:
    """One row: prepared, timed and reported on its own."""
    step, setup = prepare(name, variant, batch, warmup, device, bf16, overrides, held, stage, at_kimg)
    times, peak = timed(step, steps, device, torch.bfloat16 if bf16 else torch.float32)
    return result(name, variant, batch, step, times, peak, setup, held, stage, by_op, steps)


def alternated(specs: list[dict], rounds: int, steps: int, device: torch.device, dtype: torch.dtype) -> list[dict]:
    """Every row of ``specs`` (``prepare``'s arguments) prepared first, then timed in ``rounds`` rounds of
    ``steps`` steps each, row after row: each row's median over its rounds and the mean of its matmul rates,
    so that the rows share the machine's drift."""
    prepared = [prepare(**spec) for spec in specs]
    times, peaks = [[] for _ in specs], [[] for _ in specs]
    for _ in range(rounds):
        for i, (step, _) in enumerate(prepared):
            t, peak = timed(step, steps, device, dtype)
            times[i] += t
            peaks[i].append(peak)
    return [result(spec["name"], spec["variant"], spec["batch"], step, t, statistics.mean(p), setup, spec["held"],
                   spec["stage"]) for spec, (step, setup), t, p in zip(specs, prepared, times, peaks)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", nargs="+", default=["configs/shapes3d.yaml", "configs/demo.yaml"],
                        help="run config files (default: the paper's Shapes3D model and the demo's)")
    parser.add_argument("--set", nargs="*", default=[], metavar="key=value", help="overrides of run config files")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per row (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before timing")
    parser.add_argument("--variants", nargs="+", choices=["eager", "channels_last", "compiled"],
                        default=["eager", "channels_last"])
    parser.add_argument("--compile", action="store_true", help="also time the torch.compile variant")
    parser.add_argument("--held", action="store_true",
                        help="also time each variant's step while train.freeze_modules are held (the demo's first 32 kimg)")
    parser.add_argument("--stage", choices=["run", "extractor"], default="run",
                        help="the config's own model (run), or the autoencoder of its extractor warm start (extractor)")
    parser.add_argument("--at-kimg", type=float, default=None,
                        help="--stage extractor: its loss schedule as at this many kimg (default: its total_kimg)")
    parser.add_argument("--vary", default=None, metavar="key=value1,value2,...",
                        help="time each config once per value of this override (first value: the baseline of the speed-ups)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU); the reference rate is a bf16 matmul")
    parser.add_argument("--alternate", type=int, default=0, metavar="R",
                        help="build every row first, then time them in R rounds of --steps steps each, row after "
                             "row (each row's median over its rounds): ratios under one drifting load")
    parser.add_argument("--breakdown", action="store_true",
                        help="also profile each row's step per class of op (convolution, matmul, attention, other)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.at_kimg is not None and args.stage != "extractor":
        parser.error("--at-kimg: only with --stage extractor")
    if args.bf16 and device.type != "cuda":
        parser.error("--bf16 is for GPUs (the training loop uses bf16 autocast only on CUDA)")
    if args.breakdown and device.type != "cpu":
        parser.error("--breakdown profiles CPU time; run it without --device")
    if args.alternate and args.breakdown:
        parser.error("--breakdown profiles each row on its own; run it without --alternate")
    if args.alternate < 0:
        parser.error(f"--alternate: expected a number of rounds, got {args.alternate}")
    if args.vary is not None and ("=" not in args.vary or not args.vary.split("=", 1)[1]):
        parser.error(f"--vary {args.vary}: expected key=value1,value2,...")
    if args.threads:
        torch.set_num_threads(args.threads)
    from disdis.train.loop import configure_backends
    configure_backends(device)  # the backend settings the training loop runs under
    variants = list(dict.fromkeys(args.variants + (["compiled"] if args.compile else [])))

    dtype = torch.bfloat16 if args.bf16 else torch.float32
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} CPU threads"
    print(f"torch {torch.__version__}, {where}; {str(dtype).split('.')[-1]} matmul now: "
          f"{matmul_rate(device, dtype) / 1e9:.1f} GFLOP/s (per row: mean of before/after its timed steps)")
    print("step = the training loop's TrainStep: " + (
        "the warm start's autoencoder (extractor + decoder + its loss's terms) + backward + AdamW"
        if args.stage == "extractor" else
        "encode (no_grad) + extractor + tokens + DyGA shift + U-Net + L1 noise loss + backward + AdamW + EMA"))
    print("step GFLOP/img = 3 x forward of the trained nets + forward of the frozen encoder (and of held modules)\n")
    varied = [("", [])]  # (the rows' label suffix, the override) per --vary value
    if args.vary is not None:
        key, values = args.vary.split("=", 1)
        varied = [(f" {key.rsplit('.', 1)[-1]}={value}", [f"{key}={value}"]) for value in values.split(",")]
    width = max(7, *(len(Path(name).stem) + len("/ae") + len(suffix) for name in args.config for suffix, _ in varied))
    header = (f"{'config':<{width}} {'variant':<19} {'batch':>5} {'img/s':>8} {'s/step':>7} {'fwd GF/img':>10} "
              f"{'step GF/img':>11} {'GFLOP/s':>8} {'matmul':>7} {'% matmul':>8} {'setup s':>8}")
    print(header)
    print("-" * len(header))
    rows = []
    labelled = [(suffix, dict(name=name, variant=variant, batch=args.batch, warmup=args.warmup, device=device,
                              bf16=args.bf16, overrides=[*args.set, *more], held=held, stage=args.stage,
                              at_kimg=args.at_kimg))
                for name in args.config for (suffix, more) in varied for variant in variants
                for held in (False, True)[:1 + args.held]]
    specs = [spec for _, spec in labelled]
    together = alternated(specs, args.alternate, args.steps, device, dtype) if args.alternate else None
    for i, (suffix, spec) in enumerate(labelled):
        r = together[i] if together else run(steps=args.steps, by_op=args.breakdown, **spec)
        r.update(file=spec["name"], held=spec["held"], config=r["config"] + suffix)
        rows.append(r)
        print(f"{r['config']:<{width}} {r['variant']:<19} {r['batch']:>5} {r['img_s']:>8.2f} {r['s_step']:>7.2f} "
              f"{r['fwd'] / 1e9:>10.3f} {r['step'] / 1e9:>11.3f} {r['rate'] / 1e9:>8.1f} {r['peak'] / 1e9:>7.1f} {r['pct']:>7.0f}% "
              f"{r['setup']:>8.1f}", flush=True)
        per = "thread-ms/step" if r["timeline"] else "ms/step"  # with shards: summed over their threads
        for o in r["ops"]:
            print(f"    {o['op']:<13} {o['ms']:>8.1f} {per} {100 * o['share']:>4.0f}% of the time "
                  f"{o['gflop']:>8.3f} GFLOP/step {o['pct']:>5.0f}% of matmul", flush=True)
        for t in r["timeline"]:
            print(f"    {t['part']:<29} {t['ms']:>8.1f} ms (median)", flush=True)
    # each row against its config's first row, held or not as it is (the first variant, the first --vary value)
    base = {}
    for r in rows:
        base.setdefault((r["file"], r["held"]), r)
    others = [r for r in rows if base[(r["file"], r["held"])] is not r]
    if others:
        print("\nspeed-up over each config's first row (held against held): " + ", ".join(
            f"{r['config']}/{r['variant']} x{r['img_s'] / base[(r['file'], r['held'])]['img_s']:.2f}" for r in others))


if __name__ == "__main__":
    main()
