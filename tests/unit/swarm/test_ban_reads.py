"""Robust mode reads the run's ban records beside its rounds (Collaboration._read_bans_aside): a slow read never
holds a round back, reads do not pile up, and what a read brings reaches the auditor."""
from __future__ import annotations

import asyncio

import pytest

from swarm.collaboration import Collaboration

pytestmark = pytest.mark.timeout(30)


class FakeAuditor:
    def __init__(self):
        self.verified = 0

    def verify_pending(self):
        self.verified += 1


def collaboration_with_slow_ban_reads(read_seconds: float) -> tuple[Collaboration, list[str]]:
    c = Collaboration.__new__(Collaboration)
    c._ban_read = None
    c.auditor = FakeAuditor()
    reads: list[str] = []

    async def bans_io(publish: bool) -> None:
        reads.append("publish" if publish else "read")
        await asyncio.sleep(read_seconds)

    c.bans_io = bans_io  # type: ignore[method-assign]
    return c, reads


def test_a_slow_ban_read_runs_beside_the_round_and_reads_do_not_pile_up():
    async def main():
        c, reads = collaboration_with_slow_ban_reads(0.5)
        for _ in range(5):   # five rounds start while the first read is under way (a plain call: no round awaits it)
            c._read_bans_aside()
        await asyncio.sleep(0)
        assert reads == ["read"]                  # one read at a time
        await c._ban_read
        assert c.auditor.verified == 1            # what it read goes to the auditor
        c._read_bans_aside()                      # the next round starts the next read
        await c._ban_read
        assert reads == ["read", "read"] and c.auditor.verified == 2

    asyncio.run(main())
