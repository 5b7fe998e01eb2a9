"""disdis: unsupervised disentangled representation learning with diffusion models.

Implements "Disentangling Disentangled Representations: Towards Improved Latent
Units via Diffusion Models" (WACV 2025): latent units that condition a latent
diffusion U-Net through cross-attention, Dynamic Gaussian Anchoring and Skip
Dropout, plus baselines and disentanglement_lib-compatible metrics.
"""

__version__ = "0.1.0"
