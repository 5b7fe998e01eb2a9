"""The first stage: an autoencoder that moves diffusion into a small latent space (docs/method.md, "First stage").

Three kinds behind one interface (:class:`FirstStage`):

- ``vq``: VQ-regularised autoencoder (van den Oord et al. 2017; Esser et al. 2021), the
  released one: 64x64x3 -> 3x16x16, codebook 2048 x 3. ``encode`` gives the continuous
  latent *before* quantisation; ``decode`` quantises, then decodes.
- ``kl``: the encoder predicts a diagonal Gaussian (mean, log-variance), regularised by a
  small KL term to N(0, I) (Rombach et al. 2022); ``encode`` gives the mean.
- ``identity``: no autoencoder (diffusion in pixel space, for tiny CPU configurations).

``training_loss(x)`` is the autoencoder's own objective: L1 reconstruction, plus the
codebook and commitment terms (vq) or the KL term (kl), plus optional LPIPS-style
perceptual and patch-discriminator (hinge) terms. The discriminator is trained with its
own optimiser on :meth:`FirstStage.discriminator_loss`.

The diffusion stage scales latents by 1/std estimated on its first training batch
(:func:`estimate_latent_scale`, held by a :class:`LatentScaler`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn

from disdis.errors import ConfigError, DisdisError
from disdis.nn.layers import Downsample, ResBlock, Upsample, group_norm


@dataclass
class FirstStageConfig:
    """First-stage hyper-parameters; the defaults are the released VQ autoencoder."""

    kind: Literal["vq", "kl", "identity"] = "vq"
    in_channels: int = 3
    base_channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 4)  # one level per entry; downsampling 2^(levels-1)
    num_res_blocks: int = 2
    latent_channels: int = 3
    codebook_size: int = 2048
    dropout: float = 0.0
    recon_weight: float = 1.0  # L1 reconstruction
    codebook_weight: float = 1.0  # ||sg(z) - e||^2 + beta ||z - sg(e)||^2
    commitment_beta: float = 0.25
    kl_weight: float = 1e-6
    perceptual_weights: Optional[str] = None  # local safetensors file of a VGG16 (LPIPS-style); None: off
    perceptual_weight: float = 1.0
    use_discriminator: bool = False
    disc_weight: float = 0.1
    disc_start: int = 0  # first step (as passed to training_loss) with the adversarial term
    disc_channels: int = 64
    disc_layers: int = 3


# ---------------------------------------------------------------------------- encoder / decoder

class Encoder(nn.Module):
    """conv_in; per level ``num_res_blocks`` ResBlocks then a stride-2 conv (not after the last
    level); two middle ResBlocks (no attention, as released); GroupNorm, SiLU, conv_out."""

    def __init__(self, cfg: FirstStageConfig, out_channels: int):
        super().__init__()
        ch = cfg.base_channels * cfg.channel_mult[0]
        layers: list[nn.Module] = [nn.Conv2d(cfg.in_channels, ch, 3, padding=1)]
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers.append(ResBlock(ch, cfg.base_channels * mult, dropout=cfg.dropout))
                ch = cfg.base_channels * mult
            if level != len(cfg.channel_mult) - 1:
                layers.append(Downsample(ch, use_conv=True))
        layers += [ResBlock(ch, dropout=cfg.dropout), ResBlock(ch, dropout=cfg.dropout),
                   group_norm(ch), nn.SiLU(), nn.Conv2d(ch, out_channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Decoder(nn.Module):
    """The mirror of :class:`Encoder`, with ``num_res_blocks + 1`` ResBlocks per level and
    nearest-neighbour upsampling followed by a 3x3 conv between levels."""

    def __init__(self, cfg: FirstStageConfig):
        super().__init__()
        ch = cfg.base_channels * cfg.channel_mult[-1]
        layers: list[nn.Module] = [nn.Conv2d(cfg.latent_channels, ch, 3, padding=1),
                                   ResBlock(ch, dropout=cfg.dropout), ResBlock(ch, dropout=cfg.dropout)]
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for _ in range(cfg.num_res_blocks + 1):
                layers.append(ResBlock(ch, cfg.base_channels * mult, dropout=cfg.dropout))
                ch = cfg.base_channels * mult
            if level != 0:
                layers.append(Upsample(ch, use_conv=True))
        layers += [group_norm(ch), nn.SiLU(), nn.Conv2d(ch, cfg.in_channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class VectorQuantizer(nn.Module):
    """Nearest-codebook-entry quantisation with the straight-through gradient.

    Returns ``(z_q, loss)`` with ``loss = ||sg(z) - e||^2 + beta ||z - sg(e)||^2`` (mean over
    elements; van den Oord et al. 2017, eq. 3) and ``z_q = z + sg(e - z)``.
    """

    def __init__(self, codebook_size: int, dim: int, beta: float):
        super().__init__()
        self.beta = beta
        self.codebook = nn.Embedding(codebook_size, dim)
        nn.init.uniform_(self.codebook.weight, -1.0 / codebook_size, 1.0 / codebook_size)

    def indices(self, z: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code for every latent pixel: (B, C, H, W) -> (B, H, W).

        In float32 outside autocast: the codes start within 1/codebook_size of each other, closer
        than bf16 resolves, and a bf16 search picks another code for a few percent of the pixels.
        """
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]).float()
        e = self.codebook.weight.float()
        with torch.autocast(z.device.type, enabled=False):
            # ||z - e||^2 = ||z||^2 - 2 z.e + ||e||^2; the ||z||^2 term does not change the argmin
            dist = (e * e).sum(1)[None] - 2.0 * flat @ e.t()
        return dist.argmin(1).view(z.shape[0], z.shape[2], z.shape[3])

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e = self.codebook(self.indices(z)).permute(0, 3, 1, 2)
        loss = F.mse_loss(e, z.detach()) + self.beta * F.mse_loss(z, e.detach())
        return z + (e - z).detach(), loss


