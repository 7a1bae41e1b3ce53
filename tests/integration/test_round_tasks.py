"""A failed round leaves no asyncio task behind: every task a round starts (its exchanges, the consumers of its
incoming streams, its watchers) is owned, and cancelled and awaited when the round ends.

A task nobody awaits that is still pending when its last reference goes is destroyed by the garbage collector with
"Task was destroyed but it is pending!"; a volunteer's log filled with thousands of those on a real model.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import os
import secrets

import pytest

from swarm.averaging.allreduce import AllReduceRound
from swarm.averaging.group import GroupView
from swarm.errors import RoundFailed
from tests.integration.test_allreduce import DeadReducer, make_layout, random_values, shutdown, start_members

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

SWARM_AVERAGING = os.sep + os.path.join("swarm", "averaging") + os.sep


def runs_round_code(task: asyncio.Task) -> bool:
    """Whether the task is suspended anywhere inside swarm.averaging (following the chain of awaits)."""
    frame_owner = task.get_coro()
    seen = 0
    while frame_owner is not None and seen < 100:
        code = getattr(frame_owner, "cr_code", None) or getattr(frame_owner, "ag_code", None) or getattr(frame_owner, "gi_code", None)
        if code is not None and SWARM_AVERAGING in code.co_filename:
            return True
        frame_owner = getattr(frame_owner, "cr_await", None) or getattr(frame_owner, "ag_await", None) or getattr(frame_owner, "gi_yieldfrom", None)
        seen += 1
    return False


class Destroyed(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record):
        if "destroyed but it is pending" in record.getMessage():
            self.lines.append(record.getMessage())


def started_by(task: asyncio.Task, round_: AllReduceRound) -> bool:
    """Whether `round_.run()` started this task: its watcher, its exchanges, the waits for its own part, its link
    meter and its stall watch (not another member's: they share this test's loop)."""
    coro = task.get_coro()
    frame = getattr(coro, "cr_frame", None)
    owner = frame.f_locals.get("self") if frame is not None else None
    name = getattr(coro, "__qualname__", "")
    return (owner is round_ and name in ("AllReduceRound._watch_absent_senders", "AllReduceRound._exchange", "AllReduceRound._exchange_settled")) or (
        name == "Event.wait" and any(owner is event for event in round_._output_ready)) or (
        name == "LinkMeter._sample" and owner is round_._meter) or (name == "StallWatch._tick" and owner is round_._stalls)


async def run_owned(round_: AllReduceRound):
    """run(), and the tasks it started that are still pending at the moment it returns or raises."""
    try:
        return await round_.run(), []
    except RoundFailed as e:
        return e, [t for t in asyncio.all_tasks() if not t.done() and started_by(t, round_)]


def test_a_failed_round_leaves_no_pending_task_behind():
    destroyed = Destroyed()
    logging.getLogger("asyncio").addHandler(destroyed)

    async def main():
        members, services = await start_members(3)
        try:
            layout = make_layout("fp16")
            ids = tuple(str(p.peer_id) for p in members)
            round_id = secrets.token_bytes(16)
            rounds = []
            for i, (p, cls) in enumerate(zip(members, [AllReduceRound, DeadReducer, AllReduceRound])):
                group = GroupView(round_id=round_id, peer_ids=ids, roles=("trainer",) * 3, weights=(1.0,) * 3,
                                  shares=(0.3, 0.4, 0.3), my_index=i, timeout=4.0)
                rounds.append(cls(p, group, layout, layout.flatten(random_values(3, seed=5)[i]), chunk_elements=500,
                                  sender_timeout=3.0))
                services[i].open(rounds[-1])
            outcomes = await asyncio.gather(*(run_owned(r) for r in rounds))
            for i in (0, 2):
                failure, pending = outcomes[i]
                assert isinstance(failure, RoundFailed), failure
                assert not pending, f"member {i}'s run() returned with tasks it started still pending: {pending}"
            # once every round is closed, no stream of theirs waits on: not even the stalled reducer's
            for service in services:
                service.close(round_id)
            del rounds, outcomes
            for _ in range(40):
                await asyncio.sleep(0.1)
                left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and runs_round_code(t)]
                if not left:
                    break
            assert not left, [repr(t) for t in left]
        finally:
            await shutdown(members)

    try:
        asyncio.run(main())
        gc.collect()
    finally:
        logging.getLogger("asyncio").removeHandler(destroyed)
    assert not destroyed.lines, destroyed.lines[:3]
