"""The butterfly all-reduce over real P2P streams, several members in one event loop.

Checks the exact weighted mean (within codec tolerance), bitwise-identical results on every
member, the roles (client-mode reduces nothing, auxiliary brings nothing), and bad input
from a member (wrong size, NaN): the sender is excluded and the others still finish.
"""
from __future__ import annotations

import asyncio
import secrets

import pytest
import torch
from hivemind.p2p import P2P

from swarm.allreduce import AggregateService, AllReduceRound, GroupView, TensorLayout
from swarm.compression import CompressionPolicy
from swarm.errors import RoundFailed

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

SHAPES = [(300, 40), (40,), (1000,), (7, 3)]


def make_layout(codec="fp16"):
    policy = CompressionPolicy(default=codec, small_tensor_threshold=64)
    return TensorLayout.build(SHAPES, lambda i, n: policy.codec_for(str(i), n))


async def start_members(n: int):
    first = await P2P.create()
    members = [first]
    maddrs = await first.get_visible_maddrs()
    for _ in range(n - 1):
        members.append(await P2P.create(initial_peers=maddrs))
    services = []
    for p in members:
        s = AggregateService(p)
        await s.start()
        services.append(s)
    return members, services


async def run_round(members, services, roles, weights, shares, values, layout, round_class=AllReduceRound, timeout=20.0, chunk=500):
    ids = tuple(str(p.peer_id) for p in members)
    round_id = secrets.token_bytes(16)
    rounds = []
    for i, p in enumerate(members):
        group = GroupView(round_id=round_id, peer_ids=ids, roles=tuple(roles), weights=tuple(weights), shares=tuple(shares), my_index=i, timeout=timeout)
        cls = round_class if isinstance(round_class, type) else round_class[i]
        r = cls(p, group, layout, None if roles[i] == "aux" else layout.flatten(values[i]), chunk_elements=chunk, sender_timeout=3.0)
        services[i].open(r)
        rounds.append(r)
    results = await asyncio.gather(*(r.run() for r in rounds), return_exceptions=True)
    return rounds, results


def expected_mean(values, weights, roles):
    total = sum(w for w, r in zip(weights, roles) if r != "aux")
    return [sum(v[t] * w for v, w, r in zip(values, weights, roles) if r != "aux") / total for t in range(len(SHAPES))]


async def shutdown(members):
    for p in members:
        await p.shutdown()


def random_values(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(s, generator=g) for s in SHAPES] for _ in range(n)]


@pytest.mark.parametrize("codec, tol", [("none", 1e-6), ("fp16", 2e-3)])
def test_weighted_mean_is_exact_within_codec_tolerance_and_identical(codec, tol):
    async def main():
        members, services = await start_members(3)
        try:
            layout = make_layout(codec)
            values = random_values(3)
            weights, roles, shares = [10.0, 30.0, 60.0], ["trainer"] * 3, [0.2, 0.3, 0.5]
            rounds, results = await run_round(members, services, roles, weights, shares, values, layout)
            assert not any(isinstance(r, BaseException) for r in results), results
            expected = expected_mean(values, weights, roles)
            outs = [layout.unflatten(r) for r in results]
            for t in range(len(SHAPES)):
                assert torch.allclose(outs[0][t], expected[t], atol=tol, rtol=tol)
                for other in outs[1:]:
                    assert torch.equal(outs[0][t], other[t]), "members must hold bitwise-identical results"
            assert all(r.stats.bytes_sent > 0 for r in rounds)
        finally:
            await shutdown(members)
    asyncio.run(main())


def test_client_mode_reduces_nothing_and_aux_brings_nothing():
    async def main():
        members, services = await start_members(4)
        try:
            layout = make_layout("fp16")
            values = random_values(4, seed=1)
            roles = ["trainer", "client", "aux", "trainer"]
            weights = [1.0, 3.0, 0.0, 2.0]
            shares = [0.3, 0.0, 0.4, 0.3]
            rounds, results = await run_round(members, services, roles, weights, shares, values, layout)
            assert results[2] is None  # aux: reduces, needs no result
            assert rounds[1].parts[1] == []  # client: no part
            assert rounds[2].stats.bytes_received > 0
            trainer_results = [results[i] for i in (0, 1, 3)]
            assert not any(isinstance(r, BaseException) for r in trainer_results), trainer_results
            expected = expected_mean(values, weights, roles)
            out = layout.unflatten(trainer_results[0])
            for t in range(len(SHAPES)):
                assert torch.allclose(out[t], expected[t], atol=2e-3)
            for r in trainer_results[1:]:
                assert all(torch.equal(a, b) for a, b in zip(trainer_results[0], r))
        finally:
            await shutdown(members)
    asyncio.run(main())


class NaNSender(AllReduceRound):
    def _outgoing(self, chunk):
        return torch.full((chunk.length,), float("nan"))


class WrongSizeSender(AllReduceRound):
    def _outgoing(self, chunk):
        return torch.zeros(chunk.length + 3)


@pytest.mark.parametrize("faulty", [NaNSender, WrongSizeSender])
def test_bad_tensors_from_a_member_are_excluded_and_others_agree(faulty):
    async def main():
        members, services = await start_members(3)
        try:
            layout = make_layout("fp16")
            values = random_values(3, seed=2)
            weights, roles, shares = [1.0, 1.0, 1.0], ["trainer"] * 3, [0.5, 0.0, 0.5]  # the faulty member reduces no part
            classes = [AllReduceRound, faulty, AllReduceRound]
            rounds, results = await run_round(members, services, roles, weights, shares, values, layout, round_class=classes)
            good = [results[0], results[2]]
            assert not any(isinstance(r, BaseException) for r in good), good
            assert all(torch.equal(a, b) for a, b in zip(*good))
            # the faulty member's contribution is not in the average: it equals the mean of the other two
            expected = expected_mean([values[0], values[2]], [1.0, 1.0], ["trainer", "trainer"])
            out = layout.unflatten(good[0])
            for t in range(len(SHAPES)):
                assert torch.allclose(out[t], expected[t], atol=2e-3)
            assert str(members[1].peer_id) in rounds[0].stats.excluded
        finally:
            await shutdown(members)
    asyncio.run(main())


class DeadReducer(AllReduceRound):
    """Accepts streams but never averages: a reducer that stalls (SIGSTOP-like)."""

    def _try_finalize(self):
        return None


def test_a_stalled_reducer_fails_the_round_within_its_deadline():
    async def main():
        members, services = await start_members(3)
        try:
            layout = make_layout("fp16")
            values = random_values(3, seed=3)
            classes = [AllReduceRound, DeadReducer, AllReduceRound]
            loop = asyncio.get_running_loop()
            start = loop.time()
            rounds, results = await run_round(members, services, ["trainer"] * 3, [1.0] * 3, [0.3, 0.4, 0.3], values, layout, round_class=classes, timeout=6.0)
            elapsed = loop.time() - start
            assert isinstance(results[0], RoundFailed) and isinstance(results[2], RoundFailed)
            assert elapsed < 6.0 + 2.0
        finally:
            await shutdown(members)
    asyncio.run(main())
