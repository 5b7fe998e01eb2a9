"""Make the expected values of tests/test_metrics_reference.py by running
disentanglement_lib 1.5 (a development-time reference only; disdis never imports it).

Run with an interpreter that has disentanglement_lib, gin-config, numpy, scipy
and scikit-learn (no TensorFlow needed), e.g.

    python3 -m venv /work/dlib-venv
    /work/dlib-venv/bin/pip install disentanglement_lib==1.5 gin-config==0.4.0 absl-py \
        numpy==2.4.6 scipy==1.17.1 scikit-learn==1.9.1 six
    /work/dlib-venv/bin/python scripts/make_metric_reference.py

(pin the same numpy/scikit-learn as the project's .venv: the classifiers must be
the same code). It writes tests/data/metrics/reference.json. The code tables
are generated from seeds by :func:`make_code_table`, which the tests import from
this file, so no large arrays are stored.

Shims: disentanglement_lib imports ``gin.tf`` (aliased to ``gin``) and its data
utilities import TensorFlow at module level (stubbed: nothing here uses it).
"""

from __future__ import annotations

import json
import os
import sys
import time
import types
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "metrics" / "reference.json"

# A small factor grid (so the tables are quick to regenerate) and reduced sample
# sizes (so the tests are quick); the protocol is otherwise disentanglement_lib's.
GRID = (5, 4, 6, 3)
NUM_CODES = 6
SIZES = dict(num_train=1000, num_test=500, num_eval=500, num_variance_estimate=1000,
             batch_size=64, dci_train=400, dci_test=200)
REPRESENTATIONS = ("random", "factors", "mixed")
SEEDS = (0, 1, 2)
DCI_CASES = (("factors", 0), ("mixed", 1), ("random", 2))


def make_code_table(kind: str, seed: int, grid=GRID, num_codes: int = NUM_CODES) -> np.ndarray:
    """A deterministic float64 code table (one row per grid point, canonical order).

    random:  standard normal codes;
    factors: each factor's class (scaled to [0, 1]) in its own code plus small noise,
             one code duplicating factor 0 with other noise, one near-constant code
             (std 0.01: pruned by FactorVAE; an exactly constant code crashes
             disentanglement_lib's explicitness with NaNs);
    mixed:   a random linear mixture of the factors plus noise."""
    rng = np.random.RandomState(1000 + seed)
    factors = np.stack(np.meshgrid(*[np.arange(s) for s in grid], indexing="ij"), -1)
    factors = factors.reshape(-1, len(grid)) / (np.array(grid) - 1.0)
    n = len(factors)
    if kind == "random":
        return rng.standard_normal((n, num_codes))
    if kind == "factors":
        codes = np.zeros((n, num_codes))
        codes[:, :len(grid)] = factors + 0.05 * rng.standard_normal((n, len(grid)))
        codes[:, len(grid)] = factors[:, 0] + 0.05 * rng.standard_normal(n)
        codes[:, -1] = 0.01 * rng.standard_normal(n)  # std < 0.05: pruned by FactorVAE
        return codes
    if kind == "mixed":
        mixing = rng.standard_normal((len(grid), num_codes))
        return factors @ mixing + 0.1 * rng.standard_normal((n, num_codes))
    raise ValueError(kind)


def load_dlib():
    """Import disentanglement_lib's metric modules without TensorFlow."""
    import gin
    sys.modules.setdefault("gin.tf", gin)
    gin.tf = gin
    if "tensorflow" not in sys.modules:
        tf = types.ModuleType("tensorflow")
        tf.compat = types.ModuleType("tensorflow.compat")
        tf.compat.v1 = types.ModuleType("tensorflow.compat.v1")
        sys.modules.update({"tensorflow": tf, "tensorflow.compat": tf.compat,
                            "tensorflow.compat.v1": tf.compat.v1})
    import logging
    logging.getLogger().setLevel(logging.ERROR)  # gin's "blacklist is deprecated" chatter
    from disentanglement_lib.evaluation.metrics import (beta_vae, dci, downstream_task, factor_vae,
                                                        mig, modularity_explicitness, sap_score,
                                                        utils)
    return types.SimpleNamespace(beta_vae=beta_vae, dci=dci, downstream_task=downstream_task,
                                 factor_vae=factor_vae, mig=mig, sap=sap_score, utils=utils,
                                 modularity_explicitness=modularity_explicitness, gin=gin)


