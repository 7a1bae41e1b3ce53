"""Codecs over hivemind.compression: error bounds, determinism, and rejecting what a bad peer sends."""

import numpy as np
import pytest
import torch
from hivemind.compression import serialize_torch_tensor
from hivemind.proto import runtime_pb2

from swarm.compression.codecs import CODECS, CompressionPolicy, decode_checked, get_codec
from swarm.errors import ConfigError, ProtocolError

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.filterwarnings("ignore:.*quantize_per_tensor.*:UserWarning"),  # used inside hivemind's uniform8bit
]

ALL = sorted(CODECS)
HIVEMIND = sorted(name for name, codec in CODECS.items() if codec.compression_type >= 0)   # hivemind's protobuf format


def gaussian(n=100_000, seed=0):
    return torch.randn(n, generator=torch.Generator().manual_seed(seed))


def test_registered_codecs():
    # blockwise8bit needs bitsandbytes; uniform4bit, uniform2bit and sparse are wire formats of ours (sparse-topk: the
    # same format, whose reducers keep the top of the average)
    assert set(CODECS) == {"none", "fp16", "uniform8bit", "quantile8bit", "uniform4bit", "uniform2bit", "sparse", "sparse-topk"}
    for name, codec in CODECS.items():
        assert codec.name == name and get_codec(name) is codec


@pytest.mark.parametrize("name", ALL)
def test_round_trip_shape_dtype_and_size(name):
    codec = get_codec(name)
    x = gaussian()
    data = codec.encode(x)
    y = codec.decode(data)
    assert y.dtype == torch.float32 and y.shape == x.shape
    bytes_per_value = {"none": 4, "fp16": 2, "uniform8bit": 1, "quantile8bit": 1, "uniform4bit": 0.625, "uniform2bit": 0.375,
                       "sparse": 2, "sparse-topk": 2}[name]
    assert len(data) == pytest.approx(bytes_per_value * x.numel(), rel=0.02)
    y += 1  # decoded tensors are writable and do not alias the bytes
    assert torch.equal(codec.decode(data) + 1, y)


def test_none_is_exact():
    x = gaussian() * 1e30
    assert torch.equal(get_codec("none").decode(get_codec("none").encode(x)), x)


def test_fp16_error_bound_and_exact_for_representable_values():
    codec = get_codec("fp16")
    x = gaussian() * 100
    y = codec.decode(codec.encode(x))
    assert torch.all((y - x).abs() <= x.abs() * 2**-11 + 2**-24)
    representable = x.to(torch.float16).to(torch.float32)
    assert torch.equal(codec.decode(codec.encode(representable)), representable)
    edge = torch.tensor([0.0, -0.0, 65504.0, -65504.0, 2**-24, 1 / 3], dtype=torch.float16).float()
    assert torch.equal(codec.decode(codec.encode(edge)), edge)
    # beyond the fp16 range hivemind clamps (documented): no inf on the wire
    assert codec.decode(codec.encode(torch.tensor([1e6, -float("inf")]))).tolist() == [65504.0, -65504.0]


def test_uniform8bit_error_bound():
    codec = get_codec("uniform8bit")
    x = torch.rand(100_000, generator=torch.Generator().manual_seed(0)) * 2 - 1  # all within mean +- 3 std
    y = codec.decode(codec.encode(x))
    bin_width = 6 * float(x.std()) / 256
    assert float((y - x).abs().max()) <= bin_width
    x = gaussian()
    y = codec.decode(codec.encode(x))
    assert float((y - x).pow(2).mean().sqrt()) <= 0.03 * float(x.std())  # outliers beyond 3 std cost most


def test_quantile8bit_error_bound():
    codec = get_codec("quantile8bit")
    x = torch.rand(100_000, generator=torch.Generator().manual_seed(0)) * 2 - 1
    y = codec.decode(codec.encode(x))
    assert float((y - x).abs().max()) <= 2 * 2 / 256  # each bin holds ~1/256 of the range
    x = gaussian()
    y = codec.decode(codec.encode(x))
    assert float((y - x).pow(2).mean().sqrt()) <= 0.05 * float(x.std())


