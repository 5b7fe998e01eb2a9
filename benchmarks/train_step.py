"""Throughput of one full training step of the paper's model, and how close it gets to the
machine's matrix-multiply rate.

    python benchmarks/train_step.py [--config paper small] [--batch 32] [--steps 3]
                                    [--warmup 1] [--variants eager channels_last]
                                    [--compile] [--threads N] [--device cuda] [--bf16]

A step: frozen first-stage encode (VQ, no_grad) and 1/std scaling; feature extractor
and per-unit token MLPs; Dynamic Gaussian Anchoring shift (fitted once on random
tokens beforehand, when ``disdis.anchoring`` is importable); U-Net at the latent
size; L1 noise loss; backward; AdamW. Configurations:

- paper: 64x64 images, VQ first stage (3x16x16 latents), units and U-Net as released.
- small: 32x32 images, a small VQ (3x8x8 latents), extractor d=16, U-Net base 32
  with multipliers (1, 2, 2), attention at factors 1 and 2, 4 heads.
- any run config file (``--config configs/demo.yaml``, with ``--set key=value`` overrides):
  the model the training loop builds from it (``disdis.models.build_model``, untrained
  first stage), stepped as the loop steps it (forward returning the loss, backward,
  fused AdamW, the EMA update). This is what the demo's budget buys.

Variants: ``eager`` (default memory format, torch's default foreach AdamW),
``channels_last`` (modules and images channels-last, oneDNN's fast convolution layout,
and the single-kernel ``fused=True`` AdamW), ``compiled`` (channels_last plus
torch.compile of the extractor and the U-Net; compile time is in the "setup s" column).
``--device cuda --bf16`` runs the same step on a GPU under bf16 autocast (as the training
loop does there); the reference rate is then a bf16 matmul.

FLOPs are counted with torch.utils.flop_counter.FlopCounterMode (matmuls,
convolutions, attention) on one forward pass: the step does 3x the forward FLOPs
of the trained networks (forward + backward) plus one forward of the frozen
encoder. Achieved FLOP/s = step FLOPs / step time, shown beside the rate of a
large fp32 matmul (2048^3, median of repeats) measured in the same process with
the same threads, right before and after each row's timed steps. Timings are medians over ``--steps`` timed steps after
``--warmup`` untimed ones; on a shared machine they vary with its load.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import statistics
import time
from pathlib import Path
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from disdis.diffusion import DiffusionConfig, NoiseLoss, NoiseSchedule
from disdis.nn.first_stage import FirstStageConfig, LatentScaler, build_first_stage
from disdis.nn.unet import UNet, UNetConfig
from disdis.nn.units import FeatureExtractor, UnitsConfig, UnitTokenizer

CONFIGS: dict[str, dict] = {
    "paper": dict(resolution=64, first_stage=FirstStageConfig(), units=UnitsConfig(), unet=UNetConfig()),
    "small": dict(resolution=32,
                  first_stage=FirstStageConfig(base_channels=16, channel_mult=(1, 2, 4), num_res_blocks=1),
                  units=UnitsConfig(resolution=32, extractor_width=16, fc_hidden=(128,)),
                  unet=UNetConfig(resolution=8, base_channels=32, channel_mult=(1, 2, 2),
                                  attention_resolutions=(1, 2), num_heads=4)),
}


def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# FlopCounterMode knows the CUDA attention kernels; the CPU flash kernel needs the same formula
CUSTOM_FLOPS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flops}


def count_flops(fn: Callable[[], object]) -> int:
    with FlopCounterMode(display=False, custom_mapping=CUSTOM_FLOPS) as counter:
        fn()
    return counter.get_total_flops()


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


@functools.lru_cache(maxsize=None)
def make_anchors(num_units: int, token_dim: int):
    """A DyGA mixture fitted once on random ReLU tokens, or None when disdis.anchoring is missing."""
    try:
        from disdis.anchoring import GaussianAnchors
    except ImportError:
        return None
    g = torch.Generator().manual_seed(0)
    tokens = torch.relu(torch.randn(num_units, 2000, token_dim, generator=g))
    return GaussianAnchors.fit(tokens, seed=0)


class Step:
    """One training step of the paper's model, built for a configuration and a variant."""

    def __init__(self, name: str, batch: int, variant: str, device: torch.device, bf16: bool):
        cfg = CONFIGS[name]
        torch.manual_seed(0)
        self.first_stage = build_first_stage(cfg["first_stage"]).eval().requires_grad_(False).to(device)
        self.extractor = FeatureExtractor(cfg["units"]).to(device)
        self.tokenizer = UnitTokenizer(cfg["units"]).to(device)
        self.unet = UNet(cfg["unet"]).to(device)
        self.anchors = make_anchors(cfg["units"].num_units, cfg["units"].token_dim)
        if self.anchors is not None:
            self.anchors = self.anchors.to(device)
        self.loss = NoiseLoss(NoiseSchedule.from_config(DiffusionConfig()))
        self.scaler = LatentScaler().to(device)
        self.autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if bf16
                         else contextlib.nullcontext())
        params = [*self.extractor.parameters(), *self.tokenizer.parameters(), *self.unet.parameters()]
        self.opt = torch.optim.AdamW(params, lr=1e-4, fused=variant != "eager")
        self.images = torch.rand(batch, 3, cfg["resolution"], cfg["resolution"], device=device) * 2 - 1
        if variant in ("channels_last", "compiled"):
            for module in (self.first_stage, self.extractor, self.unet):
                module.to(memory_format=torch.channels_last)
            self.images = self.images.contiguous(memory_format=torch.channels_last)
        self.extractor_fn: Callable = self.extractor
        self.unet_fn: Callable = self.unet
        if variant == "compiled":
            self.extractor_fn = torch.compile(self.extractor)
            self.unet_fn = torch.compile(self.unet)
        with torch.no_grad():
            self.scaler.fit(self.first_stage.encode(self.images))
        self.generator = torch.Generator(device).manual_seed(1)

    def tokens(self) -> torch.Tensor:
        tokens = self.tokenizer(self.extractor_fn(self.images))
        return tokens if self.anchors is None else self.anchors.shift_batch(tokens)

    def __call__(self) -> float:
        with self.autocast:
            with torch.no_grad():
                z0 = self.scaler(self.first_stage.encode(self.images)).float()
            loss = self.loss(self.unet_fn, z0, self.tokens(), generator=self.generator)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss.item()

    def forward_flops(self) -> tuple[int, int]:
        """(FLOPs of the trained networks' forward, FLOPs of the frozen encode) for the whole batch."""
        with torch.no_grad():
            encode = count_flops(lambda: self.first_stage.encode(self.images))
            z0 = self.first_stage.encode(self.images)
            t = torch.zeros(len(z0), dtype=torch.long, device=z0.device)
            trained = count_flops(lambda: self.unet(z0, t, self.tokenizer(self.extractor(self.images))))
        return trained, encode


