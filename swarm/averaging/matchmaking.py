"""Matchmaking: form one group per epoch with a consistent member list, partition and round id.

Leader protocol. Every peer ranks the reachable (non-client) peers at the epoch by peer
id, using the progress records; the first one it can reach is the leader. Followers send
a JoinRequest to the leader, which holds the requests until every peer it expects (its
own view of the epoch's peers) has joined or `gather_timeout` has passed, then answers
all of them with the same GroupInfo: members sorted by id, LP shares, a random round id
and the all-reduce timeout. So every member of a group sees the same list, partition and
round id, by construction.

Failures. A leader that cannot be reached is skipped (the next candidate leads); a
leader that dies while holding requests makes each follower's request time out
(`gather_timeout + request_timeout`) and the follower retries with the next candidate,
within the round's deadline. A peer accepts leadership only when every candidate below it
has failed for it, so two leaders at once need a real partition or views that missed each
other (newcomers whose records had not spread): a leader that sees a lower trainer at the
epoch just before forming steps aside and its followers are told whom to follow (a hint
they add to their candidates). Even then each group is internally consistent, and the
parameter-hash check in the optimizer re-syncs the minority afterwards.
"""
from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
from dataclasses import dataclass, field
from typing import Callable

from hivemind.p2p import P2P, P2PContext, PeerID

from swarm.averaging import calls
from swarm.averaging.balancing import MemberLink, optimal_shares, uniform_shares
from swarm.averaging.deadlines import round_limits
from swarm.averaging.progress import ProgressTracker
from swarm.averaging.subgroups import DEFAULT_MAX_GROUP_SIZE, hierarchy_seconds, plan_hierarchy
from swarm.errors import LateForGroup, RoundFailed, describe
from swarm.net import records
from swarm.net.auth import SwarmAuthorizer
from swarm.proto import swarm_pb2

logger = logging.getLogger(__name__)

JOIN_HANDLER = "swarm.join"
# A newcomer behind NAT knows the others' ids from the DHT records before its libp2p DHT finds their addresses: every
# candidate fails with "routing: not found" within a millisecond and it missed the first round (emulated hybrid, 2 runs
# of 3). Until its first group with another peer it asks such a candidate again every ROUTE_RETRY seconds, for at most
# gather_timeout + ROUTE_PATIENCE seconds in its whole life: a record of a peer id that exists nowhere (swarm attack's
# inflated_samples) then costs an honest peer that once. Asked again at every epoch it cost 7 s per epoch (reverted
# in 71797e0). A dead peer fails otherwise (its address is known: the dial is refused) and is passed over at once.
ROUTE_RETRY = 0.5
ROUTE_PATIENCE = 5.0


MAX_WEIGHT = float(records.MAX_COUNT)   # a member's weight is its sample count: finite, never above 2**53


def unroutable(e: BaseException) -> bool:
    """Whether a call failed because our p2pd knows no address of the peer (not because the peer refused or died)."""
    return "routing: not found" in str(e)


def valid_weight(weight: float) -> bool:
    """Finite, non-negative and bounded: an infinite weight makes every reduced chunk inf/inf = NaN."""
    return math.isfinite(weight) and 0 <= weight <= MAX_WEIGHT


def group_problem(info: swarm_pb2.GroupInfo) -> str:
    """What makes a leader's GroupInfo unusable ('' when nothing): its weights feed our reductions unchecked."""
    if not info.members or len(info.members) > records.MAX_MEMBERS:
        return f"{len(info.members)} members"
    for m in info.members:
        if not valid_weight(m.weight):
            return f"weight {m.weight} of {m.peer_id[-8:]}"
        if not (math.isfinite(m.upload_bps) and math.isfinite(m.download_bps)):
            return f"bandwidth of {m.peer_id[-8:]} is not finite"
    if len(info.shares) != len(info.members) or not all(math.isfinite(w) and -1e-6 <= w <= 1 + 1e-6 for w in info.shares):
        return "bad shares"
    if not any(w > 0 for w in info.shares):
        return "nobody reduces"
    if not (math.isfinite(info.timeout) and 0 < info.timeout <= records.MAX_SECONDS):
        return f"timeout {info.timeout}"
    if info.max_group_size == 1 or info.max_group_size > records.MAX_MEMBERS:
        return f"max group size {info.max_group_size}"
    return ""


