"""Evaluation of learned representations: encode a run's dataset with its method's
``representation``, reduce it, and run the metric suite (docs/method.md, "Evaluation");
or score codes given as an array file."""

from __future__ import annotations

from pathlib import Path

from disdis.rundir import RunDir


def evaluate_run(source: str | Path, overrides: list[str] | tuple[str, ...] = (), weights: str = "ema",
                 out: str | Path | None = None, n_jobs: int = 2) -> tuple[dict, Path]:
    """Metrics of a run's representation; returns (result dict, path of metrics.json) (rank 0 writes it)."""
    import json

    import numpy as np

    from disdis.config import apply_overrides, config_from_dict, config_to_dict
    from disdis.errors import ConfigError
    from disdis.io import write_text_atomic
    from disdis.metrics import evaluate_representation, reduce_units_by_pca, tad, unit_factor_shares
    from disdis.run_config import EvalConfig
    from disdis.train import distributed
    from disdis.train.loop import resolve_device
    from disdis.train.run import load_trained_model, open_training_data

    cfg, model, checkpoint = load_trained_model(source, weights)
    if any(not item.startswith("eval.") for item in overrides):
        raise ConfigError("evaluate: only eval.* settings can be overridden")
    cfg.eval = config_from_dict(EvalConfig, apply_overrides({"eval": config_to_dict(cfg.eval)}, overrides)["eval"], "eval")
    if not model.can("represent"):
        raise ConfigError(f"evaluate: a '{cfg.stage}' run has no latent units to evaluate")
    device = distributed.init(resolve_device(cfg.train.device).type)
    model.to(device)
    data = open_training_data(cfg)
    units, tokens = encode_dataset(model, data, cfg.eval.batch_size, device, bf16=cfg.train.bf16)
    out = Path(out) if out else RunDir.of(checkpoint).metrics
    if not distributed.is_main():
        return {}, out
    codes = reduce_units_by_pca(tokens) if cfg.eval.representation == "tokens_pca" else units
    dataset = data.dataset
    if dataset.has_factor_grid:
        e = cfg.eval
        result = evaluate_representation(codes, dataset.factor_sizes, dataset.factor_names, num_train=e.num_train,
                                         num_test=e.num_test, num_eval=e.num_eval,
                                         num_variance_estimate=e.num_variance_estimate, metrics=tuple(e.metrics),
                                         seed=e.seed, n_jobs=n_jobs)
        result["unit_factor_shares"] = unit_factor_shares(codes, dataset.factor_sizes).round(4).tolist()
    else:  # CelebA: attributes, no factor grid
        labels = dataset.labels(np.arange(len(dataset)))
        result = {"metrics": {"tad": tad(codes, labels)}, "seconds": {},
                  "protocol": {"reference": True, "tad_auroc": "threshold sweep, step 0.1 (published)"}}
    result["run"] = {"checkpoint": str(checkpoint), "weights": weights, "representation": cfg.eval.representation,
                     "num_images": int(len(codes))}
    write_text_atomic(out, json.dumps(result, indent=2))
    return result, out


def encode_dataset(model, data, batch_size: int, device, bf16: bool = False):
    """(scalar units (N, U), anchored tokens (N, U, D)) of every image of ``data``, in canonical
    order, as numpy float32 (sharded over ranks under torchrun, gathered on every rank)."""
    import numpy as np
    import torch

    from disdis.train.encode import encode_images

    def both(images: torch.Tensor) -> torch.Tensor:
        rep = model.representation(images)
        units, tokens = rep["units"], rep["tokens"]
        return torch.cat([units.unsqueeze(-1).to(tokens.dtype), tokens], dim=-1)

    rows = encode_images(both, data, np.arange(len(data)), batch_size, device, bf16=bf16, desc="encode")
    return rows[..., 0].numpy(), rows[..., 1:].numpy()


def evaluate_codes(codes_path: str | Path, dataset_path: str | Path, overrides=(), *,
                   dci_backend: str = "exact", n_jobs: int = 2, out: str | Path | None = None,
                   progress: bool = True) -> dict:
    """Metric suite of the codes stored in ``codes_path`` over the factor grid of the
    dataset at ``dataset_path``; writes ``out`` (metrics.json) atomically when given."""
    import json
    import os

    from disdis.config import apply_overrides, config_from_dict, config_to_dict
    from disdis.data import open_dataset
    from disdis.errors import ConfigError, DisdisError
    from disdis.io import write_text_atomic
    from disdis.metrics import evaluate_representation, reduce_units_by_pca
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
    result = evaluate_representation(
        codes, sizes, names, num_train=cfg.num_train, num_test=cfg.num_test, num_eval=cfg.num_eval,
        num_variance_estimate=cfg.num_variance_estimate, metrics=tuple(cfg.metrics), seed=cfg.seed,
        dci_backend=dci_backend, n_jobs=n_jobs, progress=progress)
    result["run"] = {"codes": os.fspath(codes_path), "dataset": os.fspath(dataset_path),
                     "representation": representation, "num_images": int(len(codes))}
    if out is not None:
        write_text_atomic(out, json.dumps(result, indent=2))
    return result


def load_codes(path: str | Path):
    """The 'codes' (N, U) or 'tokens' (N, U, D) array of an npz (no pickles)."""
    import numpy as np

    from disdis.errors import DisdisError
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
