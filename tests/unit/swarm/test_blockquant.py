"""uniform4bit / uniform2bit (swarm.compression.blockquant): bytes per value, error bounds on gaussian and gradient-like
tensors, determinism, and rejecting whatever a bad peer sends."""
from __future__ import annotations

import struct

import numpy as np
import pytest
import torch

from swarm.compression import blockquant
from swarm.compression.codecs import decode_checked, get_codec
from swarm.errors import ProtocolError

pytestmark = pytest.mark.timeout(60)

BLOCK = 64


def gaussian(n=2**16, seed=0):
    return torch.randn(n, generator=torch.Generator().manual_seed(seed))


def pseudo_gradient(seed=0, steps=10):
    """A DiLoCo pseudo-gradient (start - parameters after AdamW steps) of a small MLP, flattened."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(128, 128), torch.nn.GELU(), torch.nn.Linear(128, 32))
    start = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed + 1)
    for _ in range(steps):
        x, y = torch.randn(16, 128, generator=gen), torch.randn(16, 32, generator=gen)
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        opt.zero_grad()
    return torch.cat([(s - p.detach()).reshape(-1) for s, p in zip(start, model.parameters())])


def gradient(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(128, 128), torch.nn.GELU(), torch.nn.Linear(128, 32))
    gen = torch.Generator().manual_seed(seed + 1)
    torch.nn.functional.mse_loss(model(torch.randn(16, 128, generator=gen)), torch.randn(16, 32, generator=gen)).backward()
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


@pytest.mark.parametrize("name, bits, bytes_per_value", [("uniform4bit", 4, 0.625), ("uniform2bit", 2, 0.375)])
@pytest.mark.parametrize("numel", [0, 1, 63, 64, 65, 1000, 2**16])
def test_bytes_are_exactly_the_documented_size(name, bits, bytes_per_value, numel):
    codec = get_codec(name)
    data = codec.encode(gaussian(numel))
    blocks = -(-numel // BLOCK)
    assert len(data) == 16 + 8 * blocks + -(-numel * bits // 8) == codec.payload_bytes(numel)
    if numel == 2**16:
        assert len(data) / numel == pytest.approx(bytes_per_value, abs=1e-3)


@pytest.mark.parametrize("name, levels", [("uniform4bit", 15), ("uniform2bit", 3)])
@pytest.mark.parametrize("make", [gaussian, pseudo_gradient, gradient])
def test_error_is_at_most_half_a_step_of_each_block(name, levels, make):
    codec = get_codec(name)
    x = make()
    y = decode_checked(codec, codec.encode(x), x.numel())
    n = x.numel() // BLOCK * BLOCK
    rows_x, rows_err = x[:n].view(-1, BLOCK), (y - x)[:n].view(-1, BLOCK)
    half_step = (rows_x.amax(1) - rows_x.amin(1)) / levels / 2
    assert bool((rows_err.abs() <= half_step[:, None] * (1 + 1e-5) + 1e-7).all())


@pytest.mark.parametrize("name, bound", [("uniform4bit", 0.10), ("uniform2bit", 0.48)])
@pytest.mark.parametrize("make", [gaussian, pseudo_gradient, gradient])
def test_relative_error_on_gaussian_and_gradient_like_tensors(name, bound, make):
    """The module docstring's table: about 0.09 (4 bits) and 0.45 (2 bits), measured by ||x - decoded|| / ||x||."""
    codec = get_codec(name)
    x = make()
    y = codec.decode(codec.encode(x))
    assert float((y - x).norm() / x.norm()) <= bound


def test_an_outlier_costs_precision_only_in_its_own_block():
    codec = get_codec("uniform4bit")
    x = gaussian(4 * BLOCK)
    clean_error = (codec.decode(codec.encode(x)) - x).abs()
    x[5] = 1e4
    error = (codec.decode(codec.encode(x)) - x).abs()
    assert torch.equal(error[BLOCK:], clean_error[BLOCK:])
    assert float(error[:BLOCK].max()) > 10 * float(clean_error[:BLOCK].max())   # the others collapse onto the minimum


