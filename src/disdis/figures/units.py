"""What each unit means, as pictures of a trained model: traversals, interchange, attention maps,
reconstructions and samples (``disdis figures``, ``disdis sample``).

Every function takes the model (a :class:`disdis.models.method.Method`, in eval mode, on its
device) and the run's data, and uses only the capabilities the model declares: ``decode``
(images from scalar units) for traversals and the swaps of non-diffusion methods, ``generate``
(DDIM sampling and inversion) for the diffusion methods' interchange, reconstructions and
samples, ``attention`` for the attention maps. Rows are units, labelled with the factor each
carries most (:func:`unit_labels`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from disdis.errors import DisdisError
from disdis.figures.labelled import labelled_grid, overlay_grid
from disdis.rundir import RunDir

QUANTILES = np.linspace(0.02, 0.98, 8)


def unit_labels(run: RunDir, count: int) -> list[str]:
    """``unit k: factor share`` for each unit, from the run's evaluated share table (metrics.json);
    ``unit k`` where the run has not been evaluated on a factor grid."""
    result = json.loads(run.metrics.read_text()) if run.metrics.is_file() else {}
    shares, names = result.get("unit_factor_shares"), (result.get("protocol") or {}).get("factor_names")
    if not shares or not names or len(shares) != count:
        return [f"unit {k}" for k in range(count)]
    return [f"unit {k}: {names[int(np.argmax(row))]} {max(row):.2f}" for k, row in enumerate(shares)]


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _images(data, indices) -> torch.Tensor:
    return torch.stack([data[int(i)][0] for i in indices])


def _units(model, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    device = _device(model)
    with torch.no_grad():
        return torch.cat([model.representation(images[i:i + batch].to(device))["units"].float()
                          for i in range(0, len(images), batch)])


def traversal_images(model, data, seed: int = 0, probe: int = 2000, steps: int | None = None) -> torch.Tensor:
    """(units, quantiles, C, H, W): row k decodes a fixed image's units with unit k set to its 2%..98%
    quantiles over (up to ``probe``) images of the data (diffusion methods: DDIM from the fixed
    image's own inverted noise, so that only the conditioning changes along a row)."""
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(data), size=min(probe, len(data)), replace=False)
    images = _images(data, picks)
    units = _units(model, images)
    noise = _inverted(model, images[:1], steps)
    values = torch.quantile(units, torch.tensor(QUANTILES, dtype=units.dtype, device=units.device), dim=0)  # (V, N)
    n, v = units.shape[1], len(QUANTILES)
    grid = units[0].repeat(n * v, 1).view(n, v, n)
    for k in range(n):
        grid[k, :, k] = values[:, k]
    with torch.no_grad():
        decoded = model.decode_units(grid.view(n * v, n), seed=seed, steps=steps, noise=noise)
    return decoded.view(n, v, *decoded.shape[1:])


def _inverted(model, image: torch.Tensor, steps: int | None) -> torch.Tensor | None:
    """A diffusion method's DDIM noise of ``image`` (1, C, H, W) with its own tokens; None for others."""
    if not model.can("generate"):
        return None
    with torch.no_grad():
        return model.invert(image.to(_device(model)), steps=steps)


def traversals(model, data, path: str | Path, labels: Sequence[str], seed: int = 0, probe: int = 2000,
               steps: int | None = None) -> Path:
    """The traversal figure: rows are units, columns their quantiles (:func:`traversal_images`)."""
    return labelled_grid(traversal_images(model, data, seed, probe, steps), path, labels,
                         [f"{q:.0%}" for q in QUANTILES],
                         "Traversals: one unit at a time from its 2% to its 98% quantile, the others fixed")


