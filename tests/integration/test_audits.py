"""Audits over real P2P streams (swarm.averaging.audits): members recompute a reducer's part from the contributions its
senders committed to, fetched from the senders, and catch a lying reducer that sent every member the same noisy part
(consistent, so the members' comparison of signed results cannot see it). An honest group's audits find nothing; an
accusation is verified by a peer outside the round from the accuser's copies alone; a sender that shows an auditor
other bytes than it committed to makes the audit inconclusive, never a ban; a reducer refuses a chunk that differs
from its sender's commitment."""
from __future__ import annotations

import asyncio
import hashlib

import pytest
import torch
from hivemind.p2p import P2P

from peers.attack.byzantine import byzantine_round_class
from swarm.averaging.allreduce import AllReduceRound
from swarm.averaging.auditor import Auditor
from swarm.averaging.audits import AuditService, AuditStore, PartAudit, audit_part, unpack_accusation
from swarm.averaging.bans import BanList
from tests.integration.test_allreduce import make_layout, run_round, shutdown
from tests.integration.test_result_checks import ROLES, SHARES, signing, start_signing_members
from tests.integration.test_robust_rounds import correlated_values

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]


def signing_mean(base: type, key) -> type:
    """A signing round whose reducers take the plain weighted mean (robust mode off: no radii to sign)."""
    class SigningMean(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, signer=key, **kwargs)

    return SigningMean


def layout_of(round_: AllReduceRound, j: int) -> list[tuple[str, int]]:
    return [(round_.layout.codecs[c.bucket].name, c.length) for c in round_.parts[j]]


async def with_auditors(members, services, keys, liar: int | None, seed: int, rate: float = 0.0):
    """One signed fp16 round of 4 members (member `liar` a lying reducer), each with an Auditor (its store and service);
    the auditors draw no audits themselves (`rate` 0) unless asked: the tests call audit_part where they want one."""
    auditors = []
    for m in members:
        a = Auditor(m, BanList(), audits_per_part=rate)
        await a.start()
        auditors.append(a)
    classes = [signing(byzantine_round_class("lying_reducer", AllReduceRound) if i == liar else AllReduceRound, k)
               for i, k in enumerate(keys)]
    rounds, results = await run_round(members, services, ROLES, [1.0, 2.0, 1.0, 1.5], SHARES, correlated_values(4, seed=seed),
                                      make_layout("fp16"), round_class=classes)
    assert not any(isinstance(r, BaseException) for r in results), results
    for a, r in zip(auditors, rounds):
        a.after_round(r, stepped=True)
    return auditors, rounds


def case_for(rounds, auditor: int, j: int) -> PartAudit:
    """What the auditor's Auditor.after_round would audit of part j: with the commitments it holds."""
    r = rounds[auditor]
    ids = r.group.peer_ids
    known = {c.digest(): c for c in [*r.commitments.values(), *(c for c, _ in r.contributions.values())]}
    return PartAudit(r.results.held[j], layout_of(r, j), r.part_bytes(j), {i: [ids[i]] for i in range(len(ids)) if i != auditor},
                     commitments=known)


def test_a_lying_reducer_is_caught_by_any_member_that_audits_its_part_and_honest_ones_are_not():
    async def main():
        keys, members, services = await start_signing_members(4)
        try:
            auditors, rounds = await with_auditors(members, services, keys, liar=0, seed=21)
            for auditor in (1, 2, 3):
                for j in (0, 1, 2, 3):
                    if j == auditor:
                        continue
                    finding = await audit_part(members[auditor], auditors[auditor].store, case_for(rounds, auditor, j))
                    if j == 0:   # the liar hides its own contribution: its part is checked without it, and fails
                        assert finding.verdict == "lied" and finding.distance > 1.5 and "member 0" in finding.detail, finding
                    else:
                        assert finding.verdict == "honest" and finding.distance < 0.01, finding
        finally:
            await shutdown(members)
    asyncio.run(main())


def test_an_honest_reducer_whose_own_contribution_cannot_be_had_passes_its_audits_without_it():
    """The reducer's own input is the one only it holds: gone from its store (as if it refused, or could not be
    dialled), its part is checked as a CenteredClip of the other inputs at the radius it signed, and found honest."""
    async def main():
        keys, members, services = await start_signing_members(4)
        try:
            auditors, rounds = await with_auditors(members, services, keys, liar=None, seed=25)
            auditors[0].service.store = AuditStore()    # reducer 0 serves nothing
            for auditor in (1, 2, 3):
                finding = await audit_part(members[auditor], auditors[auditor].store, case_for(rounds, auditor, 0))
                assert finding.verdict == "honest" and "member 0" in finding.detail and finding.distance < 1, finding
                # without the commitments it holds, the missing input's weight is unknown: nothing can be said
                case = case_for(rounds, auditor, 0)
                case.commitments = {}
                finding = await audit_part(members[auditor], AuditStore(), case)
                assert finding.verdict == "inconclusive" and "commitment unknown" in finding.detail, finding
        finally:
            await shutdown(members)
    asyncio.run(main())


