"""Checking a CenteredClip result without some of its inputs (swarm.averaging.clip_check): an honest reducer's part
passes whatever inputs are missing and whoever among its senders attacked; a liar's noise and a radius its known
inputs rule out fail; too much missing weight, an unbounded codec or no radius say nothing. Radii in statements
(swarm.averaging.result_statements) are bounded before use."""
from __future__ import annotations

import math
import random

import msgpack
import pytest
import torch

from swarm.averaging.clip_check import check_without, radius_bounds, rounding_bound
from swarm.averaging.result_statements import MAX_RADII, Input, pack_inputs, unpack_inputs, unpack_radii
from swarm.averaging.robust import CenteredClipReduction, _bounded
from swarm.compression.codecs import get_codec

pytestmark = pytest.mark.timeout(120)


def group(seed: int, n: int, d: int = 2000, attackers: int = 0, weights: list[float] | None = None, codec: str = "fp16",
          noise: float = 0.5):
    """n contributions (signal + noise), `attackers` of them replaced by sign flips, 1e30 or 10x noise, reduced as a
    robust reducer does: (decoded rows, weights, result as sent, the reducer's tau, codec)."""
    g = torch.Generator().manual_seed(seed)
    rnd = random.Random(seed)
    signal = torch.randn(d, generator=g)
    rows = [signal + noise * torch.randn(d, generator=g) for _ in range(n)]
    for i in rnd.sample(range(n), attackers):
        kind = rnd.choice(["flip", "huge", "gaussian"])
        rows[i] = -rows[i] if kind == "flip" else torch.full((d,), 1e30) if kind == "huge" else 10 * torch.randn(d, generator=g) * rows[i].norm() / d**0.5
    weights = weights or [1.0] * n
    c = get_codec(codec)
    decoded = [c.decode(c.encode(r)) for r in rows]
    reduction = CenteredClipReduction(d)
    for i, row in enumerate(decoded):
        reduction.add(row, weights[i], sender=i)
    x = reduction.result()
    return decoded, weights, c.decode(c.encode(x)), reduction.tau, c


def split(decoded, weights, hidden):
    return [(decoded[i], weights[i]) for i in range(len(decoded)) if i not in hidden], [weights[i] for i in hidden]


def test_honest_reducers_pass_without_their_own_input_whoever_attacked_and_whatever_the_weights():
    verdicts = {"honest": 0, "lied": 0, "inconclusive": 0}
    for seed in range(120):
        rnd = random.Random(1000 + seed)
        n = rnd.randint(3, 9)
        weights = [float(rnd.choice([1, 2, 3, 16, 5000])) for _ in range(n)]   # sample counts, some inflated
        decoded, weights, sent, tau, c = group(seed, n, attackers=rnd.randint(0, (n - 1) // 2), weights=weights,
                                               codec=rnd.choice(["fp16", "none"]), noise=rnd.choice([0.05, 0.5, 3.0]))
        hidden = {rnd.randrange(n)} | ({rnd.randrange(n)} if rnd.random() < 0.3 else set())
        known, unknown = split(decoded, weights, hidden)
        found = check_without(known, unknown, sent, tau, c.name)
        verdicts[found.verdict] += 1
        assert found.verdict != "lied", (seed, found)
    assert verdicts["honest"] >= 80, verdicts   # the rest: the missing inputs held half the weight


def test_the_radius_a_reducer_uses_lies_within_the_bounds_its_known_inputs_give():
    for seed in range(60):
        rnd = random.Random(seed)
        n = rnd.randint(3, 8)
        decoded, weights, _, tau, _ = group(seed, n, attackers=rnd.randint(0, (n - 1) // 2),
                                            weights=[float(rnd.randint(1, 4)) for _ in range(n)])
        hidden = set(rnd.sample(range(n), rnd.randint(1, 2)))
        bounded = _bounded(weights, 1.5)
        kept = [i for i in range(n) if i not in hidden]
        rows = torch.stack([decoded[i].double() for i in kept])
        low, high = radius_bounds(torch.cdist(rows, rows).tolist(), [bounded[i] for i in kept], [bounded[i] for i in hidden])
        assert low * 0.999 <= tau <= high * 1.001 or math.isinf(high), (seed, low, tau, high)


def test_a_lying_reducers_noise_fails_the_check_without_its_own_input():
    for seed in range(10):
        decoded, weights, _, tau, c = group(seed, 5, attackers=seed % 2)
        red = CenteredClipReduction(decoded[0].numel())
        for i, row in enumerate(decoded):
            red.add(row, weights[i], sender=i)
        x = red.result()
        lie = x + x.norm() / x.numel() ** 0.5 * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))   # the harness's liar
        known, unknown = split(decoded, weights, {0})
        found = check_without(known, unknown, c.decode(c.encode(lie)), tau, c.name)
        assert found.verdict == "lied" and found.ratio > 1.5, found
        assert check_without(known, unknown, c.decode(c.encode(x)), tau, c.name).verdict == "honest"


