"""The checks that ``disdis figures``, ``interchange`` and ``sample`` share, each refusing bad input
in one line (:class:`~disdis.errors.DisdisError`) before any image is made: the numbers given on the
command line, and the run's method (units to draw, a decoder of them, the diffusion's steps)."""

from __future__ import annotations

from disdis.errors import DisdisError

# what a run without units is, for the message that refuses it
NO_UNITS = {"first_stage": "a first stage (the image autoencoder other runs build on)",
            "latent_diffusion": "an unconditional latent diffusion model (DisDiff's frozen base)"}


def check_at_least(option: str, value: int | None, least: int, what: str = "an integer") -> None:
    """``value`` (None: not given) must be at least ``least``: ``0`` is a value, never "the default"."""
    if value is not None and value < least:
        raise DisdisError(f"{option}: expected {what} >= {least}, got {value}")


def require_units(cfg, model, need: str = "represent", what: str = "it", hint: str = "") -> None:
    """Refuse a run whose method has no latent units (a first stage, an unconditional LDM), or, with
    ``need="decode"``, none that it can make images from (``what``: what needs them); ``hint``: what
    the command can still do with such a run."""
    name = cfg.method.name
    if not model.can("represent"):
        kind = NO_UNITS.get(name, "a method without a representation")
        raise DisdisError(f"a '{name}' run has no latent units: it is {kind}; give the run of a method that "
                          f"learns units{hint}")
    if need == "decode" and not (model.can("decode") or model.can("generate")):
        raise DisdisError(f"a '{name}' run cannot make images from its units: its method declares no decoder "
                          f"of its units, which {what} needs")


def num_diffusion_steps(model) -> int | None:
    """T, the diffusion steps of a diffusion method (DDIM and the attention maps work within 0..T-1); None for others."""
    schedule = getattr(model, "schedule", None) if model.can("generate") or model.can("attention") else None
    return None if schedule is None else int(schedule.num_steps)


def check_steps(model, steps: int | None) -> None:
    """``--steps`` (None: the run's) against the run's diffusion: 1..T DDIM steps."""
    check_at_least("--steps", steps, 1, "a number of DDIM steps")
    total = num_diffusion_steps(model)
    if steps is not None and total is not None and steps > total:
        raise DisdisError(f"--steps: expected 1..{total} DDIM steps (the run's diffusion has {total}), got {steps}")


def check_timestep(model, t: int) -> None:
    """``--t``, the timestep of the attention maps: 0..T-1."""
    total = num_diffusion_steps(model)
    if total is not None and not 0 <= t < total:
        raise DisdisError(f"--t: expected a timestep in 0..{total - 1} (the run's diffusion has {total} steps), "
                          f"got {t}")
