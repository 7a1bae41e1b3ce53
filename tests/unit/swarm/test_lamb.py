"""Lamb against a float64 reference written from the paper's formulas (You et al. 2019, Algorithm 2)."""

import numpy as np
import pytest
import torch

from swarm.optim import Lamb
from tests.helpers.optim_checks import assert_deterministic_and_resumable

pytestmark = pytest.mark.timeout(60)


def reference_lamb(x, grads, lr, betas, eps, weight_decay, clamp_value, bias_correction=True):
    """LAMB in float64 numpy, straight from the paper; returns the parameter after each step."""
    beta1, beta2 = betas
    x = np.array(x, dtype=np.float64)
    m = np.zeros_like(x)
    v = np.zeros_like(x)
    history = []
    for t, g in enumerate(grads, start=1):
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        m_hat = m / (1 - beta1**t) if bias_correction else m
        v_hat = v / (1 - beta2**t) if bias_correction else v
        r = m_hat / (np.sqrt(v_hat) + eps) + weight_decay * x
        x_norm, r_norm = np.linalg.norm(x), np.linalg.norm(r)
        trust = min(max(x_norm, 0.0), clamp_value) / r_norm if x_norm > 0 and r_norm > 0 else 1.0
        x = x - lr * trust * r
        history.append(x.copy())
    return history


def run_lamb(x0, grads, dtype=torch.float64, **kwargs):
    p = torch.nn.Parameter(torch.tensor(x0, dtype=dtype))
    opt = Lamb([p], **kwargs)
    history = []
    for g in grads:
        p.grad = torch.tensor(g, dtype=dtype)
        opt.step()
        history.append(p.detach().clone().numpy().astype(np.float64))
    return history


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0, clamp_value=10.0),
        dict(lr=5e-2, betas=(0.8, 0.99), eps=1e-8, weight_decay=0.1, clamp_value=10.0),
        dict(lr=1e-1, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01, clamp_value=0.5),  # phi clamps ||x||
        dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01, clamp_value=10.0, bias_correction=False),
    ],
)
def test_matches_reference_float64(kwargs):
    rng = np.random.default_rng(0)
    x0 = rng.normal(size=(5, 3))
    grads = [rng.normal(size=(5, 3)) for _ in range(6)]
    expected = reference_lamb(x0, grads, **kwargs)
    got = run_lamb(x0, grads, **kwargs)
    for step, (e, g) in enumerate(zip(expected, got)):
        np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-14, err_msg=f"step {step + 1}")


def test_matches_reference_float32():
    rng = np.random.default_rng(1)
    x0 = rng.normal(size=(64,))
    grads = [rng.normal(size=(64,)) for _ in range(5)]
    kwargs = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01, clamp_value=10.0)
    expected = reference_lamb(x0, grads, **kwargs)
    got = run_lamb(x0, grads, dtype=torch.float32, **kwargs)
    np.testing.assert_allclose(got[-1], expected[-1], rtol=1e-5, atol=1e-6)


def test_zero_norm_parameter_uses_trust_ratio_one():
    grads = [np.array([1.0, -2.0, 0.5])]
    got = run_lamb(np.zeros(3), grads, lr=0.1)
    # step 1 with bias correction: r = g / (|g| + eps) = sign(g) (up to eps); trust ratio 1
    np.testing.assert_allclose(got[0], -0.1 * np.sign(grads[0]), rtol=1e-5)
    expected = reference_lamb(np.zeros(3), grads, 0.1, (0.9, 0.999), 1e-6, 0.0, 10.0)
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-12)


def test_zero_update_norm_leaves_parameter_finite():
    got = run_lamb(np.ones(4), [np.zeros(4), np.zeros(4)], lr=0.1)
    np.testing.assert_array_equal(got[-1], np.ones(4))


def test_weight_decay_shrinks_weights_without_gradient_signal():
    x0 = np.full(4, 2.0)
    got = run_lamb(x0, [np.zeros(4)] * 3, lr=0.1, weight_decay=0.5)
    expected = reference_lamb(x0, [np.zeros(4)] * 3, 0.1, (0.9, 0.999), 1e-6, 0.5, 10.0)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert np.all(np.abs(got[-1]) < np.abs(x0))


def test_layerwise_trust_ratio_and_skips_params_without_grad():
    a = torch.nn.Parameter(torch.full((3,), 100.0, dtype=torch.float64))  # ||a|| > clamp_value
    b = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    frozen = torch.nn.Parameter(torch.ones(2, dtype=torch.float64))
    opt = Lamb([{"params": [a, frozen]}, {"params": [b], "lr": 0.5}], lr=0.1)
    a.grad = torch.ones(3, dtype=torch.float64)
    b.grad = torch.ones(3, dtype=torch.float64)
    opt.step()
    r_norm = np.sqrt(3.0) / (1 + 1e-6)
    assert torch.allclose(a, torch.full((3,), 100.0 - 0.1 * 10.0 / r_norm / (1 + 1e-6), dtype=torch.float64))
    assert torch.allclose(b, torch.full((3,), 1.0 - 0.5 * np.sqrt(3.0) / r_norm / (1 + 1e-6), dtype=torch.float64))
    assert torch.equal(frozen, torch.ones(2, dtype=torch.float64))
    assert frozen not in opt.state


def test_deterministic_and_state_dict_round_trip():
    assert_deterministic_and_resumable(lambda ps: Lamb(ps, lr=0.01, weight_decay=0.01), (10, 10))


def test_closure_returns_loss():
    p = torch.nn.Parameter(torch.ones(2))
    opt = Lamb([p])

    def closure():
        opt.zero_grad()
        loss = (p**2).sum()
        loss.backward()
        return loss

    assert opt.step(closure).item() == pytest.approx(2.0)
    assert torch.all(p < 1)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(lr=-1.0), "lr"),
        (dict(lr=float("nan")), "lr"),
        (dict(betas=(1.0, 0.999)), "betas\\[0\\]"),
        (dict(betas=(0.9, -0.1)), "betas\\[1\\]"),
        (dict(eps=0.0), "eps"),
        (dict(weight_decay=-0.1), "weight_decay"),
        (dict(clamp_value=0.0), "clamp_value"),
        (dict(bias_correction="yes"), "bias_correction"),
    ],
)
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Lamb([torch.nn.Parameter(torch.ones(1))], **kwargs)


def test_sparse_gradient_rejected():
    p = torch.nn.Parameter(torch.ones(3))
    opt = Lamb([p])
    p.grad = torch.ones(3).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()
