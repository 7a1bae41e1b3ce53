"""Reducer failover: a part whose reducer is lost mid-round is finished by a backup, so the round still commits.

When a member's exchange of part j fails (its reducer died, reset every stream, or went silent past the reply
limit), it asks the part's backup to finish it. The backups of part j are the members that can reduce (not
client-mode), other than j, in the group's order; every member walks that list in the same order, so all ask the
same backup while it answers. The backup is the one place where the part is decided, once (`_decide`):

1. It waits a reply limit for its own exchange of part j to end; if it does not, it gives that exchange up. Then, if
   it does not hold the whole part, it asks every other member that needs the result, and the reducer itself (it
   may be alive: taken for dead behind a congested link), how many of the part's averaged chunks they hold (a
   prefix: chunks arrive in order). Answers are final: a member still receiving the part from its reducer gives
   that up when the part's backup asks, and takes the part through the backups like a lost one; a reducer that has
   not stepped yet answers how much of its part it averaged and hands the part over (AllReduceRound.hand_over: it
   stops averaging and serving it, and takes the backup's result like the others, so what it steps with does not
   depend on its answer reaching the backup).
2. (a) If it or some member (or the reducer) holds the whole part, the reducer's bytes are relayed: the backup
   fetches the chunks it lacks from a holder and serves those bytes. An honest reducer sent the same bytes to
   everyone, so members that got the part from the reducer and members served by the backup hold identical values.
   (b) Otherwise, if every member other than the reducer answered (an answer that breaks the protocol, or a relay
   of bad bytes, counts as a liar's, whose step is no honest one), nobody holds the whole part, so every member
   that needs it is asking the backup: it averages the
   part again from the members' contributions (a round of one part, `AllReduceRound.backup_round`; reducer j's
   contribution left out), and every asking member, holders of some of the old chunks included, takes the
   backup's bytes. A member whose contribution does not reach the backup within the silence limit is left out of
   the part like any failed sender, and still receives it.

A member that cannot obtain the part (every backup failed it) misses it and does not step (RoundFailed names the
part), as before; so does one whose backup could not hear a member other than the reducer (no answer, its round
there over, a relay that broke off): that member may hold the part whole and have stepped with it, and a part
averaged again would split the round (emulated hybrid at 50M, session 28: a backup 6 min into an overloaded round,
its holders' finished rounds forgotten or out of reach, did so). The reducer's own silence is safe: it steps with its
part only once every member that needs it said it holds it (delivery confirmation), and those answer. A member (or
reducer) that stood still for a reply limit mid-round fails its round instead of stepping
(swarm.averaging.stall_watch): a frozen process cannot answer, so it does not count on what it held. A backup
that was asked for a part takes its own decision for it, not an earlier backup's; two backups that each decided
(each unreachable to the other's askers) may still differ.

Wire: the aggregate stream's PartChunk, with `fetch` set and `part` naming a part: `resend` set asks a member what
it holds of the part (`chunk` HOLDINGS: answered with the count as `chunk`) or for its held chunks from `chunk` on
(asked of the part's reducer, by one of its backups only, it is about the reducer's own averaged part); `resend`
unset asks the receiver, a backup of the part, to finish it (then the backup answers as a reducer answers a
fetch: `resend` from the chunk it lacks, then the averaged chunks).

Bounded: each wait has the reply limit of the round's silence limit (swarm.averaging.deadlines); the whole
failover has `failover_limit` for its own steps, and it runs within the round's deadline (never past it). Hostile input: part and chunk indices and
claimed counts are checked against the plan, relayed chunks are size-checked and decoded before use.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import Any, AsyncIterator, Protocol

import torch
from hivemind.p2p import P2P, PeerID

from swarm.averaging.deadlines import reply_timeout
from swarm.averaging.group import GroupView
from swarm.averaging.layout import Chunk, TensorLayout
from swarm.averaging.phase_stats import PhaseStats
from swarm.averaging.streams import AGGREGATE_HANDLER, close_quietly, drain
from swarm.compression.codecs import decode_checked
from swarm.errors import ProtocolError, RoundFailed
from swarm.proto import swarm_pb2


class RoundSide(Protocol):
    """What the failover uses of one member's round (swarm.averaging.allreduce.AllReduceRound, which owns it)."""

    p2p: P2P
    group: GroupView
    layout: TensorLayout
    parts: list[list[Chunk]]
    sender_timeout: float
    stats: PhaseStats
    _held: dict[int, list[bytes]]           # part -> its averaged bytes received so far, in order
    _settled: list[asyncio.Event]           # part -> my exchange of it is over
    _retired: asyncio.Event
    _outputs: list[bytes | None]            # my part's averaged chunks
    _exchanges: dict[int, asyncio.Task]     # part -> my exchange of it
    _handed_over: bool                      # a backup decides my own part
    _own_final: bool                        # I step with my own part as I averaged it
    _lost: dict[int, str]                   # part -> why I did not get it from its reducer
    _part_hashers: dict[int, Any]           # part -> sha256 of its averaged bytes as received
    _held: dict[int, list[bytes]]           # part -> its averaged chunks as received (a prefix)
    backup_bytes: dict[int, list[bytes]]    # part -> the chunks a backup finished it with, as taken (late peers')
    parts: list[list[Chunk]]

    def _store_result(self, chunk: Chunk, values: torch.Tensor) -> None: ...
    def hand_over(self) -> None: ...
    def _sign(self, msg: swarm_pb2.PartChunk) -> None: ...
    def backup_round(self, j: int, backup: int, silence: float, timeout: float) -> "RoundSide": ...
    async def _exchange(self, j: int, fetch_first: bool = False) -> None: ...
    def _serve_fetch(self, first: swarm_pb2.PartChunk, requests: AsyncIterator[swarm_pb2.PartChunk],
                     sender: int) -> AsyncIterator[swarm_pb2.PartChunk]: ...
    async def run(self) -> list[torch.Tensor] | None: ...
    def retire(self) -> None: ...