def test_a_radius_outside_the_bounds_is_a_lie_and_room_bought_with_it_is_refused():
    decoded, weights, sent, tau, c = group(3, 6, attackers=1)
    known, unknown = split(decoded, weights, {2})
    for claimed in (0.0, tau / 3, tau * 3, math.inf, math.nan, -1.0):
        found = check_without(known, unknown, sent, claimed, c.name)
        assert found.verdict == "lied" and math.isinf(found.ratio), (claimed, found)


def test_missing_inputs_with_half_the_weight_an_unbounded_codec_or_an_empty_known_set_say_nothing():
    decoded, weights, sent, tau, c = group(4, 4)
    known, unknown = split(decoded, weights, {0, 1})
    assert check_without(known, unknown, sent, tau, c.name).verdict == "inconclusive"
    known, unknown = split(decoded, weights, {0})
    assert check_without(known, unknown, sent, tau, "uniform8bit").verdict == "inconclusive"
    assert check_without(known, unknown, sent, tau, c.name).verdict == "honest"
    assert check_without([], [1.0], sent, tau, c.name).verdict == "inconclusive"


def test_the_fp16_rounding_bound_holds_and_saturated_values_have_none():
    g = torch.Generator().manual_seed(0)
    fp16 = get_codec("fp16")
    for scale in (1e-8, 1e-3, 1.0, 1e3):
        x = scale * torch.randn(10000, generator=g)
        sent = fp16.decode(fp16.encode(x))
        bound = rounding_bound("fp16", sent)
        assert float((x - sent).norm()) <= bound <= 4 * float((x - sent).norm()) + 100 * 2.0**-25, (scale, bound)   # tight, not vacuous
    assert rounding_bound("none", x) == 0.0
    assert rounding_bound("fp16", fp16.decode(fp16.encode(torch.full((4,), 1e6)))) is None
    assert rounding_bound("uniform4bit", x) is None


def test_radii_in_a_statements_inputs_round_trip_and_malformed_ones_are_refused():
    inputs = [Input(0, 3, bytes(32)), Input(2, 1, b"\x01" * 32)]
    packed = pack_inputs(bytes(32), inputs, [0.5, 1.25, 3.0])
    assert unpack_inputs(packed) == (bytes(32), inputs)
    assert unpack_radii(packed) == [0.5, 1.25, 3.0]
    assert unpack_radii(pack_inputs(bytes(32), inputs)) is None     # a plain mean's statement: none
    for bad in (b"\x00" * 6, b"", b"\x00" * (4 * MAX_RADII + 4), "text", 12):
        data = msgpack.packb([bytes(32), [[0, 3, bytes(32)]], bad])
        assert unpack_radii(data) is None and unpack_inputs(data) is None, bad
    assert unpack_inputs(msgpack.packb([bytes(32), [], b"\x00" * 4, b"extra"])) is None
