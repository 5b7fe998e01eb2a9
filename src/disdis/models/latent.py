"""What every latent-diffusion method shares: a first stage it builds on (its config: the U-Net's
sizes derived from it, the run that trains it) and the frozen latent space (the model: encode to
the scaled latent, decode back, the latent scale fixed on the first batch)."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import torch

from disdis.config import config_from_dict
from disdis.errors import ConfigError
from disdis.nn.first_stage import FirstStageConfig
from disdis.train.hooks import Hook, HookContext, OnFirstBatch


def latent_channels_and_factor(first: FirstStageConfig) -> tuple[int, int]:
    """The first stage's latent channels and downsampling factor."""
    if first.kind == "identity":
        return first.in_channels, 1
    return first.latent_channels, 2 ** (len(first.channel_mult) - 1)


class OnFirstStage:
    """Config mixin of a method with ``first_stage``, ``unet`` and ``first_stage_train`` settings."""

    dependency_kinds = {"first_stage": "first_stage"}
    channels_key = "first_stage.in_channels"

    @staticmethod
    def derive_unet(section: dict, resolution: int | None, key: str = "unet") -> dict:
        """``section`` with ``key``'s channels and size set from the first stage where not written."""
        first = config_from_dict(FirstStageConfig, section.get("first_stage") or {}, "method.first_stage")
        unet = section[key] = dict(section.get(key) or {})
        channels, factor = latent_channels_and_factor(first)
        unet.setdefault("in_channels", channels)
        unet.setdefault("out_channels", channels)
        if resolution is not None:
            unet.setdefault("resolution", resolution // factor)
        return section

    def check_unet(self, unet, resolution: int | None, key: str = "unet") -> None:
        channels, factor = latent_channels_and_factor(self.first_stage)
        for name in ("in_channels", "out_channels"):
            if getattr(unet, name) != channels:
                raise ConfigError(f"method.{key}.{name}: {getattr(unet, name)} differs from the first stage's "
                                  f"{channels} latent channels")
        if resolution is not None and unet.resolution * factor != resolution:
            raise ConfigError(f"method.{key}.resolution: {unet.resolution} does not match the latent size "
                              f"{resolution // factor} (data.resolution {resolution} / first-stage downsampling {factor})")

    def needs(self) -> tuple[str, ...]:
        return () if self.first_stage.kind == "identity" else ("first_stage",)

    def own_dependency(self, name: str, run):
        from disdis.models.first_stage import FirstStageMethod
        return dataclasses.replace(run, method=FirstStageMethod(first_stage=self.first_stage),
                                   train=self.first_stage_train, requires={})

    def adopt(self, name: str, source):
        return dataclasses.replace(self, first_stage=source.method.first_stage)


def image_digest(image: torch.Tensor) -> bytes:
    """A key of one image's exact values (whatever its memory layout or device)."""
    values = np.ascontiguousarray(image.detach().cpu().numpy())
    return hashlib.blake2b(values.tobytes(), digest_size=16).digest()


class LatentSpace:
    """Model mixin: ``self.first_stage`` (frozen) and ``self.scaler`` give the scaled latent z0.

    With a latent cache (:class:`LatentCache`, ``method.cache_latents``) the frozen encoder runs once
    per training image instead of once per step: a batch whose every image is in the cache takes
    its latents from there (the same encoder, the same weights: what it would compute, up to the
    float rounding of another batch's arithmetic)."""

    latent_cache: dict[bytes, torch.Tensor] | None = None

    def latent_hooks(self, cache: bool = False) -> list:
        return [OnFirstBatch("latent_scale", self.setup), *([LatentCache(self)] if cache else [])]

    @torch.no_grad()
    def fill_latent_cache(self, batches) -> None:
        """Encodes every image of ``batches`` (an iterable of image batches) into the cache."""
        self.latent_cache = {image_digest(image): z for images in batches
                             for image, z in zip(images, self.first_stage.encode(images))}

    def _encoded(self, images: torch.Tensor) -> torch.Tensor:
        """The unscaled latent: from the cache when it holds every image, else encoded."""
        if self.latent_cache:
            cached = [self.latent_cache.get(image_digest(image)) for image in images]
            if all(z is not None for z in cached):
                return torch.stack(cached)
        return self.first_stage.encode(images)

    def train(self, mode: bool = True):
        super().train(mode)
        self.first_stage.eval()  # frozen: no dropout, fixed statistics
        return self

    @torch.no_grad()
    def setup(self, images: torch.Tensor) -> None:
        """Fix the latent scale 1/std on the first training batch (released "scale by std")."""
        self.scaler.fit(self.first_stage.encode(images).float())

    @torch.no_grad()
    def latents(self, images: torch.Tensor) -> torch.Tensor:
        """The scaled first-stage latent z0 of images."""
        return self.scaler(self._encoded(images))

    @torch.no_grad()
    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        return self.first_stage.decode(self.scaler.inverse(z)).clamp(-1, 1)


class LatentCache(Hook):
    """Before the first step of every process (fresh or resumed), encodes the whole training set
    into the model's latent cache, in fixed chunks, so that a resumed run reads the same latents;
    drops it when the loop ends. For small datasets (it holds one latent per image) whose images
    come unaugmented, where the frozen encoder is a sizeable part of the step (the CPU demo's: 9 % on
    2 threads, 12 % on 1)."""

    name = "latent_cache"
    chunk = 256

    def __init__(self, model: LatentSpace):
        self.model = model

    def open(self, ctx: HookContext) -> None:
        from disdis.train.loop import collate_images
        dataset = ctx.dataset
        starts = range(0, len(dataset), self.chunk)
        self.model.fill_latent_cache(
            collate_images([dataset[i] for i in range(start, min(start + self.chunk, len(dataset)))]).to(ctx.device)
            for start in starts)

    def close(self) -> None:
        self.model.latent_cache = None