# ---------------------------------------------------------------------------- optional loss terms

_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
_VGG16_TAPS = (3, 8, 15, 22, 29)  # ReLU outputs relu1_2, relu2_2, relu3_3, relu4_3, relu5_3


class PerceptualLoss(nn.Module):
    """LPIPS-style distance (Zhang et al. 2018) with VGG16 features from a local safetensors file.

    The file holds the convolutions as torchvision names them (``features.{i}.weight`` and
    ``.bias``) and optionally LPIPS's per-channel weights (``lin{k}.model.1.weight`` or
    ``lin{k}.weight``, shape (1, C, 1, 1)); without them every channel weighs the same.
    ``d(x, y) = sum_k mean_{hw} sum_c w_kc (f_k(x) - f_k(y))^2`` over channel-normalised features
    of images in [-1, 1]. The network is frozen. Nothing is ever downloaded.
    """

    def __init__(self, path: str | Path):
        super().__init__()
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"first_stage.perceptual_weights: {path} is not a file")
        try:
            state = load_file(str(path))
        except (SafetensorError, OSError) as err:
            raise ConfigError(f"first_stage.perceptual_weights: {path} is not a safetensors file ({err})") from None
        layers: list[nn.Module] = []
        cin = 3
        for spec in _VGG16:
            if spec == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(cin, int(spec), 3, padding=1), nn.ReLU()]
                cin = int(spec)
        self.features = nn.Sequential(*layers)
        widths = [64, 128, 256, 512, 512]
        self.lins = nn.ParameterList(nn.Parameter(torch.ones(1, c, 1, 1)) for c in widths)
        own = {f"features.{k}": v for k, v in self.features.state_dict().items()}
        missing = [k for k in own if k not in state]
        if missing:
            raise ConfigError(f"first_stage.perceptual_weights: {path} lacks {missing[0]} (expected torchvision VGG16 names)")
        bad = [k for k in own if state[k].shape != own[k].shape]
        if bad:
            raise ConfigError(f"first_stage.perceptual_weights: {path}: {bad[0]} has shape {tuple(state[bad[0]].shape)}, "
                              f"expected {tuple(own[bad[0]].shape)}")
        self.features.load_state_dict({k[len("features."):]: state[k] for k in own})
        for k, lin in enumerate(self.lins):
            for name in (f"lin{k}.model.1.weight", f"lin{k}.weight"):
                if name in state:
                    lin.data.copy_(state[name].reshape(lin.shape))
        # ImageNet statistics in [-1, 1] units, as LPIPS's ScalingLayer
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self.requires_grad_(False)

    def _taps(self, x: torch.Tensor) -> Iterator[torch.Tensor]:
        h = (x - self.shift) / self.scale
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in _VGG16_TAPS:
                yield h / (h.norm(dim=1, keepdim=True) + 1e-10)
            if i == _VGG16_TAPS[-1]:
                return

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != 3:
            raise ValueError("the perceptual loss needs 3-channel images")
        total = x.new_zeros(())
        for fx, fy, w in zip(self._taps(x), self._taps(y), self.lins):
            total = total + ((fx - fy).square() * w).sum(1).mean()
        return total