# Robust mode's checks compare members: CenteredClip needs a majority of honest contributions to find their centre,
# and a result hash tells a lying reducer apart only when a second honest member holds the same part. In a group of
# two, a bad member reduces half the vector for both and nothing outvotes it (seen: tests/integration/
# test_byzantine_bans, a first group of the attacker and one honest peer poisoned that peer). Three members that
# bring gradients is the least group in which one bad member is outnumbered.
ROBUST_MIN_TRAINERS = 3


ROBUST_SHORT = "robust mode needs"   # how robust_group_problem's reason begins (a follower recognises the refusal)


# Seconds a leader keeps, of its first follower's wait, for the group's answer to reach it (a slow link, a loaded host)
ANSWER_MARGIN = 0.5


def robust_group_problem(roles: list[str], min_trainers: int = ROBUST_MIN_TRAINERS) -> str:
    """Why robust mode must not average in a group of members with these roles ('' when it may): more than one
    member, but too few that bring gradients for one bad member to be outvoted. A group of one steps solo (nobody
    else's values in it)."""
    trainers = sum(role != "aux" for role in roles)
    if len(roles) > 1 and trainers < min_trainers:
        return f"{ROBUST_SHORT} {min_trainers} trainers in a group to outvote a bad member, this group of {len(roles)} has {trainers}"
    return ""


@dataclass
class _Gathering:
    epoch: int
    started: float = field(default_factory=time.monotonic)
    leading: bool = False
    requests: dict[str, swarm_pb2.JoinRequest] = field(default_factory=dict)
    formed: asyncio.Future | None = None
    timeout: float = 0.0   # the formed group's all-reduce deadline
    coming: dict[str, float] = field(default_factory=dict)   # called peers on their way -> when they should have asked
    declined: set[str] = field(default_factory=set)          # called peers that will not come (not waited for)
    calling: bool = False   # our calls to the missing peers are under way (their answers not all in)

    def end(self, gather_timeout: float, hold: float) -> float:
        return calls.held_until(self.started, gather_timeout, self.coming, set(self.requests), hold, calling=self.calling)


