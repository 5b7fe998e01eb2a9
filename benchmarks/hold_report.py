"""Which factors did the warm start's hold keep? Each factor's unit before the hold, and whether it was held.

    python benchmarks/hold_report.py RUN [RUN ...]

RUN is a demo folder (its autoencoder in ``RUN/extractor``) or an autoencoder run trained with
``hold_weight`` (docs/method.md, "Extractor warm start"). At ``gradient_ramp_kimg[0]`` the hold marks
the units whose running KL exceeds ``hold_nats`` and pulls them to their values then; the rest start
afresh. From the training probe's per-unit shares (``logs/shares.csv``) at its last log before the
hold, and the units' KL and held mask stored in the last checkpoint, one row per factor: the unit
that carried it best before the hold, that share, the unit's KL at the hold, whether it was held,
and the factor's best share at the first log after the hold and at the end. A factor in the code
before the hold (share >= 0.5) whose unit sat under ``hold_nats`` is what the hold lets go
(docs/demo-study.md, session of 2026-12-06, eighth: on the faster machine every warm start that ended
without shape had let go of it so). An autoencoder trained with ``gather_units`` holds the code's
leading components instead of units picked by their KL: its held column reads "gathered", and the
share after the hold shows what the components kept (docs/demo-study.md, session ninth).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from disdis.diagnostics import CAPTURED
from disdis.run_config import load_run_config
from disdis.rundir import RunDir
from disdis.train import checkpoint as ckpt
from disdis.train.logger import read_csv_log


def autoencoder_run(run: Path) -> RunDir:
    """The autoencoder's own run: ``RUN/extractor`` of a demo, or RUN itself."""
    demo = RunDir(run).dependency("extractor")
    return demo if demo.is_run() else RunDir(run)


def shares_at(rows: list[dict], kimg: float) -> dict[int, dict[str, float]]:
    """unit -> factor -> share, at the logged kimg."""
    return {int(r["unit"]): {k: v for k, v in r.items() if k not in ("step", "kimg", "unit")}
            for r in rows if r["kimg"] == kimg}


def hold_rows(run: Path) -> tuple[str, list[dict]]:
    """A line on the run's hold, and per factor: its best unit before the hold, that share, the unit's
    KL at the hold, whether it was held (None where the hold gathered the code), and the factor's best
    share at the first log after the hold and at the end."""
    ae = autoencoder_run(run)
    loss = load_run_config(ae.config, check=False).method.loss
    if not loss.hold_weight:
        raise SystemExit(f"{ae}: an autoencoder without a hold (method.loss.hold_weight is 0)")
    hold_kimg = loss.gradient_ramp_kimg[0]
    rows = read_csv_log(ae.log("shares"))
    logged = sorted({r["kimg"] for r in rows})
    before = [k for k in logged if k < hold_kimg]
    if not before or logged[-1] <= hold_kimg:
        raise SystemExit(f"{ae}: the probe logged no shares before and after the hold at {hold_kimg:g} kimg")
    after = next(k for k in logged if k > hold_kimg)
    pre, post, end = shares_at(rows, before[-1]), shares_at(rows, after), shares_at(rows, logged[-1])
    tensors, _ = ckpt.load_checkpoint(ae.newest_checkpoint())
    held, kl = tensors["model/held"].bool(), tensors["model/unit_kl"]
    factors = []
    for factor in next(iter(pre.values())):
        unit = max(pre, key=lambda u: pre[u][factor])
        factors.append(dict(factor=factor, unit=unit, share=pre[unit][factor], kl=float(kl[unit]),
                            held=None if loss.gather_units else bool(held[unit]),
                            after=max(s[factor] for s in post.values()), end=max(s[factor] for s in end.values())))
    rule = f"the code gathered into {loss.gather_units} units" if loss.gather_units else f"KL > {loss.hold_nats:g} nats"
    return (f"hold at {hold_kimg:g} kimg ({rule}), shares before it at {before[-1]:g} kimg, after it at {after:g}, "
            f"at the end at {logged[-1]:g}: {int(held.sum())} of {len(held)} units held"), factors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="demo folders or autoencoder runs")
    args = parser.parse_args()
    lost = []
    for run in args.runs:
        about, factors = hold_rows(run)
        print(f"\n{run}: {about}\n\n| factor | its best unit before the hold | share | KL at the hold (nats) | "
              "held | best share after the hold | at the end |\n|---|---|---|---|---|---|---|")
        for f in factors:
            held = "gathered" if f["held"] is None else "yes" if f["held"] else "no"
            print(f"| {f['factor']} | {f['unit']} | {f['share']:.2f} | {f['kl']:.2f} | {held} | {f['after']:.2f} | "
                  f"{f['end']:.2f} |")
            if f["share"] >= CAPTURED and not f["held"] and f["end"] < CAPTURED:
                lost.append(f"{run}: {f['factor']}")
    print(f"\nin the code before the hold (a share >= {CAPTURED}), its unit not held (or the code gathered), "
          "not captured at the end: " + (", ".join(lost) or "none"))


if __name__ == "__main__":
    main()
