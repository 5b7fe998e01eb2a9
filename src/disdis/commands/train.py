"""``disdis train``: train a first stage or a diffusion model from a config; resume a run."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from disdis import presets
    parser = subparsers.add_parser(
        "train", help="train a model from a config, or resume a run",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train a method with the settings of CONFIG (YAML, or a packaged preset) and any "
        "key=value overrides (dotted keys, e.g. train.batch_size=64 data.path=3dshapes.h5).\n"
        "method.name picks the method (default disentangled_diffusion, the paper's; first_stage "
        "trains an autoencoder alone). A run that builds on another names it in requires "
        "(requires.first_stage=RUN, a finished first-stage run folder); one it leaves out the run "
        "trains itself first, in RUN/first_stage (method.first_stage.kind=identity: pixel space, none).\n\n"
        "Each run gets a folder (run_dir=..., default runs/NNNNN-NAME-METHOD) holding config.yaml, "
        "checkpoints/, anchoring fits/ and logs/train.csv. Durations are in kimg (thousands of "
        "images of the global batch), the same on any number of devices.\n\n"
        "Multi-GPU (or multi-process CPU) training: torchrun --nproc_per_node N -m disdis train ...\n"
        "train.batch_size is the global batch; the learning rate is never rescaled.\n\n"
        "Ctrl-C or SIGTERM saves the step just finished and stops; continue the whole run (the stages it "
        "trains itself included) with --resume RUN_DIR.\n\n"
        "examples:\n"
        "  disdis train shapes3d --print-config\n"
        "  disdis train first_stage_vq_f4 data.path=3dshapes.h5 name=shapes3d\n"
        "  disdis train shapes3d data.path=3dshapes.h5 requires.first_stage=runs/00000-shapes3d-first_stage\n"
        "  disdis train my_config.yaml data.path=images/ --threads 2\n"
        "  disdis train --resume runs/00001-shapes3d-disentangled_diffusion")
    parser.add_argument("config", nargs="?", help="run config YAML, or a packaged preset: "
                        f"{', '.join(presets.names())} (omit with --resume)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    parser.add_argument("--resume", metavar="RUN_DIR",
                        help="continue this run from its newest checkpoint, exactly where it stopped "
                        "(overrides, e.g. train.total_kimg=..., are applied to its saved config)")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="torch CPU threads of the process (default: torch's, which reads OMP_NUM_THREADS)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config (every setting, derived sizes filled in) and exit")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from disdis.errors import ConfigError, DisdisError
    if args.threads is not None and args.threads < 1:  # checked before torch is imported or anything made
        raise ConfigError(f"--threads: expected a positive integer, got {args.threads}")
    import torch

    from disdis.config import config_yaml
    from disdis.run_config import load_run_config
    from disdis.train import distributed
    from disdis.train.loop import TrainingInterrupted
    from disdis.train.run import resume_run, start_run

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    cfg = None
    try:
        if args.resume:
            overrides = ([args.config] if args.config else []) + list(args.overrides)
            if any("=" not in item for item in overrides):
                raise DisdisError("--resume takes a run folder and key=value overrides, not a config file")
            run_dir, result = resume_run(args.resume, overrides)
        else:
            if not args.config:
                raise DisdisError("give a config file (or --resume RUN_DIR)")
            if args.print_config:
                print(config_yaml(load_run_config(args.config, args.overrides, check=False)), end="")
                return 0
            cfg = load_run_config(args.config, args.overrides)
            run_dir, result = start_run(cfg)  # which sets cfg.run_dir to the run's folder before training
        if distributed.is_main():
            print(f"done: step {result.step}, final loss {result.final_loss:.4f}; run folder {run_dir}; "
                  f"checkpoint {result.checkpoint}")
    except TrainingInterrupted as err:  # the loop names the stage it stopped; the whole run is continued
        top = args.resume or (cfg.run_dir if cfg is not None else None)
        if top is None:
            raise
        raise err.continued_with(f"--resume {top}") from None
    finally:
        distributed.shutdown()
    return 0

