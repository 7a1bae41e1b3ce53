"""Seeding: a run started from a checkpoint (`swarm launch --from-checkpoint PATH`).

The coordinator serves the checkpoint's state to the first peers exactly as a peer would: a
`StateServer` (swarm.averaging.state_sync) on the bootstrap node, plus a progress record at the
checkpoint's epoch with `serves_state=True` and the checkpoint's parameter hash. A newcomer then
sees the swarm at that epoch, finds the coordinator among the donors, and downloads and verifies
the state (same hash check as any download).

Why the record says role "trainer" with zero samples: the engine only downloads from donors whose
role is neither client nor aux (an aux peer does not keep the state today), so "trainer" is the
only role a newcomer accepts a state from. Zero samples and zero samples/s leave the batch
arithmetic untouched, and the record's `training` flag is False, so matchmaking neither picks the
coordinator as a leader nor waits for it. The seed still withdraws (publishes `leaving=True`,
which every peer filters out) as soon as a real peer holds the state (any peer at that epoch with
the checkpoint's parameter hash, or any peer beyond that epoch): from then on peers serve
newcomers themselves, and nobody mistakes the coordinator for a member of the swarm.

The same seed serves the newest checkpoint of a running run when the swarm empties (every peer
left or died, coordinator.service `_maybe_reseed`): the next peer then resumes from that epoch
instead of from a fresh model.
"""
from __future__ import annotations

import logging
import time

from swarm.averaging.state_sync import StateServer, TrainingState, params_digest
from swarm.net import records
from swarm.net.node import Node
from swarm.net.records import ProgressRecord

logger = logging.getLogger(__name__)


class StateSeed:
    def __init__(self, node: Node, state: TrainingState, record_ttl: float = 8.0):
        self.node = node
        self.state = state
        self.record_ttl = record_ttl
        count = sum(1 for name in state.tensors if name.startswith("param."))
        params = [state.tensors[f"param.{i}"] for i in range(count)]
        self.params_hash = params_digest(params)
        self.server = StateServer(node.p2p, node.run_id, lambda: self.state, authorizer=getattr(node, "authorizer", None))
        self.active = False
        self.handed_over_at: float | None = None

    async def reseed(self, state: TrainingState) -> None:
        """Serve another state (the newest checkpoint, once the swarm has emptied) on the same handler."""
        self.state = state
        self.params_hash = params_digest([state.tensors[f"param.{i}"] for i in range(sum(1 for n in state.tensors if n.startswith("param.")))])
        self.handed_over_at = None
        self.active = True
        await self._publish(leaving=False)
        logger.info("serving the state of epoch %d (params %s) again: no peer holds it", state.epoch, self.params_hash[:12])

    @property
    def served(self) -> int:
        return self.server.served

    async def start(self) -> None:
        await self.server.start()
        self.active = True
        await self._publish(leaving=False)
        logger.info("serving the state of epoch %d (params %s) to the first peers", self.state.epoch, self.params_hash[:12])

    async def _publish(self, leaving: bool) -> None:
        record = ProgressRecord(
            peer_id=str(self.node.peer_id), epoch=self.state.epoch, samples=0, samples_per_second=0.0, role="trainer",
            upload_bps=0.0, download_bps=0.0, time=time.time(), params_hash=self.params_hash, serves_state=True, leaving=leaving,
        )
        await self.node.store_record(records.progress_key(self.node.run_id), record, self.record_ttl)

    def holders(self, progress: list[ProgressRecord]) -> list[str]:
        """Peers (other than us) that hold this state or a newer one."""
        me = str(self.node.peer_id)
        return [
            p.peer_id for p in progress
            if p.peer_id != me and not p.leaving and p.role != "client"
            and (p.epoch > self.state.epoch or (p.epoch == self.state.epoch and p.params_hash == self.params_hash))
        ]

    async def tick(self, progress: list[ProgressRecord]) -> None:
        """Called after each read of the swarm's records: refresh our record, or withdraw once a peer holds the state."""
        if not self.active:
            return
        holders = self.holders(progress)
        if holders:
            self.active = False
            self.handed_over_at = time.time()
            await self._publish(leaving=True)
            logger.info("peer %s holds the state of epoch %d: the coordinator stops seeding", holders[0][-8:], self.state.epoch)
            return
        await self._publish(leaving=False)