__all__ = ["HOLDINGS", "PartFailover", "backups", "failover_limit"]

logger = logging.getLogger(__name__)

HOLDINGS = -1   # a relay request for this chunk asks how many chunks of the part the member holds


# Seconds a backup waits for the dead reducer's own answer (what it averaged of its part) when the silence limit is
# longer: a live reducer's aggregate service answers at once, and not hearing it is safe (see FailoverSide._ask).
# Every second of it is a second of the longest stall when a reducer freezes (`swarm chaos`: 3 s here made 11.2 s, the
# goal is 10). A live reducer that answers later only costs its part averaged again by the backup.
OWN_ANSWER_LIMIT = 1.0


def failover_limit(silence: float) -> float:
    """Seconds one failover may take: the backup waits out its own exchange and the holders' answers (a reply limit
    each), then averages the part (one more, and the senders' silence limit), with one reply limit to spare."""
    return 4 * reply_timeout(silence) + silence


def backups(roles: tuple[str, ...], j: int) -> list[int]:
    """Part j's backups in the order every member tries them: members that can reduce, in the group's order."""
    return [i for i, role in enumerate(roles) if i != j and role != "client"]


def _ended(task: asyncio.Task, sub: RoundSide) -> None:
    if not task.cancelled() and task.exception() is not None:   # retrieved here: a member that waits reads it itself
        logger.info("a backup round ended without its part: %s", task.exception())
    sub.retire()


