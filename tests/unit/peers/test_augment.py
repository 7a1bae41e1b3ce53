"""Multi-crop augmentation: shapes, determinism, and what each transform does."""
from __future__ import annotations

import pytest
import torch

from peers.data.augment import CropSpec, MultiCropConfig, color_jitter, gaussian_blur, multi_crop, random_resized_crop

pytestmark = pytest.mark.timeout(30)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("channels, crops", [(1, "2x24+2x12"), (3, "2x32+6x16"), (3, "2x20")])
def test_views_have_the_configured_shapes_in_order(channels, crops):
    specs = tuple(CropSpec(int(s), int(c), (0.3, 1.0)) for c, s in (p.split("x") for p in crops.split("+")))
    config = MultiCropConfig(crops=specs, mean=(0.5,) * channels, std=(0.25,) * channels)
    images = torch.randint(0, 256, (5, channels, 28, 28), dtype=torch.uint8)
    views = multi_crop(images, config, gen())
    assert len(views) == config.num_views
    assert [tuple(v.shape) for v in views] == [(5, channels, s, s) for s in config.sizes()]
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in views)


def test_same_generator_state_gives_identical_views():
    config = MultiCropConfig(crops=(CropSpec(16, 2, (0.2, 1.0)), CropSpec(8, 3, (0.05, 0.2))))
    images = torch.randint(0, 256, (4, 3, 24, 24), dtype=torch.uint8)
    a, b, c = (multi_crop(images, config, gen(s)) for s in (7, 7, 8))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def test_full_scale_crop_without_flip_is_the_image():
    x = torch.rand(3, 1, 12, 12)
    out = random_resized_crop(x, 12, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=0.0, generator=gen())
    assert torch.allclose(out, x, atol=1e-5)
    flipped = random_resized_crop(x, 12, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=1.0, generator=gen())
    assert torch.allclose(flipped, x.flip(-1), atol=1e-5)


def test_small_crops_cover_a_small_region():
    x = torch.zeros(64, 1, 32, 32)
    x[:, :, :16] = 1.0   # top half white
    out = random_resized_crop(x, 8, scale=(0.05, 0.05), ratio=(1.0, 1.0), flip=0.0, generator=gen())
    means = out.mean(dim=(1, 2, 3))
    assert ((means < 0.05) | (means > 0.95)).float().mean() > 0.6   # most small crops lie within one half


def test_jitter_and_blur_are_identity_with_probability_zero():
    x = torch.rand(4, 3, 10, 10)
    config = MultiCropConfig(crops=(CropSpec(10, 2, (1.0, 1.0)),), jitter_prob=0.0, grayscale_prob=0.0)
    assert torch.allclose(color_jitter(x, config, gen()), x, atol=1e-6)
    assert torch.equal(gaussian_blur(x, 0.0, (0.5, 1.0), gen()), x)


def test_blur_preserves_mean_and_smooths():
    x = torch.zeros(2, 1, 15, 15)
    x[:, :, 7, 7] = 1.0
    out = gaussian_blur(x, 1.0, (1.0, 1.0), gen())
    assert torch.allclose(out.sum(dim=(2, 3)), torch.ones(2, 1), atol=1e-5)
    assert out[0, 0, 7, 7] < 0.5 and out[0, 0, 7, 8] > 0


def test_grey_jitter_changes_brightness_and_contrast_only_within_range():
    x = torch.full((32, 1, 6, 6), 0.5)
    config = MultiCropConfig(crops=(CropSpec(6, 2, (1.0, 1.0)),), jitter_prob=1.0, brightness=0.4, contrast=0.4)
    out = color_jitter(x, config, gen())
    assert out.shape == x.shape and (out >= 0.5 * 0.6 - 1e-6).all() and (out <= 0.5 * 1.4 + 1e-6).all()
    assert out.std() > 0.01


def test_bad_crop_specs_are_rejected():
    with pytest.raises(ValueError):
        CropSpec(0, 2, (0.1, 1.0))
    with pytest.raises(ValueError):
        CropSpec(8, 2, (0.5, 0.1))
    with pytest.raises(ValueError, match="normalisation"):
        multi_crop(torch.zeros(1, 3, 8, 8), MultiCropConfig(crops=(CropSpec(4, 2, (0.5, 1.0)),), mean=(0.1, 0.2)), gen())
