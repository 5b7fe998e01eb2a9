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
        "  disdis evaluate runs/00001-shapes3d-disentangled_diffusion\n"
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
    parser.add_argument("--dci-backend", choices=("exact", "sklearn"),
                        help="DCI/downstream classifiers (with --codes): exact (default; scikit-learn's "
                        "protocol, presorted) or sklearn (scikit-learn's own, slow); the same as "
                        "eval.dci_backend=...")
    parser.add_argument("--jobs", type=int, default=2, help="threads for the per-factor fits (default 2)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.codes or args.dataset:
        return run_codes(args)
    if not args.run_dir:
        from disdis.errors import DisdisError
        raise DisdisError("give a RUN_DIR, or --codes FILE.npz with --dataset DATASET_FILE")
    from disdis.evaluation import evaluate_run
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


def run_codes(args: argparse.Namespace) -> int:
    """``disdis evaluate --codes FILE.npz --dataset DATASET_FILE [eval.key=value ...]``."""
    from disdis.errors import DisdisError
    from disdis.evaluation import evaluate_codes
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
