"""Delivery confirmation (swarm.averaging.allreduce.AllReduceRound._await_deliveries): a reducer steps with its part
as it averaged it only once every member that needs the part said it holds it whole, and hands the part over when a
member says it takes the part through a backup instead. Without it a reducer that stepped while a member was still
receiving could not follow that member to a backup: a backup that cannot hear the reducer averages the part again,
and the reducer alone holds other bytes. Real P2P members on loopback (tests.integration.test_reducer_failover's
live round)."""
from __future__ import annotations

import asyncio
import time

import pytest
import torch

from swarm.averaging.allreduce import AllReduceRound
from tests.integration.test_reducer_failover import LosesItsReducer, SlowAllGather, check_survivors_agree, live_reducer_round

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

REDUCER = 1


class Timed:
    """Records when its exchange of each part settled and when its run() returned."""

    def _init_times(self):
        if not hasattr(self, "settled_at"):
            self.settled_at, self.returned_at = {}, None

    async def _exchange_settled(self, j):
        self._init_times()
        try:
            await super()._exchange_settled(j)
        finally:
            self.settled_at[j] = time.monotonic()

    async def run(self):
        self._init_times()
        try:
            return await super().run()
        finally:
            self.returned_at = time.monotonic()


class TimedSlowReducer(Timed, SlowAllGather):
    delay = 0.3


class TimedMember(Timed, AllReduceRound):
    pass


class TimedLoser(Timed, LosesItsReducer):
    after = 0.8


def test_a_reducer_steps_with_its_part_only_once_every_member_holds_it():
    """Reducer 1 sends its averaged chunks slowly (a congested uplink); it averaged its part long before the last
    member holds it, and must not return from its round before then: every member said it holds the part."""
    async def main():
        n = 4
        classes = {i: TimedMember for i in range(n)} | {REDUCER: TimedSlowReducer}
        rounds, results, values, layout, weights = await live_reducer_round(n, classes, seed=70)
        check_survivors_agree(rounds, results, values, layout, weights, REDUCER, in_own_part=True, in_others=True)
        reducer = rounds[REDUCER]
        assert len(reducer.parts[REDUCER]) >= 3, "the part must take several slow chunks"
        # a member's exchange settles once the reducer closed the stream after its last word: within moments of the
        # reducer's return. Without delivery confirmation the reducer returns a slow chunk or more (0.3 s each) early.
        last_holder = max(rounds[i].settled_at[REDUCER] for i in range(n) if i != REDUCER)
        assert reducer.returned_at >= last_holder - 0.1, ("the reducer stepped before every member held its part",
                                                          last_holder - reducer.returned_at)
        assert reducer._delivered == {i for i in range(n) if i != REDUCER} and not reducer._handed_over
        assert all(not r.stats.recovered_parts for r in rounds.values())
    asyncio.run(main())


def test_a_member_that_leaves_a_live_reducers_part_makes_the_reducer_hand_it_over():
    """Member 3 gives reducer 1's part up while the reducer, alive and slow, is still sending it; its last word on the
    stream says so, and the reducer hands its part over instead of stepping with it: every member, the reducer
    included, takes the part through the backup, and all hold bitwise-identical results."""
    async def main():
        n = 4
        classes = {i: TimedMember for i in range(n)} | {REDUCER: TimedSlowReducer, 3: TimedLoser}
        rounds, results, values, layout, weights = await live_reducer_round(n, classes, seed=71)
        assert not any(isinstance(r, BaseException) for r in results.values()), {
            i: r for i, r in results.items() if isinstance(r, BaseException)}
        outs = list(results.values())   # the part relayed or averaged again: which, depends on who held it whole
        assert all(torch.equal(a, b) for other in outs[1:] for a, b in zip(outs[0], other))
        reducer = rounds[REDUCER]
        assert 3 in reducer._gave_up and reducer._handed_over, (reducer._gave_up, reducer._delivered)
        assert reducer.stats.recovered_parts == [REDUCER]
        assert len({tuple(r.stats.part_hashes.items()) for r in rounds.values()}) == 1
    asyncio.run(main())
