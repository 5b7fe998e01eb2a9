"""The full evaluation protocol behind the paper's tables (docs/method.md, "Evaluation") on a
code table over a factor grid.

Every metric gets its own ``numpy.random.RandomState(seed)``, as
disentanglement_lib's ``evaluate`` does (seed 0 in its study configs), so each
number equals what disentanglement_lib reports for the same codes.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields
from typing import Callable, Sequence

import numpy as np

from disdis.metrics.beta_vae import beta_vae
from disdis.metrics.dci import dci_scores, importance_matrix
from disdis.metrics.downstream import downstream_efficiency
from disdis.metrics.factor_vae import factor_vae
from disdis.metrics.inputs import check_code_table
from disdis.metrics.mig import mig
from disdis.metrics.modularity import modularity_explicitness
from disdis.metrics.sampling import sample_codes
from disdis.metrics.sap import sap


METRIC_NAMES = ("factor_vae", "dci", "mig", "beta_vae", "sap", "modularity_explicitness", "downstream")


def check_metric_names(names: Sequence[str], key: str = "metrics") -> None:
    """A ConfigError naming the first entry that is not a metric of the suite."""
    from disdis.errors import ConfigError
    unknown = [n for n in names if n not in METRIC_NAMES]
    if unknown:
        raise ConfigError(f"{key}: unknown metric {unknown[0]!r} (known: {', '.join(METRIC_NAMES)})")


@dataclass
class Sampling:
    """The protocol's metrics, sample sizes and settings (disentanglement_lib's study values by
    default): the part a run's ``eval`` section shares with :class:`Protocol`, defined once."""

    num_train: int = 10000
    num_test: int = 5000
    num_eval: int = 5000               # FactorVAE / beta-VAE evaluation votes
    vote_batch_size: int = 64          # FactorVAE / beta-VAE images per vote
    num_variance_estimate: int = 10000
    num_bins: int = 20
    prune_threshold: float = 0.05
    seed: int = 0
    dci_backend: str = "exact"
    downstream_sizes: tuple[int, ...] = (100, 1000, 10000)
    metrics: tuple[str, ...] = METRIC_NAMES

    key_prefix = ""  # how errors name the settings (a run's section: "eval.")

    def __post_init__(self) -> None:
        from disdis.errors import ConfigError
        check_metric_names(self.metrics, f"{self.key_prefix}metrics")
        for key in ("num_train", "num_test", "num_eval", "vote_batch_size", "num_variance_estimate", "num_bins"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{self.key_prefix}{key}: expected a positive integer, got {getattr(self, key)!r}")


@dataclass
class Protocol(Sampling):
    """Everything the suite needs: :class:`Sampling` plus the worker count."""

    n_jobs: int = 2
    notes: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, sampling: Sampling, **settings) -> Protocol:
        """The protocol of ``sampling`` (e.g. a run's eval section); ``settings`` set or override fields."""
        return cls(**{**{f.name: getattr(sampling, f.name) for f in fields(Sampling)}, **settings})

    def is_reference(self) -> bool:
        return asdict(self) | {"notes": [], "n_jobs": 0, "metrics": ()} == \
            asdict(Protocol()) | {"notes": [], "n_jobs": 0, "metrics": ()}


