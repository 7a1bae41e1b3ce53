"""Learning-rate schedules keyed on the global epoch, and apply_lr."""

import math

import pytest
import torch

from swarm.optim.schedule import apply_lr, warmup_cosine, warmup_linear_decay

pytestmark = pytest.mark.timeout(60)


def test_linear_warmup_then_decay():
    s = warmup_linear_decay(warmup_epochs=4, total_epochs=14, min_ratio=0.1)
    assert [s(e) for e in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert s(4) == pytest.approx(1.0)
    assert s(9) == pytest.approx(0.1 + 0.9 * 0.5)
    assert s(14) == pytest.approx(0.1)
    assert s(10_000) == pytest.approx(0.1)
    values = [s(e) for e in range(4, 20)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_cosine_warmup_then_decay():
    s = warmup_cosine(warmup_epochs=2, total_epochs=12)
    assert s(0) == pytest.approx(0.5) and s(1) == pytest.approx(1.0) and s(2) == pytest.approx(1.0)
    assert s(7) == pytest.approx(0.5)
    assert s(4) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.2)))
    assert s(12) == pytest.approx(0.0, abs=1e-12) and s(50) == pytest.approx(0.0, abs=1e-12)
    assert warmup_cosine(0, 10, min_ratio=0.2)(10) == pytest.approx(0.2)


def test_no_warmup_starts_at_one():
    assert warmup_linear_decay(0, 10)(0) == 1.0
    assert warmup_cosine(0, 10)(0) == 1.0


def test_first_warmup_step_is_small_but_not_zero():
    s = warmup_linear_decay(1000, 10_000)
    assert 0 < s(0) <= 1e-3


@pytest.mark.parametrize("factory", [warmup_linear_decay, warmup_cosine])
@pytest.mark.parametrize("args", [(-1, 10), (10, 10), (5, 3), (1, 10, 1.5), (1, 10, -0.1), (1.5, 10)])
def test_invalid_arguments(factory, args):
    with pytest.raises(ValueError):
        factory(*args)


def test_negative_epoch_rejected():
    with pytest.raises(ValueError, match="epoch"):
        warmup_linear_decay(2, 10)(-1)


def test_apply_lr_sets_every_group():
    a, b = torch.nn.Parameter(torch.ones(1)), torch.nn.Parameter(torch.ones(1))
    opt = torch.optim.SGD([{"params": [a]}, {"params": [b], "lr": 5.0}], lr=1.0)
    apply_lr(opt, 0.1, 0.5)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.05, 0.05])
    apply_lr(opt, [0.1, 1.0], warmup_linear_decay(4, 8)(1))
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.05, 0.5])
    with pytest.raises(ValueError):
        apply_lr(opt, [0.1], 1.0)
    with pytest.raises(ValueError):
        apply_lr(opt, 0.1, float("nan"))
