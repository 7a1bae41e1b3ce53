"""The SwAV task: Sinkhorn, the swapped-prediction loss, crops, prototypes (normalised, frozen), options, eval."""
from __future__ import annotations

import gzip
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from peers.data.images import IDX_FILES
from peers.tasks import TaskSettings, get_task
from peers.tasks.swav import SwavOptimizer, SwavTask, parse_crops, sinkhorn, swapped_prediction_loss
from swarm.errors import ConfigError

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """A small Fashion-MNIST look-alike: 28 px grey images of 3 classes (stripes, blobs, noise)."""
    root = tmp_path_factory.mktemp("idx")
    rng = np.random.default_rng(0)
    for split, n in (("train", 96), ("test", 48)):
        labels = np.arange(n) % 3
        images = np.zeros((n, 28, 28))
        images[labels == 0, :, ::4] = 255
        images[labels == 1, 8:20, 8:20] = 255
        images[labels == 2] = rng.integers(0, 256, ((labels == 2).sum(), 28, 28))
        write_idx(root / IDX_FILES[split][0], images)
        write_idx(root / IDX_FILES[split][1], labels)
    return root


def make_task(data_dir: Path, micro_batch_size: int = 4, seed: int = 0, **options) -> SwavTask:
    options = {"num_prototypes": 8, "feature_dim": 8, "hidden_dim": 16, "queue_length": 0, **options}
    task = get_task("swav", TaskSettings(data_path=str(data_dir), micro_batch_size=micro_batch_size, seed=seed, options=options))
    assert isinstance(task, SwavTask)
    return task


# -- Sinkhorn-Knopp and the loss -------------------------------------------------------------------------------

def test_sinkhorn_is_doubly_stochastic():
    scores = torch.nn.functional.normalize(torch.randn(64, 16, generator=torch.Generator().manual_seed(0)), dim=1)
    q = sinkhorn(scores, epsilon=0.05, iterations=100)
    assert q.shape == (64, 16) and (q >= 0).all()
    assert torch.allclose(q.sum(1), torch.ones(64), atol=1e-5)            # each sample's code is a distribution
    assert torch.allclose(q.sum(0), torch.full((16,), 64 / 16), rtol=1e-3)  # prototypes are used equally
    few = sinkhorn(scores, epsilon=0.05, iterations=3)
    assert torch.allclose(few.sum(1), torch.ones(64), atol=1e-5)
    assert (few.sum(0) - 4.0).abs().max() < 2.0                            # 3 iterations: roughly equal


