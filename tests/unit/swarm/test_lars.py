"""Lars against a float64 reference written from the paper's rule (You et al. 2017, Algorithm 1)."""

import numpy as np
import pytest
import torch

from swarm.optim import Lars, lars_param_groups
from tests.helpers.optim_checks import assert_deterministic_and_resumable

pytestmark = pytest.mark.timeout(60)


def reference_lars(x, grads, lr, momentum, weight_decay, trust_coefficient, nesterov=False, excluded=False):
    """LARS in float64 numpy, straight from the paper; returns the parameter after each step."""
    x = np.array(x, dtype=np.float64)
    v = np.zeros_like(x)
    history = []
    for g in grads:
        if excluded:
            local_lr, wd = 1.0, 0.0
        else:
            w_norm, g_norm = np.linalg.norm(x), np.linalg.norm(g)
            local_lr = trust_coefficient * w_norm / (g_norm + weight_decay * w_norm) if w_norm > 0 and g_norm > 0 else 1.0
            wd = weight_decay
        update = local_lr * (g + wd * x)
        v = momentum * v + lr * update
        x = x - (momentum * v + lr * update if nesterov else v)
        history.append(x.copy())
    return history


def run_lars(x0, grads, dtype=torch.float64, **kwargs):
    p = torch.nn.Parameter(torch.tensor(x0, dtype=dtype))
    opt = Lars([p], **kwargs)
    history = []
    for g in grads:
        p.grad = torch.tensor(g, dtype=dtype)
        opt.step()
        history.append(p.detach().clone().numpy().astype(np.float64))
    return history


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(lr=0.1, momentum=0.9, weight_decay=1e-6, trust_coefficient=0.001),
        dict(lr=1.0, momentum=0.9, weight_decay=1e-4, trust_coefficient=0.02),
        dict(lr=0.5, momentum=0.0, weight_decay=0.0, trust_coefficient=0.01),
        dict(lr=0.3, momentum=0.8, weight_decay=1e-3, trust_coefficient=0.05, nesterov=True),
    ],
)
def test_matches_reference_float64(kwargs):
    rng = np.random.default_rng(0)
    x0 = rng.normal(size=(5, 3))
    grads = [rng.normal(size=(5, 3)) for _ in range(6)]
    expected = reference_lars(x0, grads, **kwargs)
    got = run_lars(x0, grads, **kwargs)
    for step, (e, g) in enumerate(zip(expected, got)):
        np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-14, err_msg=f"step {step + 1}")


def test_matches_reference_float32():
    rng = np.random.default_rng(1)
    x0 = rng.normal(size=(16, 4))
    grads = [rng.normal(size=(16, 4)) for _ in range(5)]
    kwargs = dict(lr=0.5, momentum=0.9, weight_decay=1e-4, trust_coefficient=0.02)
    expected = reference_lars(x0, grads, **kwargs)
    got = run_lars(x0, grads, dtype=torch.float32, **kwargs)
    np.testing.assert_allclose(got[-1], expected[-1], rtol=1e-5, atol=1e-6)


def test_step_is_proportional_to_weight_norm():
    """The point of LARS: the first step moves a layer by lr * trust * ||w||, whatever the gradient's scale."""
    for scale in (1e-3, 1.0, 1e3):
        x0 = np.full((2, 2), 3.0)
        got = run_lars(x0, [np.full((2, 2), scale)], lr=1.0, momentum=0.9, weight_decay=0.0, trust_coefficient=0.01)
        np.testing.assert_allclose(np.linalg.norm(got[0] - x0), 0.01 * np.linalg.norm(x0), rtol=1e-12)


def test_one_dimensional_tensors_are_excluded_by_default():
    rng = np.random.default_rng(2)
    x0 = rng.normal(size=(7,))
    grads = [rng.normal(size=(7,)) for _ in range(4)]
    kwargs = dict(lr=0.1, momentum=0.9, weight_decay=0.1, trust_coefficient=0.001)
    got = run_lars(x0, grads, **kwargs)
    np.testing.assert_allclose(got, reference_lars(x0, grads, **kwargs, excluded=True), rtol=1e-12)
    # with exclude_1d=False the same tensor is adapted and decayed
    adapted = run_lars(x0, grads, exclude_1d=False, **kwargs)
    np.testing.assert_allclose(adapted, reference_lars(x0, grads, **kwargs), rtol=1e-12)


def test_param_group_flag_wins_over_ndim():
    rng = np.random.default_rng(3)
    w = torch.nn.Parameter(torch.tensor(rng.normal(size=(3, 3))))
    b = torch.nn.Parameter(torch.tensor(rng.normal(size=(3,))))
    opt = Lars([{"params": [w], "lars_exclude": True}, {"params": [b], "lars_exclude": False}], lr=0.1, weight_decay=0.1)
    gw, gb = rng.normal(size=(3, 3)), rng.normal(size=(3,))
    w0, b0 = w.detach().numpy().copy(), b.detach().numpy().copy()
    w.grad, b.grad = torch.tensor(gw), torch.tensor(gb)
    opt.step()
    np.testing.assert_allclose(w.detach().numpy(), reference_lars(w0, [gw], 0.1, 0.9, 0.1, 0.001, excluded=True)[0], rtol=1e-12)
    np.testing.assert_allclose(b.detach().numpy(), reference_lars(b0, [gb], 0.1, 0.9, 0.1, 0.001)[0], rtol=1e-12)


def test_lars_param_groups_split_weights_from_biases_and_norms():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.Linear(4, 2))
    model[3].bias.requires_grad_(False)
    groups = lars_param_groups(model.named_parameters())
    assert [g["lars_exclude"] for g in groups] == [False, True]
    assert [tuple(p.shape) for p in groups[0]["params"]] == [(4, 1, 3, 3), (2, 4)]
    assert [tuple(p.shape) for p in groups[1]["params"]] == [(4,), (4,), (4,)]   # conv bias, bn weight, bn bias


def test_zero_weight_or_gradient_uses_local_lr_one():
    got = run_lars(np.zeros(3), [np.array([1.0, -2.0, 0.5])], lr=0.1, weight_decay=0.0)
    np.testing.assert_allclose(got[0], [-0.1, 0.2, -0.05], rtol=1e-12)
    got = run_lars(np.ones(3), [np.zeros(3), np.zeros(3)], lr=0.1, weight_decay=0.0)
    np.testing.assert_array_equal(got[-1], np.ones(3))


def test_deterministic_and_state_dict_round_trip():
    assert_deterministic_and_resumable(lambda ps: Lars(ps, lr=0.5, trust_coefficient=0.02), (6, 6), seed=9)


def test_skips_params_without_grad():
    a, frozen = torch.nn.Parameter(torch.ones(2, 2)), torch.nn.Parameter(torch.ones(2, 2))
    opt = Lars([a, frozen], lr=0.1)
    a.grad = torch.ones(2, 2)
    opt.step()
    assert torch.equal(frozen, torch.ones(2, 2)) and frozen not in opt.state
    assert torch.all(a < 1)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(lr=-1.0), "lr"),
        (dict(lr=float("inf")), "lr"),
        (dict(momentum=1.0), "momentum"),
        (dict(weight_decay=-1e-6), "weight_decay"),
        (dict(trust_coefficient=0.0), "trust_coefficient"),
        (dict(nesterov=True, momentum=0.0), "nesterov"),
    ],
)
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Lars([torch.nn.Parameter(torch.ones(1))], **kwargs)
