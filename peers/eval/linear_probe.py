"""Linear probe: how linearly separable a frozen backbone's features are (the standard SSL evaluation).

`linear_probe(backbone, dataset, mean, std)`:
  1. draws `train_samples` training and `test_samples` test images (a fixed random subset, seeded
     by `seed`, so two models are probed on the same images);
  2. with `recalibrate_bn` (the default), re-estimates every BatchNorm's running mean and variance
     on up to `bn_samples` of those training images ("precise BN", on a copy of the backbone): the
     weights are what is evaluated, and the stored statistics are not comparable across models:
     a random init holds placeholders (0, 1) that its training-mode forward never uses, a swarm
     peer's were estimated locally (buffers travel with the state but are not averaged) on small
     crops, and the coordinator's checkpoints hold one donor's. `recalibrate_bn=False` probes with the
     stored statistics;
  3. extracts the backbone's pooled features of the whole images, in eval mode, without gradients;
  3. standardises each feature with the training subset's mean and std;
  4. fits multinomial logistic regression (weights + bias, L2 penalty `l2`) on the training
     features with full-batch L-BFGS (`max_iter` iterations, strong-Wolfe line search), in float64;
  5. reports the test accuracy (and the training accuracy, to see under/over-fitting).

Deterministic: same model, data, seed -> same accuracy.

    result = linear_probe(model.backbone, load_images(None), mean=[0.286], std=[0.353])
    result["accuracy"]   # e.g. 0.80
"""
from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from peers.data.images import ImageDataset, ImageSplit

logger = logging.getLogger(__name__)

__all__ = ["extract_features", "fit_logistic_regression", "linear_probe", "recalibrate_batchnorm"]


@torch.no_grad()
def extract_features(backbone: torch.nn.Module, split: ImageSplit, indices: Sequence[int], mean: Sequence[float],
                     std: Sequence[float], batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled features (float32, (n, F)) and labels of split[indices], the backbone in eval mode."""
    was_training = backbone.training
    backbone.eval()
    device = next(backbone.parameters()).device
    channels = len(mean)
    m = torch.tensor(list(mean), dtype=torch.float32).view(1, channels, 1, 1)
    s = torch.tensor(list(std), dtype=torch.float32).view(1, channels, 1, 1)
    features, labels = [], []
    indices = list(indices)
    try:
        for start in range(0, len(indices), batch_size):
            images, y = split.load(indices[start:start + batch_size])
            if images.shape[0] == 0:
                continue
            x = (images.float().div_(255) - m) / s
            features.append(backbone(x.to(device)).float().cpu())
            labels.append(y)
    finally:
        backbone.train(was_training)
    if not features:
        raise ValueError("no image could be read for feature extraction")
    return torch.cat(features), torch.cat(labels)


@torch.no_grad()
def recalibrate_batchnorm(backbone: torch.nn.Module, split: ImageSplit, indices: Sequence[int], mean: Sequence[float],
                          std: Sequence[float], batch_size: int = 500) -> int:
    """Reset every BatchNorm's running statistics to their average over split[indices] (in place); returns the count."""
    norms = [m for m in backbone.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return 0
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None   # cumulative average over the batches
    was_training = backbone.training
    backbone.train()
    device = next(backbone.parameters()).device
    channels = len(mean)
    m_ = torch.tensor(list(mean), dtype=torch.float32).view(1, channels, 1, 1)
    s_ = torch.tensor(list(std), dtype=torch.float32).view(1, channels, 1, 1)
    indices = list(indices)
    try:
        for start in range(0, len(indices), batch_size):
            images, _ = split.load(indices[start:start + batch_size])
            if images.shape[0] > 1:
                backbone(((images.float().div_(255) - m_) / s_).to(device))
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        backbone.train(was_training)
    return len(norms)


def fit_logistic_regression(x: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float = 1e-4,
                            max_iter: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights (F, C) and bias (C,) minimising mean cross-entropy + l2/2 ||W||^2, by full-batch L-BFGS in float64."""
    x = x.double()
    weight = torch.zeros(x.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-9, tolerance_change=1e-12)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ weight + bias, y) + 0.5 * l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return weight.detach(), bias.detach()


def _subset(split: ImageSplit, n: int, generator: torch.Generator) -> list[int]:
    order = torch.randperm(len(split), generator=generator)
    return sorted(order[: min(n, len(split))].tolist())


def linear_probe(backbone: torch.nn.Module, dataset: ImageDataset, mean: Sequence[float], std: Sequence[float],
                 train_samples: int = 10_000, test_samples: int = 10_000, seed: int = 0, l2: float = 1e-4,
                 max_iter: int = 200, recalibrate_bn: bool = True, bn_samples: int = 2000) -> dict[str, float]:
    """Test accuracy of logistic regression on frozen features (see the module docstring)."""
    started = time.monotonic()
    generator = torch.Generator().manual_seed(seed)
    train_idx = _subset(dataset.train, train_samples, generator)
    test_idx = _subset(dataset.test, test_samples, generator)
    if recalibrate_bn:
        backbone = copy.deepcopy(backbone)
        recalibrate_batchnorm(backbone, dataset.train, train_idx[:: max(1, len(train_idx) // bn_samples)][:bn_samples], mean, std)
    train_x, train_y = extract_features(backbone, dataset.train, train_idx, mean, std)
    test_x, test_y = extract_features(backbone, dataset.test, test_idx, mean, std)
    center = train_x.mean(0, keepdim=True)
    scale = train_x.std(0, keepdim=True).clamp_min(1e-6)
    train_x, test_x = (train_x - center) / scale, (test_x - center) / scale
    num_classes = max(len(dataset.classes), int(train_y.max()) + 1)
    weight, bias = fit_logistic_regression(train_x, train_y, num_classes, l2=l2, max_iter=max_iter)
    train_acc = float(((train_x.double() @ weight + bias).argmax(1) == train_y).double().mean())
    test_acc = float(((test_x.double() @ weight + bias).argmax(1) == test_y).double().mean())
    seconds = time.monotonic() - started
    logger.info("linear probe: %.4f test accuracy (%.4f train) on %d/%d images, %d features, %.1fs",
                test_acc, train_acc, len(train_y), len(test_y), train_x.shape[1], seconds)
    return {"accuracy": test_acc, "train_accuracy": train_acc, "train_samples": float(len(train_y)),
            "test_samples": float(len(test_y)), "seconds": seconds}
