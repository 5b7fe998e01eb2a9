"""``disdis evaluate``: the disentanglement metrics of a trained run, or of any
model's codes given as a file (docs/method.md, "Evaluation")."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="encode a run's dataset and compute the disentanglement metrics",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Encode every image of the run's dataset (canonical order) with the EMA "
        "weights of its newest checkpoint, reduce each unit's anchored token to one number by a "
        "per-unit PCA (eval.representation=tokens_pca; 'scalar' uses the extractor's units), and "
        "run the metric suite (FactorVAE, DCI, MIG, beta-VAE, SAP, modularity/explicitness, "
        "downstream; TAD for CelebA). Writes RUN_DIR/metrics.json and prints a table. Under "
        "torchrun the encoding is sharded over the processes.\n\n"
        "With --codes FILE.npz --dataset DATASET_FILE it scores a representation given as an "
        "array instead: key 'codes' (N, U) or 'tokens' (N, U, D) (reduced per unit by PCA), one "
        "row per image of the dataset in canonical order; it writes metrics.json next to the "
        "codes file (or --out).\n\n"
        "examples:\n"
        "  disdis evaluate runs/00001-shapes3d-diffusion\n"
        "  disdis evaluate --codes codes.npz --dataset shapes3d.npz\n"
        "  disdis evaluate --codes codes.npz --dataset 3dshapes.h5 eval.num_train=2000   # quick\n"
        "  disdis evaluate RUN eval.num_train=2000 eval.num_test=1000   # a quick, non-reference protocol")
    parser.add_argument("run_dir", nargs="?", help="run folder (or one of its checkpoint files)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of the eval section, e.g. eval.batch_size=128")
    parser.add_argument("--weights", choices=("ema", "model"), default="ema", help="which weights to use (default ema)")
    parser.add_argument("--out", help="metrics file (default RUN_DIR/metrics.json, or next to --codes)")
    parser.add_argument("--codes", help="npz with 'codes' (N, U) or 'tokens' (N, U, D) in canonical order")
    parser.add_argument("--dataset", help="dataset file or folder whose factor grid the codes cover "
                        "(with --codes)")
    parser.add_argument("--dci-backend", choices=("exact", "sklearn"), default="exact",
                        help="DCI/downstream classifiers (with --codes): exact (default; scikit-learn's "
                        "protocol, presorted) or sklearn (scikit-learn's own, slow)")
    parser.add_argument("--jobs", type=int, default=2, help="threads for the per-factor fits (default 2)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.codes or args.dataset:
        return run_codes(args)
    if not args.run_dir:
        from disdis.errors import DisdisError
        raise DisdisError("give a RUN_DIR, or --codes FILE.npz with --dataset DATASET_FILE")
    from disdis.train import distributed
    try:
        result, out = evaluate_run(args.run_dir, args.overrides, weights=args.weights, out=args.out, n_jobs=args.jobs)
        if distributed.is_main():
            from disdis.metrics import format_table
            print(format_table(result))
            print(f"wrote {out}")
    finally:
        distributed.shutdown()
    return 0


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
    run_dir = checkpoint.parent.parent
    out = Path(out) if out else run_dir / "metrics.json"
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
        result = {"metrics": {"tad": tad(codes, labels)}, "seconds": {}, "protocol": {"reference": True}}
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


def run_codes(args: argparse.Namespace) -> int:
    """``disdis evaluate --codes FILE.npz --dataset DATASET_FILE [eval.key=value ...]``."""
    from disdis.errors import DisdisError
    from disdis.metrics import format_table
    if not (args.codes and args.dataset):
        raise DisdisError("--codes and --dataset go together")
    overrides = ([args.run_dir] if args.run_dir else []) + list(args.overrides)
    if any("=" not in item for item in overrides):
        raise DisdisError("with --codes, give no RUN_DIR; extra arguments must be eval.key=value overrides")
    out = Path(args.out) if args.out else Path(args.codes).with_name("metrics.json")
    result = evaluate_codes(args.codes, args.dataset, overrides, dci_backend=args.dci_backend,
                            n_jobs=args.jobs, out=out)
    print(format_table(result))
    print(f"wrote {out}")
    return 0


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
    codes = _load_codes(codes_path)
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


def _load_codes(path: str | Path):
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
