"""The butterfly all-reduce over real P2P streams, several members in one event loop.

Checks the exact weighted mean (within codec tolerance), bitwise-identical results on every
member, the roles (client-mode reduces nothing, auxiliary brings nothing), and bad input
from a member (wrong size, NaN): the sender is excluded and the others still finish.
"""
from __future__ import annotations

import asyncio
import contextlib
import secrets

import pytest
import torch

from benchmarks.scale import start_members
from swarm.averaging.allreduce import AllReduceRound
from swarm.averaging.group import GroupView
from swarm.averaging.layout import TensorLayout
from swarm.averaging.streams import AGGREGATE_HANDLER, is_heartbeat
from swarm.compression.codecs import CompressionPolicy
from swarm.errors import RoundFailed
from swarm.proto import swarm_pb2

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

SHAPES = [(300, 40), (40,), (1000,), (7, 3)]


def make_layout(codec="fp16"):
    policy = CompressionPolicy(default=codec, small_tensor_threshold=64)
    return TensorLayout.build(SHAPES, lambda i, n: policy.codec_for(str(i), n))


async def run_round(members, services, roles, weights, shares, values, layout, round_class=AllReduceRound, timeout=20.0, chunk=500):
    ids = tuple(str(p.peer_id) for p in members)
    round_id = secrets.token_bytes(16)
    rounds = []
    for i, p in enumerate(members):
        group = GroupView(round_id=round_id, peer_ids=ids, roles=tuple(roles), weights=tuple(weights), shares=tuple(shares), my_index=i, timeout=timeout)
        cls = round_class if isinstance(round_class, type) else round_class[i]
        r = cls(p, group, layout, None if roles[i] == "aux" else layout.flatten(values[i]), chunk_elements=chunk, sender_timeout=3.0, hash_parts=True)
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


async def identical_weighted_mean(members, services, layout, values):
    """A round of 3 trainers with unequal weights and shares: (rounds, each member's tensors, the exact weighted
    mean); every member must hold bitwise-identical results."""
    weights, roles, shares = [10.0, 30.0, 60.0], ["trainer"] * 3, [0.2, 0.3, 0.5]
    rounds, results = await run_round(members, services, roles, weights, shares, values, layout)
    assert not any(isinstance(r, BaseException) for r in results), results
    outs = [layout.unflatten(r) for r in results]
    for t in range(len(SHAPES)):
        for other in outs[1:]:
            assert torch.equal(outs[0][t], other[t]), "members must hold bitwise-identical results"
    return rounds, outs, expected_mean(values, weights, roles)


@pytest.mark.parametrize("codec, tol", [("none", 1e-6), ("fp16", 2e-3), ("uniform4bit", 0.6)])   # 4 bits: <= half a step, twice
def test_weighted_mean_is_exact_within_codec_tolerance_and_identical(codec, tol):
    async def main():
        members, services = await start_members(3)
        try:
            layout = make_layout(codec)
            rounds, outs, expected = await identical_weighted_mean(members, services, layout, random_values(3))
            for t in range(len(SHAPES)):
                assert torch.allclose(outs[0][t], expected[t], atol=tol, rtol=tol)
            assert all(r.stats.bytes_sent > 0 for r in rounds)
        finally:
            await shutdown(members)
    asyncio.run(main())


def test_members_hash_the_parts_they_receive_only_when_asked_or_checking_results():
    """The members' unsigned part hashes (swarm.averaging.result_hashes) cost a sha256 of the whole result a round:
    a plain round keeps none unless asked (run_round asks); every member that asked holds one hash per part, the same."""
    async def main():
        members, services = await start_members(3)
        try:
            values = random_values(3)
            asked, _ = await run_round(members, services, ["trainer"] * 3, [1.0] * 3, [1 / 3] * 3, values, make_layout("fp16"))
            hashes = {tuple(r.stats.part_hashes.items()) for r in asked}
            assert len(hashes) == 1 and len(next(iter(hashes))) == 3, hashes

            class Plain(AllReduceRound):
                def __init__(self, *args, hash_parts=False, **kwargs):
                    super().__init__(*args, **kwargs)   # what the engine builds without a signer

            plain, results = await run_round(members, services, ["trainer"] * 3, [1.0] * 3, [1 / 3] * 3, values, make_layout("fp16"),
                                             round_class=Plain)
            assert not any(isinstance(r, BaseException) for r in results) and all(r.stats.part_hashes == {} for r in plain)
        finally:
            await shutdown(members)
    asyncio.run(main())