class ModelStep:
    """One step of the training loop on the model a run config builds (see the module docstring)."""

    def __init__(self, path: str, overrides: list[str], batch: int, variant: str, device: torch.device, bf16: bool):
        from disdis.models import build_model
        from disdis.run_config import load_run_config
        from disdis.train.ema import EMA
        from disdis.train.loop import make_optimizer
        cfg = load_run_config(path, ["data.path=unused", *overrides])
        torch.manual_seed(0)
        self.model = build_model(cfg).to(device).train()
        res = cfg.data.resolution or cfg.units.resolution
        self.images = torch.rand(batch, cfg.units.in_channels, res, res, device=device) * 2 - 1
        if variant in ("channels_last", "compiled"):
            self.model.to(memory_format=torch.channels_last)
            self.images = self.images.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            self.model.setup(self.images)
        if variant == "compiled":
            self.model.extractor.compile()
            self.model.unet.compile()
        self.opt = make_optimizer(self.model, cfg.train, fused=variant != "eager")
        self.ema = EMA(self.model, cfg.train.ema_halflife_kimg * 1000, modules=cfg.train.ema_modules)
        self.batch = batch
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def __call__(self) -> float:
        with self.autocast:
            loss = self.model(self.images)["loss"]
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.ema.update(self.model, self.batch)
        return loss.item()

    def forward_flops(self) -> tuple[int, int]:
        with torch.no_grad():
            encode = count_flops(lambda: self.model.latents(self.images))
            total = count_flops(lambda: self.model(self.images))
        return total - encode, encode