def test_a_reducer_that_lists_a_made_up_commitment_for_itself_is_caught_and_the_proof_bans_it_outside_the_round():
    """A smarter liar: its statement lists, for its own input, a commitment nobody else has (so nobody could fetch
    it or know its weight). The commitment it sent the other members proves its own contribution exists: every
    auditor that holds it finds the omission, and the accusation, carrying that commitment, convinces an outsider."""
    async def main():
        keys, members, services = await start_signing_members(4)
        outsider = await P2P.create(initial_peers=await members[0].get_visible_maddrs())
        try:
            auditors, rounds = await with_auditors(members, services, keys, liar=None, seed=27)
            from swarm.averaging.result_statements import Input, pack_inputs, sign_statement, unpack_inputs, unpack_radii
            honest = rounds[1].results.held[0]
            layout_digest, inputs = unpack_inputs(honest.inputs)
            forged = [Input(i.sender, i.chunks, hashlib.sha256(b"made up").digest() if i.sender == 0 else i.commitment) for i in inputs]
            statement = sign_statement(keys[0], honest.round_id, honest.part, honest.reducer, honest.digest,
                                       pack_inputs(layout_digest, forged, unpack_radii(honest.inputs)))
            case = case_for(rounds, 1, 0)
            case.statement = statement
            finding = await audit_part(members[1], auditors[1].store, case)
            assert finding.verdict == "lied" and "own committed contribution" in finding.detail, finding
            assert finding.commitment is not None and finding.commitment.sender == str(members[0].peer_id)
            await auditors[1]._audit(case, verifying=False)
            assert auditors[1].bans.banned == {str(members[0].peer_id)}
            *_, evidence = unpack_accusation(auditors[1].bans.accused[0])
            assert evidence == finding.commitment
            verifier = Auditor(outsider, BanList())
            verifier.bans.to_verify[auditors[1].bans.accused[0]] = None
            verifier.verify_pending()
            await asyncio.wait_for(asyncio.gather(*list(verifier._tasks)), 60)
            assert verifier.bans.banned == {str(members[0].peer_id)} and verifier.counts["lied"] == 1, verifier.counts
            # the honest statement, with the same commitments at hand, finds nothing of the kind
            assert (await audit_part(members[1], auditors[1].store, case_for(rounds, 1, 0))).verdict == "honest"
        finally:
            await shutdown([*members, outsider])
    asyncio.run(main())


def test_a_plain_mean_reducer_signs_no_radii_and_its_part_without_an_input_is_inconclusive():
    async def main():
        keys, members, services = await start_signing_members(4)
        try:
            for m in members:
                await Auditor(m, BanList()).start()
            rounds, results = await run_round(members, services, ROLES, [1.0] * 4, SHARES, correlated_values(4, seed=26),
                                              make_layout("fp16"), round_class=[signing_mean(AllReduceRound, k) for k in keys])
            assert not any(isinstance(r, BaseException) for r in results), results
            from swarm.averaging.result_statements import unpack_radii
            assert unpack_radii(rounds[1].results.held[0].inputs) is None
            finding = await audit_part(members[1], AuditStore(), case_for(rounds, 1, 0))
            assert finding.verdict == "inconclusive" and "no radii" in finding.detail, finding
        finally:
            await shutdown(members)
    asyncio.run(main())


def test_an_honest_groups_audits_drawn_by_the_auditors_find_nothing_and_ban_nobody():
    async def main():
        keys, members, services = await start_signing_members(4)
        try:
            auditors, _ = await with_auditors(members, services, keys, liar=None, seed=22, rate=8.0)   # every member audits every part
            await asyncio.wait_for(asyncio.gather(*(t for a in auditors for t in list(a._tasks)), return_exceptions=True), 60)
            for a in auditors:
                assert a.counts["honest"] == 3 and a.counts["lied"] == 0 and a.counts["inconclusive"] == 0, a.counts
                assert not a.bans.banned
        finally:
            await shutdown(members)
    asyncio.run(main())


