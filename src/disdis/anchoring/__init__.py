"""Dynamic Gaussian Anchoring (DyGA, docs/method.md).

For every latent unit, a full-covariance Gaussian mixture is fitted to that
unit's tokens; during training, evaluation and sampling each token is pulled a
little toward the mean of its most responsible component (its anchor):

    k* = argmax_k r_k(c),   c~ = c + lambda (mu_k* - c),   mu_k* and lambda detached.

    >>> anchors = GaussianAnchors.fit(tokens_UND, seed=0)        # or config=AnchoringConfig(...)
    >>> anchors.num_components, anchors.means                    # list[int], list of (K_u, D)
    >>> anchors.assign(tokens_UND)                               # (U, N) LongTensor
    >>> context = anchors.shift_batch(tokens_BUD)                # = shift(tokens, unit_dim=1)
    >>> anchors.save("fit.safetensors"); GaussianAnchors.load("fit.safetensors")

The fit (:mod:`disdis.anchoring.fit`) follows docs/method.md: K0 = 8 components at
random tokens, 30 EM iterations (:mod:`disdis.anchoring.em`), up to 3 split
rounds (at most 32 components), removal of components with soft count < 10,
30 more EM iterations; batched over units and components (batched Cholesky,
log-sum-exp responsibilities, padded components), seeded per unit.

Where this module departs from the released code, and the option that restores
the released behaviour so the difference can be measured:

* One space for fit, assignment and shift (``space="token"``). The fit runs in
  a per-unit normalised space whose offset and scale are stored with the
  mixture; assignment maps tokens with that stored normalisation and the
  anchor is mapped back to token space before mixing. The released code
  normalised with (x - max) / (max - min) using the training set's statistics
  for the fit but each batch's statistics for the shift, and mixed the
  normalised anchor with the raw token (``space="released"``; max and min are
  taken over all tokens and dimensions of a unit, an assumption).
* A strength that cannot explode. The released lambda =
  0.1 exp(-mean |(c - mu) / (c + 1e-6)|) divides by the token, and ReLU tokens
  are often exactly zero (``strength_mode="released"``). Default: a fixed
  lambda = 0.1 (``"fixed"``); ``"safe"`` keeps the released idea with a bounded
  relative distance |c - mu| / (|c| + |mu|).
* A scale-free split rule (``split_rule="valley"``). The released rule splits a
  component when the mean distance of its members to their mean exceeds 0.5, an
  absolute length: with small tokens a component covering two far-apart groups
  is never split, with large tokens every component is split
  (``split_rule="spread"``, ``spread_threshold``). The valley rule splits a
  component when its members, projected on the discriminant axis of a
  two-component fit, show two groups with a significant gap between them; see
  :mod:`disdis.anchoring.fit`.
* Split bookkeeping: children take the parent's slot and the next free slot, so
  no index is shifted by earlier deletions.
* The released random split (each component also split with probability 1/2)
  is ``random_split=True``, drawn from the unit's seeded generator.

Additions, each measured (benchmarks/anchors.py, tests/test_anchoring.py):

* EM stops early once a unit's mean log-likelihood per token changes by less
  than ``em_tol`` = 1e-3 nats (scikit-learn's default tolerance), still at most
  ``em_iters``; ``em_tol=0`` runs exactly ``em_iters`` (released).
* After the soft-count filter, components whose removal costs less
  log-likelihood than the BIC price of their parameters are pruned one at a
  time, and after the last EM every component must be the most responsible one
  for at least max(min_soft_count, D + 1) tokens. Both remove the near-singular
  components that full-covariance EM in 32 dimensions leaves on a few dozen
  tokens of two groups (they broke the purity of the fit in about 1 run in 20
  without them).
* The two-component fit of a split uses at most ``split_fit_limit`` random members.
* Every E-step evaluates the exact density only of the (component, token) pairs
  whose responsibility can exceed e^-30, found with a cheap upper bound on each
  density (:mod:`disdis.anchoring.em`); the sums are the exact ones up to float
  rounding, and a fit costs a small multiple of one density per token instead of
  one per component and token.
"""

from disdis.anchoring.anchors import GaussianAnchors, unit_seeds
from disdis.anchoring.config import AnchoringConfig
from disdis.anchoring.state import AnchorState

__all__ = ["AnchorState", "AnchoringConfig", "GaussianAnchors", "unit_seeds"]
