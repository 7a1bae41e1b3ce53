"""Robust rounds over real P2P streams: CenteredClip at every reducer, a faulty member among honest ones.

A member that sends finite 1e30, sign-flipped or 10x-norm noise values (or claims 1000x the samples) leaves the
honest members' result near the honest mean, every member holds bitwise-identical bytes, and its contributions
are clipped hard (a strike, swarm.averaging.robust.StrikeBook); a struck-out sender is ignored from the start.
The faulty member is a subclass of the round (`_outgoing`), as in test_allreduce.py.
"""
from __future__ import annotations

import asyncio
import functools

import pytest
import torch

from peers.attack.byzantine import byzantine_round_class
from swarm.averaging.allreduce import AllReduceRound
from swarm.averaging.robust import HARD_CLIP, CenteredClipReduction, StrikeBook
from tests.integration.test_allreduce import SHAPES, make_layout, run_round, shutdown, start_members

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ATTACKER = 1
ROLES, SHARES = ["trainer"] * 4, [0.4, 0.0, 0.3, 0.3]   # the attacker reduces no part: a lying reducer is another attack


def correlated_values(n: int, seed: int = 0) -> list[list[torch.Tensor]]:
    """Gradients of one model on different batches: a common direction plus per-member noise."""
    g = torch.Generator().manual_seed(seed)
    base = [torch.randn(s, generator=g) for s in SHAPES]
    return [[b + 0.3 * torch.randn(b.shape, generator=g) for b in base] for _ in range(n)]


class Corrupt(AllReduceRound):
    """Sends `attack(values)` instead of its values for every chunk of another member's part."""

    attack = staticmethod(lambda values: values)

    def _outgoing(self, chunk):
        return self.attack(super()._outgoing(chunk))


def _gaussian(values: torch.Tensor) -> torch.Tensor:
    scale = 10 * float(values.norm()) / max(values.numel(), 1) ** 0.5
    return scale * torch.randn(values.shape, generator=torch.Generator().manual_seed(values.numel()))


ATTACKS = {
    "huge": lambda v: torch.full_like(v, 1e30),
    "sign_flip": lambda v: -v,
    "gaussian": _gaussian,
    "inflated_weight": lambda v: -v,   # with 1000x the others' weight in the group (below)
}


def flat(layout, tensors):
    return torch.cat([t.reshape(-1) for t in layout.flatten(tensors)])


@functools.cache
def _class_for(kind: str) -> type[AllReduceRound]:
    return type(f"Corrupt_{kind}", (Corrupt,), {"attack": staticmethod(ATTACKS[kind])})


class Robust(AllReduceRound):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, reduction=CenteredClipReduction, **kwargs)


class RobustCorrupt(Robust):
    kind = "huge"

    def _outgoing(self, chunk):
        return ATTACKS[self.kind](super()._outgoing(chunk))


@pytest.mark.parametrize("kind", list(ATTACKS))
def test_one_attacker_leaves_the_honest_result_near_the_honest_mean_and_is_struck(kind):
    async def main():
        members, services = await start_members(4)
        try:
            layout = make_layout("none")   # a lossless codec: 1e30 reaches the reducers (fp16 would make it inf)
            values = correlated_values(4, seed=3)
            weights = [1.0, 1000.0 if kind == "inflated_weight" else 1.0, 1.0, 1.0]
            attacker = type("Attacker", (RobustCorrupt,), {"kind": kind})
            classes = [Robust, attacker, Robust, Robust]
            rounds, results = await run_round(members, services, ROLES, weights, SHARES, values, layout, round_class=classes)
            assert not any(isinstance(r, BaseException) for r in results), results
            for other in results[1:]:
                assert all(torch.equal(a, b) for a, b in zip(results[0], other)), "members must hold identical bytes"
            honest = [flat(layout, values[i]) for i in (0, 2, 3)]
            honest_mean = torch.stack(honest).mean(0)
            spread = float(torch.stack([(h - honest_mean).norm() for h in honest]).median())
            out = torch.cat([t.reshape(-1) for t in results[0]])
            assert torch.isfinite(out).all()
            # CenteredClip's bound: an attacker moves the result by ~tau x its weight share (here 1/4; 1.5/4.5 once its
            # claimed samples are bounded to 1.5x the median), tau being about one honest spread
            bound = 1.0 if kind == "inflated_weight" else 0.5
            distance = float((out - honest_mean).norm())
            print(f"ROBUST {kind}: distance {distance / spread:.3f} spreads; clipped", sorted(rounds[0].stats.clipped_share.values()))
            assert distance < bound * spread, (distance, spread)
            attacker_id = str(members[ATTACKER].peer_id)
            for j in (0, 2, 3):   # every reducer clipped the attacker hard, and no honest sender
                shares = rounds[j].stats.clipped_share
                assert shares[attacker_id] >= HARD_CLIP, shares
                assert max(s for p, s in shares.items() if p != attacker_id) < HARD_CLIP, shares
        finally:
            await shutdown(members)
    asyncio.run(main())