def test_an_accusation_bans_the_liar_at_a_peer_outside_the_round_that_verifies_it_from_the_accusers_copies():
    async def main():
        keys, members, services = await start_signing_members(4)
        outsider = await P2P.create(initial_peers=await members[0].get_visible_maddrs())
        try:
            auditors, rounds = await with_auditors(members, services, keys, liar=0, seed=23)
            accuser = auditors[2]
            await accuser._audit(case_for(rounds, 2, 0), verifying=False)
            liar = str(members[0].peer_id)
            assert accuser.bans.banned == {liar} and len(accuser.bans.accused) == 1
            # the accuser told the round's other members at once; each audited the part itself and banned the liar
            await asyncio.wait_for(asyncio.gather(*(t for i in (1, 3) for t in list(auditors[i]._tasks))), 60)
            for i in (1, 3):
                assert auditors[i].bans.banned == {liar} and auditors[i].counts["verified"] == 1, auditors[i].counts
            assert not auditors[0].bans.banned   # nor did the liar (an accusation of oneself is not audited)
            statement, layout, holder, chunks, _ = unpack_accusation(accuser.bans.accused[0])
            assert holder == str(members[2].peer_id) and chunks
            # the senders are gone: only the accuser's pinned copies of the inputs and the result remain
            for i in (1, 3):
                auditors[i].store = AuditStore()
                auditors[i].service.store = auditors[i].store
            auditors[0].service.store = AuditStore()
            verifier = Auditor(outsider, BanList())
            verifier.bans.to_verify[accuser.bans.accused[0]] = None
            verifier.verify_pending()
            await asyncio.wait_for(asyncio.gather(*list(verifier._tasks)), 60)
            assert verifier.bans.banned == {liar}, verifier.counts
            assert verifier.counts["verified"] == 1 and verifier.counts["lied"] == 1
        finally:
            await shutdown([*members, outsider])
    asyncio.run(main())


@pytest.mark.parametrize("holds_result", [False, True])
def test_an_accusation_against_an_honest_reducer_bans_nobody(holds_result):
    """A made-up accusation: an honest reducer's real statement, and a holder whose copy of one input no longer
    matches its commitment. Without the result at hand the audit is inconclusive; with it, the part is checked without
    the forged input (its signed commitment gives its weight) and found honest. Nobody is banned either way."""
    async def main():
        keys, members, services = await start_signing_members(4)
        outsider = await P2P.create(initial_peers=await members[0].get_visible_maddrs())
        try:
            auditors, rounds = await with_auditors(members, services, keys, liar=None, seed=24)
            r = rounds[2]
            statement = r.results.held[0]
            # the forger (member 2) swaps one input's chunks in its store for noise: they no longer match the commitment
            from swarm.averaging.result_statements import unpack_inputs
            _, inputs = unpack_inputs(statement.inputs)
            forged = auditors[2].store
            held = forged.get(statement.round_id, statement.part, inputs[1].commitment)
            if held is None:   # not mine: fetch it into my store first, as an auditor would
                await audit_part(members[2], forged, case_for(rounds, 2, 0))
                held = forged.get(statement.round_id, statement.part, inputs[1].commitment)
            k = min(held.chunks)   # an audit keeps its sample of the chunks
            held.chunks[k] = bytes(len(held.chunks[k]))
            if holds_result:
                forged.put_result(statement.round_id, statement.part, statement.digest, r.part_bytes(0))
            for i in (0, 1, 3):   # nobody else holds anything
                auditors[i].service.store = AuditStore()
            from swarm.averaging.audits import pack_accusation
            verifier = Auditor(outsider, BanList())
            verifier.bans.to_verify[pack_accusation(statement, layout_of(r, 0), str(members[2].peer_id), [k])] = None
            verifier.verify_pending()
            await asyncio.wait_for(asyncio.gather(*list(verifier._tasks)), 60)
            assert not verifier.bans.banned and verifier.counts["lied"] == 0, verifier.counts
            assert verifier.counts["honest" if holds_result else "inconclusive"] == 1, verifier.counts
        finally:
            await shutdown([*members, outsider])
    asyncio.run(main())


def test_a_reducer_refuses_a_chunk_that_differs_from_its_senders_commitment():
    """A sender that commits to one set of chunks and sends another is excluded as a sender of bad data (its values
    are not averaged); the others' round goes on."""
    class Switching(AllReduceRound):
        def _contribution(self, j):
            commitment, encoded = super()._contribution(j)
            if j == self.group.my_index:
                return commitment, encoded
            last = self.parts[j][-1]
            switched = list(encoded)   # the commitment still names the original bytes
            switched[-1] = self.layout.codecs[last.bucket].encode(-self._outgoing(last))
            return commitment, switched

    async def main():
        keys, members, services = await start_signing_members(4)
        try:
            classes = [signing(Switching if i == 3 else AllReduceRound, k) for i, k in enumerate(keys)]
            rounds, results = await run_round(members, services, ROLES, [1.0] * 4, SHARES, correlated_values(4, seed=25),
                                              make_layout("fp16"), round_class=classes)
            cheat = str(members[3].peer_id)
            for i in (0, 1, 2):
                assert cheat in rounds[i].stats.bad_data, (i, rounds[i].stats.bad_data)
                assert not isinstance(results[i], BaseException), results[i]
        finally:
            await shutdown(members)
    asyncio.run(main())