@pytest.mark.parametrize("name", ALL)
def test_deterministic_bytes(name):
    codec = get_codec(name)
    x = gaussian(300_000, seed=3)  # several chunks for quantile8bit's parallel quantiles
    first = codec.encode(x)
    assert all(codec.encode(x.clone()) == first for _ in range(3))
    assert torch.equal(codec.decode(first), codec.decode(first))
    assert torch.equal(x, gaussian(300_000, seed=3))  # encode does not modify its input


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("values", [[], [1.5], [3.0] * 7, [-2.0, 0.0, 2.0]])
def test_small_and_degenerate_inputs(name, values):
    codec = get_codec(name)
    x = torch.tensor(values, dtype=torch.float32)
    y = decode_checked(codec, codec.encode(x), len(values))
    # b bits over [-2, 2]: 2**b - 1 steps of 4 / (2**b - 1), and 0 is not a level; error <= half a step
    atol = {"uniform4bit": 2 / 15, "uniform2bit": 2 / 3}.get(name, 0) + 1e-3
    assert torch.allclose(y, x, atol=atol)


@pytest.mark.parametrize("name", ALL)
def test_encode_accepts_float64_and_rejects_bad_shapes(name):
    codec = get_codec(name)
    x = torch.linspace(-1, 1, 1000, dtype=torch.float64)
    assert codec.decode(codec.encode(x)).dtype == torch.float32
    with pytest.raises(ValueError, match="1-D"):
        codec.encode(torch.ones(2, 2))
    with pytest.raises(ValueError, match="floating"):
        codec.encode(torch.ones(3, dtype=torch.int64))


@pytest.mark.parametrize("name", ALL)
def test_decode_checked_rejects_wrong_size(name):
    codec = get_codec(name)
    data = codec.encode(gaussian(1000))
    assert decode_checked(codec, data, 1000).shape == (1000,)
    with pytest.raises(ProtocolError, match="999"):
        decode_checked(codec, data, 999)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize(
    "name, bad",
    [(name, bad) for name in ALL for bad in (float("nan"), float("inf"), float("-inf"))
     if not (name in ("fp16", "sparse", "sparse-topk") and abs(bad) == float("inf"))],
)  # fp16 and sparse clamp +-inf to +-65504 on encode (see test_fp16_error_bound_and_exact_for_representable_values)
def test_decode_checked_rejects_non_finite(name, bad):
    codec = get_codec(name)
    x = gaussian(1000)
    x[17] = bad
    data = codec.encode(x)
    with pytest.raises(ProtocolError, match="non-finite"):
        decode_checked(codec, data, 1000)