def test_the_plain_mean_is_poisoned_by_the_same_attack():
    """What robust mode prevents: the weighted mean of the same round is 1e29 from the honest mean."""
    async def main():
        members, services = await start_members(4)
        try:
            layout = make_layout("none")
            values = correlated_values(4, seed=3)
            classes = [AllReduceRound, _class_for("huge"), AllReduceRound, AllReduceRound]
            _, results = await run_round(members, services, ROLES, [1.0] * 4, SHARES, values, layout, round_class=classes)
            out = torch.cat([t.reshape(-1) for t in results[0]])
            assert float(out.abs().max()) > 1e28
        finally:
            await shutdown(members)
    asyncio.run(main())


def test_honest_robust_round_is_the_weighted_mean_and_strikes_nobody():
    async def main():
        members, services = await start_members(4)
        try:
            layout = make_layout("none")
            values = correlated_values(4, seed=5)
            weights = [1.0, 1.5, 1.25, 1.0]   # within bound_weights' 1.5x the median: the mean is not reweighted
            rounds, results = await run_round(members, services, ROLES, weights, SHARES, values, layout, round_class=Robust)
            assert not any(isinstance(r, BaseException) for r in results), results
            rows = torch.stack([flat(layout, v) for v in values])
            mean = (rows * (torch.tensor(weights) / sum(weights)).unsqueeze(1)).sum(0)
            spread = float((rows - mean).norm(dim=1).median())
            out = torch.cat([t.reshape(-1) for t in results[0]])
            assert float((out - mean).norm()) < 0.05 * spread
            book = StrikeBook()
            for r in rounds:
                assert book.record(r.stats.clipped_share) == []
            assert not book.excluded()
        finally:
            await shutdown(members)
    asyncio.run(main())


def test_a_struck_out_sender_is_ignored_from_the_start():
    async def main():
        members, services = await start_members(4)
        try:
            layout = make_layout("none")
            values = correlated_values(4, seed=6)
            book = StrikeBook()
            attacker_id = str(members[ATTACKER].peer_id)
            for _ in range(2):
                book.record({attacker_id: 0.99})
            assert book.excluded() == {attacker_id}
            classes = [functools.partial(cls, excluded=book.excluded()) for cls in (AllReduceRound, _class_for("huge"), AllReduceRound, AllReduceRound)]
            rounds, results = await run_round(members, services, ROLES, [1.0] * 4, SHARES, values, layout, round_class=_Classes(classes))
            assert not any(isinstance(r, BaseException) for r in results), results
            honest_mean = torch.stack([flat(layout, values[i]) for i in (0, 2, 3)]).mean(0)
            out = torch.cat([t.reshape(-1) for t in results[0]])
            assert torch.allclose(out, honest_mean, atol=1e-5)   # the plain mean without it, exactly
            assert attacker_id in rounds[0].stats.excluded
        finally:
            await shutdown(members)
    asyncio.run(main())


class _Classes(list):
    """run_round indexes round_class per member unless it is a type: partials are callables, not types."""