def test_top_k_messages_travel_exactly_and_the_reducers_send_back_the_parts_when_smaller():
    """The sparse codec through the real butterfly: top-k parts in, the weighted mean out. A reducer sends back its
    senders' parts (a bundle: every member averages them in float64) or their mean, whichever is smaller. With one
    tensor per chunk and 3 members the mean wins here (its values fit a small codebook, its positions are denser);
    bundles win where parts span several tensors or the group is larger (tests/integration/test_robust_rounds.py
    sees them, benchmarks/README.md measures them)."""
    from swarm.compression.codecs import get_codec
    from swarm.compression.topk import select_topk

    async def main():
        members, services = await start_members(3)
        try:
            sparse = get_codec("sparse")
            layout = TensorLayout.build(SHAPES, lambda i, n: sparse if n >= 1000 else get_codec("none"))
            sparse_bucket = layout.codecs.index(sparse)
            weights, roles = [10.0, 30.0, 60.0], ["trainer"] * 3
            for value_bits in (2, 16):
                values = [[select_topk(t, max(1, t.numel() // 50), value_bits) if t.numel() >= 1000 else t for t in member]
                          for member in random_values(3, seed=4)]
                # chunks of 4000 values: 80 non-zeros each (at 500, a bundle's three 28-byte headers outweigh the gain)
                rounds, results = await run_round(members, services, roles, weights, [0.2, 0.3, 0.5], values, layout, chunk=4000)
                assert not any(isinstance(r, BaseException) for r in results), results
                outs, expected = [layout.unflatten(r) for r in results], expected_mean(values, weights, roles)
                for t in range(len(SHAPES)):
                    assert all(torch.equal(outs[0][t], other[t]) for other in outs[1:]), "members must hold identical results"
                    torch.testing.assert_close(outs[0][t], expected[t], rtol=2**-10, atol=1e-6)
                dense_fp16 = 2 * sum(layout.bucket_sizes)
                assert all(0 < r.stats.bytes_sent < dense_fp16 / 2 for r in rounds)
                flats = [layout.flatten(v)[sparse_bucket] for v in values]
                for r in rounds:
                    for k, data in enumerate(r._outputs):
                        chunk = r.parts[r.group.my_index][k]
                        if chunk.bucket != sparse_bucket:
                            continue
                        inputs = [sparse.encode(f[chunk.start : chunk.start + chunk.length]) for f in flats]
                        bundle = sparse.bundle(list(zip(weights, inputs)), chunk.length)
                        mean = sparse.encode(sum(w * f[chunk.start : chunk.start + chunk.length] for w, f in zip(weights, flats)) / 100)
                        assert len(data) == min(len(bundle), len(mean)), (value_bits, data[3])   # the smaller one went
        finally:
            await shutdown(members)
    asyncio.run(main())


def test_a_sparse_result_is_the_top_of_the_mean_with_no_more_values_than_the_largest_message():
    """Codec sparse-topk through the real butterfly (5 members, a part per member): every reducer sends back the
    largest values of its chunk's weighted mean, as many as its largest input has, and every member holds the same."""
    from swarm.compression.codecs import get_codec
    from swarm.compression.topk import select_topk

    async def main():
        members, services = await start_members(5)
        try:
            sparse = get_codec("sparse-topk")
            layout = TensorLayout.build(SHAPES, lambda i, n: sparse if n >= 1000 else get_codec("none"))
            bucket = layout.codecs.index(sparse)
            weights, roles = [10.0, 20.0, 30.0, 15.0, 25.0], ["trainer"] * 5
            # fp16 values: five messages would cost five times the top's bytes (with 2-bit values, about twice, and
            # the reducers would send the exact bundle instead: SparseCodec.bundle_preference)
            values = [[select_topk(t, max(1, t.numel() // 50), 16) if t.numel() >= 1000 else t for t in member]
                      for member in random_values(5, seed=7)]
            rounds, results = await run_round(members, services, roles, weights, [0.2] * 5, values, layout, chunk=4000)
            assert not any(isinstance(r, BaseException) for r in results), results
            outs = [layout.unflatten(r) for r in results]
            for t in range(len(SHAPES)):
                assert all(torch.equal(outs[0][t], other[t]) for other in outs[1:]), "members must hold identical results"
            flats = [layout.flatten(v)[bucket] for v in values]
            mean = sum(w * f for w, f in zip(weights, flats)) / sum(weights)
            result = layout.flatten(outs[0])[bucket]
            checked = 0
            for r in rounds:
                for chunk in r.parts[r.group.my_index]:
                    if chunk.bucket != bucket:
                        continue
                    window = slice(chunk.start, chunk.start + chunk.length)
                    got, exact = result[window], mean[window]
                    kept = got != 0
                    largest = max(int((f[window] != 0).sum()) for f in flats)
                    assert 0 < int(kept.sum()) <= largest < int((exact != 0).sum())     # it dropped most of the union
                    torch.testing.assert_close(got[kept], exact[kept], rtol=2**-10, atol=0)
                    assert float(exact[~kept].abs().max()) <= float(exact[kept].abs().min()) * (1 + 2**-10)
                    checked += 1
            assert checked >= 3
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


class CutsFirstReplyStream(AllReduceRound):
    """A reducer whose reply stream to member 0 breaks after one averaged chunk, as a reset connection does."""

    async def serve(self, first, requests, remote):
        cut = not first.fetch and str(remote) == self.group.peer_ids[0]
        sent = 0
        async with contextlib.aclosing(super().serve(first, requests, remote)) as replies:
            async for reply in replies:
                yield reply
                sent += 1
                if cut and sent == 1:
                    return


def test_a_broken_reply_stream_is_fetched_again_and_results_stay_identical():
    async def main():
        members, services = await start_members(3)
        try:
            layout = make_layout("none")
            values = random_values(3, seed=4)
            classes = [AllReduceRound, CutsFirstReplyStream, AllReduceRound]
            rounds, results = await run_round(members, services, ["trainer"] * 3, [1.0] * 3, [0.2, 0.6, 0.2], values, layout, round_class=classes)
            assert len(rounds[1].parts[1]) > 2, "the cut part must have chunks left to fetch"
            assert not any(isinstance(r, BaseException) for r in results), results
            assert rounds[0].stats.refetches == 1 and rounds[2].stats.refetches == 0
            for other in results[1:]:
                assert all(torch.equal(a, b) for a, b in zip(results[0], other)), "a fetched part must be the same bytes"
        finally:
            await shutdown(members)
    asyncio.run(main())


class LosesFirstContribution(AllReduceRound):
    """A reducer that never sees member 0's first contribution stream: closed unread, as a stream reset as it opens."""

    lost = False

    async def serve(self, first, requests, remote):
        if not first.fetch and str(remote) == self.group.peer_ids[0] and not self.lost:
            self.lost = True
            return
        async with contextlib.aclosing(super().serve(first, requests, remote)) as replies:
            async for reply in replies:
                yield reply


def test_a_contribution_lost_as_its_stream_opened_is_sent_again_and_counted():
    async def main():
        members, services = await start_members(3)
        try:
            layout = make_layout("none")
            values = random_values(3, seed=7)
            classes = [AllReduceRound, LosesFirstContribution, AllReduceRound]
            rounds, results = await run_round(members, services, ["trainer"] * 3, [1.0, 2.0, 1.0], [0.2, 0.6, 0.2], values, layout, round_class=classes)
            assert rounds[1].lost and not any(isinstance(r, BaseException) for r in results), results
            # the reducer asked member 0 for its values again instead of averaging part 1 without them
            assert rounds[0].stats.refetches == 1 and rounds[0].stats.resent_chunks == len(rounds[1].parts[1])
            assert rounds[1].stats.excluded == []
            expected = expected_mean(values, [1.0, 2.0, 1.0], ["trainer"] * 3)
            for out in results:
                unflat = layout.unflatten(out)
                for t in range(len(SHAPES)):
                    assert torch.allclose(unflat[t], expected[t], atol=1e-5)
            for other in results[1:]:
                assert all(torch.equal(a, b) for a, b in zip(results[0], other))
        finally:
            await shutdown(members)
    asyncio.run(main())


async def _fetch(member, reducer, round_id, part, start):
    async def request():
        yield swarm_pb2.PartChunk(round_id=round_id, part=part, chunk=start, sender=str(member.peer_id), fetch=True)

    stream = await member.iterate_protobuf_handler(reducer.peer_id, AGGREGATE_HANDLER, request(), swarm_pb2.PartChunk)
    return [reply async for reply in stream]


def test_a_finished_round_answers_fetches_for_a_grace_period_and_refuses_contributions():
    async def main():
        members, services = await start_members(2)
        try:
            layout = make_layout("none")
            values = random_values(2, seed=5)
            rounds, results = await run_round(members, services, ["trainer"] * 2, [1.0] * 2, [0.5, 0.5], values, layout)
            assert not any(isinstance(r, BaseException) for r in results), results
            round_id = rounds[1].group.round_id
            services[1].close(round_id)
            replies = await asyncio.wait_for(_fetch(members[0], members[1], round_id, 1, 1), 10)
            ack, *replies = replies   # a live reducer acknowledges a fetch at once, before any chunk (FETCH_ACK_FLOOR)
            assert ack.fetch and ack.chunk == 1 and not (ack.data or ack.error or ack.resend)
            chunks = rounds[1].parts[1]
            assert [r.chunk for r in replies] == list(range(1, len(chunks)))
            for reply, chunk in zip(replies, chunks[1:]):
                expected = results[0][chunk.bucket][chunk.start : chunk.start + chunk.length]
                assert torch.equal(layout.codecs[chunk.bucket].decode(reply.data), expected)
            # a fetch that names no part of the round, or a chunk out of range, is refused
            assert [r.error for r in await asyncio.wait_for(_fetch(members[0], members[1], round_id, 7, 0), 10)] == ["bad fetch"]
            # a reducer that handed its part over asks its backup for it like a member (swarm.averaging.failover): the
            # backup, holding the part whole, serves the reducer's own bytes
            own = await asyncio.wait_for(_fetch(members[0], members[1], round_id, 0, 0), 10)
            assert [r.chunk for r in own if r.data] == list(range(len(rounds[0].parts[0]))) and not any(r.error for r in own)
            assert [r.error for r in await asyncio.wait_for(_fetch(members[0], members[1], round_id, 1, 999), 10)] == ["bad fetch"]

            async def contribution():
                yield swarm_pb2.PartChunk(round_id=round_id, part=1, chunk=0, sender=str(members[0].peer_id), data=b"x")

            stream = await members[0].iterate_protobuf_handler(members[1].peer_id, AGGREGATE_HANDLER, contribution(), swarm_pb2.PartChunk)
            alive = await asyncio.wait_for(anext(stream), 5)   # the service's heartbeat to a member's first stream
            assert is_heartbeat(alive)
            refused = await asyncio.wait_for(anext(stream), 5)  # at once, not after the service's wait for the round
            assert refused.error == "unknown or finished round"
        finally:
            await shutdown(members)
    asyncio.run(main())


def test_a_refusal_reaches_a_sender_that_keeps_writing():
    """The service reads a refused stream's remaining input before closing it: closing with input unread resets the
    stream, and the refusal in flight was lost (a bare end or a reset at the sender; a CI run lost a "bad fetch")."""
    async def flood(member, reducer, round_id, extra):
        async def request():
            yield swarm_pb2.PartChunk(round_id=round_id, part=1, chunk=999, sender=str(member.peer_id), fetch=True)
            for _ in range(extra):
                yield swarm_pb2.PartChunk(round_id=round_id, part=1, chunk=999, data=b"x" * 65536)

        stream = await member.iterate_protobuf_handler(reducer.peer_id, AGGREGATE_HANDLER, request(), swarm_pb2.PartChunk)
        return [reply.error async for reply in stream]

    async def main():
        members, services = await start_members(2)
        try:
            rounds, results = await run_round(members, services, ["trainer"] * 2, [1.0] * 2, [0.5, 0.5], random_values(2, seed=5), make_layout("none"))
            assert not any(isinstance(r, BaseException) for r in results), results
            for extra in (1, 4, 16, 16, 64):   # before the drain: 16 extra chunks reset the stream every time
                assert await asyncio.wait_for(flood(members[0], members[1], rounds[1].group.round_id, extra), 20) == ["bad fetch"]
        finally:
            await shutdown(members)
    asyncio.run(main())


def test_a_fetch_of_a_part_that_was_never_averaged_gets_a_clear_error():
    async def main():
        members, services = await start_members(3)
        try:
            layout = make_layout("fp16")
            values = random_values(3, seed=6)
            classes = [AllReduceRound, DeadReducer, AllReduceRound]
            rounds, results = await run_round(members, services, ["trainer"] * 3, [1.0] * 3, [0.3, 0.4, 0.3], values, layout, round_class=classes, timeout=5.0)
            assert isinstance(results[0], RoundFailed)
            assert "part 1" in str(results[0]) and str(members[1].peer_id)[-8:] in str(results[0]), "the error names the part and its reducer"
            services[1].close(rounds[1].group.round_id)
            replies = await asyncio.wait_for(_fetch(members[0], members[1], rounds[1].group.round_id, 1, 0), 10)
            assert [r.error for r in replies] == ["", "part not averaged"]   # the acknowledgement, then the error
        finally:
            await shutdown(members)
    asyncio.run(main())
