"""State download over real streams: verified by hash, refused when tampered, spread over donors."""
from __future__ import annotations

import asyncio

import pytest
import torch
from hivemind.p2p import P2P

from swarm.errors import NetworkError, ProtocolError
from swarm.averaging.state_sync import StateServer, TrainingState, download_from_any, download_state

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


def state(epoch=7) -> TrainingState:
    g = torch.Generator().manual_seed(epoch)
    tensors = {"param.0": torch.randn(300, 50, generator=g), "param.1": torch.randn(50, generator=g),
               "opt.0.exp_avg": torch.randn(300, 50, generator=g), "opt.0.step": torch.tensor(12.0),
               "mask": torch.ones(3, dtype=torch.bool), "empty": torch.zeros(0)}
    return TrainingState(epoch=epoch, tensors=tensors, extra={"param_groups": [{"lr": 0.1, "betas": [0.9, 0.99]}]})


class TamperingServer(StateServer):
    """Serves a state whose bytes no longer match the digest it announces."""

    async def _handle(self, request, context):
        async for msg in super()._handle(request, context):
            if msg.data:
                msg.data = bytes([msg.data[0] ^ 1]) + msg.data[1:]
            yield msg


async def pair(server_cls=StateServer, snapshot=state):
    a = await P2P.create()
    b = await P2P.create(initial_peers=await a.get_visible_maddrs())
    server = server_cls(a, "run", snapshot)
    await server.start()
    return a, b, server


def test_download_matches_the_donor_bit_for_bit():
    async def main():
        a, b, server = await pair()
        try:
            got = await download_state(b, "run", str(a.peer_id), min_epoch=7, timeout=20)
            want = state()
            assert got.epoch == 7 and got.extra == want.extra and got.digest() == want.digest()
            for name, t in want.tensors.items():
                assert torch.equal(got.tensors[name], t) and got.tensors[name].dtype == t.dtype
            assert server.served == 1
        finally:
            await b.shutdown(); await a.shutdown()
    asyncio.run(main())


def test_tampered_state_is_refused():
    async def main():
        a, b, _ = await pair(TamperingServer)
        try:
            with pytest.raises(ProtocolError, match="does not match its hash"):
                await download_state(b, "run", str(a.peer_id), min_epoch=0, timeout=20)
        finally:
            await b.shutdown(); await a.shutdown()
    asyncio.run(main())


def test_donor_behind_or_wrong_run_is_refused_and_the_next_donor_is_tried():
    async def main():
        a, b, _ = await pair(snapshot=lambda: state(epoch=3))
        try:
            with pytest.raises(NetworkError, match="refused"):
                await download_state(b, "run", str(a.peer_id), min_epoch=5, timeout=20)
            with pytest.raises(NetworkError):
                await download_state(b, "other-run", str(a.peer_id), min_epoch=0, timeout=20)
            # an unreachable donor first, then a good one: download_from_any gets there
            dead = "12D3KooWHCcrL5hiVJhv5DH7JXyZgckXNry3ab2yXbQfnFe9nGZ3"
            got, donor = await download_from_any(b, "run", [dead, str(a.peer_id)], min_epoch=0, timeout=10, attempts=2)
            assert donor == str(a.peer_id) and got.epoch == 3
        finally:
            await b.shutdown(); await a.shutdown()
    asyncio.run(main())
