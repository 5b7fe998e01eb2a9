"""GaussianAnchors: fitted per-unit mixtures, assignment of tokens to anchors, and the shift."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from disdis.anchoring.config import AnchoringConfig
from disdis.anchoring.em import Factorised, Mixture, cholesky, component_log_probs
from disdis.anchoring.fit import concat_mixtures, fit_mixture
from disdis.errors import ConfigError, DataError, DisdisError
from disdis.io import atomic_path

FORMAT = "disdis.gaussian_anchors"
VERSION = "1"
TENSOR_KEYS = ("offset", "scale", "means", "chol", "log_weights", "num_components")
ASSIGN_CHUNK = 512  # tokens per dense (U, K, chunk, D) evaluation in assign and shift


def unit_seeds(seed: int, num_units: int) -> list[int]:
    """Independent 63-bit seeds for the units of a fit, derived from ``seed`` (numpy SeedSequence spawning).

    Unit u of ``fit(tokens, seed=s)`` is fitted exactly as ``fit(tokens[u:u+1], seed=[unit_seeds(s, U)[u]])``.
    """
    children = np.random.SeedSequence(seed % (1 << 128)).spawn(num_units)
    return [int(c.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1)) for c in children]


class GaussianAnchors:
    """One Gaussian mixture per latent unit, and the anchoring shift (docs/method.md).

    Each unit u's mixture lives in a *fit space* z = (c - offset_u) / scale_u
    (space "token": offset = the unit's mean token, scale = its RMS deviation per
    dimension; space "released": offset = max, scale = max - min over all the
    unit's tokens, as the released code normalised). Tensors, padded over
    components (K = the largest number of components of any unit):

    * ``means_padded``  (U, K, D) anchor means in token space (offset + scale * mu_z);
      ``mask`` (U, K) marks the real components; ``means`` is the same as a list
      of (K_u, D) tensors and ``num_components`` the list of K_u.
    * fit-space means (U, K, D), Cholesky factors of the regularised covariances
      (U, K, D, D) and log weights (U, K), -inf on padding (see ``to_tensors``).

    Token layouts: ``(U, N, D)`` unit-major (``unit_dim=0``, the default),
    ``(B, U, D)`` as in a model's batch (``unit_dim=1``, or :meth:`shift_batch`),
    or ``(N, D)`` for a single-unit fit.
    """

    def __init__(self, offset: Tensor, scale: Tensor, means: Tensor, chol: Tensor, log_weights: Tensor,
                 num_components: Tensor, config: AnchoringConfig | None = None,
                 derived: tuple[Tensor, Tensor, Tensor] | None = None) -> None:
        """``derived``: (whitening, log_norm, means_padded) as :meth:`derived_tensors` returns them,
        to wrap a fit held elsewhere (:class:`disdis.anchoring.AnchorState`) without recomputing them."""
        self.config = config if config is not None else AnchoringConfig()
        self.offset = offset.float()
        self.scale = scale.float()
        self.fit_means = means.float()
        self.chol = chol.float()
        self.log_weights = log_weights.float()
        self.num_components_tensor = num_components.long()
        _check_shapes(self)
        if derived is None:
            whitening = torch.linalg.solve_triangular(
                chol.double(), torch.eye(chol.shape[-1], dtype=torch.float64, device=chol.device).expand_as(chol),
                upper=False).float()
            log_det_half = torch.diagonal(chol.double(), dim1=-2, dim2=-1).log().sum(-1)
            log_norm = (log_weights.double() - log_det_half - 0.5 * chol.shape[-1] * math.log(2 * math.pi)).float()
            means_padded = self.offset.unsqueeze(1) + self.scale[:, None, None] * self.fit_means
        else:
            whitening, log_norm, means_padded = derived
        self._factorised = Factorised(self.chol, self.fit_means, whitening, log_norm)
        self.means_padded = means_padded

    # ----------------------------------------------------------------- fitting
    @classmethod
    def fit(cls, tokens: Tensor, seed: int | Sequence[int] = 0, config: AnchoringConfig | None = None,
            **options: Any) -> GaussianAnchors:
        """Fit one mixture per unit (docs/method.md) to tokens (U, N, D), or one mixture to (N, D).

        ``options`` override fields of ``config`` (default :class:`AnchoringConfig`).
        ``seed`` is an int (per-unit seeds derived with :func:`unit_seeds`) or one seed
        per unit. Runs on the tokens' device; the same inputs and seed give the same fit.
        """
        cfg = config if config is not None else AnchoringConfig()
        if options:
            unknown = sorted(set(options) - {f.name for f in dataclasses.fields(AnchoringConfig)})
            if unknown:
                raise ConfigError(f"GaussianAnchors.fit: unknown option '{unknown[0]}'")
            cfg = dataclasses.replace(cfg, **options)
        x = tokens.detach()
        if x.ndim == 2:
            x = x.unsqueeze(0)
        if x.ndim != 3 or x.shape[1] == 0 or x.shape[2] == 0:
            raise DisdisError(f"anchoring fit: expected tokens of shape (U, N, D) or (N, D), got {tuple(tokens.shape)}")
        if not torch.isfinite(x).all():
            raise DisdisError("anchoring fit: the tokens contain NaN or infinite values")
        u, n, _ = x.shape
        seeds = unit_seeds(seed, u) if isinstance(seed, int) else [int(s) for s in seed]
        if len(seeds) != u:
            raise DisdisError(f"anchoring fit: {len(seeds)} seeds given for {u} units")
        generators = [torch.Generator().manual_seed(s) for s in seeds]
        x64 = x.double()
        offset, scale = _normalisation(x64, cfg.space)
        if n > cfg.subsample_above:
            keep = math.ceil(cfg.subsample_fraction * n)
            idx = torch.stack([torch.randperm(n, generator=g)[:keep] for g in generators]).to(x.device)
            x64 = torch.gather(x64, 1, idx.unsqueeze(-1).expand(u, keep, x.shape[2]))
        dtype = torch.float64 if cfg.fit_dtype == "float64" else torch.float32
        z = ((x64 - offset.unsqueeze(1)) / scale[:, None, None]).to(dtype)
        spread_scale = scale if cfg.space == "token" else torch.ones_like(scale)
        with exact_float32(z.device):
            mix = _fit_in_parallel(z, generators, cfg, spread_scale)
        return cls._from_mixture(mix, offset, scale, cfg)

    @classmethod
    def _from_mixture(cls, mix: Mixture, offset: Tensor, scale: Tensor, cfg: AnchoringConfig) -> GaussianAnchors:
        present = mix.present
        chol = cholesky(mix.covs, present, cfg.covariance_reg)
        means = torch.where(present.unsqueeze(-1), mix.means, 0.0)
        return cls(offset, scale, means, chol, mix.log_weights, present.sum(1), cfg)

    # ------------------------------------------------------------- properties
    @property
    def num_units(self) -> int:
        return self.fit_means.shape[0]

    @property
    def dim(self) -> int:
        return self.fit_means.shape[-1]

    @property
    def num_components(self) -> list[int]:
        return [int(k) for k in self.num_components_tensor]

    @property
    def mask(self) -> Tensor:
        """(U, K) bool, True for real components of ``means_padded``."""
        return torch.isfinite(self.log_weights)

    @property
    def means(self) -> list[Tensor]:
        """Anchor means in token space, one (K_u, D) tensor per unit."""
        return [self.means_padded[u, :k] for u, k in enumerate(self.num_components)]

    @property
    def weights(self) -> list[Tensor]:
        return [self.log_weights[u, :k].exp() for u, k in enumerate(self.num_components)]

    @property
    def covariances(self) -> list[Tensor]:
        """Regularised covariances in token space, one (K_u, D, D) tensor per unit."""
        cov = self.chol @ self.chol.transpose(-1, -2) * self.scale[:, None, None, None] ** 2
        return [cov[u, :k] for u, k in enumerate(self.num_components)]

    # ------------------------------------------------------ assignment, shift
    def assign(self, tokens: Tensor, unit_dim: int = 0) -> Tensor:
        """Index of the most responsible component of each token: (U, N) for (U, N, D),
        (B, U) for (B, U, D) with ``unit_dim=1``, (N,) for (N, D)."""
        x, back = self._units_first(tokens, unit_dim)
        with torch.no_grad():
            labels = self._assign_fit_space(self._to_fit_space(x.detach()))
        return back(labels)

    def anchors_of(self, tokens: Tensor, unit_dim: int = 0) -> Tensor:
        """The token-space anchor mean of each token, in the tokens' layout and dtype."""
        x, back = self._units_first(tokens, unit_dim)
        with torch.no_grad():
            labels = self._assign_fit_space(self._to_fit_space(x.detach()))
            anchors = _pick(self.means_padded, labels)
        return back(anchors.to(tokens.dtype))

    def shift(self, tokens: Tensor, strength: float | None = None, unit_dim: int = 0) -> Tensor:
        """c~ = c + lambda (mu_k* - c), k* = the most responsible component (docs/method.md).

        The anchor mu_k* and lambda are constants (no gradient flows into them);
        the gradient with respect to c is (1 - lambda). ``strength`` overrides
        ``config.strength``; ``config.strength_mode`` chooses lambda:

        * "fixed": lambda = strength.
        * "safe": lambda = strength * exp(-mean |c - mu| / (|c| + |mu|)), a bounded
          relative distance (each term in [0, 1], 0/0 taken as 0), so lambda is in
          [strength / e, strength] and finite for zero tokens.
        * "released": lambda = strength * exp(-mean |(c - mu) / (c + 1e-6)|), which
          underflows to 0 when a token has exact zeros far from the anchor.

        The means are over the batch and the token dimensions, one lambda per unit.
        In space "released" the anchor is picked with the *batch's* normalisation and
        the fit-space (normalised) anchor is mixed with the raw token, as released.
        The anchor is picked outside autocast and TF32: in bf16 the distances keep about
        three digits, and a token near the border of two components would take the wrong one.
        """
        x, back = self._units_first(tokens, unit_dim)
        lam = self.config.strength if strength is None else float(strength)
        with torch.no_grad(), torch.autocast(x.device.type, enabled=False), exact_float32(x.device):
            c = x.detach()
            if self.config.space == "released":
                mx = c.amax(dim=(1, 2), keepdim=True)
                mn = c.amin(dim=(1, 2), keepdim=True)
                z = (c - mx) / torch.where(mx > mn, mx - mn, 1.0)
                anchor = _pick(self.fit_means, self._assign_fit_space(z.float()))
            else:
                anchor = _pick(self.means_padded, self._assign_fit_space(self._to_fit_space(c)))
            anchor = anchor.to(x.dtype)
            factor = _strength(c, anchor, lam, self.config.strength_mode)
        return back(x + factor * (anchor - x))

    def shift_batch(self, tokens: Tensor, strength: float | None = None) -> Tensor:
        """:meth:`shift` for a model's (B, U, D) token batch."""
        return self.shift(tokens, strength, unit_dim=1)

    def _to_fit_space(self, x: Tensor) -> Tensor:
        return (x.float() - self.offset.unsqueeze(1)) / self.scale[:, None, None]

    def _assign_fit_space(self, z: Tensor) -> Tensor:
        labels = []
        for m0 in range(0, z.shape[1], ASSIGN_CHUNK):
            logp, _ = component_log_probs(z[:, m0:m0 + ASSIGN_CHUNK], self._factorised)
            labels.append(logp.argmax(dim=1))
        return torch.cat(labels, dim=1) if labels else z.new_zeros(z.shape[:2], dtype=torch.long)

    def _units_first(self, tokens: Tensor, unit_dim: int) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
        """View tokens as (U, M, D) and return the map back to the caller's layout."""
        u, d = self.num_units, self.dim
        if tokens.ndim == 2 and u == 1 and tokens.shape[1] == d:
            return tokens.unsqueeze(0), lambda t: t[0]
        if tokens.ndim == 3 and unit_dim in (0, 1) and tokens.shape[unit_dim] == u and tokens.shape[2] == d:
            if unit_dim == 0:
                return tokens, lambda t: t
            return tokens.transpose(0, 1), lambda t: t.transpose(0, 1)
        layout = "(B, U, D)" if unit_dim == 1 else "(U, N, D)"
        raise DisdisError(f"anchoring: tokens of shape {tuple(tokens.shape)} do not match anchors for "
                          f"U={u} units of dimension D={d} (expected {layout}{' or (N, D)' if u == 1 else ''})")

    # ------------------------------------------------- devices, serialisation
    def to(self, device: torch.device | str) -> GaussianAnchors:
        return self.from_tensors({k: v.to(device) for k, v in self.to_tensors().items()}, self.config)

    @property
    def device(self) -> torch.device:
        return self.fit_means.device

    def derived_tensors(self) -> tuple[Tensor, Tensor, Tensor]:
        """(whitening (U, K, D, D), log_norm (U, K), means_padded (U, K, D)): what the shift computes
        from the fit's tensors."""
        return self._factorised.whitening, self._factorised.log_norm, self.means_padded

    def padded(self, components: int) -> GaussianAnchors:
        """The same fit with room for ``components`` per unit (absent ones: log weight -inf, identity
        covariance, never the most responsible); assignments and shifts are unchanged."""
        u, k, d = self.fit_means.shape
        if components < k:
            raise DisdisError(f"anchoring: a fit of {k} components does not fit in {components}")
        extra = components - k
        eye = torch.eye(d, device=self.device).expand(u, extra, d, d)
        return GaussianAnchors(self.offset, self.scale, torch.cat([self.fit_means, self.fit_means.new_zeros(u, extra, d)], 1),
                               torch.cat([self.chol, eye.to(self.chol.dtype)], 1),
                               torch.cat([self.log_weights, self.log_weights.new_full((u, extra), -math.inf)], 1),
                               self.num_components_tensor, self.config)

    def to_tensors(self) -> dict[str, Tensor]:
        """The fit as plain tensors (for a checkpoint, or a DDP broadcast); see :meth:`from_tensors`."""
        return {"offset": self.offset, "scale": self.scale, "means": self.fit_means, "chol": self.chol,
                "log_weights": self.log_weights, "num_components": self.num_components_tensor}

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor], config: AnchoringConfig | None = None) -> GaussianAnchors:
        missing = [k for k in TENSOR_KEYS if k not in tensors]
        if missing:
            raise DataError(f"anchoring: tensors lack '{missing[0]}' (expected {', '.join(TENSOR_KEYS)})")
        return cls(*(tensors[k] for k in TENSOR_KEYS), config=config)

    def save(self, path: str | Path) -> None:
        """Write the fit to a safetensors file (tensors + the config as JSON metadata), atomically."""
        from safetensors.torch import save_file

        tensors = {k: v.detach().cpu().contiguous() for k, v in self.to_tensors().items()}
        meta = {"format": FORMAT, "version": VERSION, "config": json.dumps(dataclasses.asdict(self.config))}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> GaussianAnchors:
        """Read a file written by :meth:`save` (no code is executed: safetensors + JSON)."""
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: anchors file not found")
        try:
            with safe_open(str(path), framework="pt", device=str(device)) as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError, ValueError) as err:
            raise DataError(f"{path}: not a safetensors file ({err})") from None
        if meta.get("format") != FORMAT:
            raise DataError(f"{path}: not a disdis anchors file (metadata format {meta.get('format')!r})")
        try:
            config = AnchoringConfig(**json.loads(meta["config"]))
        except (KeyError, TypeError, ValueError) as err:
            raise DataError(f"{path}: unreadable anchoring config in the metadata ({err})") from None
        try:
            return cls.from_tensors(tensors, config)
        except DisdisError as err:
            raise DataError(f"{path}: {err}") from None

    def __repr__(self) -> str:
        return (f"GaussianAnchors(units={self.num_units}, dim={self.dim}, components={self.num_components}, "
                f"space={self.config.space!r}, strength_mode={self.config.strength_mode!r})")


