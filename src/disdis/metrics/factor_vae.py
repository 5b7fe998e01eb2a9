"""FactorVAE score (Kim & Mnih 2018, "Disentangling by Factorising"), as computed by
disentanglement_lib.

1. Global variance of every code over ``num_variance_estimate`` random images
   (ddof=1); codes with std < ``prune_threshold`` are inactive.
2. A vote: pick a factor k at random, draw ``batch_size`` images that share a
   random value of k, standardise the batch's code variances (ddof=1) by the
   global ones and vote (k, argmin over active codes).
3. The majority-vote classifier maps each code to the factor with most votes;
   accuracy = correctly classified votes / all votes, on ``num_train`` training
   and ``num_eval`` fresh evaluation votes.

Random numbers are drawn exactly as disentanglement_lib draws them: the
variance sample's factors, then per vote ``randint(K)`` followed by the batch's
factors; the variances and votes are then computed for all votes at once.

disentanglement_lib quirks reproduced on purpose:
* the vote's code index is the argmin position *among the active codes*, but it
  is stored in a table over all codes, so with pruned codes the votes land on
  the first columns;
* ``num_active_dims`` reports the number of codes (the length of the activity
  mask), not the number of active codes; 0 only when no code is active (then
  both accuracies are 0).
"""

from __future__ import annotations

import numpy as np

from disdis.metrics.inputs import check_code_table, check_random_state
from disdis.metrics.sampling import index_of, sample_factors

_CHUNK = 512  # votes per vectorised block (bounds memory: chunk x batch x codes)


def factor_vae(code_table: np.ndarray, factor_sizes, random_state, batch_size: int = 64,
               num_train: int = 10000, num_eval: int = 5000, num_variance_estimate: int = 10000,
               prune_threshold: float = 0.05) -> dict[str, float]:
    """FactorVAE score of a code table over a factor grid (canonical order)."""
    table, sizes = check_code_table(code_table, factor_sizes)
    rng = check_random_state(random_state)
    variance_sample = table[index_of(sample_factors(sizes, num_variance_estimate, rng), sizes)]
    global_var = np.var(variance_sample, axis=0, ddof=1)
    active = np.sqrt(global_var) >= prune_threshold
    if not active.any():
        return {"train_accuracy": 0.0, "eval_accuracy": 0.0, "num_active_dims": 0}
    train_votes = _votes(table, sizes, rng, batch_size, num_train, global_var, active)
    classifier = np.argmax(train_votes, axis=0)
    columns = np.arange(train_votes.shape[1])
    eval_votes = _votes(table, sizes, rng, batch_size, num_eval, global_var, active)
    return {"train_accuracy": float(train_votes[classifier, columns].sum() / train_votes.sum()),
            "eval_accuracy": float(eval_votes[classifier, columns].sum() / eval_votes.sum()),
            "num_active_dims": int(len(active))}


def draw_fixed_factor_batches(sizes: np.ndarray, rng: np.random.RandomState, batch_size: int,
                              num: int) -> tuple[np.ndarray, np.ndarray]:
    """(fixed factor (num,), factors (num, batch, K)): per vote ``randint(K)``, then a batch
    of factors whose fixed factor is set to the batch's first value."""
    fixed = np.empty(num, dtype=np.int64)
    factors = np.empty((num, batch_size, len(sizes)), dtype=np.int64)
    for i in range(num):
        fixed[i] = rng.randint(len(sizes))
        factors[i] = sample_factors(sizes, batch_size, rng)
    rows = np.arange(num)
    factors[rows, :, fixed] = factors[rows, :1, fixed]
    return fixed, factors


def _votes(table, sizes, rng, batch_size, num, global_var, active) -> np.ndarray:
    fixed, factors = draw_fixed_factor_batches(sizes, rng, batch_size, num)
    winners = np.empty(num, dtype=np.int64)
    for start in range(0, num, _CHUNK):
        codes = table[index_of(factors[start:start + _CHUNK], sizes)]  # (chunk, batch, D)
        local_var = np.var(codes, axis=1, ddof=1)
        winners[start:start + _CHUNK] = np.argmin(local_var[:, active] / global_var[active], axis=1)
    votes = np.zeros((len(sizes), len(global_var)), dtype=np.int64)
    np.add.at(votes, (fixed, winners), 1)
    return votes
