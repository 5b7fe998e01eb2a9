"""Do an autoencoder's loss terms pull its weights the same way?

    python benchmarks/loss_conflict.py CHECKPOINT [CHECKPOINT ...] [--weights model|ema]

For each checkpoint of an autoencoder (``method: {name: autoencoder}``, or a diffusion run's
``RUN/extractor``) trained on a factor grid, takes the gradient of each loss term on every image of
its data at once (one posterior sample, seed 0; the edge term weighted as the run weighed it at that
step) and prints, for the extractor and the decoder, each term's gradient norm and the cosine
between the pixels' and the edges' gradients. A cosine near -1 with norms alike means the two
terms cancel: the fit stalls (docs/demo-study.md: while the code holds no hue, the colour-blind
edge term opposes the pixels').
"""

from __future__ import annotations

import argparse

import torch


def term_gradients(model, images: torch.Tensor) -> dict[str, dict[str, torch.Tensor]]:
    """{term: {module: flat gradient}} for the pixels' and the edges' terms (as in the loss: the
    batch mean over the values per image)."""
    modules = {"extractor": model.extractor, "decoder": model.decoder}
    torch.manual_seed(0)
    terms, out = model.terms(images), {}  # one forward, one posterior sample, for both terms
    for term, weight in (("pixels", 1.0), ("edges", model.weight("gradient_weight"))):
        model.zero_grad()
        (weight * terms[term].mean() / images[0].numel()).backward(retain_graph=True)
        out[term] = {name: torch.cat([p.grad.flatten() for p in m.parameters() if p.grad is not None])
                     for name, m in modules.items()}
    return out


def report(source: str, weights: str) -> None:
    from disdis.models.autoencoder import Autoencoder
    from disdis.train.run import load_trained_model, open_training_data

    cfg, model, checkpoint = load_trained_model(source, weights)
    if not isinstance(model, Autoencoder) or not model.loss.gradient_weight:
        raise SystemExit(f"{source}: not an autoencoder with an edge term")
    data = open_training_data(cfg)
    images = torch.stack([data[i][0] for i in range(len(data.dataset))])
    model.train()  # BatchNorm on the batch, as in training
    g = term_gradients(model, images)
    print(f"\n{checkpoint} (edge weight {float(model.weight('gradient_weight')):g})\n")
    print("| module | pixels' gradient norm | edges' gradient norm | cosine |\n|---|---|---|---|")
    for name in g["pixels"]:
        p, e = g["pixels"][name], g["edges"][name]
        print(f"| {name} | {p.norm():.4f} | {e.norm():.4f} | {torch.nn.functional.cosine_similarity(p, e, dim=0):+.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", help="autoencoder run folders or checkpoint files")
    parser.add_argument("--weights", choices=["model", "ema"], default="model")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for source in args.checkpoints:
        report(source, args.weights)


if __name__ == "__main__":
    main()