def anchor_traversals(model, data, path: str | Path, labels: Sequence[str], seed: int = 0,
                      steps: int | None = None, most: int = 8) -> Path:
    """Rows: units; columns: the unit's token set to each of its DyGA anchors' means (up to ``most``,
    heaviest first), the other tokens those of a fixed image; DDIM from that image's inverted noise."""
    anchors = model.anchor_state.anchors()
    image = _images(data, [int(np.random.default_rng(seed).integers(len(data)))]).to(_device(model))
    with torch.no_grad():
        tokens = model.encode_units(image)[1][0]
    n = len(tokens)
    rows = []
    for k in range(n):
        order = torch.argsort(anchors.weights[k], descending=True)[:most]
        context = tokens.repeat(most, 1, 1)
        context[: len(order), k] = anchors.means[k][order].to(context)
        rows.append(context)
    with torch.no_grad():
        images = model.sample(torch.cat(rows), noise=model.shared_noise(n * most, noise=_inverted(model, image, steps)),
                              steps=steps)
    images = images.view(n, most, *images.shape[1:])
    for k in range(n):  # units with fewer anchors: blank cells
        images[k, anchors.num_components[k]:] = 1.0
    return labelled_grid(images, path, labels, [f"anchor {j + 1}" for j in range(most)],
                         "Each unit's token set to its anchors' means (heaviest first), the others an image's")


def interchange(model, data, path: str | Path, labels: Sequence[str], units: Sequence[int] | None = None,
                source: int | None = None, num_targets: int = 6, seed: int = 0, steps: int | None = None) -> Path:
    """Row 0: the source, then the targets; row k: the targets with unit k taken from the source.
    Diffusion methods regenerate each target from its own inverted DDIM noise; others decode."""
    from disdis.progress import progress
    num_units = len(labels)
    units = list(range(num_units)) if units is None else list(units)
    if any(not 0 <= u < num_units for u in units):
        raise DisdisError(f"--units: expected units in 0..{num_units - 1}, got {units}")
    if not 1 <= num_targets <= len(data) - 1:
        raise DisdisError(f"--targets: expected 1..{len(data) - 1} target images (the data holds {len(data)}, "
                          f"the source among them), got {num_targets}")
    picks = np.random.default_rng(seed).choice(len(data), size=num_targets + 1, replace=False)
    if source is not None:
        if not 0 <= source < len(data):
            raise DisdisError(f"--source: expected an index in 0..{len(data) - 1}, got {source}")
        picks[0] = source
    images = _images(data, picks).to(_device(model))
    src, targets = images[:1], images[1:]
    rows = [targets]
    if model.can("generate"):
        noise = model.invert(targets, steps=steps)
        rows += [model.interchange(src, targets, u, noise=noise, steps=steps) for u in progress(units, desc="interchange", unit="unit")]
    else:
        own, theirs = _units(model, targets), _units(model, src)
        for u in units:
            swapped = own.clone()
            swapped[:, u] = theirs[0, u]
            rows.append(model.decode_units(swapped, seed=seed))
    blank = torch.ones_like(src)
    grid = torch.stack([torch.cat([blank if r else src, row]) for r, row in enumerate(rows)])
    row_labels = ["source | targets", *(f"swap {labels[u]}" for u in units)]
    return labelled_grid(grid, path, row_labels, ["source", *(f"target {j + 1}" for j in range(num_targets))],
                         "Interchange: each row takes one unit of the source into every target")


def attention_maps(model, data, path: str | Path, labels: Sequence[str], t: int = 500, count: int = 4,
                   seed: int = 0) -> Path:
    """Rows: units; columns: images; over each image, the cross-attention weight its pixels give the
    unit's token (mean of heads and layers, at timestep ``t``)."""
    picks = np.random.default_rng(seed).choice(len(data), size=count, replace=False)
    images = _images(data, picks).to(_device(model))
    maps = model.attention_maps(images, t, generator=torch.Generator(images.device).manual_seed(seed))
    return overlay_grid(images, maps.transpose(0, 1), path, labels,
                        f"Where each unit's token is attended (cross-attention at t = {t}, mean of heads and layers)")


def reconstructions(model, data, path: str | Path, count: int = 8, seed: int = 1, steps: int | None = None) -> Path:
    """Rows: images; for diffusion methods the first stage's reconstruction and DDIM from each image's
    inverted noise and own tokens; for others the decoding of its units."""
    picks = np.random.default_rng(seed).choice(len(data), size=min(count, len(data)), replace=False)
    x = _images(data, picks).to(_device(model))
    with torch.no_grad():
        if model.can("generate"):
            context = model.encode_units(x)[1]
            rows = [x, model.decode_latents(model.latents(x)),
                    model.sample(context, noise=model.invert(x, context, steps), steps=steps)]
            names = ["images", "first stage", "DDIM (inverted noise)"]
        else:
            rows, names = [x, model.decode_units(_units(model, x))], ["images", "decoded units"]
    return labelled_grid(torch.stack(rows), path, names, title="Reconstructions")


