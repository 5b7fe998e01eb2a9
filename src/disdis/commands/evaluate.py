"""``disdis evaluate``: the disentanglement metrics of a trained run (DESIGN 5)."""

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
        "examples:\n"
        "  disdis evaluate runs/00001-shapes3d-diffusion\n"
        "  disdis evaluate RUN eval.num_train=2000 eval.num_test=1000   # a quick, non-reference protocol")
    parser.add_argument("run_dir", help="run folder (or one of its checkpoint files)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of the eval section, e.g. eval.batch_size=128")
    parser.add_argument("--weights", choices=("ema", "model"), default="ema", help="which weights to use (default ema)")
    parser.add_argument("--out", help="metrics file (default RUN_DIR/metrics.json)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from disdis.train import distributed
    try:
        result, out = evaluate_run(args.run_dir, args.overrides, weights=args.weights, out=args.out)
        if distributed.is_main():
            from disdis.metrics import format_table
            print(format_table(result))
            print(f"wrote {out}")
    finally:
        distributed.shutdown()
    return 0


def evaluate_run(source: str | Path, overrides: list[str] | tuple[str, ...] = (), weights: str = "ema",
                 out: str | Path | None = None) -> tuple[dict, Path]:
    """Metrics of a run's representation; returns (result dict, path of metrics.json) (rank 0 writes it)."""
    import json
    import os

    import numpy as np

    from disdis.config import apply_overrides, config_from_dict, config_to_dict
    from disdis.errors import ConfigError
    from disdis.metrics import evaluate_representation, reduce_units_by_pca, tad
    from disdis.run_config import EvalConfig
    from disdis.train import distributed
    from disdis.train.loop import resolve_device
    from disdis.train.run import load_trained_model, open_training_data

    cfg, model, checkpoint = load_trained_model(source, weights)
    if any(not item.startswith("eval.") for item in overrides):
        raise ConfigError("evaluate: only eval.* settings can be overridden")
    cfg.eval = config_from_dict(EvalConfig, apply_overrides({"eval": config_to_dict(cfg.eval)}, overrides)["eval"], "eval")
    if not hasattr(model, "encode_units"):
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
                                         seed=e.seed)
    else:  # CelebA: attributes, no factor grid
        labels = dataset.labels(np.arange(len(dataset)))
        result = {"metrics": {"tad": tad(codes, labels)}, "seconds": {}, "protocol": {"reference": True}}
    result["run"] = {"checkpoint": str(checkpoint), "weights": weights, "representation": cfg.eval.representation,
                     "num_images": int(len(codes))}
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, out)
    return result, out


def encode_dataset(model, data, batch_size: int, device, bf16: bool = False):
    """(scalar units (N, U), anchored tokens (N, U, D)) of every image of ``data``, in canonical
    order, as numpy float32 (sharded over ranks under torchrun, gathered on every rank)."""
    import numpy as np
    import torch

    from disdis.train.encode import encode_images

    def both(images: torch.Tensor) -> torch.Tensor:
        units, tokens = model.encode_units(images)
        return torch.cat([units.unsqueeze(-1).to(tokens.dtype), tokens], dim=-1)

    rows = encode_images(both, data, np.arange(len(data)), batch_size, device, bf16=bf16, desc="encode")
    return rows[..., 0].numpy(), rows[..., 1:].numpy()
