"""Over a real DHT: nobody can overwrite another peer's record, and malformed records are refused."""
from __future__ import annotations

import asyncio
import time

import pytest
from hivemind.dht.crypto import RSASignatureValidator
from hivemind.utils.crypto import RSAPrivateKey

from swarm.net import records
from swarm.net.node import Node, NodeOptions

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


def progress(peer: str, epoch: int) -> records.ProgressRecord:
    return records.ProgressRecord(peer_id=peer, epoch=epoch, samples=1, samples_per_second=1.0, role="trainer",
                                  upload_bps=1.0, download_bps=1.0, time=time.time())


def test_forged_foreign_and_malformed_records_are_rejected():
    async def main():
        a = await Node.create("run", NodeOptions())
        b = await Node.create("run", NodeOptions(initial_peers=await a.visible_maddrs()))
        try:
            key = records.progress_key("run")
            assert await a.store_record(key, progress("honest", 1), ttl=30)
            # b writes under a's owner subkey: its signature cannot match a's key
            forged = await b.dht.store(key, records.encode(progress("honest", 99)), time.time() + 30, subkey=a.signer.local_public_key)
            assert not forged
            # b signs with a key of its own but pretends the subkey is a's: the signature validator refuses
            impostor = RSASignatureValidator(RSAPrivateKey())
            assert impostor.local_public_key != a.signer.local_public_key
            # malformed value under b's own subkey: the schema validator refuses
            assert not await b.dht.store(key, {"epoch": "lots"}, time.time() + 30, subkey=b.signer.local_public_key)
            assert not await b.dht.store(key, records.encode(progress("x", 1)), time.time() + 30, subkey=b"no-owner")
            # the honest record is still there, unchanged, on both nodes
            for node in (a, b):
                found = await node.fetch_records(key, records.ProgressRecord)
                assert [(r.peer_id, r.epoch) for r in found] == [("honest", 1)]
        finally:
            await b.shutdown()
            await a.shutdown()
    asyncio.run(main())


def test_a_nodes_peer_id_names_its_record_key_and_ban_proofs_reach_other_nodes(tmp_path):
    from swarm.averaging.bans import BanList
    from swarm.averaging.result_statements import sign_statement
    from swarm.net.identity import peer_id_of

    async def main():
        path = str(tmp_path / "identity.key")
        a = await Node.create("run", NodeOptions(identity_path=path))   # the file is written from the record key
        b = await Node.create("run", NodeOptions(initial_peers=await a.visible_maddrs()))
        try:
            for node in (a, b):
                assert peer_id_of(node.signer.local_public_key[len(b"[owner:"):-1]) == str(node.peer_id)
            liar = BanList()
            proof = tuple(sign_statement(a.private_key, bytes(16), 0, str(a.peer_id), bytes([x]) * 32).pack() for x in (1, 2))
            assert liar.accuse([proof]) == [str(a.peer_id)]
            assert await liar.publish(b)
            seen = BanList()
            await seen.refresh(a)
            assert seen.banned == {str(a.peer_id)}
            first_id, first_key = str(a.peer_id), a.signer.local_public_key
        finally:
            await b.shutdown()
            await a.shutdown()
        again = await Node.create("run", NodeOptions(identity_path=path))   # a stable identity keeps its record key
        try:
            assert (str(again.peer_id), again.signer.local_public_key) == (first_id, first_key)
        finally:
            await again.shutdown()
    asyncio.run(main())