def test_sinkhorn_matches_swav_reference_and_survives_tiny_epsilon():
    scores = torch.rand(10, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2 - 1
    q_ref = torch.exp(scores / 0.5).t()   # SwAV's distributed_sinkhorn, one process
    q_ref /= q_ref.sum()
    for _ in range(3):
        q_ref /= q_ref.sum(dim=1, keepdim=True)
        q_ref /= 6
        q_ref /= q_ref.sum(dim=0, keepdim=True)
        q_ref /= 10
    assert torch.allclose(sinkhorn(scores, 0.5, 3), (q_ref * 10).t(), atol=1e-12)
    sharp = sinkhorn(scores.float(), epsilon=1e-3, iterations=3)   # exp(+-1000) over- or underflows in float32
    assert torch.isfinite(sharp).all() and torch.allclose(sharp.sum(1), torch.ones(10), atol=1e-4)


def test_swapped_prediction_loss_matches_direct_computation():
    g = torch.Generator().manual_seed(2)
    views, b, k, temperature = 4, 3, 5, 0.1
    scores = [torch.rand(b, k, generator=g) * 2 - 1 for _ in range(views)]
    codes = {s: torch.softmax(torch.rand(b, k, generator=g), dim=1) for s in (0, 1)}
    expected = 0.0
    for s in (0, 1):
        for t in range(views):
            if t == s:
                continue
            for i in range(b):
                logits = [float(x) / temperature for x in scores[t][i]]
                log_z = math.log(sum(math.exp(v) for v in logits))
                expected += -sum(float(codes[s][i, j]) * (logits[j] - log_z) for j in range(k)) / b / (views - 1) / 2
    got = swapped_prediction_loss(scores, codes, temperature)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_parse_crops():
    specs = parse_crops("2x24+6x12", [[0.3, 1.0], [0.05, 0.3]])
    assert [(c.count, c.size, c.scale) for c in specs] == [(2, 24, (0.3, 1.0)), (6, 12, (0.05, 0.3))]
    assert parse_crops([[2, 16]], [[0.5, 1]])[0].size == 16
    for bad, scales, match in [("2*24", [[0.3, 1]], "count x size"), ("2x24+2x12", [[0.3, 1]], "one \\[low, high\\]"),
                               ("1x24+2x12", [[0.3, 1], [0.1, 0.3]], "at least 2 large"), ("2x24", [[1.0, 0.3]], "bad swav crops")]:
        with pytest.raises(ConfigError, match=match):
            parse_crops(bad, scales)


# -- the task ------------------------------------------------------------------------------------------------

def test_batches_have_the_configured_crops_and_are_deterministic(data_dir):
    task = make_task(data_dir, micro_batch_size=4, crops="2x20+3x10", crop_scales=[[0.3, 1.0], [0.1, 0.3]])
    batch = next(task.batches(worker_seed=0))
    assert [tuple(v.shape) for v in batch] == [(4, 1, 20, 20)] * 2 + [(4, 1, 10, 10)] * 3
    again = next(task.batches(worker_seed=0))
    other = next(task.batches(worker_seed=1))
    assert all(torch.equal(a, b) for a, b in zip(batch, again))
    assert not all(torch.equal(a, b) for a, b in zip(batch, other))


def test_model_is_deterministic_and_prototypes_are_unit_vectors(data_dir):
    a, b = make_task(data_dir).build_model(), make_task(data_dir).build_model()
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    c = make_task(data_dir, seed=1).build_model()
    assert not torch.equal(a.prototypes.weight, c.prototypes.weight)
    assert torch.allclose(a.prototypes.weight.norm(dim=1), torch.ones(8), atol=1e-6)
    assert a.backbone.in_channels == 1


def test_loss_backward_and_sample_count(data_dir):
    task = make_task(data_dir, freeze_prototypes_epochs=0)
    model = task.build_model()
    loss, n = task.loss(model, next(task.batches(0)))
    assert n == 4 and loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_prototypes_frozen_until_the_global_epoch_then_renormalised(data_dir):
    task = make_task(data_dir, freeze_prototypes_epochs=2)
    model = task.build_model()
    opt = task.make_optimizer(list(model.parameters()), lr=0.5)
    assert isinstance(opt, SwavOptimizer)
    assert [len(g["params"]) for g in opt.param_groups] == [11, 22, 1]   # weights, biases/norms, prototypes
    batches = task.batches(0)
    start = model.prototypes.weight.detach().clone()
    for epoch in range(3):
        task.set_epoch(epoch)
        loss, _ = task.loss(model, next(batches))
        loss.backward()
        if epoch < 2:
            assert model.prototypes.weight.grad is None   # frozen: no gradient reaches them
            model.prototypes.weight.grad = torch.ones_like(start)   # the engine hands every param a gradient
        opt.step()
        opt.zero_grad()
        if epoch < 2:
            assert torch.equal(model.prototypes.weight, start), f"prototypes moved at epoch {epoch}"
            assert model.prototypes.weight not in opt.state
    assert not torch.equal(model.prototypes.weight, start)
    assert torch.allclose(model.prototypes.weight.norm(dim=1), torch.ones(8), atol=1e-6)


def test_a_few_steps_on_one_batch_lower_the_loss(data_dir):
    task = make_task(data_dir, micro_batch_size=16, freeze_prototypes_epochs=0)
    model = task.build_model()
    opt = task.make_optimizer(model.parameters(), lr=0.05)
    batch = next(task.batches(0))
    losses = []
    for epoch in range(8):
        task.set_epoch(epoch)
        torch.manual_seed(0)
        loss, _ = task.loss(model, batch)
        losses.append(float(loss.detach()))
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert losses[-1] < losses[0], losses


def test_queue_joins_sinkhorn_once_full(data_dir):
    task = make_task(data_dir, queue_length=8, queue_start_epoch=0)
    model = task.build_model()
    batches = task.batches(0)
    for _ in range(3):
        loss, _ = task.loss(model, next(batches))
        assert torch.isfinite(loss)
    assert all(q.full for q in task._queues) and task._queues[0].items.shape == (8, 8)


def test_fingerprint_stable_and_sensitive(data_dir):
    base = make_task(data_dir).fingerprint()
    assert base == make_task(data_dir).fingerprint()
    assert set(base) == {"model_config", "training_config", "data", "task"}
    assert make_task(data_dir, num_prototypes=9).fingerprint()["model_config"] != base["model_config"]
    assert make_task(data_dir, temperature=0.2).fingerprint()["training_config"] != base["training_config"]


@pytest.mark.parametrize(
    "options, match",
    [
        ({"arch": "resnet9000"}, "arch must be one of"),
        ({"num_prototypes": "many"}, "num_prototypes must be an integer"),
        ({"temperature": 0}, "temperature must be in"),
        ({"crops": "2x"}, "count x size"),
        ({"queue_length": 1.5}, "queue_length must be an integer"),
    ],
)
def test_bad_options_are_config_errors(data_dir, options, match):
    with pytest.raises(ConfigError, match=match):
        make_task(data_dir, **options)


def test_micro_batch_of_one_is_refused(data_dir):
    with pytest.raises(ConfigError, match="micro_batch_size >= 2"):
        make_task(data_dir, micro_batch_size=1)


def test_size_option_is_an_alias_of_arch(data_dir):
    assert make_task(data_dir, size="resnet18").arch == "resnet18"


def test_evaluate_is_a_linear_probe(data_dir):
    task = make_task(data_dir)
    metrics = task.evaluate(task.build_model(), max_batches=1)
    assert 0.0 <= metrics["linear_probe_accuracy"] <= 1.0
    assert metrics["linear_probe_accuracy"] > 0.5   # the three synthetic classes are easy even for random features
    assert metrics["train_samples"] == 96 and metrics["test_samples"] == 48


def test_image_folder_of_rgb_images(tmp_path):
    image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(10):
            image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(tmp_path / c / f"{i}.png")
    task = get_task("swav", TaskSettings(data_path=str(tmp_path), micro_batch_size=4, options={
        "crops": "2x16+2x8", "crop_scales": [[0.3, 1.0], [0.1, 0.3]], "num_prototypes": 4, "feature_dim": 4, "hidden_dim": 8,
        "freeze_prototypes_epochs": 0}))
    assert task.dataset.channels == 3 and task.dataset.image_size == 18   # 16 px crops: 8/7 of it
    batch = next(task.batches(0))
    assert [tuple(v.shape) for v in batch] == [(4, 3, 16, 16)] * 2 + [(4, 3, 8, 8)] * 2
    model = task.build_model()
    assert model.backbone.in_channels == 3
    loss, n = task.loss(model, batch)
    assert n == 4 and torch.isfinite(loss)