def evaluate_representation(code_table: np.ndarray, factor_sizes: Sequence[int],
                            factor_names: Sequence[str] | None = None, *,
                            protocol: Protocol | None = None, progress: bool = True,
                            **overrides) -> dict:
    """All metrics of a code table (one row per image, canonical order) as a JSON-ready
    dict: ``{"metrics": {name: {score: value}}, "seconds": {...}, "protocol": {...}}``.

    Sample sizes and settings come from ``protocol`` (or keyword overrides of its
    fields, e.g. ``num_train=2000`` for a quick CPU demo); a non-reference protocol
    is flagged in the result (``protocol["reference"] = False``)."""
    from disdis.progress import progress as progress_bar
    protocol = protocol or Protocol()
    for key, value in overrides.items():
        if not hasattr(protocol, key):
            from disdis.errors import DisdisError
            raise DisdisError(f"evaluate_representation: unknown protocol setting {key!r}")
        setattr(protocol, key, value)
    check_metric_names(protocol.metrics)
    table, sizes = check_code_table(code_table, factor_sizes)
    results, seconds, matrices = {}, {}, {}
    steps = _steps(table, sizes, protocol, matrices)
    bar = progress_bar(total=len(protocol.metrics), desc="metrics", unit="metric",
                       disable=None if progress else True)
    for name in protocol.metrics:
        bar.set_postfix_str(name)
        start = time.perf_counter()
        results[name] = steps[name]()
        seconds[name] = round(time.perf_counter() - start, 3)
        bar.update()
    bar.close()
    info = asdict(protocol) | {"reference": protocol.is_reference(),
                               "factor_sizes": sizes.tolist(),
                               "factor_names": list(factor_names) if factor_names else None,
                               "num_codes": int(table.shape[1])}
    return {"metrics": results, "seconds": seconds, "protocol": info, **({"matrices": matrices} if matrices else {})}


def _steps(table: np.ndarray, sizes: np.ndarray, p: Protocol, matrices: dict) -> dict[str, Callable[[], dict]]:
    """Each metric as a call; DCI also leaves its importance matrix (codes x factors) in ``matrices``."""
    def rng() -> np.random.RandomState:
        return np.random.RandomState(p.seed)

    def train_test(random_state):
        train = sample_codes(table, sizes, p.num_train, random_state)
        test = sample_codes(table, sizes, p.num_test, random_state)
        return train + test

    def dci_step():
        importance, train_acc, test_acc = importance_matrix(*train_test(rng()), random_state=p.seed,
                                                            backend=p.dci_backend, n_jobs=p.n_jobs)
        matrices["dci_importance"] = importance.round(4).tolist()
        return dci_scores(importance, train_acc, test_acc)

    def mig_step():
        codes, factors = sample_codes(table, sizes, p.num_train, rng())
        return {"discrete_mig": mig(codes, factors, p.num_bins)}

    return {
        "factor_vae": lambda: factor_vae(table, sizes, rng(), p.vote_batch_size, p.num_train, p.num_eval,
                                         p.num_variance_estimate, p.prune_threshold),
        # the trees break ties between equally good features at random (unseeded in
        # disentanglement_lib); seeding them apart from the sampling stream keeps the samples
        # disentanglement_lib's and makes the score the same on every run
        "dci": dci_step,
        "mig": mig_step,
        "beta_vae": lambda: beta_vae(table, sizes, rng(), p.vote_batch_size, p.num_train, p.num_eval),
        "sap": lambda: {"SAP_score": sap(*train_test(rng()), n_jobs=p.n_jobs)},
        "modularity_explicitness": lambda: modularity_explicitness(*train_test(rng()), p.num_bins,
                                                                   n_jobs=p.n_jobs),
        "downstream": lambda: downstream_efficiency(table, sizes, rng(), p.downstream_sizes,
                                                    p.num_test, p.dci_backend, p.n_jobs, tree_seed=p.seed),
    }


# The headline number of each metric, for tables.
HEADLINE = {
    "factor_vae": "eval_accuracy", "dci": "disentanglement", "mig": "discrete_mig",
    "beta_vae": "eval_accuracy", "sap": "SAP_score", "modularity_explicitness": "modularity_score",
}


def format_table(result: dict) -> str:
    """A plain-text table of every score in an ``evaluate_representation`` result."""
    lines = [f"{'metric':<26} {'score':<32} {'value':>10}"]
    for metric, scores in result["metrics"].items():
        for key, value in scores.items():
            lines.append(f"{metric:<26} {key:<32} {value:>10.4f}")
    if not result["protocol"]["reference"]:
        lines.append("NOTE: reduced/non-reference protocol (see 'protocol' in metrics.json); "
                     "numbers are not comparable to the paper's.")
    return "\n".join(lines)
