"""Batched 2-D augmentations for medical images ``x [B, C, H, W]``, seeded by the Augment's generator.

Every op draws its randomness from the ``torch.Generator`` it is handed (the
:class:`~tscl.augment.Augment`'s per-device generator), on the images' device, one draw per image,
so a checkpointed generator state resumes the exact same views. The ``image`` entry of
:data:`tscl.augment.OPS_BY_MODALITY`::

    aug = build_augment(IMAGE_AUGMENT, modality="image", seed=0)
    v1, v2 = aug(x), aug(x)

=========  ================================================================================
``rrc``    random resized crop back to H x W: area fraction in [scale, 1], aspect ratio in
           [1/ratio, ratio] (log-uniform), bilinear (``scale=0.5``, ``ratio=1.33``)
``flip``   mirror with probability ``p`` (``axis=h`` left-right, ``v`` up-down); left-right
           anatomy matters in chest films, so the default spec leaves it at p = 0.5 as in
           MICLe (Azizi et al. 2021) and a user may set ``p=0``
``rotate`` rotation by an angle uniform in [-degrees, degrees] (``degrees=10``), border padding
``jitter`` intensity: ``x' = (x - mean) * c + mean + b * std`` per image, c in [1 - contrast,
           1 + contrast], b in [-brightness, brightness] (``brightness=0.2``, ``contrast=0.3``);
           scale-free, so it suits [0, 1] PNGs and raw .npy values alike
``blur``   Gaussian blur with probability ``p`` (0.5), sigma in [``sigma_min``, ``sigma``] pixels
           (0.1, 1.5), separable, reflect padding
``pixnoise`` additive Gaussian noise of ``std`` x the image's standard deviation (0.05)
=========  ================================================================================

Grayscale-friendly by design: no colour or hue ops (a jitter of each channel alike).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["random_resized_crop", "flip", "rotate", "intensity_jitter", "gaussian_blur", "pixel_noise",
           "IMAGE_OPS", "IMAGE_AUGMENT", "apply_image"]

# MICLe / SimCLR-for-radiology style defaults, tuned down for 64-256 px grayscale films
IMAGE_AUGMENT = "rrc:scale=0.5,flip,rotate:degrees=10,jitter:brightness=0.2:contrast=0.3,blur:p=0.5"


def _u(shape, g, x: Tensor, low=0.0, high=1.0) -> Tensor:
    return low + (high - low) * torch.rand(shape, generator=g, device=x.device, dtype=torch.float32)


def _warp(x: Tensor, theta: Tensor) -> Tensor:
    """Sample ``x`` at ``theta [B, 2, 3]`` (normalised coordinates, output pixel -> input point)."""
    grid = F.affine_grid(theta.to(torch.float32), list(x.shape), align_corners=False)
    return F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False).to(x.dtype)


def random_resized_crop(x: Tensor, g=None, scale: float = 0.5, ratio: float = 4 / 3) -> Tensor:
    """A random box of area fraction in [scale, 1] and aspect ratio in [1/ratio, ratio], resized back to H x W."""
    if not 0 < scale <= 1 or ratio < 1:
        raise ValueError(f"rrc: scale must be in (0, 1] and ratio >= 1, got scale={scale}, ratio={ratio}")
    b = x.shape[0]
    area = _u(b, g, x, scale, 1.0)
    log_r = _u(b, g, x, -math.log(ratio), math.log(ratio))
    w = (area * log_r.exp()).sqrt().clamp(max=1.0)  # box width / image width
    h = (area / log_r.exp()).sqrt().clamp(max=1.0)
    cx = (1 - w) * _u(b, g, x, -1.0, 1.0)  # box centre, normalised coordinates
    cy = (1 - h) * _u(b, g, x, -1.0, 1.0)
    zero = torch.zeros_like(w)
    theta = torch.stack([torch.stack([w, zero, cx], 1), torch.stack([zero, h, cy], 1)], 1)
    return _warp(x, theta)


def flip(x: Tensor, g=None, p: float = 0.5, axis: str = "h") -> Tensor:
    """Mirror each image with probability ``p``: ``axis="h"`` left-right, ``"v"`` up-down."""
    if axis not in ("h", "v"):
        raise ValueError(f"flip: axis must be h or v, got {axis!r}")
    hit = _u(x.shape[0], g, x) < p
    return torch.where(hit[:, None, None, None], x.flip(-1 if axis == "h" else -2), x)


def rotate(x: Tensor, g=None, degrees: float = 10.0) -> Tensor:
    """Rotate each image about its centre by an angle uniform in [-degrees, degrees] (pixel geometry kept
    for non-square images; the corners take the border's values)."""
    b, _, h, w = x.shape
    a = torch.deg2rad(_u(b, g, x, -float(degrees), float(degrees)))
    cos, sin, zero = a.cos(), a.sin(), torch.zeros_like(a)
    theta = torch.stack([torch.stack([cos, -sin * h / w, zero], 1), torch.stack([sin * w / h, cos, zero], 1)], 1)
    return _warp(x, theta)


def intensity_jitter(x: Tensor, g=None, brightness: float = 0.2, contrast: float = 0.3) -> Tensor:
    """``(x - mean) * c + mean + b * std`` per image (all channels alike): contrast c, brightness b."""
    b = x.shape[0]
    dims = tuple(range(1, x.dim()))
    mean = x.mean(dim=dims, keepdim=True)
    std = x.float().std(dim=dims, keepdim=True).to(x.dtype)
    c = _u(b, g, x, 1 - contrast, 1 + contrast).to(x.dtype).view(b, 1, 1, 1)
    shift = _u(b, g, x, -brightness, brightness).to(x.dtype).view(b, 1, 1, 1)
    return (x - mean) * c + mean + shift * std


def gaussian_blur(x: Tensor, g=None, p: float = 0.5, sigma: float = 1.5, sigma_min: float = 0.1) -> Tensor:
    """Blur each image with probability ``p`` by a Gaussian of sigma in [sigma_min, sigma] pixels."""
    b, c, h, w = x.shape
    hit = _u(b, g, x) < p
    s = _u(b, g, x, sigma_min, sigma)
    radius = max(1, min(int(math.ceil(3 * sigma)), (min(h, w) - 1) // 2))
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (offsets[None, :] / s[:, None]) ** 2)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)
    delta = (offsets == 0).to(kernel.dtype).expand(b, -1)
    kernel = torch.where(hit[:, None], kernel, delta).repeat_interleave(c, dim=0)  # [B*C, k]
    y = F.pad(x.float().reshape(1, b * c, h, w), (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, kernel[:, None, None, :], groups=b * c)
    y = F.conv2d(y, kernel[:, None, :, None], groups=b * c)
    return y.reshape(b, c, h, w).to(x.dtype)


def pixel_noise(x: Tensor, g=None, std: float = 0.05) -> Tensor:
    """Add Gaussian noise of ``std`` x each image's own standard deviation."""
    dims = tuple(range(1, x.dim()))
    scale = x.float().std(dim=dims, keepdim=True) * std
    return x + (scale * torch.randn(x.shape, generator=g, device=x.device, dtype=torch.float32)).to(x.dtype)


IMAGE_OPS = {"rrc": random_resized_crop, "flip": flip, "rotate": rotate, "jitter": intensity_jitter,
             "blur": gaussian_blur, "pixnoise": pixel_noise}


def apply_image(op, x, g, fs: float = 0.0, **kw):
    if not torch.is_tensor(x) or x.dim() != 4:
        shape = list(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f"image augmentation {op.__name__} takes images [B, C, H, W], got {shape}")
    return op(x, g, **kw)
