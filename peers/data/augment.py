"""Batched multi-crop augmentation in torch (SwAV, Caron et al. 2020, section 3.2 and appendix A).

`multi_crop(images, config, generator)` turns a batch of images (uint8 or float in [0, 1],
(B, C, H, W)) into a list of views: for each `CropSpec` in order, `count` crops of `size` x `size`
px (SwAV's 2 x 224 + 6 x 96; for 28 px Fashion-MNIST e.g. 2 x 24 + 2 x 12). Each view of each
image gets, independently:

  1. a random resized crop: area fraction s ~ U(scale), aspect ratio r ~ logU(3/4, 4/3), side
     lengths sqrt(s r) and sqrt(s / r) of the image (clipped to the image), uniformly placed,
     resampled bilinearly to size x size (one `affine_grid` + `grid_sample` per view, whole batch);
  2. a horizontal flip with probability `flip`;
  3. with probability `jitter_prob`, colour jitter in the fixed order brightness, contrast,
     saturation, hue (factors ~ U(1 - a, 1 + a); hue a rotation of the YIQ chroma plane by
     U(-h, h) turns); grey images get brightness and contrast only;
  4. for RGB, conversion to grey with probability `grayscale_prob`;
  5. with probability `blur_prob`, a Gaussian blur with sigma ~ U(blur_sigma) x size (the range
     is a fraction of the crop size, so it means the same at 24 px and at 224 px);
  6. normalisation by the dataset's per-channel `mean` and `std`.

Determinism: every random number comes from `generator` (a CPU torch.Generator) in a fixed order,
so the same generator state gives bitwise-identical views.

    config = MultiCropConfig(crops=(CropSpec(24, 2, (0.35, 1.0)), CropSpec(12, 2, (0.1, 0.35))))
    views = multi_crop(images, config, torch.Generator().manual_seed(0))   # [(B,1,24,24)] * 2 + [(B,1,12,12)] * 2
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

__all__ = ["CropSpec", "MultiCropConfig", "multi_crop", "random_resized_crop", "color_jitter", "gaussian_blur"]

_LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class CropSpec:
    size: int                        # output side, px
    count: int                       # views of this kind per image
    scale: tuple[float, float]       # fraction of the image area

    def __post_init__(self) -> None:
        if self.size < 1 or self.count < 1:
            raise ValueError(f"a crop needs size >= 1 and count >= 1, got {self}")
        low, high = self.scale
        if not 0 < low <= high <= 1:
            raise ValueError(f"crop scale must satisfy 0 < low <= high <= 1, got {self.scale}")


@dataclass(frozen=True)
class MultiCropConfig:
    crops: tuple[CropSpec, ...]
    flip: float = 0.5
    jitter_prob: float = 0.8
    brightness: float = 0.8          # SwAV's colour distortion at strength s = 1: 0.8 s, 0.8 s, 0.8 s, 0.2 s
    contrast: float = 0.8
    saturation: float = 0.8
    hue: float = 0.2
    grayscale_prob: float = 0.2
    blur_prob: float = 0.5
    blur_sigma: tuple[float, float] = (0.1 / 224, 2.0 / 224)
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)
    ratio: tuple[float, float] = field(default=(3 / 4, 4 / 3))

    @property
    def num_views(self) -> int:
        return sum(c.count for c in self.crops)

    def sizes(self) -> list[int]:
        return [c.size for c in self.crops for _ in range(c.count)]


def multi_crop(images: torch.Tensor, config: MultiCropConfig, generator: torch.Generator) -> list[torch.Tensor]:
    """The views of every image, in the order of `config.crops` (see the module docstring)."""
    if images.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    x = images.float().div(255) if images.dtype == torch.uint8 else images.float()
    channels = x.shape[1]
    mean = torch.tensor(_per_channel(config.mean, channels)).view(1, channels, 1, 1)
    std = torch.tensor(_per_channel(config.std, channels)).view(1, channels, 1, 1)
    views = []
    for spec in config.crops:
        for _ in range(spec.count):
            view = random_resized_crop(x, spec.size, spec.scale, config.ratio, config.flip, generator)
            view = color_jitter(view, config, generator)
            view = gaussian_blur(view, config.blur_prob, (config.blur_sigma[0] * spec.size, config.blur_sigma[1] * spec.size), generator)
            views.append((view - mean) / std)
    return views


def _per_channel(values: Sequence[float], channels: int) -> list[float]:
    values = list(values)
    if len(values) == channels:
        return values
    if len(values) == 1:
        return values * channels
    raise ValueError(f"got {len(values)} normalisation values for {channels} channel(s)")


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def random_resized_crop(x: torch.Tensor, size: int, scale: tuple[float, float], ratio: tuple[float, float],
                        flip: float, generator: torch.Generator) -> torch.Tensor:
    """One random resized crop (and optional flip) per image, resampled to size x size."""
    b, _, h, w = x.shape
    area = _uniform(b, scale[0], scale[1], generator)
    log_ratio = _uniform(b, math.log(ratio[0]), math.log(ratio[1]), generator)
    aspect = torch.exp(log_ratio) * (h / w)             # width / height in normalised units
    crop_w = torch.sqrt(area * aspect).clamp(max=1.0)   # fractions of the image side
    crop_h = torch.sqrt(area / aspect).clamp(max=1.0)
    cx = (torch.rand(b, generator=generator) * 2 - 1) * (1 - crop_w)
    cy = (torch.rand(b, generator=generator) * 2 - 1) * (1 - crop_h)
    flips = torch.where(torch.rand(b, generator=generator) < flip, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = crop_w * flips
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = crop_h
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta, [b, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _grey(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    weights = torch.tensor(_LUMA, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * weights).sum(1, keepdim=True)


def color_jitter(x: torch.Tensor, config: MultiCropConfig, generator: torch.Generator) -> torch.Tensor:
    """Brightness, contrast (and for RGB saturation, hue, random grey) with per-image random factors."""
    b, c = x.shape[:2]
    apply = (torch.rand(b, generator=generator) < config.jitter_prob).view(b, 1, 1, 1)

    def factor(amount: float) -> torch.Tensor:
        f = _uniform(b, max(0.0, 1 - amount), 1 + amount, generator).view(b, 1, 1, 1)
        return torch.where(apply, f, torch.ones_like(f))

    x = (x * factor(config.brightness)).clamp(0, 1)
    mean = _grey(x).mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - mean) * factor(config.contrast) + mean).clamp(0, 1)
    if c == 3:
        grey = _grey(x)
        x = ((x - grey) * factor(config.saturation) + grey).clamp(0, 1)
        angle = _uniform(b, -config.hue, config.hue, generator) * 2 * math.pi
        angle = torch.where(apply.view(b), angle, torch.zeros_like(angle))
        x = _rotate_hue(x, angle).clamp(0, 1)
        to_grey = (torch.rand(b, generator=generator) < config.grayscale_prob).view(b, 1, 1, 1)
        x = torch.where(to_grey, _grey(x).expand_as(x), x)
    return x


def _rotate_hue(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rotate the chroma (I, Q) plane of YIQ by `angle` radians, per image."""
    to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=x.dtype)
    from_yiq = torch.linalg.inv(to_yiq)
    cos, sin = torch.cos(angle), torch.sin(angle)
    rotation = torch.zeros(angle.shape[0], 3, 3, dtype=x.dtype)
    rotation[:, 0, 0] = 1
    rotation[:, 1, 1], rotation[:, 1, 2] = cos, -sin
    rotation[:, 2, 1], rotation[:, 2, 2] = sin, cos
    matrix = from_yiq @ rotation @ to_yiq                  # (B, 3, 3)
    return torch.einsum("bij,bjhw->bihw", matrix, x)


