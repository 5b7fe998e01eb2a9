"""Tiny stand-in models and data for the training-loop tests (no dependency on the real networks), and
the tests' loader of the repository's scripts."""

from __future__ import annotations

import torch
from torch import nn

from disdis.anchoring import AnchoringConfig, AnchorState, GaussianAnchors
from disdis.models.anchor_refit import AnchorRefit
from disdis.models.method import Method
from disdis.train.hooks import Hook, OnFirstBatch


class TinyImages(torch.utils.data.Dataset):
    """n random 3x8x8 images in [-1, 1] with a fake factor column, fixed by ``seed``."""

    def __init__(self, n: int = 64, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        base = torch.rand(4, 3, 8, 8, generator=g) * 2 - 1
        self.images = base[torch.arange(n) % 4] + 0.05 * torch.randn(n, 3, 8, 8, generator=g)
        self.factors = torch.arange(n) % 4

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], self.factors[i]


class TinyDenoiser(Method):
    """Predicts the noise added to an image from the noisy image and 2 'unit tokens' (with dropout),
    with the real DyGA refit hook on a tiny mixture; ``anchoring`` options override its refit settings."""

    def __init__(self, **anchoring):
        super().__init__()
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(192, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 2 * 4))
        self.net = nn.Sequential(nn.Linear(192 + 8, 64), nn.SiLU(), nn.Dropout(0.1), nn.Linear(64, 192))
        self.register_buffer("scale", torch.ones(()))
        self.anchoring = AnchoringConfig(**{**TINY_ANCHORING, **anchoring})
        self.anchor_state = AnchorState(2, 4, self.anchoring)

    def hooks(self):
        return [OnFirstBatch("scale", self.setup), AnchorRefit(self)]

    def setup(self, images):
        self.scale.fill_(1.0 / float(images.std()))

    def unit_tokens(self, images):
        return self.encoder(images * self.scale).view(-1, 2, 4)

    def fit_anchors(self, tokens, seed):
        return GaussianAnchors.fit(tokens, seed=seed, config=self.anchoring)

    def forward(self, images):
        tokens = self.unit_tokens(images)
        context = self.anchor_state.shift_batch(tokens, 0.1)
        noise = torch.randn_like(images)
        noisy = images * self.scale + noise
        pred = self.net(torch.cat([noisy.flatten(1), context.flatten(1)], 1)).view_as(images)
        loss = (pred - noise).abs().mean()
        return {"loss": loss, "token_norm": context.norm(dim=-1).mean(), "tokens": tokens.detach()}


TINY_ANCHORING = dict(initial_components=2, max_components=2, em_iters=3, split_rounds=0, min_soft_count=2,
                      refit_every=1, refit_unit="epochs", refit_images=32)


class LossAverage(Hook):
    """Sums the losses of the steps since its last call; every ``every`` steps sets the method's
    loss weight from their mean. Its sum is state that a resumed run must get back."""

    name = "loss_average"

    def __init__(self, method, every: int = 3):
        self.method, self.every = method, every
        self.total = torch.zeros(2, dtype=torch.float64)  # (sum, count)

    def interval(self, ctx):
        return self.every

    def after_step(self, out):
        self.total += torch.tensor([float(out["loss"].detach()), 1.0], dtype=torch.float64)

    def __call__(self, ctx, step):
        self.method.loss_weight.fill_(1.0 / (1.0 + float(self.total[0] / self.total[1])))
        self.total.zero_()

    def state_dict(self):
        return {"total": self.total.clone()}

    def load_state_dict(self, tensors):
        self.total = tensors["total"].clone()


class TwoGroupAutoencoder(Method):
    """No anchoring: an autoencoder whose decoder has its own optimizer group (plain Adam, betas
    (0.5, 0.9), half the learning rate) and whose loss weight a hook sets."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(192, 8), nn.Dropout(0.1))
        self.decoder = nn.Linear(8, 192)
        self.register_buffer("loss_weight", torch.ones(()))

    def param_groups(self, cfg):
        return [{"params": list(self.encoder.parameters())},
                {"params": list(self.decoder.parameters()), "lr": cfg.lr / 2, "betas": (0.5, 0.9), "weight_decay": 0.0}]

    def hooks(self):
        return [LossAverage(self)]

    def forward(self, images):
        recon = self.decoder(self.encoder(images)).view_as(images)
        return {"loss": self.loss_weight * (recon - images).square().mean()}

    def representation(self, images):
        return {"units": self.encoder(images)}


METHOD_SECTIONS = ("first_stage", "units", "unet", "diffusion", "anchoring", "first_stage_train", "extractor_init_train")


def tiny_run_config(data_path, run_dir, **sections) -> dict:
    """A run config of the paper's method small enough for CPU tests (16x16 images, pixel space);
    ``sections`` update the config's sections (e.g. train={"total_kimg": 0.32}; the method's own,
    e.g. unet={...}, update its part of ``method``; method={"name": "first_stage"} trains a first stage)."""
    method = {
        "name": "disentangled_diffusion",
        "first_stage": {"kind": "identity"},
        "units": {"num_units": 4, "token_dim": 8, "extractor_width": 4, "fc_hidden": [16], "mlp_hidden": [8, 8]},
        "unet": {"base_channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [2],
                 "num_heads": 2},
        "diffusion": {"ddim_steps": 4},
        "anchoring": {"initial_components": 2, "max_components": 4, "em_iters": 5, "split_rounds": 1,
                      "min_soft_count": 2, "refit_every": 0.08, "refit_unit": "kimg", "refit_images": 64},
    }
    cfg = {
        "name": "tiny", "run_dir": str(run_dir),
        "data": {"path": str(data_path), "resolution": 16},
        "method": method,
        "train": {"batch_size": 16, "total_kimg": 0.32, "lr": 2e-3, "ema_halflife_kimg": 0.05,
                  "checkpoint_every_kimg": 0.08,
                  "keep_checkpoints": 3, "log_every_kimg": 0.08, "num_workers": 0, "device": "cpu", "seed": 3},
        "eval": {"batch_size": 64},
    }
    for key, value in sections.items():
        if key == "method":
            method.update(value)
            continue
        target = method if key in METHOD_SECTIONS else cfg
        target[key] = {**target.get(key, {}), **value} if isinstance(value, dict) else value
    if method["name"] == "first_stage":  # a first stage's method holds only its autoencoder
        method = {"name": "first_stage", "first_stage": method["first_stage"]}
    cfg["method"] = method
    return cfg


def write_yaml(path, data) -> str:
    import yaml
    with open(path, "w") as f:
        yaml.safe_dump(data, f)
    return str(path)


def repo_script(path: str):
    """The module of the repository's script at ``path`` (e.g. ``benchmarks/hold_report.py``): the
    benchmarks and scripts are files, not a package."""
    import importlib.util
    from pathlib import Path
    spec = importlib.util.spec_from_file_location(Path(path).stem, Path(__file__).resolve().parent.parent / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def interrupted(args: list[str], log, lines: int, sig=None) -> tuple[int, str]:
    """Run ``python -m disdis.cli ARGS`` on one thread, send it ``sig`` (default SIGINT) once its CSV
    ``log`` holds ``lines`` lines (the header included), and return its exit code and stderr."""
    import os
    import signal
    import subprocess
    import sys
    import time
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-m", "disdis.cli", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if log.is_file() and len(log.read_text().splitlines()) >= lines:
            break
        time.sleep(0.01)
    proc.send_signal(sig if sig is not None else signal.SIGINT)
    err = proc.communicate(timeout=120)[1].decode()
    return proc.returncode, err