class PatchDiscriminator(nn.Module):
    """PatchGAN (Isola et al. 2017): 4x4 convs, stride 2 for the first ``layers``, BatchNorm and
    LeakyReLU(0.2), one logit per patch."""

    def __init__(self, in_channels: int, channels: int, layers: int):
        super().__init__()
        mods: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        ch = channels
        for n in range(1, layers + 1):
            out = channels * min(2 ** n, 8)
            stride = 2 if n < layers else 1
            mods += [nn.Conv2d(ch, out, 4, stride, 1, bias=False), nn.BatchNorm2d(out), nn.LeakyReLU(0.2)]
            ch = out
        mods.append(nn.Conv2d(ch, 1, 4, 1, 1))
        self.net = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# ---------------------------------------------------------------------------- the first stage

class FirstStage(nn.Module):
    """``encode(x) -> z`` (continuous, unscaled), ``decode(z) -> x``, ``training_loss(x)``.

    ``latent_channels`` and ``downsample_factor`` describe the latent; ``trainable`` is False
    for the identity stage, whose ``training_loss`` raises (there is nothing to train).
    """

    def __init__(self, cfg: FirstStageConfig):
        super().__init__()
        self.cfg = cfg
        self.kind = cfg.kind
        self.perceptual: PerceptualLoss | None = None
        self.discriminator: PatchDiscriminator | None = None
        if cfg.kind == "identity":
            self.latent_channels = cfg.in_channels
            self.downsample_factor = 1
            return
        self.latent_channels = cfg.latent_channels
        self.downsample_factor = 2 ** (len(cfg.channel_mult) - 1)
        moments = 2 if cfg.kind == "kl" else 1
        self.encoder = Encoder(cfg, moments * cfg.latent_channels)
        self.decoder = Decoder(cfg)
        self.quantizer = (VectorQuantizer(cfg.codebook_size, cfg.latent_channels, cfg.commitment_beta)
                          if cfg.kind == "vq" else None)
        if cfg.perceptual_weights:
            self.perceptual = PerceptualLoss(cfg.perceptual_weights)
        if cfg.use_discriminator:
            self.discriminator = PatchDiscriminator(cfg.in_channels, cfg.disc_channels, cfg.disc_layers)

    @property
    def trainable(self) -> bool:
        return self.kind != "identity"

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The continuous latent: before quantisation (vq), the posterior mean (kl), x (identity)."""
        if self.kind == "identity":
            return x
        h = self.encoder(x)
        return h.chunk(2, dim=1)[0] if self.kind == "kl" else h

    def decode(self, z: torch.Tensor, quantize: bool = True) -> torch.Tensor:
        """Image from a latent (unscaled); vq quantises first unless ``quantize`` is False (a
        decoding that gradients pass through, as DisDiff's disentangling loss uses)."""
        if self.kind == "identity":
            return z
        if self.quantizer is not None and quantize:
            z, _ = self.quantizer(z)
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def autoencoder_parameters(self) -> list[nn.Parameter]:
        """Everything but the discriminator (the perceptual net is frozen and excluded too)."""
        skip = {id(p) for m in (self.discriminator, self.perceptual) if m is not None for p in m.parameters()}
        return [p for p in self.parameters() if id(p) not in skip]

    def discriminator_parameters(self) -> list[nn.Parameter]:
        return [] if self.discriminator is None else list(self.discriminator.parameters())

    def _reconstruct(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        """Reconstruction and the latent's regulariser (already weighted)."""
        h = self.encoder(x)
        if self.kind == "vq":
            assert self.quantizer is not None
            z, codebook_loss = self.quantizer(h)
            return self.decoder(z), self.cfg.codebook_weight * codebook_loss, {"codebook": codebook_loss.item()}
        mean, logvar = h.chunk(2, dim=1)
        logvar = logvar.clamp(-30.0, 20.0)
        z = mean + torch.randn_like(mean) * (0.5 * logvar).exp()
        # KL(N(mean, var) || N(0, 1)) per sample, summed over latent elements
        kl = 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar).flatten(1).sum(1).mean()
        return self.decoder(z), self.cfg.kl_weight * kl, {"kl": kl.item()}

    def training_loss(self, x: torch.Tensor, step: int | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """The autoencoder's loss on images ``x`` in [-1, 1] and its parts as floats.

        ``recon_weight * |x - x_rec|_1 + regulariser [+ perceptual_weight * LPIPS]
        [+ disc_weight * (-mean D(x_rec))]``; the adversarial term starts at ``disc_start``
        (``step=None`` counts as started).
        """
        if not self.trainable:
            raise DisdisError("first_stage.kind: the identity first stage has nothing to train")
        x_rec, reg, logs = self._reconstruct(x)
        recon = (x - x_rec).abs().mean()
        loss = self.cfg.recon_weight * recon + reg
        logs["recon_l1"] = recon.item()
        if self.perceptual is not None:
            perceptual = self.perceptual(x, x_rec)
            loss = loss + self.cfg.perceptual_weight * perceptual
            logs["perceptual"] = perceptual.item()
        if self.discriminator is not None and (step is None or step >= self.cfg.disc_start):
            # the discriminator is updated separately; only the autoencoder gets this gradient
            self.discriminator.requires_grad_(False)
            adversarial = -self.discriminator(x_rec).mean()
            self.discriminator.requires_grad_(True)
            loss = loss + self.cfg.disc_weight * adversarial
            logs["generator_adv"] = adversarial.item()
        logs["loss"] = loss.item()
        return loss, logs

    def discriminator_loss(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Hinge loss of the patch discriminator: mean relu(1 - D(x)) + mean relu(1 + D(x_rec))."""
        if self.discriminator is None:
            raise DisdisError("first_stage.use_discriminator: the first stage has no discriminator")
        with torch.no_grad():
            x_rec, _, _ = self._reconstruct(x)
        real = F.relu(1.0 - self.discriminator(x)).mean()
        fake = F.relu(1.0 + self.discriminator(x_rec)).mean()
        loss = real + fake
        return loss, {"disc_real": real.item(), "disc_fake": fake.item(), "disc_loss": loss.item()}


def build_first_stage(cfg: FirstStageConfig) -> FirstStage:
    """The first stage that ``cfg.kind`` names (vq, kl or identity)."""
    if cfg.kind not in ("vq", "kl", "identity"):
        raise ConfigError(f"first_stage.kind: expected 'vq', 'kl' or 'identity', got {cfg.kind!r}")
    if cfg.kind != "identity" and not cfg.channel_mult:
        raise ConfigError("first_stage.channel_mult: expected at least one level")
    return FirstStage(cfg)


# ---------------------------------------------------------------------------- latent scaling

def estimate_latent_scale(z: torch.Tensor) -> float:
    """1 / std of all latent values of a batch ("scale by std"; Rombach et al. 2022, section G)."""
    std = z.detach().double().std().item()
    if not std > 0.0:
        raise DisdisError("latent scale: the first batch's latents have zero spread; cannot scale by 1/std")
    return 1.0 / std


class LatentScaler(nn.Module):
    """Holds the latent scale as a buffer (saved in checkpoints): ``z * scale`` for diffusion and
    ``z / scale`` back. ``fit(z)`` sets it from the first training batch, once."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    def fit(self, z: torch.Tensor) -> float:
        if not bool(self.fitted):
            self.scale.fill_(estimate_latent_scale(z))
            self.fitted.fill_(True)
        return float(self.scale)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.scale.to(z.dtype)

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        return z / self.scale.to(z.dtype)
