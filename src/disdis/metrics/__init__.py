"""Disentanglement metrics with disentanglement_lib's definitions and defaults.

Arrays hold samples in rows: codes (N, D) float, factors (N, K) integer classes.
Metrics that sample from a factor grid take a *code table* (one row per image
in canonical order, last factor fastest) and draw random numbers in exactly
disentanglement_lib's order, so the same ``numpy.random.RandomState`` gives the
same numbers. See each module's docstring for the equations and the quirks of
disentanglement_lib that are reproduced.
"""

from disdis.metrics.beta_vae import beta_vae
from disdis.metrics.dci import dci, dci_completeness, dci_disentanglement, importance_matrix
from disdis.metrics.downstream import downstream_efficiency
from disdis.metrics.factor_vae import factor_vae
from disdis.metrics.fid import frechet_distance
from disdis.metrics.information import entropy, histogram_discretize, mutual_information
from disdis.metrics.mig import mig
from disdis.metrics.modularity import modularity, modularity_explicitness
from disdis.metrics.pca import reduce_units_by_pca
from disdis.metrics.sampling import index_of, sample_codes, sample_factors
from disdis.metrics.sap import sap, sap_score_matrix
from disdis.metrics.shares import direction_shares, unit_factor_shares, unit_pair_shares
from disdis.metrics.suite import Protocol, evaluate_representation, format_table
from disdis.metrics.tad import tad

__all__ = [
    "Protocol", "beta_vae", "dci", "dci_completeness", "dci_disentanglement",
    "direction_shares", "downstream_efficiency", "entropy", "evaluate_representation", "factor_vae", "frechet_distance",
    "format_table", "histogram_discretize", "importance_matrix", "index_of", "mig",
    "modularity", "modularity_explicitness", "mutual_information", "reduce_units_by_pca",
    "sample_codes", "sample_factors", "sap", "sap_score_matrix", "tad", "unit_factor_shares", "unit_pair_shares",
]