class Matchmaker:
    def __init__(
        self,
        p2p: P2P,
        run_id: str,
        tracker: ProgressTracker,
        schema_hash: bytes | None = None,
        vector_bytes: Callable[[], int] = lambda: 0,
        *,
        gather_timeout: float = 3.0,
        request_timeout: float = 5.0,
        allreduce_timeout: float = 30.0,
        sender_timeout: float = 5.0,
        balance: bool = True,
        authorizer: SwarmAuthorizer | None = None,
        max_group_size: int = DEFAULT_MAX_GROUP_SIZE,
    ):
        self.p2p, self.run_id, self.tracker = p2p, run_id, tracker
        self.authorizer = authorizer  # invite-only runs: requests are signed, and unauthorized ones refused
        self.schema_hash = schema_hash
        self.vector_bytes = vector_bytes
        self.gather_timeout, self.request_timeout, self.allreduce_timeout = gather_timeout, request_timeout, allreduce_timeout
        self.sender_timeout = sender_timeout   # floors of the group's limits (swarm.averaging.deadlines)
        self.chunk_bytes: Callable[[], int] = lambda: 0
        self.balance = balance
        self.max_group_size = max_group_size   # above it, groups average hierarchically (swarm.averaging.hierarchy)
        self.peer_id = str(p2p.peer_id)
        self._gatherings: dict[int, _Gathering] = {}
        self._failed: dict[int, set[str]] = {}
        self._hints: dict[int, set[str]] = {}   # leaders named by a candidate that stepped aside for them
        self._grouped = False   # once in a group with another peer, our p2pd can route to the swarm
        self._unrouted_since: float | None = None   # the first unroutable candidate asked again (see ROUTE_PATIENCE)
        self._joined: dict[int, swarm_pb2.GroupInfo] = {}   # epoch -> the group we joined as a follower (late askers get it)
        self._closers: set[asyncio.Task] = set()  # _close_after_timeout tasks: owned here, ended by stop()
        self.banned: set[str] = set()   # peers proven to break the protocol (swarm.averaging.bans): never in a group
        self.min_trainers = 1   # robust mode: ROBUST_MIN_TRAINERS (a smaller group of several is refused, see _short)

    async def start(self) -> None:
        await self.p2p.add_protobuf_handler(JOIN_HANDLER, self._handle_join, swarm_pb2.JoinRequest)
        await self.p2p.add_protobuf_handler(calls.CALL_HANDLER, self._handle_call, swarm_pb2.RoundCall)

    async def stop(self) -> None:
        """End the tasks that close gatherings on time (cancelled and awaited)."""
        closers, self._closers = list(self._closers), set()   # and the calls of gatherings
        for task in closers:
            task.cancel()
        await asyncio.gather(*closers, return_exceptions=True)

    def set_schema(self, schema_hash: bytes, vector_bytes: Callable[[], int], chunk_bytes: Callable[[], int] = lambda: 0) -> None:
        """Called once the tensors to average are known; until then join requests get NOT_LEADER. The sizes set the
        formed groups' time limits."""
        self.schema_hash, self.vector_bytes, self.chunk_bytes = schema_hash, vector_bytes, chunk_bytes

    # -- candidates ---------------------------------------------------------------------------------------

    def _candidates(self, epoch: int) -> list[str]:
        """Possible leaders, lowest id first: reachable peers at the epoch or (stale record) just before it. Before
        them, peers we averaged with that are one epoch ahead: the epoch's group formed without us (a micro-batch
        of a large model outlasts the gathering), and any of its members names it for the late path."""
        failed = self._failed.get(epoch, set())
        view = self.tracker.view
        ids = {p.peer_id for p in view.training_at(epoch) + view.training_at(epoch - 1) if p.role != "client"}
        ids |= self._hints.get(epoch, set())
        if self.tracker.role != "client":
            ids.add(self.peer_id)
        return self._ahead(epoch) + sorted(ids - failed - self.banned)

    def _ahead(self, epoch: int) -> list[str]:
        """Peers we averaged with (a stranger's epoch claim is not enough) whose records show the next epoch."""
        failed = self._failed.get(epoch, set())
        trusted = self.tracker.trusted()
        return sorted(p.peer_id for p in self.tracker.view.training_at(epoch + 1)
                      if p.peer_id != self.peer_id and p.peer_id not in failed | self.banned
                      and (trusted is None or p.peer_id in trusted))

    def _lower_leader(self, epoch: int) -> str | None:
        """A reachable trainer at the epoch with a lower id than ours, in our view: the leader we should follow."""
        failed = self._failed.get(epoch, set())
        lower = sorted(p.peer_id for p in self.tracker.view.training_at(epoch)
                       if p.role != "client" and p.peer_id < self.peer_id and p.peer_id not in failed and p.peer_id not in self.banned)
        return lower[0] if lower else None

    def _expected(self, epoch: int) -> set[str]:
        """Who the leader waits for: peers at the epoch, and peers whose record still shows the epoch
        before (most have just stepped and not yet republished; one that really lags costs gather_timeout).
        Newcomers included: a leader that waited only for peers it had averaged with never let a newcomer in, and the
        newcomer chased the swarm by state downloads (a ghost record costs a round gather_timeout instead)."""
        view = self.tracker.view
        ids = {p.peer_id for p in view.training_at(epoch) + view.training_at(epoch - 1)} - self._failed.get(epoch, set()) - self.banned
        return ids | {self.peer_id}

    def _hold(self) -> float:
        """Seconds a gathering may be held past gather_timeout for called peers on their way: a follower's request
        waits gather_timeout + request_timeout for our answer (form_group), so one second less than that."""
        return max(0.0, self.request_timeout - 1.0)

    def _missing(self, g: _Gathering) -> set[str]:
        """The expected peers that have not asked to join the gathering, less those that said they will not come."""
        return self._expected(g.epoch) - g.declined - set(g.requests)

    def _begin(self, g: _Gathering) -> None:
        """We lead this gathering from now on; the expected peers that have not asked by CALL_AFTER are called."""
        g.leading, g.started = True, time.monotonic()
        g.calling = True   # until _call_missing has its answers (or finds nobody to call)
        if self.peer_id not in g.requests:
            # a follower's request made us lead before our own trainer asked: it is called like the others (the slowest
            # peer of emulated dedloc-albert led the first round and downloaded the state after it)
            reply = calls.answer(self.tracker, g.epoch, self.peer_id, self.peer_id)
            if reply.coming:
                g.coming[self.peer_id] = calls.promise(reply, g.started)
        self._own(self._call_missing(g), f"matchmaking-call-{g.epoch}")

    def _own(self, coroutine, name: str) -> None:
        task = asyncio.create_task(coroutine, name=name)
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)

    async def _call_missing(self, g: _Gathering) -> None:
        try:
            await asyncio.sleep(calls.CALL_AFTER)
            peers = sorted(self._missing(g) - {self.peer_id})
            if g.formed.done() or not peers:
                return

            def request() -> swarm_pb2.RoundCall:
                message = swarm_pb2.RoundCall(run_id=self.run_id, epoch=g.epoch)
                if self.authorizer is not None:
                    self.authorizer.sign_message(message, self.p2p.peer_id)
                return message

            def answered(peer: str, reply: swarm_pb2.RoundCallReply) -> None:
                # each answer counts as it comes: calling 59 peers 16 at a time took longer than gather_timeout at 64
                # peers on 2 cores, and a gathering that learned who comes only from the last answer had formed without
                # them (24 of 64 at the median, the rest late: benchmarks/README.md, session 26)
                if reply.coming:
                    g.coming[peer] = calls.promise(reply, time.monotonic())
                elif not reply.later:
                    g.declined.add(peer)

            replies = await calls.call_peers(self.p2p, peers, request, on_reply=answered)
            calls.log_replies(g.epoch, replies, len(peers))
        finally:
            g.calling = False

    async def _handle_call(self, request: swarm_pb2.RoundCall, context: P2PContext) -> swarm_pb2.RoundCallReply:
        # refusals of the call itself say `later`: the caller then waits for us as it would have without calling
        if self.authorizer is not None:
            problem = self.authorizer.check_message(request, context.remote_id)
            if problem is not None:
                return swarm_pb2.RoundCallReply(reason=f"unauthorized: {problem}", later=True)
        caller = str(context.remote_id)
        if request.run_id != self.run_id or caller in self.banned or self.schema_hash is None:
            return swarm_pb2.RoundCallReply(reason="not this run, banned, or not training yet", later=True)
        candidates = self._candidates(request.epoch)
        reply = calls.answer(self.tracker, request.epoch, caller, candidates[0] if candidates else None)
        logger.debug("epoch %d: called by %s: %s", request.epoch, caller[-8:], "coming" if reply.coming else reply.reason)
        return reply

    def _gathering(self, epoch: int) -> _Gathering:
        g = self._gatherings.get(epoch)
        if g is not None and g.formed.done() and time.monotonic() - g.started > self.gather_timeout + max(self.allreduce_timeout, g.timeout):
            g = None  # that group's round is over by now: a retry of the epoch gathers anew
        if g is None:
            g = self._gatherings[epoch] = _Gathering(epoch, formed=asyncio.get_running_loop().create_future())
            for old in [e for e in self._gatherings if e < epoch - 2]:
                self._gatherings.pop(old)
                self._failed.pop(old, None)
                self._hints.pop(old, None)
        return g

    def round_failed(self, epoch: int) -> None:
        """Forget the epoch's formed group so that a retry gathers a new one at once."""
        g = self._gatherings.get(epoch)
        if g is not None and g.formed.done():
            self._gatherings.pop(epoch, None)

    def pass_over(self, epoch: int, leader: str, why: str) -> None:
        """Do not follow this leader again at this epoch (until `alone` forgets the epoch's failures)."""
        logger.info("epoch %d: passing over leader %s: %s", epoch, leader[-8:], why)
        self._failed.setdefault(epoch, set()).add(leader)

    def alone(self, epoch: int) -> None:
        """We formed (or were given) a group of one although other trainers were seen: forget the epoch's group and
        the candidates that failed us, so that the next attempt asks every candidate again (two peers that each
        marked the other failed would otherwise each lead a group of one, for the rest of the epoch)."""
        self.round_failed(epoch)
        self._failed.pop(epoch, None)

    # -- follower / leader entry point ---------------------------------------------------------------------

    async def form_group(self, request: swarm_pb2.JoinRequest, deadline: float) -> swarm_pb2.GroupInfo:
        """Join the group of `request.epoch`; returns an ACCEPTED GroupInfo or raises RoundFailed."""
        epoch = request.epoch
        try:  # a fresh view makes every peer pick the same leader
            await asyncio.wait_for(self.tracker.refresh(), 2.0)
        except Exception as e:
            logger.debug("refresh before matchmaking failed: %s", e)
        patience: dict[str, float] = {}
        detour: set[str] = set()   # leaders that refused us a short robust group in this attempt
        while time.monotonic() < deadline:
            candidates = [c for c in self._candidates(epoch) if c not in detour]
            if not candidates:
                await self.tracker.wait_refresh(0.5)
                continue
            leader = candidates[0]
            if leader == self.peer_id:
                group = await self._lead(request, deadline)
                if group is not None:
                    self._formed(group)
                    return group
                continue  # stepped aside for a lower peer: follow it
            try:
                timeout = min(self.gather_timeout + self.request_timeout, max(0.1, deadline - time.monotonic()))
                reply = await asyncio.wait_for(
                    self.p2p.call_protobuf_handler(PeerID.from_base58(leader), JOIN_HANDLER, self._signed(request), swarm_pb2.GroupInfo),
                    timeout,
                )
            except asyncio.CancelledError:
                raise
            except Exception as e:
                if unroutable(e) and self._ask_again(epoch, leader):
                    await asyncio.sleep(ROUTE_RETRY)
                    continue
                logger.info("epoch %d: leader candidate %s unreachable (%s), trying the next", epoch, leader[-8:], describe(e))
                self._failed.setdefault(epoch, set()).add(leader)
                continue
            if reply.status == swarm_pb2.GroupInfo.REJECTED and reply.reason.startswith(ROBUST_SHORT):
                # a robust leader with too few trainers: the trainers it lacks may follow another leader (one that bans
                # a peer this leader does not: two such halves each refusing a group of two stalled a run for good in
                # test_byzantine_bans). Try the next candidate in this attempt; the next attempt starts from the lowest
                # again (remembered for the epoch, honest peers that were only late scattered over several leaders)
                logger.info("epoch %d: leader %s refused a short group (%s); trying the next candidate", epoch, leader[-8:], reply.reason)
                detour.add(leader)
                continue
            if reply.status == swarm_pb2.GroupInfo.ACCEPTED:
                problem = group_problem(reply)
                if problem:
                    logger.warning("epoch %d: leader %s sent a bad group (%s), trying the next", epoch, leader[-8:], problem)
                    self._failed.setdefault(epoch, set()).add(leader)
                    continue
                self._formed(reply)
                self._joined[epoch] = reply
                for old in [e for e in self._joined if e < epoch - 2]:
                    self._joined.pop(old)
                return reply
            if reply.status == swarm_pb2.GroupInfo.NOT_LEADER:
                if reply.leader and reply.leader != leader and reply.leader not in self._failed.get(epoch, set()):
                    self._hints.setdefault(epoch, set()).add(reply.leader)  # it stepped aside for a peer we may not see yet
                # the candidate is alive but not leading (yet): it may be finishing its previous step.
                # Give it gather_timeout, then move on so one lagging peer cannot stall the swarm.
                first_refusal = patience.setdefault(leader, time.monotonic())
                if time.monotonic() - first_refusal > self.gather_timeout:
                    self._failed.setdefault(epoch, set()).add(leader)
                await asyncio.sleep(0.1)
                continue
            if reply.status == swarm_pb2.GroupInfo.TOO_LATE and reply.round_id and not group_problem(reply):
                raise LateForGroup(f"the group of epoch {epoch} formed without this peer", reply)
            if reply.status == swarm_pb2.GroupInfo.TOO_LATE and leader in self._ahead(epoch):
                self._failed.setdefault(epoch, set()).add(leader)   # it stepped without knowing the group: ask the next
                continue
            raise RoundFailed(f"leader {leader[-8:]} refused: {swarm_pb2.GroupInfo.Status.Name(reply.status)} {reply.reason}")
        raise RoundFailed(f"no group formed for epoch {epoch} before the deadline")

    def _formed(self, group: swarm_pb2.GroupInfo) -> None:
        """A group we lead or joined: its members' progress counts from now on, and with another peer in it our p2pd
        can route to the swarm (no more patience for unroutable candidates)."""
        self.tracker.vouch([m.peer_id for m in group.members])
        self._grouped = self._grouped or len(group.members) > 1

    def _ask_again(self, epoch: int, leader: str) -> bool:
        """Whether to ask a candidate our p2pd has no address for again (ROUTE_PATIENCE says when and why)."""
        if self._grouped:
            return False
        now = time.monotonic()
        if self._unrouted_since is None:
            self._unrouted_since = now
            logger.info("epoch %d: no address of leader candidate %s yet: asking again", epoch, leader[-8:])
        return now - self._unrouted_since < self.gather_timeout + ROUTE_PATIENCE

    def _signed(self, request: swarm_pb2.JoinRequest) -> swarm_pb2.JoinRequest:
        """A copy with a fresh signature (each send needs its own nonce)."""
        if self.authorizer is None:
            return request
        signed = swarm_pb2.JoinRequest()
        signed.CopyFrom(request)
        self.authorizer.sign_message(signed, self.p2p.peer_id)
        return signed

    async def _lead(self, request: swarm_pb2.JoinRequest, deadline: float) -> swarm_pb2.GroupInfo | None:
        """Gather and form the epoch's group; None when a lower peer turned up meanwhile (we follow it instead)."""
        g = self._gathering(request.epoch)
        if g.formed.done():
            late = self._formed_without(request.epoch)
            if late is not None:
                raise LateForGroup(f"the group of epoch {request.epoch} formed without this peer", late)
            raise RoundFailed("this epoch's group was already formed without this peer")
        if not g.leading:
            self._begin(g)
        self.tracker.poke()
        g.requests[self.peer_id] = request
        logger.debug("epoch %d: leading matchmaking", request.epoch)
        gather_end = min(deadline, g.end(self.gather_timeout, self._hold()))
        # A short robust group whose expected trainers have not all asked waits for them longer, while its followers'
        # requests hold (they wait gather_timeout + request_timeout): refused at gather_end, its follower led a
        # gathering of its own, stepped aside for us, and reached our next gathering after it had closed short again,
        # round after round (test_byzantine_bans[lying_reducer] under CI's load)
        # (from the gathering's own end, not the held one: the first follower's request waits from g.started)
        short_end = min(deadline, g.started + self.gather_timeout + max(0.0, self.request_timeout - 1.0))
        while True:
            now, missing = time.monotonic(), bool(self._missing(g))
            gather_end = min(deadline, g.end(self.gather_timeout, self._hold()))   # called peers on their way hold it
            if not ((now < gather_end and (missing or self._short(g))) or (now < short_end and missing and self._short(g))):
                break
            await asyncio.sleep(0.05)   # a short group waits the whole gathering: trainers still finishing may join
        if self.tracker.view.epoch > request.epoch:
            g.formed.set_result(swarm_pb2.GroupInfo(status=swarm_pb2.GroupInfo.TOO_LATE, epoch=g.epoch, reason="the swarm moved on", leader=self.peer_id))
            raise RoundFailed(f"the swarm moved past epoch {request.epoch} while the group gathered")
        # the first follower waits gather_timeout + request_timeout from its request (at or after g.started) for our
        # answer, and the gathering held up to a second before that: a refresh of a full second here answered it after
        # it had given up and led a gathering of its own, while our group counted it ("never connected" everywhere:
        # emulated hybrid 10M, session 23). The refresh takes what is left before that, less the answer's way back.
        refresh_for = min(1.0, g.started + self.gather_timeout + self.request_timeout - ANSWER_MARGIN - time.monotonic())
        if time.monotonic() - self.tracker.view.fetched_at > 0.5 and refresh_for > 0.05:
            try:  # records of peers that joined while we gathered (see _step_aside)
                await asyncio.wait_for(self.tracker.refresh(), refresh_for)
            except Exception as e:
                logger.debug("refresh before forming the group failed: %s", e)
        if self._step_aside(g):
            return None
        reason = self._unformable(g)
        if reason:
            g.formed.set_result(swarm_pb2.GroupInfo(status=swarm_pb2.GroupInfo.REJECTED, epoch=g.epoch, reason=reason, leader=self.peer_id))
            self.round_failed(g.epoch)
            raise RoundFailed(f"epoch {g.epoch}: {reason}; not averaging")
        group = self._make_group(g)
        g.formed.set_result(group)
        return group

    def _step_aside(self, g: _Gathering) -> bool:
        """Two peers whose views missed each other (newcomers whose records had not spread yet) would each lead a
        group for the same epoch, and the two groups would commit it to different parameters. Before forming, a
        leader that now sees a lower trainer at the epoch hands the gathering over: its followers get NOT_LEADER
        naming that peer, and it follows that peer itself."""
        lower = self._lower_leader(g.epoch)
        if lower is None:
            return False
        logger.info("epoch %d: %s leads (lower id, seen while gathering); following it", g.epoch, lower[-8:])
        g.formed.set_result(swarm_pb2.GroupInfo(status=swarm_pb2.GroupInfo.NOT_LEADER, epoch=g.epoch, reason="a lower peer leads", leader=lower))
        if self._gatherings.get(g.epoch) is g:
            self._gatherings.pop(g.epoch)
        self._hints.setdefault(g.epoch, set()).add(lower)
        return True

    def _unformable(self, g: _Gathering) -> str:
        """Why the gathered requests must not form a group ('' if they may)."""
        if not any(r.role != "aux" for r in g.requests.values()):
            # auxiliary peers alone have nothing to average; such a group, once formed, answered the epoch's trainers
            # "formed without you" until it expired, and a trainer that cannot take a late result (streaming DiLoCo)
            # failed every attempt (seen on emulated dedloc-albert: the swarm stuck at one epoch for the whole run)
            return "no member brings gradients"
        return robust_group_problem([r.role for r in g.requests.values()], self.min_trainers) if self._short(g) else ""

    def _short(self, g: _Gathering) -> bool:
        """Whether the gathered requests make a group of several with fewer trainers than min_trainers."""
        return self.min_trainers > 1 and bool(robust_group_problem([r.role for r in g.requests.values()], self.min_trainers))

    def _make_group(self, g: _Gathering) -> swarm_pb2.GroupInfo:
        reqs = [g.requests[k] for k in sorted(g.requests)]
        links = [
            MemberLink(
                upload_bps=max(r.upload_bps, 1.0),
                download_bps=max(r.download_bps, 1.0),
                brings_gradients=r.role != "aux",
                needs_result=r.role != "aux",
                can_reduce=r.role != "client",
            )
            for r in reqs
        ]
        try:
            if self.balance:
                shares, _ = optimal_shares(self.vector_bytes(), links)
            else:
                shares = uniform_shares(links)
        except ValueError as e:  # nobody can reduce, or nobody brings values
            logger.warning("epoch %d: cannot form a group: %s", g.epoch, e)
            shares = [0.0] * len(reqs)
        limits = round_limits(self.vector_bytes(), links, shares, chunk_bytes=self.chunk_bytes(),
                              floor_silence=self.sender_timeout, floor_averaging=self.allreduce_timeout)
        plan = plan_hierarchy([r.role for r in reqs], shares, self.max_group_size) if any(shares) else None
        g.timeout = hierarchy_seconds(limits, plan, links, self.vector_bytes(), chunk_bytes=self.chunk_bytes(),
                                      floor_silence=self.sender_timeout, floor_averaging=self.allreduce_timeout)
        info = swarm_pb2.GroupInfo(
            status=swarm_pb2.GroupInfo.ACCEPTED,
            round_id=secrets.token_bytes(16),
            epoch=g.epoch,
            shares=[float(s) for s in shares],
            timeout=g.timeout,
            leader=self.peer_id,
            max_group_size=self.max_group_size if plan is not None else 0,
        )
        for r in reqs:
            info.members.add(peer_id=r.peer_id, role=r.role, weight=r.weight, upload_bps=r.upload_bps, download_bps=r.download_bps)
        logger.debug("epoch %d: formed group of %d (predicted %.2fs, deadline %.1fs, silence %.1fs%s)", g.epoch, len(reqs),
                     limits.predicted, g.timeout, limits.silence, f", {len(plan.subgroups)} subgroups" if plan else "")
        return info

    # -- handler ----------------------------------------------------------------------------------------------

    async def _handle_join(self, request: swarm_pb2.JoinRequest, context: P2PContext) -> swarm_pb2.GroupInfo:
        def refuse(status: int, reason: str = "") -> swarm_pb2.GroupInfo:
            return swarm_pb2.GroupInfo(status=status, epoch=request.epoch, reason=reason, leader=self.peer_id)

        if self.authorizer is not None:
            problem = self.authorizer.check_message(request, context.remote_id)
            if problem is not None:
                logger.info("refused a join request from %s: %s", str(context.remote_id)[-8:], problem)
                return refuse(swarm_pb2.GroupInfo.REJECTED, f"unauthorized: {problem}")
        if request.run_id != self.run_id:
            return refuse(swarm_pb2.GroupInfo.REJECTED, "wrong run")
        if request.peer_id != str(context.remote_id):
            return refuse(swarm_pb2.GroupInfo.REJECTED, "peer id does not match the connection")
        if request.peer_id in self.banned:
            return refuse(swarm_pb2.GroupInfo.REJECTED, "banned: it signed two different results for one part")
        # the fields' bounds first: they hold whatever state this peer is in
        if request.role not in ("trainer", "client", "aux") or not valid_weight(request.weight):
            return refuse(swarm_pb2.GroupInfo.REJECTED, "bad role or weight")
        if not all(math.isfinite(b) and 0 <= b <= records.MAX_BPS for b in (request.upload_bps, request.download_bps)):
            return refuse(swarm_pb2.GroupInfo.REJECTED, "bad bandwidth")
        if self.schema_hash is None:
            return refuse(swarm_pb2.GroupInfo.NOT_LEADER, "not training yet")
        if request.schema_hash != self.schema_hash:
            return refuse(swarm_pb2.GroupInfo.REJECTED, "tensor schema differs from this run's")
        my_epoch = self.tracker.local.epoch
        if request.epoch < my_epoch:
            return self._formed_without(request.epoch) or refuse(swarm_pb2.GroupInfo.TOO_LATE, f"swarm is at epoch {my_epoch}")
        if request.epoch > my_epoch:
            return refuse(swarm_pb2.GroupInfo.NOT_LEADER, "leader is behind")
        g = self._gathering(request.epoch)
        if g.formed.done():
            return self._formed_without(request.epoch) or refuse(swarm_pb2.GroupInfo.TOO_LATE, "group already formed")
        if not g.leading:
            candidates = self._candidates(request.epoch)
            if not candidates or candidates[0] != self.peer_id:
                refusal = refuse(swarm_pb2.GroupInfo.NOT_LEADER)
                if candidates:
                    refusal.leader = candidates[0]  # whom we follow: the asker may not see that peer yet
                return refusal
            self._begin(g)
            self._own(self._close_after_timeout(g), f"matchmaking-close-{g.epoch}")
        g.requests[request.peer_id] = request
        return await asyncio.shield(g.formed)

    def _formed_without(self, epoch: int) -> swarm_pb2.GroupInfo | None:
        """TOO_LATE naming the epoch's formed group, so that a late peer can fetch the group's averaged result from its
        reducers (`LateForGroup`) instead of failing its round; None when no group of that epoch formed here."""
        g = self._gatherings.get(epoch)
        if g is not None and g.formed.done() and not g.formed.cancelled():
            formed = g.formed.result()
        else:
            formed = self._joined.get(epoch)   # we followed: the leader's group, as it sent it to us
        if formed is None or formed.status != swarm_pb2.GroupInfo.ACCEPTED:
            return None
        late = swarm_pb2.GroupInfo()
        late.CopyFrom(formed)
        late.status, late.reason = swarm_pb2.GroupInfo.TOO_LATE, "group already formed"
        return late

    async def _close_after_timeout(self, g: _Gathering) -> None:
        """A leader that leads before its own trainer is ready still forms the group on time."""
        while time.monotonic() < g.end(self.gather_timeout, self._hold()) and not g.formed.done():
            if not self._missing(g) and self.peer_id in g.requests:
                return  # _lead will form it
            await asyncio.sleep(0.05)
        if not g.formed.done() and self.peer_id not in g.requests:
            if self.tracker.view.epoch > g.epoch or self.tracker.local.epoch > g.epoch:
                # the swarm (or this peer, by a state download) moved on while the group gathered: a group formed
                # now would commit the epoch a second time, to different parameters (seen by swarm chaos)
                g.formed.set_result(swarm_pb2.GroupInfo(status=swarm_pb2.GroupInfo.TOO_LATE, epoch=g.epoch, reason="the swarm moved on", leader=self.peer_id))
                return
            if len(g.requests) < 2 or self._unformable(g):
                # one follower is no group: it would step alone, and this gathering, formed without our trainer, would
                # refuse the epoch to both until it expires; so would auxiliary peers alone, or too few trainers for
                # robust mode. Gather anew: the followers ask again, our trainer joins.
                g.formed.set_result(swarm_pb2.GroupInfo(status=swarm_pb2.GroupInfo.NOT_LEADER, epoch=g.epoch, reason="gathering again", leader=self.peer_id))
                if self._gatherings.get(g.epoch) is g:
                    self._gatherings.pop(g.epoch)
                return
            if not self._step_aside(g):
                g.formed.set_result(self._make_group(g))
