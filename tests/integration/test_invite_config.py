"""`swarm join INVITE` builds the run's config from the DHT, and only from the record signed by the invite's organizer key.

Plain Nodes on one asyncio loop (no Observer: each Observer's Reaper ends every child of the process when
it closes, so several in one test process would take each other's p2pd down)."""
from __future__ import annotations

import asyncio

import pytest
from hivemind.utils.crypto import RSAPrivateKey

from peers.daemon import config_record
from swarm.config import RunConfig
from swarm.errors import ConfigError
from swarm.net import records
from swarm.net.node import Node, NodeOptions
from swarm.observer import read_run_config

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def test_config_comes_from_the_organizers_record_not_an_impostors():
    organizer = RSAPrivateKey()
    real = RunConfig(run_id="open", task="albert", lr=0.01, task_options={"size": "tiny"}, data_path="/organizer/only")

    async def main():
        coordinator = await Node.create("open", NodeOptions(), organizer)
        maddrs = (await coordinator.visible_maddrs())[:1]
        impostor = await Node.create("open", NodeOptions(initial_peers=maddrs))
        peer = await Node.create("open", NodeOptions(initial_peers=maddrs))
        try:
            key = records.config_key("open")
            assert await coordinator.store_record(key, config_record(real, {"model": "abc"}), ttl=60)
            # an older record (the plain "earliest wins" rule would pick it) from another key, with other hyperparameters
            fake = config_record(real.model_copy(update={"lr": 1.0}), {"model": "abc"}).model_copy(update={"created_at": 0.0})
            assert await impostor.store_record(key, fake, ttl=60)
            everyone = await peer.fetch_records(key, records.ConfigRecord)
            assert min(r.created_at for r in everyone) == 0.0

            got = await read_run_config(peer, organizer.get_public_key().to_bytes())
            assert got.lr == 0.01 and got.task_options == {"size": "tiny"}
            assert got.data_path is None                  # the organizer's data path is not the peers'
            assert got.model_dump(exclude={"data_path"}) == real.model_dump(exclude={"data_path"})
            with pytest.raises(ConfigError, match="no config record signed by its organizer"):
                await read_run_config(peer, RSAPrivateKey().get_public_key().to_bytes(), wait=1.0)
        finally:
            for node in (peer, impostor, coordinator):
                await node.shutdown()

    asyncio.run(main())