@pytest.mark.parametrize("equivocating", [False, True])
def test_members_part_hashes_name_a_reducer_that_sends_different_results(equivocating):
    from swarm.averaging.result_hashes import equivocating_reducers

    async def main():
        members, services = await start_members(4)
        try:
            layout = make_layout("fp16")
            values = correlated_values(4, seed=7)
            equivocates = byzantine_round_class("equivocating_reducer", AllReduceRound)   # odd members get another part
            classes = [equivocates if equivocating else AllReduceRound] + [AllReduceRound] * 3
            rounds, results = await run_round(members, services, ROLES, [1.0] * 4, SHARES, values, layout, round_class=classes)
            assert not any(isinstance(r, BaseException) for r in results), results
            reported = {str(m.peer_id): r.stats.part_hashes for m, r in zip(members, rounds)}
            reducers = {str(members[j].peer_id) for j, share in enumerate(SHARES) if share > 0}
            assert all(set(h) == reducers for h in reported.values()), reported   # every member hashed every part
            accused = equivocating_reducers(reported)
            assert set(accused) == ({str(members[0].peer_id)} if equivocating else set())
            same = all(torch.equal(a, b) for a, b in zip(results[1], results[2]))   # an odd and an even member
            assert same is (not equivocating)
        finally:
            await shutdown(members)
    asyncio.run(main())


def test_a_robust_reducer_sends_top_k_parts_back_with_their_centered_clip_coefficients():
    """Sparse (top-k) contributions under CenteredClip: a reducer's result is a convex combination of the copies, so it
    may send the copies back with those coefficients (a bundle) when that is smaller than the result's fp16 values.
    Every member decodes the same values, the attacker's coefficient is cut, and the result stays near the honest mean.
    (The two are about the same size with codebooks of the average's values, so the rounds here always bundle:
    `bundle_preference`.)"""
    import struct

    from swarm.averaging.layout import TensorLayout
    from swarm.compression.codecs import get_codec
    from swarm.compression.topk import select_topk

    async def main():
        members, services = await start_members(4)
        try:
            sparse, exact = get_codec("sparse"), get_codec("none")
            shapes = [(4000,)] * 12
            layout = TensorLayout.build(shapes, lambda i, n: sparse if n >= 1000 else exact)
            # pseudo-gradients whose top-k positions overlap in part (where they all coincide the mean is smaller)
            g = torch.Generator().manual_seed(5)
            base = [torch.randn(s, generator=g) for s in shapes]
            values = [[select_topk(t, t.numel() // 50) if t.numel() >= 1000 else t
                       for t in (0.5 * b + torch.randn(b.shape, generator=g) for b in base)] for _ in range(4)]
            bundling = type("Bundling", (Robust,), {"bundle_preference": 100.0})
            attacker = type("Amplifier", (bundling,), {"_outgoing": lambda self, chunk: 20 * Robust._outgoing(self, chunk)})
            classes = [bundling, attacker, bundling, bundling]
            rounds, results = await run_round(members, services, ROLES, [1.0] * 4, SHARES, values, layout, round_class=classes,
                                              chunk=50000)
            assert not any(isinstance(r, BaseException) for r in results), results
            for other in results[1:]:
                assert all(torch.equal(a, b) for a, b in zip(results[0], other)), "members must hold identical bytes"
            bucket = layout.codecs.index(sparse)
            bundles = [data for j in (0, 2, 3) for k, data in enumerate(rounds[j]._outputs)
                       if rounds[j].parts[j][k].bucket == bucket and data[3] == 5]
            assert bundles
            for data in bundles:
                m = struct.unpack_from("<Q", data, 12)[0]
                coefficients = struct.unpack_from(f"<{m}f", data, 20)
                assert m == 4 and min(coefficients) < 0.5 * max(coefficients)   # somebody (the attacker) was cut
            honest = [flat(layout, values[i]) for i in (0, 2, 3)]
            honest_mean = torch.stack(honest).mean(0)
            spread = float(torch.stack([(h - honest_mean).norm() for h in honest]).median())
            out = torch.cat([t.reshape(-1) for t in results[0]])
            assert float((out - honest_mean).norm()) < 0.5 * spread
        finally:
            await shutdown(members)
    asyncio.run(main())
