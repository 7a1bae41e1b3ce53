"""Calls to a gathering: a leader asks the expected peers that have not joined yet to come now.

Why. A trainer asks to join an epoch's group when *its* estimate of the swarm's samples reaches the target batch
(swarm.averaging.progress), and until peers have averaged together each counts another's claim at most at its own
figure. In a swarm of unequal peers the fastest reach the target first, their group forms without the slower ones,
and those then download the state and lose their work: emulated dedloc-albert's first sparseloco round held 4 of
16 trainers, and the other 12 threw away a minute of inner steps each (benchmarks/README.md, session 22). hivemind's
peers trust every record; we keep the vouching and add the call, so that every peer contributes in proportion to its
samples.

Protocol. CALL_AFTER seconds into a gathering, its leader sends each expected peer that has not asked a RoundCall
(run, epoch). The called peer comes when it is at that epoch with its training begun, the caller is the leader it
would pick itself, and every record's claim (strangers counted in full) puts the swarm at CALL_SHARE of the target
or more; its tracker then reports the epoch ready for a while (ProgressTracker.call), and it answers with the
seconds until its trainer asks (one micro-batch, plus the read matchmaking does first). The leader holds the
gathering for those that come, and while its calls' answers are still coming in (each counted as it arrives), at most
MAX_CALL_WAIT past gather_timeout (and less than its followers' requests wait for an answer), and stops waiting for
those that say a certain no (not training, or past the epoch); any other refusal says "later" (behind the epoch,
following another leader, records far from the target: such a peer may still ask) and is waited for as before. A call that fails changes
nothing: a peer behind NAT cannot be called but can still ask.

What a liar gains: the lowest-id peer with an inflated record can pull honest peers into a round before the target
batch, an early and smaller step; a vouched liar's inflated record can bring that about already. A peer that says it
comes and does not holds one gathering MAX_CALL_WAIT seconds at most.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Callable

from hivemind.p2p import P2P, PeerID

from swarm.averaging.progress import ProgressTracker
from swarm.proto import swarm_pb2

logger = logging.getLogger(__name__)

CALL_HANDLER = "swarm.call"
CALL_AFTER = 0.25      # seconds into a gathering: the peers that became ready with the leader have asked by then
CALL_TIMEOUT = 1.5     # seconds one call may take
MAX_CALLS = 16         # calls under way at once from one gathering
MAX_CALL_WAIT = 8.0    # seconds a gathering may be held past gather_timeout for called peers on their way
JOIN_SLACK = 1.5       # seconds a called peer needs beyond its micro-batch: the read before matchmaking, the request
# A called peer comes only when every record's claim puts the swarm at this share of the target or more: an honest
# leader gathers when its own (vouched) estimate reached the target, so the records show about that much; a lying
# caller with no inflated record gets nobody. Lenient, because far reads make a slow peer's view up to 30 s old.
CALL_SHARE = 0.5


def answer(tracker: ProgressTracker, epoch: int, caller: str, leader: str | None) -> swarm_pb2.RoundCallReply:
    """Whether this peer comes to `caller`'s gathering of `epoch` (`leader`: the leader it would pick itself)."""
    def no(reason: str, later: bool = False) -> swarm_pb2.RoundCallReply:
        return swarm_pb2.RoundCallReply(coming=False, reason=reason, later=later)

    # Only what is certain is a "no" the caller stops waiting for (no training, or past the epoch); anything else says
    # "later" and is waited for as before the call: a peer that submits its rounds by other triggers (a late peer's
    # retry, a benchmark's worker, a loop of its own) may ask although its records are far from the target, and a
    # leader that took "far" for "no" formed its group without the peers a moment slower (emulated hybrid at 10M)
    local = tracker.local
    if tracker.role == "client" or not local.training:
        return no("not training")
    if local.epoch > epoch:
        return no(f"already at epoch {local.epoch}")
    if local.epoch < epoch:
        return no(f"at epoch {local.epoch}", later=True)
    if caller != leader:
        # the caller may be a fallback leader whose followers could not reach ours; were it to stop waiting for us it
        # would form a group of one at once and fail it ("alone": emulated hybrid at 10M, 2 peer-rounds of 72)
        return no("follows another leader", later=True)
    if tracker.estimated_samples(epoch, everyone=True) < CALL_SHARE * tracker.target_batch_size:
        return no("the records are far from the target batch", later=True)
    within = min(max(tracker.micro_batch_seconds, 0.0), MAX_CALL_WAIT) + JOIN_SLACK
    tracker.call(epoch, within + CALL_TIMEOUT)
    return swarm_pb2.RoundCallReply(coming=True, within=within)


async def call_peers(p2p: P2P, peers: list[str], request: Callable[[], swarm_pb2.RoundCall],
                     on_reply: Callable[[str, swarm_pb2.RoundCallReply], None] | None = None) -> dict[str, swarm_pb2.RoundCallReply]:
    """Call each peer (at most MAX_CALLS at once, CALL_TIMEOUT each); the replies of those that answered, each also
    handed to `on_reply` as it arrives."""
    limit = asyncio.Semaphore(MAX_CALLS)
    replies: dict[str, swarm_pb2.RoundCallReply] = {}

    async def one(peer: str) -> None:
        async with limit:
            try:
                reply = await asyncio.wait_for(
                    p2p.call_protobuf_handler(PeerID.from_base58(peer), CALL_HANDLER, request(), swarm_pb2.RoundCallReply), CALL_TIMEOUT)
            except asyncio.CancelledError:
                raise
            except Exception as e:   # unreachable (NAT), gone, or too slow: it may still ask on its own
                logger.debug("call to %s failed: %s", peer[-8:], e)
                return
            replies[peer] = reply
            if on_reply is not None:
                on_reply(peer, reply)

    await asyncio.gather(*(one(p) for p in peers))
    return replies


def promise(reply: swarm_pb2.RoundCallReply, now: float) -> float:
    """When a peer that said it comes should have asked (monotonic), its `within` bounded whatever it sent."""
    within = reply.within if reply.within == reply.within else MAX_CALL_WAIT   # NaN
    return now + min(max(within, 0.0), MAX_CALL_WAIT + JOIN_SLACK)


def held_until(started: float, gather_timeout: float, coming: dict[str, float], asked: set[str], hold: float = MAX_CALL_WAIT,
               *, calling: bool = False) -> float:
    """The end of a gathering: gather_timeout after it started, later for called peers on their way that have not
    asked yet, and while the calls' answers are still coming in (`calling`: who comes is not known yet), at most `hold`
    later (within MAX_CALL_WAIT: the followers' requests wait gather_timeout + request_timeout, and a leader that held
    them longer would be taken for dead). The caller forms the group once every expected peer asked, whatever this says."""
    waiting = [t for peer, t in coming.items() if peer not in asked]
    end = started + gather_timeout
    limit = end + min(max(hold, 0.0), MAX_CALL_WAIT)
    return limit if calling else min(max([end, *waiting]), limit)


def log_replies(epoch: int, replies: dict[str, swarm_pb2.RoundCallReply], called: int) -> None:
    coming = sum(r.coming for r in replies.values())
    logger.info("epoch %d: called %d peers that had not asked: %d coming, %d not, %d did not answer", epoch, called, coming,
                len(replies) - coming, called - len(replies))