@contextlib.contextmanager
def exact_float32(device: torch.device):
    """float32 matrix products in full float32 on a GPU, where training switches TF32 on (10 bits
    of mantissa): the fit's EM, its split and stop decisions, and the anchor each token takes rest
    on distances that TF32 would round to about three digits."""
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def _fit_in_parallel(z: Tensor, generators: list[torch.Generator], cfg: AnchoringConfig,
                     spread_scale: Tensor) -> Mixture:
    """fit_mixture on the CPU with the units split over torch's threads, one unit group per thread.

    Units are fitted independently, so the split changes nothing but the speed: most of the
    fit's operations are too small for torch's own intra-op threads to pay, while whole units
    in parallel keep every core busy (torch releases the GIL inside its operations).
    """
    workers = min(torch.get_num_threads(), z.shape[0]) if z.device.type == "cpu" else 1
    if workers <= 1:
        return fit_mixture(z, generators, cfg, spread_scale)
    groups = [idx.tolist() for idx in torch.arange(z.shape[0]).tensor_split(workers)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(workers) as pool:
            parts = list(pool.map(lambda idx: fit_mixture(z[idx], [generators[i] for i in idx], cfg, spread_scale[idx]),
                                  groups))
    finally:
        torch.set_num_threads(threads)
    return concat_mixtures(parts)


def _normalisation(x: Tensor, space: str) -> tuple[Tensor, Tensor]:
    """offset (U, D) and scale (U,) of the fit space (class docstring); a constant unit gets scale 1."""
    if space == "released":
        mx, mn = x.amax(dim=(1, 2)), x.amin(dim=(1, 2))
        offset, scale = mx.unsqueeze(1).expand(-1, x.shape[2]).clone(), mx - mn
    else:
        offset = x.mean(dim=1)
        scale = (x - offset.unsqueeze(1)).square().mean(dim=(1, 2)).sqrt()
    return offset, torch.where(scale > 0, scale, 1.0)


def _pick(means: Tensor, labels: Tensor) -> Tensor:
    """means (U, K, D) gathered at labels (U, M) -> (U, M, D)."""
    return torch.gather(means, 1, labels.unsqueeze(-1).expand(-1, -1, means.shape[-1]))


def _strength(c: Tensor, anchor: Tensor, strength: float, mode: str) -> Tensor | float:
    """lambda of :meth:`GaussianAnchors.shift`: a float, or one value per unit (U, 1, 1)."""
    if mode == "fixed":
        return strength
    diff = (c - anchor).abs()
    if mode == "safe":
        denom = c.abs() + anchor.abs()
        rel = torch.where(denom > 0, diff / denom.clamp_min(torch.finfo(c.dtype).tiny), 0.0)
    else:
        rel = (diff / (c + 1e-6)).abs()
    return strength * torch.exp(-rel.mean(dim=(1, 2), keepdim=True))


def _check_shapes(a: GaussianAnchors) -> None:
    u, k, d = a.fit_means.shape
    expected = {"offset": (u, d), "scale": (u,), "chol": (u, k, d, d), "log_weights": (u, k), "num_components": (u,)}
    actual = {"offset": a.offset, "scale": a.scale, "chol": a.chol, "log_weights": a.log_weights,
              "num_components": a.num_components_tensor}
    for key, shape in expected.items():
        if tuple(actual[key].shape) != shape:
            raise DataError(f"anchoring: tensor '{key}' has shape {tuple(actual[key].shape)}, expected {shape}")