def gaussian_blur(x: torch.Tensor, prob: float, sigma_px: tuple[float, float], generator: torch.Generator) -> torch.Tensor:
    """With probability `prob` per image, a separable Gaussian blur with sigma ~ U(sigma_px) pixels."""
    b, c, h, w = x.shape
    apply = torch.rand(b, generator=generator) < prob
    sigma = _uniform(b, sigma_px[0], sigma_px[1], generator).clamp_min(1e-3)
    if not bool(apply.any()) or sigma_px[1] <= 0:
        return x
    radius = max(1, min(int(math.ceil(3 * sigma_px[1])), (min(h, w) - 1) // 2))
    offsets = torch.arange(-radius, radius + 1, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (offsets.view(1, -1) / sigma.view(-1, 1)) ** 2)
    kernel = kernel / kernel.sum(1, keepdim=True)
    identity = (offsets == 0).to(x.dtype).expand(b, -1)
    kernel = torch.where(apply.view(b, 1), kernel, identity)           # (B, k)
    kernel = kernel.repeat_interleave(c, dim=0)                         # (B*C, k)
    flat = x.reshape(1, b * c, h, w)
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="reflect"), kernel.view(b * c, 1, 1, -1), groups=b * c)
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="reflect"), kernel.view(b * c, 1, -1, 1), groups=b * c)
    return flat.view(b, c, h, w)