class PartFailover:
    """One member's failover of one round: recovering its lost parts, and serving as a holder or a backup."""

    def __init__(self, round_: RoundSide):
        self.round = round_
        self._decisions: dict[int, asyncio.Task] = {}   # part -> this backup's decision (None: serve the held bytes)
        self._subs: dict[int, RoundSide] = {}           # part -> this backup's round averaging it again
        self._tasks: list[asyncio.Task] = []             # decisions my own recovery started, and the backup rounds
        self._asked_by: int | None = None                # the backup I handed my own part to

    @property
    def _reply(self) -> float:
        return reply_timeout(self.round.sender_timeout)

    def _held_whole(self, j: int) -> bool:
        return len(self.round._held.get(j, ())) == len(self.round.parts[j])

    # -- a member that lost parts ---------------------------------------------------------------------------------

    async def recover(self, parts: list[int]) -> dict[int, str]:
        """Finish each lost part through its backups; returns the parts still missing, with why."""
        outcomes = await asyncio.gather(*(self._recover(j) for j in parts), return_exceptions=True)
        return {j: str(outcome) or type(outcome).__name__ for j, outcome in zip(parts, outcomes) if isinstance(outcome, BaseException)}

    async def _recover(self, j: int) -> None:
        group, me = self.round.group, self.round.group.my_index
        errors = []
        order = backups(group.roles, j)
        first = me if j in self._decisions else self._asked_by if j == me else None
        if first in order:
            # the backup that decides this part: mine (members already take it), or the one my own part went to
            order = [first] + [b for b in order if b != first]
        for backup in order:
            try:
                if backup == me:
                    await self._finish_as_backup(j)
                else:
                    await self._take_from(j, backup)
                logger.info("round %s: part %d finished by backup %s after its reducer was lost", group.round_id.hex()[:8], j,
                            group.peer_ids[backup][-8:])
                return
            except (RoundFailed, ProtocolError) as e:
                errors.append(f"backup {group.peer_ids[backup][-8:]}: {e}")
        raise RoundFailed("; ".join(errors) or "no member can reduce it")

    async def _take_from(self, j: int, backup: int) -> None:
        """Ask `backup` to finish part j, sending it my chunks of the part if it asks for them."""
        r = self.round
        # the backup may first wait out its own exchange and the holders' answers: allow for that before its reply
        silence = self._reply + r.sender_timeout
        sub = r.backup_round(j, backup, silence=silence, timeout=failover_limit(r.sender_timeout))
        try:
            await sub._exchange(backup, fetch_first=True)
        finally:
            r.stats.bytes_sent += sub.stats.bytes_sent
            r.stats.bytes_received += sub.stats.bytes_received
        r._part_hashers[j] = sub._part_hashers.get(backup, hashlib.sha256())
        taken = sub._held.get(backup, [])
        if len(taken) == len(r.parts[j]):   # kept apart from _held (the reducer's bytes, which audits check)
            r.backup_bytes[j] = list(taken)

    async def _finish_as_backup(self, j: int) -> None:
        r = self.round
        decision = self._decide_task(j, owned=True)
        sub = await asyncio.wait_for(asyncio.shield(decision), 3 * self._reply)
        if sub is None:  # the reducer's bytes, held or relayed to me
            self._store_held(j)
            return
        await self._sub_task(j)
        if not all(sub._outputs):
            raise RoundFailed("the backup's part has no contributions")
        hasher = hashlib.sha256()
        for data in sub._outputs:
            hasher.update(data)  # type: ignore[arg-type]
        r._part_hashers[j] = hasher
        r.backup_bytes[j] = list(sub._outputs)  # type: ignore[arg-type]

    def _store_held(self, j: int) -> None:
        r = self.round
        hasher = hashlib.sha256()
        for chunk, data in zip(r.parts[j], r._held[j]):
            r._store_result(chunk, decode_checked(r.layout.codecs[chunk.bucket], data, chunk.length))
            hasher.update(data)
        r._part_hashers[j] = hasher

    # -- the backup's decision ------------------------------------------------------------------------------------

    def _decide_task(self, j: int, owned: bool = False) -> asyncio.Task:
        if j not in self._decisions:
            self._decisions[j] = asyncio.create_task(self._decide(j), name=f"decide-{j}")
            # its failure is read by whoever waits for it; one whose asker gave up is retrieved here, not logged as lost
            self._decisions[j].add_done_callback(lambda task: task.cancelled() or task.exception())
            if owned:
                self._tasks.append(self._decisions[j])
        return self._decisions[j]

    async def _decide(self, j: int) -> RoundSide | None:
        """How this backup finishes part j: None to serve the reducer's bytes (held or relayed), else its round."""
        r = self.round
        await self._settle(j)
        unsure: list[int] = []
        if not self._held_whole(j):
            unsure = await self._relay_from_holders(j)
        if self._held_whole(j):
            return None
        if r._retired.is_set() and r.group.brings(r.group.my_index):
            raise RoundFailed("the backup's round is over")
        if unsure:
            # A member that did not say what it holds may have stepped with the reducer's bytes (a member steps once it
            # holds every part, whatever the others hold): averaging the part again would give the askers other bytes.
            # On emulated hybrid at 50M, a backup that re-averaged 6 min into an overloaded round split it this way.
            names = ", ".join(r.group.peer_ids[i][-8:] for i in unsure)
            raise RoundFailed(f"part {j}: {names} did not say what they hold of it; averaging it again could differ "
                              f"from what they stepped with")
        me = r.group.my_index
        sub = r.backup_round(j, me, silence=r.sender_timeout, timeout=failover_limit(r.sender_timeout))
        self._subs[j] = sub
        self._sub_task(j)
        logger.info("round %s: part %d: nobody holds it whole; averaging it again as its backup", r.group.round_id.hex()[:8], j)
        return sub

    def _sub_task(self, j: int) -> asyncio.Task:
        """The backup's round of part j (started once; its outputs serve every member that asks)."""
        name = f"failover-{j}"
        for task in self._tasks:
            if task.get_name() == name:
                return task
        sub = self._subs[j]
        task = asyncio.create_task(sub.run(), name=name)
        # once over, its part is final: waiting streams get it (or 'part not averaged'), late ones are not asked to send
        task.add_done_callback(lambda done: _ended(done, sub))
        self._tasks.append(task)
        return task

    async def _settle(self, j: int) -> None:
        """End my exchange of part j: wait a reply limit for it to end by itself, then give it up (what I hold of the
        part stays, a prefix). A backup asked for part j decides from final holdings only; a member still receiving
        the reducer's bytes could otherwise step with them while the others take the backup's."""
        r = self.round
        try:
            await asyncio.wait_for(r._settled[j].wait(), self._reply)
            return
        except asyncio.TimeoutError:
            pass
        await self._give_up(j)

    async def _give_up(self, j: int) -> None:
        """Stop receiving part j from its reducer: my round then takes it through the backups (as a lost part)."""
        r = self.round
        task = r._exchanges.get(j)
        if task is None:   # my exchanges have not started (or I send nothing): nothing of the part is held yet
            if not r._settled[j].is_set():
                raise RoundFailed("the part's exchange has not started")
            return
        if not task.done():
            r._lost.setdefault(j, f"reducer {r.group.peer_ids[j][-8:]} taken for dead by a backup; its part handed over")
            logger.info("round %s: part %d: a backup decides it; giving up its reducer's stream", r.group.round_id.hex()[:8], j)
            task.cancel()
        try:
            await asyncio.wait_for(r._settled[j].wait(), self._reply)
        except asyncio.TimeoutError:
            raise RoundFailed("the part's exchange did not end") from None

    async def _relay_from_holders(self, j: int) -> list[int]:
        """Ask the other members (the reducer too: it may be alive, and hold the part whole) what they hold of part j;
        fetch the rest of it from one that holds it whole. Asking makes every member that is still receiving the part
        give that up (final answers only), and the reducer stop averaging a part it has not finished. Returns the
        members other than the reducer that may hold the part whole for all I know (no answer, or a relay that failed);
        the reducer's own silence is safe (delivery confirmation: it steps with its part only once every member that
        needs it said it holds it, and those answer)."""
        r = self.round
        group, me = r.group, r.group.my_index
        others = [i for i in range(len(group.peer_ids)) if i not in (me, j) and group.needs(i)] + [j]
        counts = await asyncio.gather(*(self._ask(i, j, HOLDINGS) for i in others), return_exceptions=True)
        total = len(r.parts[j])
        # a transport failure or a member's own error answer ("unknown or finished round": its round there is over, it
        # may have stepped) leaves it unsure; a malformed answer or bad bytes is a lie, and a liar's step is no honest one
        unsure = [i for i, count in zip(others, counts) if i != j and isinstance(count, BaseException) and not isinstance(count, ProtocolError)]
        for i, count in zip(others, counts):
            if count != [total]:
                continue
            mine = len(r._held.setdefault(j, []))
            try:
                await self._ask(i, j, mine)
                if self._held_whole(j):
                    logger.info("round %s: part %d: relayed from %s, who holds it whole", group.round_id.hex()[:8], j, group.peer_ids[i][-8:])
                    return []
                why, lied = "it sent less than it claimed", True
            except ProtocolError as e:
                why, lied = str(e), True
            except RoundFailed as e:
                why, lied = str(e), False
            del r._held[j][mine:]   # a holder that failed its relay is not trusted with any of it
            logger.info("round %s: part %d: relay from %s failed: %s", group.round_id.hex()[:8], j, group.peer_ids[i][-8:], why)
            if i != j and not lied:
                unsure.append(i)
        return unsure

    async def _ask(self, i: int, j: int, start: int) -> list[int] | None:
        """A relay request to member i for part j: HOLDINGS gives [its count]; a chunk index appends its held chunks
        from there on to mine (checked) and gives None."""
        r = self.round
        group = r.group
        chunks = r.parts[j]

        async def request():
            msg = swarm_pb2.PartChunk(round_id=group.round_id, part=j, chunk=start, sender=group.peer_ids[group.my_index], fetch=True, resend=True)
            r._sign(msg)
            yield msg

        stream = None
        try:
            # a member first waits out its own exchange. The reducer answers at once; not hearing it soon is safe since
            # delivery confirmation: a reducer that stepped with its part did so once every member held it (they answer
            # whole), and one that had not stepped hands the part over when the question reaches it
            # (AllReduceRound._await_deliveries), or fails its round if it stood still (stall_watch)
            async with asyncio.timeout(min(r.sender_timeout, OWN_ANSWER_LIMIT) if i == j else self._reply + r.sender_timeout):
                stream = await r.p2p.iterate_protobuf_handler(PeerID.from_base58(group.peer_ids[i]), AGGREGATE_HANDLER, request(), swarm_pb2.PartChunk)
                if start == HOLDINGS:
                    reply = await anext(stream)
                    if reply.error:   # it cannot say (its round there is over, say): not a lie, but no answer either
                        raise RoundFailed(f"member {group.peer_ids[i][-8:]}: {reply.error}")
                    if reply.part != j or not 0 <= reply.chunk <= len(chunks):
                        raise ProtocolError(f"bad holdings answer for part {j}: {reply.chunk}")
                    return [reply.chunk]
            held = r._held[j]
            while True:
                try:
                    reply = await asyncio.wait_for(anext(stream), self._reply)
                except StopAsyncIteration:
                    break
                if reply.error:
                    raise RoundFailed(reply.error)
                k = len(held)
                if reply.part != j or reply.chunk != k or k >= len(chunks):
                    raise ProtocolError(f"relayed chunk {reply.part}/{reply.chunk}, expected {j}/{k}")
                decode_checked(r.layout.codecs[chunks[k].bucket], reply.data, chunks[k].length)  # size and values checked
                held.append(reply.data)
                r.stats.bytes_received += len(reply.data)
            return None
        except (asyncio.TimeoutError, StopAsyncIteration) as e:
            why = f"no answer for {self._reply:.1f}s" if isinstance(e, asyncio.TimeoutError) else "stream ended early"
            raise RoundFailed(f"member {group.peer_ids[i][-8:]}: {why}") from None
        except (RoundFailed, ProtocolError, asyncio.CancelledError):
            raise
        except Exception as e:  # a refused or reset stream
            raise RoundFailed(f"member {group.peer_ids[i][-8:]}: {type(e).__name__}: {e}") from e
        finally:
            if stream is not None:
                await close_quietly(stream)

    # -- serving: a holder's answer, a backup's part ----------------------------------------------------------------

    async def serve(self, first: swarm_pb2.PartChunk, requests: AsyncIterator[swarm_pb2.PartChunk], sender: int) -> AsyncIterator[swarm_pb2.PartChunk]:
        """A fetch for part `first.part`, which I do not reduce: a backup's relay request, or a member's ask to me as
        the part's backup."""
        r = self.round
        group, me, j = r.group, r.group.my_index, first.part
        if j == me and first.resend and r.parts[j] and sender in backups(group.roles, j):
            async for reply in self._serve_own(first, sender):
                yield reply
        elif not 0 <= j < len(group.peer_ids) or j == me or not r.parts[j] or not group.needs(sender) or (j == sender and first.resend):
            # a reducer that handed its part over asks for it like a member (its ask may come first: a member that
            # gave the part up told the reducer at once, the backup hears of it from that member's own ask)
            yield swarm_pb2.PartChunk(error="bad fetch")
        elif first.resend:
            async for reply in self._serve_held(first, sender):
                yield reply
        elif me not in backups(group.roles, j) or not 0 <= first.chunk < len(r.parts[j]):
            yield swarm_pb2.PartChunk(error="bad fetch")
        else:
            sub = None
            try:
                sub = await asyncio.wait_for(asyncio.shield(self._decide_task(j)), 3 * self._reply)
            except asyncio.TimeoutError:
                yield swarm_pb2.PartChunk(error="backup undecided")
            except asyncio.CancelledError:
                if not self._decisions[j].cancelled():
                    raise
                yield swarm_pb2.PartChunk(error="backup's round is over")
            except (RoundFailed, ProtocolError) as e:
                yield swarm_pb2.PartChunk(error=f"backup failed: {e}")
            else:
                if sub is not None:  # my round of the part: it asks for the member's chunks, then sends the average
                    async for reply in sub._serve_fetch(first, requests, sender):
                        yield reply
                    return
                for k in range(first.chunk, len(r.parts[j])):   # the reducer's bytes, which I hold whole
                    data = r._held[j][k]
                    r.stats.bytes_sent += len(data)
                    yield swarm_pb2.PartChunk(part=j, chunk=k, data=data)
        await drain(requests, r.sender_timeout)  # the asker's end-of-stream (see AllReduceRound.serve)

    async def _serve_own(self, first: swarm_pb2.PartChunk, sender: int) -> AsyncIterator[swarm_pb2.PartChunk]:
        """Answer a backup that took me for dead: how many chunks of my part I averaged (all: it may relay my bytes),
        or those chunks. Unless I already stepped with my part, I hand it over (AllReduceRound.hand_over) and take the
        backup's result like the others, so what I step with does not depend on my answer reaching the backup."""
        r = self.round
        chunks = r.parts[r.group.my_index]
        if not (first.chunk == HOLDINGS or 0 <= first.chunk < len(chunks)):
            yield swarm_pb2.PartChunk(error="bad fetch")
            return
        whole = all(r._outputs)
        if first.chunk == HOLDINGS:
            if not r._own_final and not r._handed_over and not r._retired.is_set():
                logger.info("round %s: backup %s took me for dead; handing my part over", r.group.round_id.hex()[:8],
                            r.group.peer_ids[sender][-8:])
                self._asked_by = sender
                r.hand_over()
            yield swarm_pb2.PartChunk(part=first.part, chunk=len(chunks) if whole else 0)
            return
        if not whole:
            yield swarm_pb2.PartChunk(error="part not averaged")
            return
        for k in range(first.chunk, len(chunks)):
            data = r._outputs[k]
            assert data is not None
            r.stats.bytes_sent += len(data)
            yield swarm_pb2.PartChunk(part=first.part, chunk=k, data=data)

    async def _serve_held(self, first: swarm_pb2.PartChunk, sender: int) -> AsyncIterator[swarm_pb2.PartChunk]:
        """Answer a backup: how many chunks of the part I hold, or those chunks. A member still receiving the part
        from its reducer gives that up when the part's backup asks (see _settle), so its answer is final."""
        r, j = self.round, first.part
        if not (first.chunk == HOLDINGS or 0 <= first.chunk < len(r.parts[j])):
            yield swarm_pb2.PartChunk(error="bad fetch")
            return
        try:
            if sender in backups(r.group.roles, j):
                await self._give_up(j)   # the backup waited for its own exchange already: at once
            else:
                await asyncio.wait_for(r._settled[j].wait(), self._reply)
        except (asyncio.TimeoutError, RoundFailed):
            yield swarm_pb2.PartChunk(error="still receiving the part")
            return
        held = r._held.get(j, [])
        if first.chunk == HOLDINGS:
            yield swarm_pb2.PartChunk(part=j, chunk=len(held))
            return
        for k in range(first.chunk, len(held)):
            r.stats.bytes_sent += len(held[k])
            yield swarm_pb2.PartChunk(part=j, chunk=k, data=held[k])

    # -- ownership ------------------------------------------------------------------------------------------------

    def tasks_of_mine(self) -> list[asyncio.Task]:
        """The decisions this member's own recovery started (run() cancels and awaits them as it ends). A backup's
        round of a part runs on to its own deadline: the members that asked for the part still need it."""
        return [task for task in self._tasks if task.get_name().startswith("decide-")]

    def retire(self) -> None:
        """My round is over: a backup round still running retires when it ends (see _sub_task)."""
        for j, sub in self._subs.items():
            if self._sub_done(j):
                sub.retire()

    def _sub_done(self, j: int) -> bool:
        return any(task.get_name() == f"failover-{j}" and task.done() for task in self._tasks)