SAMPLE_SOURCES = ("data", "anchors", "prior")


def check_sample_source(model, source: str, method: str | None = None) -> None:
    """What ``--from`` a method samples from: ``data`` and ``anchors`` (the diffusion methods: tokens
    of training images, or their DyGA anchors' means), ``prior`` (the others: codes of N(0, I) through
    their decoder); a refusal says which the run supports."""
    run = f"a '{method}' run" if method else "this method"
    if source not in SAMPLE_SOURCES:
        raise DisdisError(f"--from: expected {', '.join(SAMPLE_SOURCES)}, got {source!r}")
    if model.can("generate"):
        if source == "prior":
            raise DisdisError(f"--from prior: {run} generates from tokens, not from N(0, I) codes "
                              "(use --from data or --from anchors)")
    elif source == "anchors":
        raise DisdisError(f"--from anchors: {run} has no anchors to sample from (DyGA anchors are fitted by the "
                          "diffusion methods); it samples only --from prior (N(0, I) codes through its decoder)")
    elif source == "data":
        raise DisdisError(f"--from data: {run} has no generator conditioned on an image's units (its decoder maps "
                          "codes to images); it samples only --from prior (N(0, I) codes through its decoder)")


def sample_images(model, data, count: int, seed: int = 0, source: str = "data", steps: int | None = None) -> torch.Tensor:
    """``count`` generated images: from the tokens of random training images (``data``), from the
    anchors (``anchors``: every unit's token one of its anchors' means), or, for methods with a
    prior and no generator of their own, from N(0, I) codes (``prior``)."""
    check_sample_source(model, source)
    generator = torch.Generator().manual_seed(seed)
    device = _device(model)
    with torch.no_grad():
        if source == "prior":
            return model.decode_units(torch.randn(count, unit_count(model, data), generator=generator).to(device))
        if source == "anchors":
            try:
                context = model.anchor_tokens(count, generator=generator)
            except ValueError as err:
                raise DisdisError(f"--from anchors: {err}") from None
        else:
            picks = torch.randint(len(data), (count,), generator=generator)
            context = model.encode_units(_images(data, picks).to(device))[1]
        noise = torch.randn(model.latent_shape(count), generator=generator).to(device)
        return model.sample(context, noise=noise, steps=steps)


def unit_count(model, data) -> int:
    """How many units the model's representation has (read from one image of the data)."""
    return _units(model, _images(data, [0])).shape[1]


def save_samples(source_run: str | Path, count: int, out: str | Path | None = None, source: str | None = None,
                 seed: int = 0, steps: int | None = None, weights: str = "ema") -> Path:
    """``disdis sample``: ``count`` images of a run as one grid (8 per row), RUN/figures/samples.png
    unless ``out`` is given."""
    from disdis.train.loop import resolve_device
    from disdis.train.run import load_trained_model, open_training_data
    from disdis.figures.checks import check_at_least, check_steps, require_units
    if count < 1:
        raise DisdisError(f"--n: expected a positive number of images, got {count}")
    check_at_least("--steps", steps, 1, "a number of DDIM steps")
    cfg, model, checkpoint = load_trained_model(source_run, weights)
    require_units(cfg, model, "decode", what="sampling")
    source = source or ("data" if model.can("generate") else "prior")
    check_sample_source(model, source, cfg.method.name)
    check_steps(model, steps)
    model.to(resolve_device(cfg.train.device))
    data = open_training_data(cfg)
    images = sample_images(model, data, count, seed=seed, source=source, steps=steps)
    cols = min(8, count)
    rows = -(-count // cols)
    padded = torch.cat([images, torch.ones(rows * cols - count, *images.shape[1:], device=images.device)])
    path = Path(out) if out else RunDir.of(checkpoint).figure("samples")
    return labelled_grid(padded.view(rows, cols, *images.shape[1:]), path, [""] * rows,
                         title=f"{count} samples from {source} (seed {seed})")