def run(name: str, variant: str, batch: int, steps: int, warmup: int, device: torch.device, bf16: bool,
        overrides: list[str] = ()) -> dict:
    build_start = time.perf_counter()
    step = (Step(name, batch, variant, device, bf16) if name in CONFIGS
            else ModelStep(name, list(overrides), batch, variant, device, bf16))
    matmul_dtype = torch.bfloat16 if bf16 else torch.float32
    for _ in range(warmup):
        step()
    first = time.perf_counter() - build_start  # build + warm-up (compilation happens here)
    # the matmul rate is taken right before and after the timed steps: on a shared machine the
    # load drifts, and the ratio is only meaningful against a rate measured under the same load
    peak_before = matmul_rate(device, matmul_dtype)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    peak = (peak_before + matmul_rate(device, matmul_dtype)) / 2
    seconds = statistics.median(times)
    trained, encode = step.forward_flops()
    step_flops = 3 * trained + encode
    return dict(config=name if name in CONFIGS else Path(name).stem, variant=variant, batch=batch, img_s=batch / seconds, s_step=seconds,
                fwd=trained / batch, step=step_flops / batch, rate=step_flops / seconds,
                peak=peak, pct=100 * step_flops / seconds / peak, setup=first)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", nargs="+", default=["paper", "small"],
                        help=f"{', '.join(sorted(CONFIGS))}, or run config files (e.g. configs/demo.yaml)")
    parser.add_argument("--set", nargs="*", default=[], metavar="key=value", help="overrides of run config files")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per row (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before timing")
    parser.add_argument("--variants", nargs="+", choices=["eager", "channels_last", "compiled"],
                        default=["eager", "channels_last"])
    parser.add_argument("--compile", action="store_true", help="also time the torch.compile variant")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU); the reference rate is a bf16 matmul")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.bf16 and device.type != "cuda":
        parser.error("--bf16 is for GPUs (the training loop uses bf16 autocast only on CUDA)")
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = list(dict.fromkeys(args.variants + (["compiled"] if args.compile else [])))

    dtype = torch.bfloat16 if args.bf16 else torch.float32
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} CPU threads"
    print(f"torch {torch.__version__}, {where}; {str(dtype).split('.')[-1]} matmul now: "
          f"{matmul_rate(device, dtype) / 1e9:.1f} GFLOP/s (per row: mean of before/after its timed steps)")
    anchors = "DyGA shift" if make_anchors(20, 32) is not None else "no DyGA (disdis.anchoring missing)"
    print(f"step = encode (no_grad) + extractor + tokens + {anchors} + U-Net + L1 noise loss + backward + AdamW")
    print("step GFLOP/img = 3 x forward of the trained nets + forward of the frozen encoder\n")
    header = (f"{'config':<7} {'variant':<14} {'batch':>5} {'img/s':>8} {'s/step':>7} {'fwd GF/img':>10} "
              f"{'step GF/img':>11} {'GFLOP/s':>8} {'matmul':>7} {'% matmul':>8} {'setup s':>8}")
    print(header)
    print("-" * len(header))
    rows = []
    for name in args.config:
        for variant in variants:
            r = run(name, variant, args.batch, args.steps, args.warmup, device, args.bf16, args.set)
            rows.append(r)
            print(f"{r['config']:<7} {r['variant']:<14} {r['batch']:>5} {r['img_s']:>8.2f} {r['s_step']:>7.2f} "
                  f"{r['fwd'] / 1e9:>10.3f} {r['step'] / 1e9:>11.3f} {r['rate'] / 1e9:>8.1f} {r['peak'] / 1e9:>7.1f} {r['pct']:>7.0f}% "
                  f"{r['setup']:>8.1f}", flush=True)
    base = {r["config"]: r["img_s"] for r in rows if r["variant"] == variants[0]}
    if len(variants) > 1:
        print(f"\nspeed-up over '{variants[0]}': " + ", ".join(
            f"{r['config']}/{r['variant']} x{r['img_s'] / base[r['config']]:.2f}" for r in rows if r["variant"] != variants[0]))


if __name__ == "__main__":
    main()
