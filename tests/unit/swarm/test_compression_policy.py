"""Round codecs: fixed per-tensor codecs, and the auto choice from the group's bandwidths and the agreed budget."""
from __future__ import annotations

import pytest
import torch

from swarm.averaging.balancing import MemberLink
from swarm.averaging.group import GroupView
from swarm.averaging.rounds import RoundRequest
from swarm.compression.policy import AutoRoundCodec, FixedRoundCodec, RoundContext, make_round_codec
from swarm.errors import ConfigError
from tests.helpers.fake_swarm import FakeSwarm

pytestmark = pytest.mark.timeout(120)

SHAPES = [(256, 512), (512,)]   # ~131k values: 512 KB in fp32


def _ctx(mbps: float, n: int = 3) -> RoundContext:
    group = GroupView(round_id=bytes(16), peer_ids=tuple(f"p{i}" for i in range(n)), roles=("trainer",) * n, weights=(1.0,) * n,
                      shares=tuple([1.0 / n] * n), my_index=0, timeout=30.0)
    links = [MemberLink(upload_bps=mbps * 1e6 / 8, download_bps=mbps * 1e6 / 8) for _ in range(n)]

    async def phase(layout, local):  # pragma: no cover - choose() never runs a phase
        raise AssertionError

    return RoundContext(group=group, links=links, phase=phase)


def test_fixed_codec_from_layout_matches_the_optimizers_layout():
    codec = make_round_codec(SHAPES, "uniform8bit")
    assert isinstance(codec, FixedRoundCodec)
    again = FixedRoundCodec.from_layout(codec.layout)
    assert again.schema.schema_hash() == codec.schema.schema_hash()
    assert again.name == "uniform8bit"


def test_auto_uses_the_first_candidate_until_a_compute_time_is_agreed_then_follows_the_budget():
    auto = make_round_codec(SHAPES, "auto", rank=4, budget=0.5, compute_seconds=lambda: 1.0)
    assert isinstance(auto, AutoRoundCodec)
    assert auto.choose(_ctx(10))[0] == "fp16"            # nothing agreed yet
    slow = _ctx(1.0)                                     # 1 Mbit/s, 3 trainers: each uploads 4/3 of the vector
    fp16, u8, psgd = (auto.candidates[n].predict(slow) for n in ("fp16", "uniform8bit", "powersgd"))
    assert 2.5 < fp16 < 3.0 and 1.3 < u8 < 1.5 and psgd < 0.2
    auto.agreed_compute_seconds = 10.0                   # budget 5 s: fp16 fits
    assert auto.choose(slow) == ("fp16", fp16)
    auto.agreed_compute_seconds = 4.0                    # budget 2 s: 8-bit is the most precise that fits
    assert auto.choose(slow) == ("uniform8bit", u8)
    auto.agreed_compute_seconds = 1.0                    # budget 0.5 s: only the low-rank factors fit
    assert auto.choose(slow) == ("powersgd", psgd)
    assert auto.choose(_ctx(1000))[0] == "fp16"          # fast links: the precise codec fits again
    assert auto.choose(_ctx(0.001))[0] == "powersgd"     # nothing fits: the fastest


def test_auto_choice_depends_only_on_what_members_share():
    a = make_round_codec(SHAPES, "auto", compute_seconds=lambda: 1.0)
    b = make_round_codec(SHAPES, "auto", compute_seconds=lambda: 999.0)   # local estimates differ...
    a.agreed_compute_seconds = b.agreed_compute_seconds = 2.0             # ...the agreed figure does not
    for mbps in (0.1, 1, 5, 20, 100, 1000):
        assert a.choose(_ctx(mbps)) == b.choose(_ctx(mbps))
    assert a.schema.schema_hash() == b.schema.schema_hash()


def test_auto_round_agrees_on_the_weighted_mean_compute_time_and_reports_its_codec():
    estimates = [2.0, 4.0]
    codecs = [make_round_codec(SHAPES, "auto", compute_seconds=lambda e=e: e) for e in estimates]
    swarm = FakeSwarm(2)
    inputs = [[torch.randn(256, 512), torch.randn(512)] for _ in range(2)]
    try:
        def peer(i, collab):
            result, outcome = collab.submit_round(RoundRequest(0, [1.0, 3.0][i]), codecs[i], inputs[i]).wait()
            result.commit()
            return result, outcome
        (r0, o0), (r1, o1) = swarm.run_peers(peer)
    finally:
        swarm.close()
    assert r0.codec == r1.codec == "fp16" and o0.codec == "fp16"
    assert codecs[0].agreed_compute_seconds == codecs[1].agreed_compute_seconds == pytest.approx(3.5)
    for a, b in zip(r0.tensors, r1.tensors):
        assert torch.equal(a, b)
    state = codecs[0].state_tensors()
    fresh = make_round_codec(SHAPES, "auto")
    fresh.load_state_tensors(state)
    assert fresh.agreed_compute_seconds == pytest.approx(3.5)


def test_auto_refuses_auxiliary_peers_with_one_line():
    auto = make_round_codec(SHAPES, "auto")
    with pytest.raises(ConfigError, match="auxiliary"):
        auto.validate(None)
