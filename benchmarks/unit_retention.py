"""Does the diffusion loss keep the factors in the units once they are there?

Separates two explanations of units that miss factors: the loss never *finds*
them (a problem of discovery), or it *removes* them (the objective, at this
scale, does not reward them in the units). The run's feature extractor is first
trained with a linear classifier per factor on its units (supervised, so every
factor is in the units) or, with ``--start autoencoder``, as the encoder of an
autoencoder (unsupervised, what ``method.extractor_init: autoencoder`` does), then
the run's model is trained as usual, with the diffusion loss only, from that
extractor (held still for the config's ``train.freeze_kimg``: 32 kimg in the demo
preset; ``train.freeze_kimg=0`` releases it at once). The training probe logs each
factor's best unit share at every interval; this script prints that trajectory.
Shares that stay high mean discovery is the problem; shares that fall mean the loss
lets the factor go.

    .venv/bin/python benchmarks/unit_retention.py configs/demo.yaml data.path=data/demo/shapes3d_grid.npz \\
        requires.first_stage=runs/demo/first_stage train.total_kimg=24 train.freeze_kimg=0 --out runs/retention
    .venv/bin/python benchmarks/unit_retention.py configs/demo.yaml data.path=data/demo/shapes3d_grid.npz \\
        requires.first_stage=runs/demo/first_stage --start autoencoder --extractor-steps 6000 --start-only
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch

from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score

from factor_oracle import fit, supervised_extractor
from disdis.config import save_config
from disdis.metrics import unit_factor_shares
from disdis.models import build_model
from disdis.models.autoencoder import Autoencoder
from disdis.nn.units import FeatureExtractor
from disdis.run_config import load_run_config
from disdis.rundir import RunDir
from disdis.train.logger import read_csv_log
from disdis.train.loop import train
from disdis.train.run import unit_probe, load_required, open_training_data


def autoencoder_extractor(cfg, images: torch.Tensor, steps: int, seed: int) -> FeatureExtractor:
    """The run's extractor trained as the encoder of the autoencoder method (a deconvolutional decoder
    reconstructs the image from its N units, squared error; the run's ``train`` lr and weight decay,
    not ``extractor_init_train``'s). Unsupervised: the units hold whatever the reconstruction needs,
    entangled or not."""
    torch.manual_seed(seed)
    model = Autoencoder(cfg.method.units)
    fit(cfg, [model], lambda i, g: model(images[i])["loss"], len(images), steps, seed)
    return model.extractor.eval()


def linear_readout(units, classes) -> list[float]:
    """Per factor, the 3-fold cross-validated accuracy of a logistic regression on the units: what
    they hold, disentangled or not (a unit share only sees what one unit holds)."""
    return [cross_val_score(LogisticRegression(max_iter=2000), units, c, cv=3).mean() for c in classes.T]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="key=value; needs data.path and requires.first_stage")
    p.add_argument("--out", help="run folder (replaced; required unless --start-only)")
    p.add_argument("--start", choices=("supervised", "autoencoder"), default="supervised",
                   help="how the extractor is trained first: linear classifiers per factor on its units, or as "
                        "the encoder of an autoencoder (unsupervised)")
    p.add_argument("--extractor-steps", type=int, default=300, help="steps of that first training")
    p.add_argument("--start-only", action="store_true", help="print what the start holds and stop")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_intermixed_args()
    torch.set_num_threads(args.threads)
    # the script gives the start itself: the run folder must not train (or, resumed, retrain) its own
    cfg = load_run_config(args.config, [*args.overrides, f"run_dir={args.out or ''}",
                                                "method.extractor_init=random"])
    if not cfg.requires.get("first_stage"):
        p.error("requires.first_stage=RUN is required (a trained first stage)")
    if not args.out and not args.start_only:
        p.error("--out RUN is required (unless --start-only)")
    data = open_training_data(cfg)
    names = list(data.dataset.factor_names)
    images, classes = map(torch.stack, zip(*data.__getitems__(range(len(data)))))
    if args.start == "supervised":
        extractor, _ = supervised_extractor(cfg, images, classes, args.extractor_steps, cfg.train.seed)
    else:
        extractor = autoencoder_extractor(cfg, images, args.extractor_steps, cfg.train.seed)
    with torch.no_grad():
        units = extractor(images).double().numpy()
    start = unit_factor_shares(units, data.dataset.factor_sizes).max(axis=0)
    print(f"{args.start} start, linear read-out accuracy per factor: "
          + ", ".join(f"{n} {a:.2f}" for n, a in zip(names, linear_readout(units, classes.numpy())))
          + "; best unit share: " + ", ".join(f"{n} {v:.2f}" for n, v in zip(names, start)), flush=True)
    if args.start_only:
        return
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    save_config(cfg, out / "config.yaml")  # a run folder: evaluate and the other commands can read it
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg, {"first_stage": load_required(cfg.requires["first_stage"], "first_stage")[1]})
    model.extractor.load_state_dict(extractor.state_dict())
    train(model, data, cfg.train, out, probe=unit_probe(cfg, model, data, out))
    rows = read_csv_log(RunDir(out).log("train"))
    print("best unit share per factor; then the loss rise x 1000 when the units describe the image that "
          "differs in that factor alone (does the U-Net read it?)")
    print("| kimg | " + " | ".join(names) + " | top direction | " + " | ".join(f"usage {n}" for n in names) + " |")
    print("|---" * (2 * len(names) + 2) + "|")
    print(f"| 0 ({args.start}) | " + " | ".join(f"{v:.2f}" for v in start) + " |" * (len(names) + 2))
    for r in rows:
        print(f"| {r['kimg']:g} | " + " | ".join(f"{r['share_' + n]:.2f}" for n in names)
              + f" | {r['units_top_pc']:.2f} | " + " | ".join(f"{1000 * r.get('usage_' + n, float('nan')):.1f}"
                                                            for n in names) + " |", flush=True)
    print(f"figure: {out / 'figures' / 'factor_shares.png'}", file=sys.stderr)


if __name__ == "__main__":
    main()
