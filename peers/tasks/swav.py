"""SwAV pretraining (Caron et al. 2020, "Unsupervised Learning of Visual Features by Contrasting Cluster
Assignments"), the vision task DeDLOC trained collaboratively.

Model: a ResNet backbone (peers.models.resnet), a projection MLP (Linear, BatchNorm, ReLU, Linear) to
`feature_dim`, L2 normalisation, and `num_prototypes` prototypes (a bias-free Linear whose rows are
kept on the unit sphere), so scores are cosine similarities z . c_k.

Loss (the swapped prediction problem): each micro-batch of B images becomes V views by multi-crop
(peers.data.augment; 2 large + N small crops). Views of one resolution go through the backbone
together. For each of the two large views s (the "assigned" crops), the codes Q_s are computed from
its scores without gradient by Sinkhorn-Knopp (`sinkhorn`: exp(scores / epsilon), `sinkhorn_iterations`
alternating normalisations so that prototypes are used equally over the batch and each sample's code
sums to 1), optionally over the batch plus a queue of the peer's recent embeddings of that view
(`queue_length`, used from global epoch `queue_start_epoch` once full). Every other view t predicts
Q_s with p_t = softmax(scores_t / temperature); the loss is

    L = 1/2 sum_s 1/(V-1) sum_{t != s} mean_b [ - sum_k Q_s[b, k] log p_t[b, k] ]

Prototypes stay on the unit sphere: the task's optimizer (`make_optimizer`: LARS with biases and
norm parameters excluded from weight decay and adaptation) re-normalises their rows after every step.
This happens inside the optimizer's step, i.e. under the engine's step lock and before the parameter
hash is taken, so every peer, and every state snapshot a newcomer downloads, holds the same
normalised prototypes. For the first `freeze_prototypes_epochs` global epochs the prototypes are
frozen (one global epoch is one optimizer step, SwAV's "iteration"): loss() computes their scores
from a detached copy (no gradient) and the optimizer leaves them untouched (no momentum, no decay). The epoch comes from the `set_epoch` hook, which the peer
daemon calls with the swarm's global epoch, so all peers agree on when prototypes thaw.

Data: Fashion-MNIST by default (1 grey channel, 28 px), an idx folder, or an ImageNet-layout image
folder (peers.data.images; `image_size`, `channels` options). Evaluation: a linear probe on the
backbone's frozen features (peers.eval.linear_probe) over a fixed subset of training and test images.

Determinism: the model is built from `settings.seed`; `batches(w)` draws images and augmentations from
a generator seeded with `settings.seed * 1000003 + w`.

Options (`settings.options`; architecture defaults in `ARCH_DEFAULTS`): arch (or size) = tiny |
resnet18 | resnet50; crops ("2x24+2x12": count x size, large first), crop_scales ([[0.3, 1], [0.08,
0.3]]); num_prototypes; feature_dim; hidden_dim; temperature (0.1); epsilon (0.05);
sinkhorn_iterations (3); freeze_prototypes_epochs; queue_length; queue_start_epoch; trust_coefficient;
weight_decay (1e-6); momentum (0.9); image_size and channels (image folders); probe_bn (recalibrate |
stored: the BatchNorm statistics the linear probe uses); lr is read by the caller.

    task = SwavTask(TaskSettings(micro_batch_size=8))
    model = task.build_model()
    loss, n = task.loss(model, next(task.batches(worker_seed=0)))
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from peers.data.augment import CropSpec, MultiCropConfig, multi_crop
from peers.data.images import ImageDataset, load_images
from peers.models.resnet import ARCHS, build_resnet
from swarm.errors import ConfigError
from swarm.optim.lars import Lars

from .base import Task, TaskSettings

logger = logging.getLogger(__name__)

EVAL_SEED = 20_240_602          # fixes the probe's image subsets, independent of the run's seed
PROBE_IMAGES_PER_BATCH = 500    # evaluate(max_batches=20) probes on 10 000 training and 10 000 test images
PROTOTYPES_FLAG = "_swav_prototypes"
ASSIGNED_VIEWS = (0, 1)         # SwAV computes codes for the two large views (crops_for_assign)

# Per-architecture defaults. tiny is for Fashion-MNIST on CPU and short swarm runs, tuned with the demo's
# lr (0.02) on 15 global epochs of 3 emulated peers (linear-probe accuracy, 3000 test images): trust 0.25 /
# 30 prototypes 0.725, 0.5 / 100 0.759, 1.0 / 100 0.769, 2.0 / 100 0.745, 1.0 / 300 0.745. Its relative
# step per epoch (lr x trust = 0.02) is thus larger than SwAV's ImageNet recipe (lr 4.8 x trust 0.001).
# tiny uses no queue: each peer's queue holds only its own ~1/P share of each global batch, so in a short
# run its embeddings are several epochs stale while features change fast; measured with 3 emulated peers,
# a 384-long queue made the loss climb back from 3.04 to 3.92 (epochs 8-13) and cut the probe by 3 points.
# SwAV too starts its queue late (epoch 15 of 800). ResNet defaults are the paper's.
ARCH_DEFAULTS: dict[str, dict[str, Any]] = {
    "tiny": dict(crops="2x24+2x12", crop_scales=[[0.3, 1.0], [0.08, 0.3]], num_prototypes=100, feature_dim=32,
                 hidden_dim=128, freeze_prototypes_epochs=2, queue_length=0, queue_start_epoch=0,
                 trust_coefficient=1.0),
    "resnet18": dict(crops="2x224+6x96", crop_scales=[[0.14, 1.0], [0.05, 0.14]], num_prototypes=3000, feature_dim=128,
                     hidden_dim=2048, freeze_prototypes_epochs=313, queue_length=0, queue_start_epoch=15,
                     trust_coefficient=0.001),
    "resnet50": dict(crops="2x224+6x96", crop_scales=[[0.14, 1.0], [0.05, 0.14]], num_prototypes=3000, feature_dim=128,
                     hidden_dim=2048, freeze_prototypes_epochs=313, queue_length=0, queue_start_epoch=15,
                     trust_coefficient=0.001),
}
COMMON_DEFAULTS: dict[str, Any] = dict(temperature=0.1, epsilon=0.05, sinkhorn_iterations=3, weight_decay=1e-6, momentum=0.9)
KNOWN_OPTIONS = {"arch", "size", "image_size", "channels", "hidden_dim", "lr", "probe_bn", *ARCH_DEFAULTS["tiny"], *COMMON_DEFAULTS}
_CROPS = re.compile(r"^\s*(\d+)\s*x\s*(\d+)\s*$")


# -- the algorithm's pieces ------------------------------------------------------------------------------------

@torch.no_grad()
def sinkhorn(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """SwAV codes: (N, K) scores -> (N, K) assignment, each row summing to 1, columns to about N / K.

    Q = exp(scores / epsilon), then `iterations` rounds of: rows of Q^T (prototypes) to total 1/K,
    columns (samples) to 1/N; the result is scaled by N (SwAV's `distributed_sinkhorn` on one
    process). Computed in the log domain, so that small epsilons neither overflow nor underflow.
    """
    log_q = scores.t() / epsilon                             # (K, N)
    k, n = log_q.shape
    for _ in range(iterations):
        log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True) - math.log(k)
        log_q = log_q - torch.logsumexp(log_q, dim=0, keepdim=True) - math.log(n)
    return torch.exp(log_q + math.log(n)).t()


def swapped_prediction_loss(scores: list[torch.Tensor], codes: dict[int, torch.Tensor], temperature: float) -> torch.Tensor:
    """SwAV's loss: for each assigned view s (codes[s]), the mean cross-entropy of every other view's
    softmax(scores / temperature) against codes[s], averaged over the other views, then over s."""
    total = scores[0].new_zeros(())
    for s, q in codes.items():
        subloss = scores[0].new_zeros(())
        for t, view_scores in enumerate(scores):
            if t == s:
                continue
            subloss = subloss - (q * F.log_softmax(view_scores / temperature, dim=1)).sum(dim=1).mean()
        total = total + subloss / (len(scores) - 1)
    return total / len(codes)


def parse_crops(spec: Any, scales: Any) -> tuple[CropSpec, ...]:
    """"2x24+2x12" (or [[2, 24], [2, 12]]) plus [[low, high], ...] scales -> CropSpecs; ConfigError if malformed."""
    if isinstance(spec, str):
        parts = []
        for piece in spec.split("+"):
            match = _CROPS.match(piece)
            if not match:
                raise ConfigError(f"swav option crops must look like '2x24+2x12' (count x size), got {spec!r}")
            parts.append((int(match[1]), int(match[2])))
    elif isinstance(spec, (list, tuple)) and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in spec):
        parts = [(int(c), int(s)) for c, s in spec]
    else:
        raise ConfigError(f"swav option crops must look like '2x24+2x12' (count x size), got {spec!r}")
    if not isinstance(scales, (list, tuple)) or len(scales) != len(parts):
        raise ConfigError(f"swav option crop_scales needs one [low, high] pair per crop kind ({len(parts)}), got {scales!r}")
    if parts[0][0] < 2:
        raise ConfigError("swav needs at least 2 large crops (the first kind in crops) to swap assignments")
    try:
        return tuple(CropSpec(size=s, count=c, scale=(float(lo), float(hi))) for (c, s), (lo, hi) in zip(parts, scales))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"bad swav crops {spec!r} / crop_scales {scales!r}: {e}") from None


class SwavModel(nn.Module):
    """Backbone -> projection MLP -> L2-normalised embedding -> prototype scores."""

    def __init__(self, backbone: nn.Module, num_features: int, hidden_dim: int, feature_dim: int, num_prototypes: int):
        super().__init__()
        self.backbone = backbone
        self.projection = nn.Sequential(
            nn.Linear(num_features, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, feature_dim)
        )
        self.prototypes = nn.Linear(feature_dim, num_prototypes, bias=False)
        setattr(self.prototypes.weight, PROTOTYPES_FLAG, True)
        normalize_rows_(self.prototypes.weight)

    def embed(self, views: list[torch.Tensor]) -> torch.Tensor:
        """Normalised embeddings of all views, concatenated in order; views of one resolution share a backbone pass."""
        outputs, start = [], 0
        while start < len(views):
            end = start
            while end < len(views) and views[end].shape[-2:] == views[start].shape[-2:]:
                end += 1
            outputs.append(self.backbone(torch.cat(views[start:end])))
            start = end
        return F.normalize(self.projection(torch.cat(outputs)), dim=1)

    def forward(self, views: list[torch.Tensor], freeze_prototypes: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.embed(views)
        weight = self.prototypes.weight.detach() if freeze_prototypes else self.prototypes.weight
        return z, F.linear(z, weight)


@torch.no_grad()
def normalize_rows_(weight: torch.Tensor) -> None:
    weight.copy_(F.normalize(weight, dim=1))


class SwavOptimizer(Lars):
    """LARS that keeps the prototypes (param groups flagged `prototypes`) on the unit sphere and, while
    `frozen()` is true, leaves them untouched."""

    def __init__(self, params, frozen=lambda: False, **kwargs: Any):
        super().__init__(params, **kwargs)
        self.frozen = frozen

    @torch.no_grad()
    def step(self, closure=None):
        prototypes = [p for g in self.param_groups if g.get("prototypes") for p in g["params"]]
        if not self.frozen():
            loss = super().step(closure)
            for p in prototypes:
                normalize_rows_(p)
            return loss
        stashed = [(p, p.grad) for p in prototypes]
        for p in prototypes:
            p.grad = None
        try:
            return super().step(closure)
        finally:
            for p, grad in stashed:
                p.grad = grad


def _number(options: dict[str, Any], key: str, kind: type, low: float, high: float) -> Any:
    value = options[key]
    try:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError
        number = kind(value)
        if kind is int and float(value) != number:
            raise ValueError
    except ValueError:
        raise ConfigError(f"swav option {key} must be {'an integer' if kind is int else 'a number'}, got {value!r}") from None
    if not low <= number <= high:
        raise ConfigError(f"swav option {key} must be in [{low}, {high}], got {number}")
    return number


class _Queue:
    """The last `length` embeddings of one assigned view (a peer-local FIFO, newest first)."""

    def __init__(self, length: int):
        self.length, self.filled = length, 0
        self.items: torch.Tensor | None = None

    def push(self, z: torch.Tensor) -> None:
        z = z.detach()[: self.length]
        if self.items is None or self.items.shape[1] != z.shape[1]:
            self.items = z.new_zeros(self.length, z.shape[1])
        self.items = torch.cat([z, self.items[: self.length - z.shape[0]]])
        self.filled = min(self.length, self.filled + z.shape[0])

    @property
    def full(self) -> bool:
        return self.length > 0 and self.filled >= self.length


class SwavTask(Task):
    """SwAV self-supervised pretraining of a ResNet on images (see the module docstring)."""

    name = "swav"

    def __init__(self, settings: TaskSettings):
        super().__init__(settings)
        options = dict(settings.options)
        unknown = sorted(set(options) - KNOWN_OPTIONS)
        if unknown:
            logger.warning("swav ignores unknown options: %s", ", ".join(unknown))
        arch = str(options.get("arch", options.get("size", "tiny")))
        if arch not in ARCHS:
            raise ConfigError(f"swav arch must be one of {', '.join(ARCHS)}, got {arch!r}")
        self.arch = arch
        merged = {**COMMON_DEFAULTS, **ARCH_DEFAULTS[arch], **{k: v for k, v in options.items() if k not in ("arch", "size")}}
        self.crops = parse_crops(merged["crops"], merged["crop_scales"])
        self.num_prototypes = _number(merged, "num_prototypes", int, 2, 1_000_000)
        self.feature_dim = _number(merged, "feature_dim", int, 2, 65_536)
        self.hidden_dim = _number(merged, "hidden_dim", int, 2, 65_536)
        self.temperature = _number(merged, "temperature", float, 1e-4, 100.0)
        self.epsilon = _number(merged, "epsilon", float, 1e-4, 100.0)
        self.sinkhorn_iterations = _number(merged, "sinkhorn_iterations", int, 1, 1000)
        self.freeze_prototypes_epochs = _number(merged, "freeze_prototypes_epochs", int, 0, 10**9)
        self.queue_length = _number(merged, "queue_length", int, 0, 10**7)
        self.queue_start_epoch = _number(merged, "queue_start_epoch", int, 0, 10**9)
        self.trust_coefficient = _number(merged, "trust_coefficient", float, 1e-9, 1e3)
        self.weight_decay = _number(merged, "weight_decay", float, 0.0, 1.0)
        self.momentum = _number(merged, "momentum", float, 0.0, 0.999)
        self.image_size = _number(merged, "image_size", int, 8, 4096) if "image_size" in merged else None
        self.channels = _number(merged, "channels", int, 1, 3) if "channels" in merged else None
        self.probe_bn = str(merged.get("probe_bn", "recalibrate"))
        if self.probe_bn not in ("recalibrate", "stored"):
            raise ConfigError(f"swav option probe_bn must be recalibrate or stored, got {self.probe_bn!r}")
        if settings.micro_batch_size < 2:
            raise ConfigError(f"swav needs micro_batch_size >= 2 (BatchNorm and Sinkhorn work across a batch), got {settings.micro_batch_size}")
        self.epoch = 0
        self._queues: list[_Queue] = []

    # -- data, loaded on first use ------------------------------------------------------------------------------
    @cached_property
    def dataset(self) -> ImageDataset:
        # image folders are resized so that the large crops cover most of an image (224 px crops: 256 px images)
        folder_size = max(8, round(self.crops[0].size * 8 / 7))
        return load_images(self.settings.data_path, image_size=self.image_size, channels=self.channels, folder_size=folder_size)

    @cached_property
    def normalization(self) -> tuple[list[float], list[float]]:
        return self.dataset.channel_stats()

    @cached_property
    def augmentation(self) -> MultiCropConfig:
        mean, std = self.normalization
        grey = self.dataset.channels == 1
        return MultiCropConfig(
            crops=self.crops, brightness=0.4 if grey else 0.8, contrast=0.4 if grey else 0.8,
            blur_sigma=(0.1 / 224, 2.0 / 224) if self.dataset.image_size >= 96 else (0.1 / 24, 1.0 / 24),
            mean=tuple(mean), std=tuple(std),
        )

    # -- model --------------------------------------------------------------------------------------------------
    def model_config(self) -> dict[str, Any]:
        """What every peer's model must share."""
        return {"arch": self.arch, "layout": ARCHS[self.arch].as_dict(), "in_channels": self.dataset.channels,
                "hidden_dim": self.hidden_dim, "feature_dim": self.feature_dim, "num_prototypes": self.num_prototypes}

    def training_config(self) -> dict[str, Any]:
        """How every peer must compute its loss and step (a peer with other crops or temperature would pull apart)."""
        return {"crops": [[c.count, c.size, list(c.scale)] for c in self.crops], "temperature": self.temperature,
                "epsilon": self.epsilon, "sinkhorn_iterations": self.sinkhorn_iterations,
                "freeze_prototypes_epochs": self.freeze_prototypes_epochs, "queue_length": self.queue_length,
                "queue_start_epoch": self.queue_start_epoch, "trust_coefficient": self.trust_coefficient,
                "weight_decay": self.weight_decay, "momentum": self.momentum}

    def fingerprint(self) -> dict[str, str]:
        def digest(obj: Any) -> str:
            return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()

        return {"model_config": digest(self.model_config()), "training_config": digest(self.training_config()),
                "data": self.dataset.sha256, "task": self.name}

    def build_model(self) -> SwavModel:
        with torch.random.fork_rng(devices=[]):   # seed the build without touching the caller's RNG
            torch.manual_seed(self.settings.seed)
            backbone = build_resnet(self.arch, in_channels=self.dataset.channels, seed=self.settings.seed, zero_init_residual=False)
            return SwavModel(backbone, backbone.num_features, self.hidden_dim, self.feature_dim, self.num_prototypes)

    def set_epoch(self, epoch: int) -> None:
        """The swarm's global epoch (called by the peer daemon after every step and state download)."""
        self.epoch = int(epoch)

    @property
    def prototypes_frozen(self) -> bool:
        return self.epoch < self.freeze_prototypes_epochs

    def make_optimizer(self, params, lr: float) -> SwavOptimizer:
        """LARS over three groups: adapted weights, excluded biases/norms (ndim <= 1), and the prototypes."""
        params = [p for p in params if p.requires_grad]
        prototypes = [p for p in params if getattr(p, PROTOTYPES_FLAG, False)]
        excluded = [p for p in params if p.ndim <= 1 and not getattr(p, PROTOTYPES_FLAG, False)]
        adapted = [p for p in params if p.ndim > 1 and not getattr(p, PROTOTYPES_FLAG, False)]
        groups = [{"params": adapted, "lars_exclude": False}, {"params": excluded, "lars_exclude": True},
                  {"params": prototypes, "lars_exclude": False, "prototypes": True}]
        return SwavOptimizer([g for g in groups if g["params"]], frozen=lambda: self.prototypes_frozen, lr=lr,
                             momentum=self.momentum, weight_decay=self.weight_decay, trust_coefficient=self.trust_coefficient)

    # -- batches and loss ---------------------------------------------------------------------------------------
    def make_views(self, images: torch.Tensor, generator: torch.Generator) -> list[torch.Tensor]:
        return multi_crop(images, self.augmentation, generator)

    def batches(self, worker_seed: int) -> Iterator[list[torch.Tensor]]:
        """Endless micro-batches: a list of views (large first), each (B, C, size, size)."""
        train = self.dataset.train
        generator = torch.Generator().manual_seed(self.settings.seed * 1000003 + worker_seed)
        size = self.settings.micro_batch_size
        while True:   # one pass per loop, in a fresh order each time
            order = torch.randperm(len(train), generator=generator).tolist()
            for start in range(0, len(order) - size + 1, size):
                images, _ = train.load(order[start:start + size])
                if images.shape[0] >= 2:
                    yield self.make_views(images, generator)

    def loss(self, model: nn.Module, batch: list[torch.Tensor]) -> tuple[torch.Tensor, int]:
        device = next(model.parameters()).device
        views = [v.to(device, non_blocking=True) for v in batch]
        b = views[0].shape[0]
        z, scores = model(views, freeze_prototypes=self.prototypes_frozen)
        per_view = list(scores.split(b))
        codes = {}
        if self.queue_length and not self._queues:
            self._queues = [_Queue(self.queue_length) for _ in ASSIGNED_VIEWS]
        with torch.no_grad():
            prototypes = model.prototypes.weight.detach()
            for s in ASSIGNED_VIEWS:
                out = per_view[s].detach()
                queue = self._queues[s] if self.queue_length else None
                if queue is not None and queue.full and self.epoch >= self.queue_start_epoch:
                    out = torch.cat([queue.items @ prototypes.t(), out])
                codes[s] = sinkhorn(out, self.epsilon, self.sinkhorn_iterations)[-b:]
                if queue is not None:
                    queue.push(z[s * b:(s + 1) * b])
        return swapped_prediction_loss(per_view, codes, self.temperature), b

    # -- evaluation ---------------------------------------------------------------------------------------------
    def evaluate(self, model: nn.Module, max_batches: int = 20) -> dict[str, float]:
        """Linear-probe accuracy of the frozen backbone on max_batches x 500 training and test images
        (BatchNorm statistics re-estimated on the probe's training images unless option probe_bn=stored)."""
        from peers.eval.linear_probe import linear_probe

        images = max(1, max_batches) * PROBE_IMAGES_PER_BATCH
        mean, std = self.normalization
        backbone = model.backbone if isinstance(model, SwavModel) else model
        result = linear_probe(backbone, self.dataset, mean, std, train_samples=images, test_samples=images, seed=EVAL_SEED,
                              recalibrate_bn=self.probe_bn == "recalibrate")
        return {"linear_probe_accuracy": result["accuracy"], "linear_probe_train_accuracy": result["train_accuracy"],
                "train_samples": result["train_samples"], "test_samples": result["test_samples"]}

    def export(self, model: nn.Module, path: Path, fmt: str = "safetensors") -> None:
        """The backbone as `model.safetensors` + `config.json` (arch, layout, channels, input normalization), which
        peers.models.resnet_export.load_resnet loads back into the project's ResNet; the SwAV head is left out."""
        from peers.models.resnet_export import save_resnet

        mean, std = self.normalization
        save_resnet(model.backbone, path, arch=self.arch, in_channels=self.dataset.channels,
                    extra={"task": self.name, "mean": list(mean), "std": list(std)})
        logger.info("exported the swav backbone (%s) to %s", self.arch, path)


__all__ = ["SwavTask", "SwavModel", "SwavOptimizer", "sinkhorn", "swapped_prediction_loss", "parse_crops", "ARCH_DEFAULTS"]