def test_the_audit_service_refuses_what_it_does_not_hold_and_malformed_requests_with_a_reason():
    from swarm.averaging.audits import AUDIT_HANDLER, fetch_material
    from swarm.averaging.commitments import commit
    from swarm.proto import swarm_pb2

    async def main():
        keys, members, services = await start_signing_members(2)
        try:
            store = AuditStore()
            c = commit(keys[0], bytes(16), str(members[0].peer_id), 1.0, {0: [b"a", b"b", b"c"]})
            store.put_contribution(c, 0, [b"a", b"b", b"c"])
            service = AuditService(members[0], store)
            await service.start()
            holder = str(members[0].peer_id)
            got = await fetch_material(members[1], holder, bytes(16), 0, c.digest(), 3, [2, 0])
            assert got.chunks == {2: b"c", 0: b"a"} and got.commitment == c
            for digest, indices, why in ((bytes(32), None, "not held here"), (c.digest(), [5], "chunk not held here")):
                with pytest.raises(LookupError, match=why):
                    await fetch_material(members[1], holder, bytes(16), 0, digest, 3, indices)

            async def malformed():
                yield swarm_pb2.PartChunk(round_id=bytes(16), part=0, data=b"short")

            stream = await members[1].iterate_protobuf_handler(members[0].peer_id, AUDIT_HANDLER, malformed(), swarm_pb2.PartChunk)
            reply = await asyncio.wait_for(anext(stream), 10)
            assert reply.error == "bad request"
        finally:
            await shutdown(members)
    asyncio.run(main())


def test_a_sender_that_signs_a_claim_over_the_ceiling_is_excluded_and_its_commitment_bans_it_everywhere():
    """swarm.averaging.claims: its commitment signs 64000 samples in a run whose ceiling is 4 x 256; every reducer
    excludes it from its part (the result is the others' mean), keeps the commitment as the proof, and a peer outside
    the round that reads it bans the sender too."""
    import functools

    from swarm.averaging.claims import claim_ceiling
    from tests.integration.test_robust_rounds import flat

    async def main():
        keys, members, services = await start_signing_members(4)
        try:
            ceiling = claim_ceiling(256)
            classes = [functools.partial(signing(AllReduceRound, k), claim_ceiling=ceiling) for k in keys]
            values = correlated_values(4, seed=23)
            layout = make_layout("fp16")
            weights = [200.0, 64_000.0, 100.0, 150.0]
            rounds, results = await run_round(members, services, ROLES, weights, SHARES, values, layout, round_class=_PerMember(classes))
            assert not any(isinstance(r, BaseException) for r in results), results
            claimant = str(members[1].peer_id)
            for j in (0, 2, 3):
                assert claimant in rounds[j].stats.excluded and len(rounds[j].stats.overclaims) == 1, rounds[j].stats
            honest = [flat(layout, values[i]) for i in (0, 2, 3)]
            mean = sum(h * w for h, w in zip(honest, (200.0, 100.0, 150.0))) / 450.0
            out = torch.cat([t.reshape(-1) for t in results[0]])
            # its own part (reduced by itself) is the one part its exclusion cannot reach: the others' parts are their mean
            others = torch.cat([torch.cat([out[c.start:c.start + c.length] for c in rounds[0].parts[j]]) for j in (0, 2, 3)])
            expected = torch.cat([torch.cat([mean[c.start:c.start + c.length] for c in rounds[0].parts[j]]) for j in (0, 2, 3)])
            assert torch.allclose(others, expected, atol=2e-2 * float(expected.abs().max())), float((others - expected).abs().max())
            bans = BanList(256)
            assert bans.claim(rounds[0].stats.overclaims) == [claimant]
            outsider = BanList(256)
            for packed in bans.record().claims:
                outsider.consider_claim(packed)
            assert outsider.banned == {claimant}
            for j in (0, 2, 3):   # honest claims under the ceiling prove nothing
                assert all(c.weight <= ceiling for s, c in rounds[j]._commitments.items() if s != 1)
        finally:
            await shutdown(members)
    asyncio.run(main())


class _PerMember(list):
    """run_round indexes round_class per member unless it is a type: partials are callables, not types."""
