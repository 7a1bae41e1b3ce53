"""The all-reduce's layout: buckets by codec, parts by share, chunks within parts."""
from __future__ import annotations

import pytest
import torch

from swarm.averaging.layout import TensorLayout, plan_parts
from swarm.compression.codecs import CompressionPolicy

pytestmark = pytest.mark.timeout(30)


def layout(shapes, threshold=100):
    policy = CompressionPolicy(default="fp16", small_tensor_threshold=threshold)
    return TensorLayout.build(shapes, lambda i, n: policy.codec_for(str(i), n))


def test_small_and_large_tensors_go_to_different_buckets():
    lay = layout([(10, 20), (5,), (300,)])
    names = [c.name for c in lay.codecs]
    assert sorted(names) == ["fp16", "none"]
    assert sorted(lay.bucket_sizes) == [5, 500]


def test_flatten_unflatten_round_trip():
    shapes = [(3, 4), (7,), (2, 2, 2), ()]
    lay = layout(shapes, threshold=5)
    tensors = [torch.randn(s) for s in shapes]
    back = lay.unflatten(lay.flatten(tensors))
    for a, b in zip(tensors, back):
        assert torch.equal(a, b)


@pytest.mark.parametrize("shares", [[1.0], [0.5, 0.5], [0.0, 0.7, 0.3], [0.2, 0.2, 0.2, 0.4]])
def test_parts_cover_every_element_exactly_once(shares):
    lay = layout([(1000,), (50,), (333,)])
    parts = plan_parts(lay, shares, chunk_elements=64)
    seen = {b: torch.zeros(size, dtype=torch.int32) for b, size in enumerate(lay.bucket_sizes)}
    for part in parts:
        for c in part:
            assert 0 < c.length <= 64
            seen[c.bucket][c.start : c.start + c.length] += 1
    assert all(bool((v == 1).all()) for v in seen.values())
    for share, part in zip(shares, parts):
        if share == 0:
            assert part == []


def test_schema_hash_depends_on_shapes_and_codecs():
    assert layout([(10,)]).schema_hash() == layout([(10,)]).schema_hash()
    assert layout([(10,)]).schema_hash() != layout([(11,)]).schema_hash()
    assert layout([(200,)], threshold=100).schema_hash() != layout([(200,)], threshold=1000).schema_hash()
