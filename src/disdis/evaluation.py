"""Evaluation of learned representations: encode a run's dataset with its method's
``representation``, reduce it, and run the metric suite (docs/method.md, "Evaluation");
or score codes given as an array file."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from disdis.rundir import RunDir


def protocol_overrides(eval_cfg) -> list[str]:
    """``eval.*`` overrides that make another run score with the protocol of ``eval_cfg`` (an
    :class:`~disdis.run_config.EvalConfig`), so that two runs are compared alike."""
    import json

    from disdis.config import config_to_dict
    return [f"eval.{key}={json.dumps(value)}" for key, value in config_to_dict(eval_cfg).items()]


def evaluate_run(source: str | Path, overrides: list[str] | tuple[str, ...] = (), weights: str = "ema",
                 out: str | Path | None = None, n_jobs: int = 2, unit_map=None) -> tuple[dict, Path]:
    """Metrics of a run's representation; returns (result dict, path of metrics.json) (rank 0 writes it).
    ``unit_map``: ``(matrix, offset)``, the scalar units scored as ``matrix @ u + offset`` (the demo's
    warm start as the units' unmixing turned it)."""
    import json

    import numpy as np

    from disdis.config import apply_overrides, config_from_dict, config_to_dict
    from disdis.errors import ConfigError
    from disdis.io import write_text_atomic
    from disdis.metrics import (Protocol, direction_shares, evaluate_representation, reduce_units_by_pca, tad,
                                unit_factor_shares)
    from disdis.run_config import EvalConfig
    from disdis.train import distributed
    from disdis.train.loop import resolve_device
    from disdis.train.run import load_trained_model, open_training_data

    cfg, model, checkpoint = load_trained_model(source, weights)
    if any(not item.startswith("eval.") for item in overrides):
        raise ConfigError("evaluate: only eval.* settings can be overridden")
    cfg.eval = config_from_dict(EvalConfig, apply_overrides({"eval": config_to_dict(cfg.eval)}, overrides)["eval"], "eval")
    if not model.can("represent"):
        raise ConfigError(f"evaluate: a '{cfg.method.name}' run has no latent units to evaluate")
    device = distributed.init(resolve_device(cfg.train.device).type)
    model.to(device)
    data = open_training_data(cfg)
    if unit_map is not None and cfg.eval.representation != "scalar":
        raise ConfigError("evaluate: a map of the units applies to eval.representation=scalar")
    if cfg.eval.representation == "tokens_pca" and "tokens" not in model.representation(data[0][0][None].to(device)):
        raise ConfigError(f"eval.representation: tokens_pca needs tokens, and a '{cfg.method.name}' run's units "
                          "are scalars (use eval.representation=scalar)")
    inception = None
    if not data.dataset.has_factor_grid and model.can("generate"):  # FID: weights checked before any work
        from disdis.metrics.fid import HOW_TO_SUPPLY, inception_weights_path, load_inception
        weights_file = inception_weights_path(cfg.eval.inception_weights)
        if weights_file is None:
            if distributed.is_main():
                print(HOW_TO_SUPPLY, file=sys.stderr)
        else:
            inception = load_inception(weights_file).to(device)
    units, tokens = encode_dataset(model, data, cfg.eval.batch_size, device)
    out = Path(out) if out else RunDir.of(checkpoint).metrics
    if not distributed.is_main():
        return {}, out
    if unit_map is not None:
        units = units.astype(np.float64) @ np.asarray(unit_map[0]).T + np.asarray(unit_map[1])
    codes = reduce_units_by_pca(tokens) if cfg.eval.representation == "tokens_pca" else units
    dataset = data.dataset
    if dataset.has_factor_grid:
        result = evaluate_representation(codes, dataset.factor_sizes, dataset.factor_names,
                                         protocol=Protocol.of(cfg.eval, n_jobs=n_jobs))
        result["unit_factor_shares"] = unit_factor_shares(codes, dataset.factor_sizes).round(4).tolist()
        result["direction_shares"] = direction_shares(codes, dataset.factor_sizes).round(4).tolist()
    else:  # CelebA: attributes, no factor grid
        labels = dataset.labels(np.arange(len(dataset)))
        result = {"metrics": {"tad": tad(codes, labels)}, "seconds": {},
                  "protocol": {"reference": True, "tad_auroc": "threshold sweep, step 0.1 (published)"}}
        if inception is not None:
            start = time.perf_counter()
            result["metrics"]["fid"] = {"fid": generated_fid(model, data, inception, cfg.eval.fid_images,
                                                             cfg.eval.batch_size, model.ddim_steps, device,
                                                             cfg.eval.seed)}
            result["seconds"]["fid"] = round(time.perf_counter() - start, 3)
            result["protocol"]["fid_images"] = cfg.eval.fid_images
    result["run"] = {"checkpoint": str(checkpoint), "weights": weights, "representation": cfg.eval.representation,
                     "num_images": int(len(codes))}
    if unit_map is not None:
        result["run"]["units_mapped"] = True
    write_text_atomic(out, json.dumps(result, indent=2))
    return result, out


def generated_fid(model, data, inception, count: int, batch_size: int, steps: int, device, seed: int = 0) -> float:
    """FID between ``count`` images generated by DDIM (``steps``, fresh seeded noise) from the tokens of
    random training images and ``count`` other random training images, on ``inception``'s features."""
    import numpy as np
    import torch

    from disdis.metrics.fid import frechet_distance, gaussian_of
    from disdis.progress import progress

    rng = np.random.default_rng([seed, 7])
    replace = count > len(data)
    sources, reals = (rng.choice(len(data), size=count, replace=replace) for _ in range(2))
    generator = torch.Generator(device).manual_seed(seed)
    fake, real = [], []

    def images(indices):
        return torch.stack([data[int(i)][0] for i in indices]).to(device)

    with torch.no_grad(), progress(total=2 * count, desc="FID (generate, embed)", unit="img") as bar:
        for start in range(0, count, batch_size):
            context = model.encode_units(images(sources[start:start + batch_size]))[1]
            fake.append(inception(model.sample(context, steps=steps, generator=generator)).double().cpu())
            real.append(inception(images(reals[start:start + batch_size])).double().cpu())
            bar.update(2 * len(context))
    return frechet_distance(*gaussian_of(torch.cat(fake).numpy()), *gaussian_of(torch.cat(real).numpy()))


def encode_dataset(model, data, batch_size: int, device):
    """(scalar units (N, U), anchored tokens (N, U, D), or None for a method whose units are scalars)
    of every image of ``data``, in canonical order, as numpy float32 (sharded over ranks under
    torchrun, gathered on every rank). In float32 even where the run trained under bf16: the
    scores are a measurement, and the same checkpoint scores the same on a GPU and a CPU."""
    import numpy as np
    import torch

    from disdis.train.encode import encode_images

    def both(images: torch.Tensor) -> torch.Tensor:
        rep = model.representation(images)
        units = rep["units"].unsqueeze(-1)
        return torch.cat([units.to(rep["tokens"].dtype), rep["tokens"]], dim=-1) if "tokens" in rep else units

    rows = encode_images(both, data, np.arange(len(data)), batch_size, device, desc="encode")
    return rows[..., 0].numpy(), (rows[..., 1:].numpy() if rows.shape[-1] > 1 else None)


def evaluate_codes(codes_path: str | Path, dataset_path: str | Path, overrides=(), *,
                   dci_backend: str | None = None, n_jobs: int = 2, out: str | Path | None = None,
                   progress: bool = True) -> dict:
    """Metric suite of the codes stored in ``codes_path`` over the factor grid of the
    dataset at ``dataset_path``; writes ``out`` (metrics.json) atomically when given."""
    import json
    import os

    from disdis.config import apply_overrides, config_from_dict, config_to_dict
    from disdis.data import open_dataset
    from disdis.errors import ConfigError, DisdisError
    from disdis.io import write_text_atomic
    from disdis.metrics import Protocol, evaluate_representation, reduce_units_by_pca
    from disdis.run_config import EvalConfig

    if any(not item.startswith("eval.") for item in overrides):
        raise ConfigError("evaluate: only eval.* settings can be overridden")
    cfg = config_from_dict(EvalConfig, apply_overrides({"eval": config_to_dict(EvalConfig())},
                                                       list(overrides))["eval"], "eval")
    codes = load_codes(codes_path)
    dataset = open_dataset(os.fspath(dataset_path))
    try:
        if not dataset.has_factor_grid:
            raise DisdisError(f"{dataset_path}: has no factor grid; the grid metrics need one")
        if len(codes) != len(dataset):
            raise DisdisError(f"{codes_path}: has {len(codes)} rows but {dataset_path} has "
                              f"{len(dataset)} images (one row per image, canonical order)")
        sizes, names = dataset.factor_sizes, dataset.factor_names
    finally:
        dataset.close()
    representation = "codes"
    if codes.ndim == 3:
        codes, representation = reduce_units_by_pca(codes), "tokens_pca"
    settings = {"n_jobs": n_jobs, **({"dci_backend": dci_backend} if dci_backend else {})}  # the flag wins
    result = evaluate_representation(codes, sizes, names, progress=progress, protocol=Protocol.of(cfg, **settings))
    result["run"] = {"codes": os.fspath(codes_path), "dataset": os.fspath(dataset_path),
                     "representation": representation, "num_images": int(len(codes))}
    if out is not None:
        write_text_atomic(out, json.dumps(result, indent=2))
    return result


def load_codes(path: str | Path):
    """The 'codes' (N, U) or 'tokens' (N, U, D) array of an npz (no pickles)."""
    import numpy as np

    from disdis.data.files import check_npz_file
    from disdis.errors import DisdisError
    check_npz_file(str(path), "codes .npz")  # numpy's own message for a non-npz speaks of pickles
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = [k for k in ("codes", "tokens") if k in npz.files]
            if not keys and len(npz.files) == 1:
                keys = npz.files
            if not keys:
                raise DisdisError(f"{path}: expected an array 'codes' or 'tokens', found {npz.files}")
            codes = npz[keys[0]]
    except (OSError, ValueError) as err:
        raise DisdisError(f"{path}: not a readable npz file ({err})") from None
    if codes.ndim == 3 and codes.shape[2] == 1:
        codes = codes[..., 0]
    if codes.ndim not in (2, 3) or not np.issubdtype(codes.dtype, np.number):
        raise DisdisError(f"{path}: expected codes (N, U) or tokens (N, U, D) of numbers, "
                          f"got {codes.dtype} {codes.shape}")
    return codes