@pytest.mark.parametrize("name", ["uniform4bit", "uniform2bit"])
def test_constant_blocks_and_extremes_are_exact(name):
    codec = get_codec(name)
    x = torch.cat([torch.full((BLOCK,), 3.25), torch.tensor([-3e38, 3e38] * (BLOCK // 2)), torch.full((5,), -1.0)])
    y = decode_checked(codec, codec.encode(x), x.numel())
    assert torch.equal(y[:BLOCK], x[:BLOCK]) and torch.equal(y[-5:], x[-5:])   # constant (and partial) blocks
    torch.testing.assert_close(y[BLOCK:2 * BLOCK], x[BLOCK:2 * BLOCK], rtol=1e-6, atol=0)   # no overflow anywhere


@pytest.mark.parametrize("name", ["uniform4bit", "uniform2bit"])
def test_deterministic_bytes(name):
    codec = get_codec(name)
    x = pseudo_gradient()
    assert codec.encode(x) == codec.encode(x.clone()) == codec.encode(x.double())


def _tamper(data: bytes, offset: int, fmt: str, value) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


@pytest.mark.parametrize("name", ["uniform4bit", "uniform2bit"])
def test_decode_rejects_bad_messages_in_one_line(name):
    codec = get_codec(name)
    other = get_codec("uniform2bit" if name == "uniform4bit" else "uniform4bit")
    x = gaussian(1001)
    good = codec.encode(x)
    blocks = -(-1001 // BLOCK)
    bad = {
        "short": good[:10],
        "truncated": good[:-1],
        "extended": good + b"\x00",
        "magic": b"XXX" + good[3:],
        "other codec": other.encode(x),
        "block size": _tamper(good, 4, "<I", 32),
        "count": _tamper(good, 8, "<Q", 1002),
        "huge count": _tamper(good, 8, "<Q", 2**60),
        "nan minimum": _tamper(good, 16, "<f", float("nan")),
        "negative step": _tamper(good, 16 + 4 * blocks, "<f", -1.0),
        "infinite step": _tamper(good, 16 + 4 * blocks, "<f", float("inf")),
        "padding bits": good[:-1] + bytes([good[-1] | 0xF0 if name == "uniform4bit" else good[-1] | 0xC0]),
    }
    for what, data in bad.items():
        with pytest.raises(ProtocolError) as info:
            decode_checked(codec, data, 1001)
        assert "\n" not in str(info.value) and str(info.value).startswith(name), what
    with pytest.raises(ProtocolError, match="expected 1000"):   # a claimed count is checked before anything is built
        decode_checked(codec, good, 1000)


def test_step_overflowing_on_decode_is_rejected_as_non_finite():
    codec = get_codec("uniform4bit")
    data = _tamper(codec.encode(gaussian(BLOCK)), 20, "<f", 3e38)   # 15 x 3e38 is inf
    with pytest.raises(ProtocolError, match="non-finite"):
        decode_checked(codec, data, BLOCK)


def test_index_packing_round_trips_lowest_bits_first():
    idx = np.array([1, 2, 3, 0, 3], dtype=np.uint8)
    packed = blockquant.pack_indices(idx, 2)
    assert packed == bytes([1 | 2 << 2 | 3 << 4, 3])
    assert blockquant.unpack_indices(packed, 2, 5, "t").tolist() == idx.tolist()
    with pytest.raises(ValueError):
        blockquant.encode(gaussian(10), 3, BLOCK)


def test_diloco_outer_codec_sends_large_pseudo_gradients_in_4_bits():
    from swarm.compression.policy import FixedRoundCodec
    from swarm.optim.core import CollaborativeOptimizer
    from tests.helpers.fake_swarm import FakeSwarm

    model = torch.nn.Sequential(torch.nn.Linear(256, 128), torch.nn.Linear(128, 4))
    swarm = FakeSwarm(1)
    try:
        opt = CollaborativeOptimizer(swarm.collabs[0], model.parameters(), torch.optim.AdamW, lr=0.01, mode="diloco",
                                     codec="uniform4bit")
    finally:
        swarm.close()
    assert isinstance(opt.codec, FixedRoundCodec)
    by_codec = {c.name: bucket for c, bucket in zip(opt.codec.schema.codecs, opt.codec.schema.buckets)}
    assert by_codec == {"uniform4bit": (0,), "none": (1, 2, 3)}    # 256 x 128 weights; small tensors stay exact