def grid_data(grid):
    """disentanglement_lib ground-truth data over a factor grid whose observations are
    the canonical row indices (so the representation function is a table lookup),
    sampling exactly as its Shapes3D class does."""
    from disentanglement_lib.data.ground_truth import ground_truth_data, util

    class GridData(ground_truth_data.GroundTruthData):
        def __init__(self):
            self.factor_sizes = list(grid)
            self.state_space = util.SplitDiscreteStateSpace(self.factor_sizes,
                                                            list(range(len(grid))))
            self.factor_bases = np.prod(self.factor_sizes) / np.cumprod(self.factor_sizes)

        @property
        def num_factors(self):
            return self.state_space.num_latent_factors

        @property
        def factors_num_values(self):
            return self.factor_sizes

        @property
        def observation_shape(self):
            return [1]

        def sample_factors(self, num, random_state):
            return self.state_space.sample_latent_factors(num, random_state)

        def sample_observations_from_factors(self, factors, random_state):
            all_factors = self.state_space.sample_all_factors(factors, random_state)
            return np.array(np.dot(all_factors, self.factor_bases), dtype=np.int64)

    return GridData()


def bind_study_settings(dlib, num_bins: int = 20, prune_threshold: float = 0.05) -> None:
    """The gin bindings of disentanglement_lib's unsupervised study metric configs."""
    gin = dlib.gin
    gin.clear_config()
    gin.bind_parameter("discretizer.discretizer_fn", dlib.utils._histogram_discretize)
    gin.bind_parameter("discretizer.num_bins", num_bins)
    gin.bind_parameter("prune_dims.threshold", prune_threshold)
    gin.bind_parameter("predictor.predictor_fn", dlib.utils.gradient_boosting_classifier)


def run_dlib_metric(dlib, name: str, data, table: np.ndarray, seed: int, sizes: dict) -> dict:
    """One metric with a fresh RandomState(seed), as disentanglement_lib's evaluate does."""
    rep = lambda idx: table[idx]  # noqa: E731
    rs = np.random.RandomState(seed)
    if name == "factor_vae":
        out = dlib.factor_vae.compute_factor_vae(
            data, rep, rs, None, sizes["batch_size"], sizes["num_train"], sizes["num_eval"],
            sizes["num_variance_estimate"])
    elif name == "beta_vae":
        out = dlib.beta_vae.compute_beta_vae_sklearn(
            data, rep, rs, None, sizes["batch_size"], sizes["num_train"], sizes["num_eval"])
    elif name == "mig":
        out = dlib.mig.compute_mig(data, rep, rs, None, sizes["num_train"])
    elif name == "sap":
        out = dlib.sap.compute_sap(data, rep, rs, None, sizes["num_train"], sizes["num_test"],
                                   continuous_factors=False)
    elif name == "modularity_explicitness":
        out = dlib.modularity_explicitness.compute_modularity_explicitness(
            data, rep, rs, None, sizes["num_train"], sizes["num_test"])
    elif name == "dci":
        out = dlib.dci.compute_dci(data, rep, rs, None, sizes["dci_train"], sizes["dci_test"])
    elif name == "downstream":
        out = dlib.downstream_task.compute_downstream_task(
            data, rep, rs, None, list(sizes["downstream_sizes"]), sizes["num_test"])
        keep = [f"{n}:mean_{s}_accuracy" for n in sizes["downstream_sizes"] for s in ("train", "test")]
        out = {k: out[k] for k in keep}
    else:
        raise ValueError(name)
    return {k: float(v) for k, v in out.items()}


def main() -> None:
    dlib = load_dlib()
    bind_study_settings(dlib)
    data = grid_data(GRID)
    cases = []
    start = time.time()
    for kind in REPRESENTATIONS:
        for seed in SEEDS:
            table = make_code_table(kind, seed)
            values = {name: run_dlib_metric(dlib, name, data, table, seed, SIZES)
                      for name in ("factor_vae", "beta_vae", "mig", "sap", "modularity_explicitness")}
            if (kind, seed) in DCI_CASES:
                values["dci"] = run_dlib_metric(dlib, "dci", data, table, seed, SIZES)
            cases.append({"representation": kind, "seed": seed, "values": values})
            print(f"{kind} seed {seed}: {json.dumps(values)}", flush=True)
    import disentanglement_lib
    import sklearn
    reference = {
        "generated_by": "scripts/make_metric_reference.py",
        "disentanglement_lib": getattr(disentanglement_lib, "__version__", "1.5"),
        "numpy": np.__version__, "scikit_learn": sklearn.__version__,
        "grid": list(GRID), "num_codes": NUM_CODES, "sizes": SIZES,
        "cases": cases, "seconds": round(time.time() - start, 1),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    tmp = OUT.with_suffix(".tmp")
    tmp.write_text(json.dumps(reference, indent=1) + "\n")
    os.replace(tmp, OUT)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