def _garbage_messages(name):
    codec = get_codec(name)
    good = codec.encode(gaussian(1000))
    rng = np.random.default_rng(0)
    yield b"\xff" * 64  # not a protobuf message
    yield good[: len(good) // 2]  # truncated
    yield bytes(rng.integers(0, 256, size=4000, dtype=np.uint8))  # random bytes
    other = "fp16" if name != "fp16" else "none"
    yield get_codec(other).encode(gaussian(1000))  # another codec's bytes
    if name not in HIVEMIND:
        return   # our own formats' fields are tampered with in test_blockquant.py and test_sparse.py
    message = runtime_pb2.Tensor()
    message.ParseFromString(good)
    for field, value in (("dtype", "float64"), ("dtype", "int64"), ("size", [10, 100])):
        bad = runtime_pb2.Tensor()
        bad.CopyFrom(message)
        if field == "size":
            del bad.size[:]
            bad.size.extend(value)
        else:
            setattr(bad, field, value)
        yield bad.SerializeToString()
    bad = runtime_pb2.Tensor()
    bad.CopyFrom(message)
    bad.buffer = message.buffer + b"\x00\x00\x00\x00"  # buffer longer than the shape says
    yield bad.SerializeToString()


@pytest.mark.parametrize("name", ALL)
def test_decode_checked_rejects_garbage(name):
    codec = get_codec(name)
    for i, data in enumerate(_garbage_messages(name)):
        with pytest.raises(ProtocolError):
            decode_checked(codec, data, 1000)
            pytest.fail(f"garbage message {i} decoded")


@pytest.mark.parametrize("name", ["uniform8bit", "quantile8bit"])
def test_8bit_rejects_bad_codebook(name):
    codec = get_codec(name)
    message = serialize_torch_tensor(gaussian(100), codec.compression_type)
    k = 4  # a codebook of 4 entries while the indices go up to ~255
    message.buffer = np.int64(k).tobytes() + np.zeros(k, np.float32).tobytes() + message.buffer[8 + 256 * 4 :]
    with pytest.raises(ProtocolError, match="index"):
        codec.decode(message.SerializeToString())
    message.buffer = np.int64(10**6).tobytes() + message.buffer[8:]
    with pytest.raises(ProtocolError, match="codebook"):
        codec.decode(message.SerializeToString())


def test_interoperates_with_hivemind_serialization():
    x = gaussian(5000)
    for name in HIVEMIND:
        codec = CODECS[name]
        message = serialize_torch_tensor(x, codec.compression_type)
        assert torch.equal(codec.decode(message.SerializeToString()), codec.decode(codec.encode(x)))


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("name", ["none", "fp16"])
def test_fast_paths_make_hivemind_s_bytes(name):
    """none and fp16 encode and decode without hivemind's per-call code; the wire must not change."""
    from hivemind.compression import deserialize_torch_tensor

    codec = get_codec(name)
    x = gaussian(5000) * 3e4  # beyond fp16's range in places
    x[1], x[2], x[3] = float("inf"), float("-inf"), float("nan")
    ours = codec.encode(x)
    assert ours == serialize_torch_tensor(x, codec.compression_type).SerializeToString(deterministic=True)
    message = runtime_pb2.Tensor()
    message.ParseFromString(ours)
    theirs = deserialize_torch_tensor(message).float()
    mine = codec.decode(ours)
    assert mine.dtype == torch.float32 and torch.equal(mine.isnan(), theirs.isnan())
    assert torch.equal(mine.nan_to_num(), theirs.nan_to_num())
    mine.add_(1.0)  # decode gives a fresh, writable tensor


def test_unknown_codec_name():
    with pytest.raises(ConfigError) as info:
        get_codec("int4")
    message = str(info.value)
    assert "int4" in message and all(name in message for name in CODECS)
    with pytest.raises(ConfigError):
        get_codec("blockwise8bit")


def test_compression_policy():
    policy = CompressionPolicy()
    assert policy.codec_for("layer.bias", 100).name == "none"
    assert policy.codec_for("layer.weight", 2**14 - 1).name == "none"
    assert policy.codec_for("layer.weight", 2**14).name == "fp16"
    policy = CompressionPolicy(default="uniform8bit", small_tensor_codec="fp16", small_tensor_threshold=10,
                               overrides={"embeddings": "none"})
    assert policy.codec_for("w", 9).name == "fp16"
    assert policy.codec_for("w", 10).name == "uniform8bit"
    assert policy.codec_for("embeddings", 10**6).name == "none"
    for kwargs in (dict(default="zip"), dict(small_tensor_codec="zip"), dict(overrides={"w": "zip"}),
                   dict(small_tensor_threshold=-1)):
        with pytest.raises(ConfigError):
            CompressionPolicy(**kwargs)


@pytest.mark.parametrize("name", ["none", "fp16"])
def test_decode_reads_the_buffer_in_place_and_refuses_tampered_framing(name):
    """decode takes the buffer out of the message without protobuf's copy; the framing it reads by hand is checked."""
    codec = get_codec(name)
    x = gaussian(1000)
    good = codec.encode(x)
    assert good[0] == 0x0A  # the buffer comes first, as hivemind writes it
    assert torch.equal(decode_checked(codec, good, 1000), codec.decode(good))
    length = 1000 * (2 if name == "fp16" else 4)
    header = b"\x0a" + bytes((length & 0x7F | 0x80, length >> 7))
    rest = good[len(header) + length:]
    for bad, why in (
        (b"\x0a" + b"\xff" * 11, "malformed length"),  # a varint longer than protobuf allows
        (b"\x0a\xff\xff\xff\x7f" + good[3:], "overruns"),  # a length past the message's end
        (header + good[len(header):len(header) + length] + rest + b"\x0a\x01\x00", "two buffers"),
    ):
        with pytest.raises(ProtocolError, match=why):
            decode_checked(codec, bad, 1000)


def test_decode_checked_finds_non_finite_values_after_an_overflowing_sum():
    """Finite values whose sum overflows float32 are accepted; the finiteness check does not stop at the sum."""
    codec = get_codec("none")
    x = torch.full((1000,), 3e38)
    assert not torch.isfinite(x.sum())
    assert torch.equal(decode_checked(codec, codec.encode(x), 1000), x)
    x[500] = float("nan")
    with pytest.raises(ProtocolError, match="non-finite"):
        decode_checked(codec, codec.encode(x), 1000)
