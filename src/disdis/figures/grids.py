"""Image grids: saving them, the latent-interchange grid and reconstructions of a trained run."""

from __future__ import annotations

from pathlib import Path

from disdis.rundir import RunDir


def save_grid(grid, path: str | Path, pad: int = 2) -> None:
    """Save images (rows, cols, C, H, W) in [-1, 1] as one PNG with white gutters (atomic)."""
    import numpy as np
    from PIL import Image

    from disdis.io import atomic_path

    rows, cols, c, h, w = grid.shape
    pixels = ((grid.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 1, 3, 4, 2).cpu().numpy()
    canvas = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, dtype=np.uint8)
    for r in range(rows):
        for k in range(cols):
            y, x = pad + r * (h + pad), pad + k * (w + pad)
            canvas[y:y + h, x:x + w] = pixels[r, k]
    with atomic_path(path) as tmp:
        Image.fromarray(canvas.squeeze(-1) if c == 1 else canvas).save(tmp)
def interchange_grid(run_source: str | Path, out: str | Path | None = None, source: int | None = None,
                     num_targets: int = 6, units: list[int] | None = None, steps: int | None = None,
                     seed: int = 0, weights: str = "ema") -> Path:
    import numpy as np
    import torch

    from disdis.errors import DisdisError
    from disdis.progress import progress
    from disdis.train.loop import resolve_device
    from disdis.train.run import load_trained_model, open_training_data

    cfg, model, checkpoint = load_trained_model(run_source, weights)
    if not model.can("generate"):
        raise DisdisError(f"interchange: a '{cfg.method.name}' run has no latent units")
    device = resolve_device(cfg.train.device)
    model.to(device)
    data = open_training_data(cfg)
    num_units = model.tokenizer.num_units
    units = list(range(num_units)) if units is None else units
    if any(not 0 <= u < num_units for u in units):
        raise DisdisError(f"--units: expected units in 0..{num_units - 1}, got {units}")
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(data), size=num_targets + 1, replace=False)
    if source is not None:
        if not 0 <= source < len(data):
            raise DisdisError(f"--source: expected an index in 0..{len(data) - 1}, got {source}")
        picks[0] = source
    images = torch.stack([data[int(i)][0] for i in picks]).to(device)
    src, targets = images[:1], images[1:]
    steps = steps or model.ddim_steps
    noise = model.invert(targets, steps=steps)
    rows = [torch.cat([torch.ones_like(src), targets])]
    for u in progress(units, desc="interchange", unit="unit"):
        rows.append(torch.cat([src, model.interchange(src, targets, u, noise=noise, steps=steps)]))
    out = Path(out) if out else RunDir.of(checkpoint).figure("interchange")
    save_grid(torch.stack(rows), out)
    return out


def reconstructions(run_dir: Path, steps: int | None = None, count: int = 8) -> Path:
    """Rows: images; the first stage's reconstructions; DDIM from their inverted noise and own tokens."""
    import numpy as np
    import torch

    from disdis.train.run import load_trained_model, open_training_data

    cfg, model, _ = load_trained_model(run_dir)
    data = open_training_data(cfg)
    picks = np.random.default_rng(1).choice(len(data), size=count, replace=False)
    x = torch.stack([data[int(i)][0] for i in picks])
    with torch.no_grad():
        first = model.first_stage(x).clamp(-1, 1)
    context = model.encode_units(x)[1]
    ddim = model.sample(context, noise=model.invert(x, context, steps), steps=steps)
    path = RunDir.of(run_dir).figure("reconstructions")
    save_grid(torch.stack([x, first, ddim]), path)
    return path
