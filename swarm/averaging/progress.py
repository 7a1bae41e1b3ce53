"""Progress tracking: when does the swarm have a global batch?

Each peer publishes a signed ProgressRecord (epoch, samples accumulated, samples/s, role,
bandwidth) and reads everyone's. No single record decides anything:

- the swarm's epoch is vouched for (`swarm_epoch`): the highest epoch that someone holds and
  that is at most one above an epoch two other distinct peers have reached (one other peer alone
  is believed only when it is the only one we see). A peer that fell one epoch behind still sees
  its group's new epoch; a record claiming epoch 10**9 moves nobody who sees two honest peers, and
  a claimant whose state cannot be downloaded is ignored for a minute (`distrust`), which also
  frees a peer that sees no one else;
- the progress is the sum of the samples of the peers at that epoch that took part in a group
  with us (`vouch`, called by matchmaking), extrapolated with each one's samples/s since the
  moment *we* fetched its record (our clock only, so a peer whose clock is off by minutes changes
  nothing). A record from a peer that never averaged with us adds no samples, so inflated claims
  cannot trigger a global step before the real members have the target batch. The price: until
  a peer has averaged once, only its own samples count for it, so a new swarm's first round
  waits until a peer alone has the target batch.

The global batch is ready when that estimate reaches `target_batch_size`. The refresh period
adapts: it is a fraction of the estimated time to the target, within [min_refresh, max_refresh].
Our record is published every period (a reader's estimate lags by the age of the record it read), but
far from the target only every third of the time to it, up to MAX_PUBLISH, with a lifetime to match (below); a
change readers act on at once (a new epoch, training begun, leaving) is published at once.
The records are read at a third of the estimated time to the target too, but within [min_read (or
READ_SECONDS_PER_PEER per peer seen, if longer: a read's bytes grow with N, their rate must not), max_read]
unless poked: between reads the estimate is extrapolated from the rates, so reading more
often only shows a joining or leaving peer sooner (matchmaking reads on its own before it forms a
group; joining, a step, a state download and a failed round poke a read), and far from the target
nothing waits on the view. A read costs every record (about 1 KB each) from each replica asked, a
publish one record per replica: reads are the control plane's bulk. So `max_read` is long (30 s):
an idle swarm, or DiLoCo's inner phase of minutes, reads twice a minute instead of every 2 s (16
idle peers sent 76 KB/s each, 97% of it reads), while a round seconds away is read every third of
its distance as before. An aggregator of the summaries (below) reads every `record_ttl / 4`, so that
its summary never goes stale for the readers.

With `summaries` on (EngineConfig.progress_summaries, off by default), a swarm of at least
`summaries.MIN_PEERS` peers reads a few aggregators' compact summaries instead (swarm.averaging.summaries):
only the window's aggregators read every record; the view is the summaries' merge (a peer most list, each
number's median) plus our own record, and every check above (quorum epoch, vouching) runs on it unchanged.
With fewer than `summaries.QUORUM` fresh summaries a read falls back to every record.
"""
from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Collection

from swarm.averaging import summaries as summary
from swarm.errors import describe
from swarm.net import clock, records
from swarm.net.contacts import keep_in_touch
from swarm.net.detached import DetachedCalls
from swarm.net.node import Node
from swarm.net.records import ProgressRecord, ProgressSummary

logger = logging.getLogger(__name__)


VOUCH_FOR = 600.0      # seconds a group member's samples count after its last round with us
SUMMARY_READ_TIMEOUT = 1.5   # seconds a read of the progress summaries may take before we read every record
# A refresh joins a read of the records begun at most this many seconds before it, else starts one beside it
# (swarm.net.detached). A store always starts anew: it carries our record as it is now (a step's new epoch, say).
READ_JOIN_WITHIN = 2.0
# Seconds between reads while no peer reports a rate (the time to the target is unknown): far reads are for a round
# that is known to be far, and a swarm waiting for its peers (start_together, swarm attack's --wait-peers) waits on
# the view (30 s reads held a 4-peer test's start for 30 s)
UNKNOWN_ETA_READ = 2.0
# From this many peers in the view on, reads and publishes go to the key's replicas as last found (swarm.net.replicas):
# a full read or a blind store traverses a beam of up to 20 nodes, and a full read takes every record from each. Below
# it, a traversal visits every node anyway, and its FINDs keep every pair of peers in touch. With replica reads at 3
# peers, tests/chaos/test_network_cut.py failed 3 times in 6 (0 in 4 without): each time the cut peer and a member
# had not connected within sender_timeout ("never connected") when the link went down, so no member held the cut
# reducer's part whole, and its re-averaging by a backup ended after one member's deadline (not fixed: issue 14).
REPLICAS_MIN_PEERS = 8
# Seconds the last group we averaged in says how many records a read should find at least (a minute of churn, or an
# epoch of a real model, can thin the swarm below it legitimately: then the view's own count takes over)
GROUP_COUNTS_FOR = 60.0
READ_SECONDS_PER_PEER = 0.05   # the shortest period of reads, per peer in the view (16 peers: 0.8 s, 64: 3.2 s)
QUORUM = 2             # distinct peers that must reach an epoch before it is the swarm's (minus the one-epoch lead)
# Far from the target our record is published every third of the time to it, up to this many seconds (an idle swarm,
# DiLoCo's inner phase of minutes), and lives PUBLISHED_TTLS periods (at least `record_ttl`): a record written at a
# time to target `eta` expires after about 0.83 eta, before the round it could be counted in, so a peer that dies
# far from the target is forgotten before that round as it is near it. Every 2 s for nobody was most of an idle
# peer's control traffic and the p2p daemons' CPU (benchmarks/README.md, session 20).
MAX_PUBLISH = 15.0
# ...and near it no more often than every second: readers extrapolate our samples with our rate between publishes,
# and each publish is a DHT traversal and a store on every replica (~10 calls through two p2p daemons each): at a
# third of the distance down to 0.2 s, publishes were 25 of a training peer's 43 calls a second at 16 peers
PUBLISH_FLOOR = 1.0
PUBLISHED_TTLS = 2.5
TIMER_SLACK = 0.02     # seconds: a turn that wakes this early for a publish or read still counts it as due


def _log_store_failure(done: asyncio.Future) -> None:
    if not done.cancelled() and done.exception() is not None:
        logger.warning("progress publish failed: %s", describe(done.exception()))


def swarm_epoch(epochs: list[int], quorum: int = QUORUM) -> int:
    """The swarm's epoch from the epochs of distinct voters: the highest one held that is at most one above the
    highest epoch `quorum` voters have reached (fewer voters than `quorum`: all of them must have reached it)."""
    if not epochs:
        return 0
    ranked = sorted(epochs, reverse=True)
    base = ranked[min(quorum, len(ranked)) - 1]
    return max(e for e in ranked if e <= base + 1)


@dataclass(frozen=True)
class SwarmView:
    """A snapshot of everyone's progress, as fetched at `fetched_at` (local monotonic clock)."""

    epoch: int
    peers: tuple[ProgressRecord, ...]
    fetched_at: float

    def at_epoch(self, epoch: int) -> list[ProgressRecord]:
        return [p for p in self.peers if p.epoch == epoch and not p.leaving]

    def training_at(self, epoch: int) -> list[ProgressRecord]:
        """Peers at the epoch whose optimizer is attached (they can lead and join rounds)."""
        return [p for p in self.at_epoch(epoch) if p.training]

    def samples_at(self, epoch: int, now: float, exclude: str = "", trusted: Collection[str] | None = None,
                   stranger_cap: float = 0.0) -> float:
        """Samples the peers at `epoch` have accumulated by `now`, extrapolated by their rates: in full for those in
        `trusted` (everyone if None), at most `stranger_cap` each for the others."""
        elapsed = max(0.0, now - self.fetched_at)
        return self._bounded_sum(epoch, exclude, trusted, stranger_cap, lambda p: p.samples + p.samples_per_second * elapsed)

    def rate_at(self, epoch: int, exclude: str = "", trusted: Collection[str] | None = None, stranger_cap: float = 0.0) -> float:
        return self._bounded_sum(epoch, exclude, trusted, stranger_cap, lambda p: p.samples_per_second)

    def _bounded_sum(self, epoch: int, exclude: str, trusted: Collection[str] | None, cap: float,
                     value: Callable[[ProgressRecord], float]) -> float:
        total = 0.0
        for p in self.at_epoch(epoch):
            if p.peer_id != exclude:
                total += value(p) if trusted is None or p.peer_id in trusted else min(value(p), cap)
        return total


@dataclass
class LocalProgress:
    """What this peer reports; written by the training thread, read by the engine loop."""

    epoch: int = 0
    samples: int = 0
    samples_per_second: float = 0.0
    params_hash: str = ""
    leaving: bool = False
    training: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


class ProgressTracker:
    def __init__(
        self,
        node: Node,
        target_batch_size: int,
        role: str,
        bandwidth: Callable[[], tuple[float, float]],
        *,
        min_refresh: float = PUBLISH_FLOOR,
        max_refresh: float = 2.0,
        min_read: float = 0.2,
        max_read: float = 30.0,
        record_ttl: float = 8.0,
        serves_state: bool = True,
        direct_stores: bool = False,
        replicas: bool = True,
        summaries: bool = False,
        summary_min_peers: int = summary.MIN_PEERS,
    ):
        self.node = node
        self.target_batch_size = target_batch_size
        self.role = role
        self.bandwidth = bandwidth
        self.min_refresh, self.max_refresh, self.record_ttl = min_refresh, max_refresh, record_ttl
        self.min_read, self.max_read = min_read, max_read
        self.direct_stores = direct_stores   # off: with them, newcomers of the join-storm test saw one donor (see below)
        self.serves_state = serves_state
        # reads and stores on the key's replicas as last found, without a traversal each (swarm.net.replicas)
        self.replicas = replicas
        self.summaries = summaries   # read aggregators' summaries instead of every record (swarm.averaging.summaries)
        self.summary_min_peers = summary_min_peers
        self.reads = {"full": 0, "summary": 0, "aggregated": 0, "partial": 0}   # how each refresh read the swarm (partial: not applied)
        self.local = LocalProgress()
        self.states_asked: Callable[[], int] = lambda: 0   # the state server's count (set by the Collaboration)
        self.peer_id = str(node.peer_id)
        self._view = SwarmView(epoch=0, peers=(), fetched_at=time.monotonic())
        self.fetched = False   # whether a view of the swarm came from the DHT yet (an empty one is not "alone")
        self._changed = asyncio.Event()
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._summarizing: asyncio.Task | None = None   # an aggregator's summary being stored
        # reads and stores under way, not cancelled by their callers' timeouts (swarm.net.detached)
        self._reads = DetachedCalls(self._refresh, join_within=READ_JOIN_WITHIN, name="progress-read")
        self._stores = DetachedCalls(self.publish, join_within=0.0, name="progress-store")
        self._applied_from = -math.inf   # when the read that gave our view began (monotonic): an older one is stale
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._recent: dict[str, float] = {}       # peer id -> when its record was last seen (monotonic)
        self._last_touch = 0.0
        self._company_at: float | None = None      # when a view last showed another training peer (monotonic)
        self._vouched: dict[str, float] = {}       # peer id -> until when its samples count (it averaged with us)
        self._last_group: tuple[int, float] = (0, -math.inf)   # the last group's size and when it formed (see _expected_peers)
        self._partial_at = -math.inf   # when a read last found too few records to be applied (see _refresh)
        self._last_vouch: float | None = None      # when a group last formed with us (monotonic)
        self._distrusted: dict[str, float] = {}    # peer id -> until when its epoch claim is ignored
        # when our last published record expires (clock.now()): a replica keeps a subkey's record with the latest
        # expiration, so each publish must expire after the one before it, or it would be refused
        self._expires = -math.inf
        self._published: tuple | None = None       # the fields of our last published record that readers act on
        self._published_at = -math.inf             # when that publish began (monotonic)
        # a leader's call to its gathering (swarm.averaging.calls): (epoch, until when it counts as ready, monotonic)
        self._called: tuple[int, float] = (-1, -math.inf)
        self.micro_batch_seconds = 0.0   # the trainer's last interval between micro-batches (set by the optimizer)

    # -- called from the training thread (thread-safe) ------------------------------------------------

    def report(self, *, epoch: int | None = None, samples: int | None = None, samples_per_second: float | None = None, params_hash: str | None = None) -> None:
        with self.local.lock:
            if epoch is not None:
                self.local.epoch = epoch
            if samples is not None:
                self.local.samples = samples
            if samples_per_second is not None:
                self.local.samples_per_second = samples_per_second
            if params_hash is not None:
                self.local.params_hash = params_hash

    def seconds_alone(self) -> float:
        """Seconds since a view last showed another training peer; inf if none ever did (the run's first peer)."""
        return float("inf") if self._company_at is None else time.monotonic() - self._company_at

    def vouch(self, peer_ids: Collection[str]) -> None:
        """These peers formed a group with us: their progress counts towards the global batch from now on, for
        VOUCH_FOR seconds or three of the run's gaps between groups, whichever is longer (a real model's epochs can
        take longer than VOUCH_FOR)."""
        now = time.monotonic()
        gap = now - self._last_vouch if self._last_vouch is not None else 0.0
        self._last_vouch = now
        self._last_group = (len(set(peer_ids) | {self.peer_id}), now)
        until = now + max(VOUCH_FOR, 3 * gap)
        for pid in peer_ids:
            self._vouched[pid] = max(until, self._vouched.get(pid, until))   # a quick retry shortens no vouch

    def distrust(self, peer_id: str, seconds: float) -> None:
        """Ignore this peer's epoch claim for `seconds` (it could not serve the state of the epoch it claims)."""
        self._distrusted[peer_id] = time.monotonic() + seconds

    def trusted(self) -> Collection[str] | None:
        """Peers whose samples count; None (everyone) for an auxiliary peer, which brings no samples and only
        needs to know when trainers are about to average."""
        if self.role == "aux":
            return None
        now = time.monotonic()
        # a copy first: the engine loop adds to it while the training thread asks
        return {pid for pid, until in list(self._vouched.items()) if until > now}

    def global_epoch(self) -> int:
        return max(self.view.epoch, self.local.epoch)

    def estimated_samples(self, epoch: int, now: float | None = None, *, everyone: bool = False) -> float:
        """Samples the swarm at `epoch` holds by `now`: ours, the vouched-for peers' and strangers' within their cap, or
        with `everyone` every record's claim as it is (what the swarm may hold, for the read cadence only)."""
        now = time.monotonic() if now is None else now
        own = self.local.samples if self.local.epoch == epoch else 0
        trusted = None if everyone else self.trusted()
        return own + self.view.samples_at(epoch, now, exclude=self.peer_id, trusted=trusted, stranger_cap=self._stranger_cap(trusted, own))

    @staticmethod
    def _stranger_cap(trusted: Collection[str] | None, own: float) -> float:
        """What one stranger's claim (a peer that never averaged with us) may count for. Before anybody is vouched for
        (a fresh run, a lone newcomer) at most our own figure: the first peers reach the batch together, not each one
        alone, and a false claim brings the first round forward by one share at most. Afterwards nothing: the batch
        is never a stranger's claim (a newcomer counts once it has averaged with us)."""
        return own if trusted is not None and not trusted else 0.0

    def eta(self, epoch: int, *, everyone: bool = False) -> float:
        """Seconds until the swarm at `epoch` reaches the target batch (0 when it has); with `everyone`, by every
        record's claim (see estimated_samples)."""
        missing = self.target_batch_size - self.estimated_samples(epoch, everyone=everyone)
        if missing <= 0:
            return 0.0
        own = self.local.samples_per_second if self.local.epoch == epoch else 0.0
        trusted = None if everyone else self.trusted()
        rate = self.view.rate_at(epoch, exclude=self.peer_id, trusted=trusted, stranger_cap=self._stranger_cap(trusted, own)) + own
        return missing / rate if rate > 0 else float("inf")

    @property
    def view(self) -> SwarmView:
        return self._view

    @view.setter
    def view(self, view: SwarmView) -> None:
        self._view = view
        self.fetched = True

    def ready(self, epoch: int) -> bool:
        """Whether the swarm has the epoch's batch. Never before the first fetch of the swarm's records: a peer
        (re)joining a running swarm would otherwise see nobody, take its own samples for the batch and step alone
        from epoch 0 before it learns where the swarm is. Also ready: an epoch whose gathering called us (`call`)."""
        if not self.fetched:
            return False
        called, until = self._called
        return (called == epoch and time.monotonic() < until) or self.estimated_samples(epoch) >= self.target_batch_size

    def call(self, epoch: int, seconds: float) -> None:
        """A leader is gathering the epoch's group and asked us to come (swarm.averaging.calls decided we do): the
        epoch counts as ready for `seconds`, and the view is read now."""
        self._called = (epoch, time.monotonic() + seconds)
        self.poke()

    # -- engine loop --------------------------------------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name="progress-tracker")

    async def stop(self, withdraw: bool = True) -> None:
        self._stopping = True
        if self._summarizing is not None:
            self._summarizing.cancel()
        self._reads.cancel()
        self._stores.cancel()
        if self._task is not None:
            self._task.cancel()
            # hivemind's DHT calls can absorb a cancellation; never let that hold up leaving
            await asyncio.wait({self._task}, timeout=2.0)
        if withdraw:
            self.local.leaving = True
            try:
                await asyncio.wait_for(self.publish(), 3)
            except Exception as e:  # leaving anyway: the record expires by itself
                logger.debug("could not withdraw progress record: %s", e)

    def poke(self) -> None:
        """Publish and refresh now (after a step, a state download, a failed round). Safe from any thread."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._wake.set()
        else:  # the training thread: asyncio events are not thread-safe
            loop.call_soon_threadsafe(self._wake.set)

    def own_record(self) -> ProgressRecord:
        up, down = self.bandwidth()
        with self.local.lock:
            return ProgressRecord(
                peer_id=self.peer_id,
                epoch=self.local.epoch,
                samples=int(records.bounded(self.local.samples, records.MAX_COUNT)),
                samples_per_second=records.bounded(self.local.samples_per_second, records.MAX_RATE),
                role=self.role,  # type: ignore[arg-type]
                upload_bps=records.bounded(up, records.MAX_BPS),
                download_bps=records.bounded(down, records.MAX_BPS),
                time=clock.now(),
                params_hash=self.local.params_hash,
                serves_state=self.serves_state,
                leaving=self.local.leaving,
                training=self.local.training,
                states_asked=int(records.bounded(self.states_asked(), records.MAX_COUNT)),
            )

    async def publish(self) -> None:
        record = self.own_record()
        # Once we read the records, our reads keep the key's replica holders in the routing table: a direct store
        # (swarm.net.direct_store) skips the traversal whose FINDs read every record again. Off by default: with it,
        # the join-storm test's newcomers sometimes saw one up-to-date donor only (2 runs of 17): the nodes our
        # routing table names are not always the ones a newcomer's read asks. Withdrawing always takes the full path.
        direct = self.direct_stores and self.fetched and not record.leaving
        # A store's traversal reads no record (swarm.net.direct_store.store_blind): hivemind's store reads every record
        # from each replica on its way, which made a publish cost as much as a read (with reads far from the target
        # every 30 s, 16 idle peers' publishes were still 44 of their 47 KB/s). It reaches the nodes a reader asks.
        blind = not direct and not record.leaving
        # Better still: one STORE on each replica as last found, the traversal once per replicas.REFRESH seconds (a
        # withdrawal too: it must reach the nodes that readers ask)
        replicas = self._on_replicas() and not direct
        now = clock.now()
        ttl = max(self.record_ttl, PUBLISHED_TTLS * self._publish_period(), self._expires - now + 0.05)
        self._expires = now + ttl
        self._published, self._published_at = self._material(record), time.monotonic()
        await self.node.store_record(records.progress_key(self.node.run_id), record, ttl, direct=direct, blind=blind,
                                     replicas=replicas, timeout=self.record_ttl / 2)

    def _on_replicas(self) -> bool:
        """Whether reads and publishes go to the replicas as last found: on, and a swarm of REPLICAS_MIN_PEERS or more."""
        return self.replicas and sum(1 for p in self._view.peers if not p.leaving) >= REPLICAS_MIN_PEERS

    @staticmethod
    def _material(record: ProgressRecord) -> tuple:
        """What a reader acts on at once (a round's members, a donor, who left), as opposed to the samples it
        extrapolates between our publishes."""
        return record.epoch, record.training, record.leaving, record.role, record.serves_state, record.params_hash

    async def refresh(self) -> SwarmView:
        """Read the swarm's records into `view` (and return it). A caller that stops waiting leaves the read under way
        (swarm.net.detached); a read that ends after a newer one did leaves the newer view in place."""
        return await self._reads()

    async def _refresh(self) -> SwarmView:
        began = time.monotonic()
        found, age = await self._read()
        now = time.monotonic()
        if began < self._applied_from:
            return self.view
        if len(found) < self._expected_peers() / 2 and now - self.view.fetched_at < self.record_ttl:
            # A read that found fewer than half the records expected (a traversal cut short at load, replicas that
            # hold few) is not the swarm. The last view stands until its records would have expired anyway, so a
            # swarm that did shrink shows within record_ttl.
            self.reads["partial"] += 1
            self._partial_at = now   # the loop's next read is a period away, as after one applied
            return self.view
        self._applied_from = began
        peers = tuple(p for p in found if not p.leaving)
        self._distrusted = {pid: until for pid, until in self._distrusted.items() if until > now}
        epoch = swarm_epoch([p.epoch for p in peers if p.peer_id not in self._distrusted and p.peer_id != self.peer_id])
        self.view = SwarmView(epoch=epoch, peers=peers, fetched_at=now - age)
        for p in peers:
            self._recent[p.peer_id] = now
            if p.training and p.peer_id != self.peer_id:
                self._company_at = now
        self._changed.set()
        self._changed = asyncio.Event()
        return self.view

    async def _read(self) -> tuple[list[ProgressRecord], float]:
        """The swarm's records and their age in seconds: every record, or the merge of fresh summaries when summaries
        are on and the swarm is large enough (an aggregator of the window reads every record and publishes them)."""
        ids = {p.peer_id for p in self._view.peers if not p.leaving} | {self.peer_id}
        if not self.summaries or len(ids) < self.summary_min_peers:
            self.reads["full"] += 1
            return await self._read_all(), 0.0
        now = clock.now()
        allowed = summary.chosen(self.node.run_id, now, ids)
        if self.peer_id in allowed:
            found = await self._read_all()
            if self._summarizing is None or self._summarizing.done():   # beside the refresh: it must not delay our view
                self._summarizing = asyncio.create_task(self._publish_summary(found, allowed[self.peer_id]), name="progress-summary")
            self.reads["aggregated"] += 1
            return found, 0.0
        for latest in (False, True):   # the first replica that answers; then every node of a bucket
            try:   # bounded, so that the full read still fits in the refresh's time
                usable = await asyncio.wait_for(self._read_summaries(allowed, latest), SUMMARY_READ_TIMEOUT)
            except asyncio.TimeoutError:
                logger.debug("no progress summary within %.1f s: reading every record", SUMMARY_READ_TIMEOUT)
                break
            if len(usable) >= summary.QUORUM:
                merged = [p for p in summary.merge(usable) if p.peer_id != self.peer_id] + [self.own_record()]
                self.reads["summary"] += 1
                return merged, max(0.0, clock.now() - summary.read_time(usable))
        self.reads["full"] += 1
        return await self._read_all(), 0.0

    async def _read_all(self) -> list[ProgressRecord]:
        # A replica read is taken for the swarm only with at least half the records expected; the DHT's routing table
        # bounds that from below too: a peer whose view never grew (it expected little, so small answers from replicas
        # that hold few passed) kept a view of 1 peer in a swarm of 64 whose nodes its routing table held. Only here:
        # nodes of the DHT that are not this run's peers would otherwise keep a small run's reads from applying at all.
        known = getattr(self.node, "dht_peers", lambda: 0)()
        return await self.node.fetch_records(records.progress_key(self.node.run_id), ProgressRecord,  # type: ignore[return-value]
                                             replicas=self._on_replicas(), expected=max(self._expected_peers(), known // 2))

    def _expected_peers(self) -> int:
        """How many records a read should find: our view's, or the last group we averaged in if that was larger and
        recent. A replica read with fewer than half of them is taken for partial and the full way is read instead
        (swarm.net.node.fetch_owned_records); with the view's count alone, each partial read that passed would lower
        the next one's bar. (Views of 1 peer at 64 real peers, sessions 20-23, were not cured by this: benchmarks/README.md,
        "The model follows".)"""
        size, at = self._last_group
        recent = size if time.monotonic() - at < GROUP_COUNTS_FOR else 0
        return max(len(self._view.peers), recent)

    async def _read_summaries(self, allowed: dict[str, int], latest: bool) -> list[ProgressSummary]:
        found = await self.node.fetch_records(records.progress_summary_key(self.node.run_id), ProgressSummary, latest=latest)
        usable, now = {}, clock.now()
        for s in found:
            try:
                usable[s.aggregator] = summary.check(s, allowed, now, max_age=self.record_ttl)  # type: ignore[arg-type]
            except summary.InvalidSummary as e:   # an aggregator of an earlier window is the usual case: not a warning
                logger.debug("%s", e)
        return list(usable.values())

    async def _publish_summary(self, found: list[ProgressRecord], window: int) -> None:
        peers = sorted((p for p in found if not p.leaving), key=lambda p: p.peer_id)[: records.MAX_SUMMARY_PEERS]
        record = ProgressSummary(aggregator=self.peer_id, window=window, time=clock.now(), peers=peers)
        try:
            await self.node.store_record(records.progress_summary_key(self.node.run_id), record, self.record_ttl, blind=True)
        except asyncio.CancelledError:
            raise
        except Exception as e:   # readers fall back to every record
            logger.warning("could not publish the progress summary: %s", describe(e))

    async def wait_refresh(self, timeout: float) -> None:
        changed = self._changed
        try:
            await asyncio.wait_for(changed.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    async def _keep_in_touch(self, every: float = 5.0, forget_after: float = 120.0) -> None:
        """Re-ping peers seen recently that fell out of the DHT routing table (see swarm.net.contacts)."""
        now = time.monotonic()
        if now - self._last_touch < every:
            return
        self._last_touch = now
        self._recent = {p: t for p, t in self._recent.items() if now - t < forget_after and p != self.peer_id}
        try:
            contacts = getattr(self.node, "initial_contacts", {})
            await asyncio.wait_for(keep_in_touch(self.node, [*self._recent, *contacts], contacts), 10)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            logger.debug("keep_in_touch: %s", e)

    def _read_at(self) -> float:
        """When the loop last read: the view's time, or a later read's that was not applied (see _refresh)."""
        return max(self.view.fetched_at, self._partial_at)

    def _period(self) -> float:
        """The loop's period: that of publishes or of reads, whichever is shorter."""
        return min(self._publish_period(), self._read_period())

    def _changed_since_published(self) -> bool:
        return self._published != self._material(self.own_record())

    def _publish_due(self) -> bool:
        return (self._changed_since_published()
                or time.monotonic() - self._published_at >= self._publish_period() - TIMER_SLACK)

    def _next_turn(self) -> float:
        """Seconds until the loop's next turn: the next publish or read due, whichever comes first (a turn publishes
        only when a publish is due: reads may come more often than publishes, or the reverse)."""
        now = time.monotonic()
        # before the first view, a read that failed is retried every min_read
        read_in = self._read_period() - (now - self._read_at()) if self.fetched else self.min_read
        publish_in = self._publish_period() - (now - self._published_at)
        if self._stores.under_way:   # due while the last store is still under way: look again shortly
            publish_in = max(publish_in, self.min_read)
        return max(TIMER_SLACK, min(read_in, publish_in))

    def _publish_period(self) -> float:
        # by every record's claim, as reads (below): a newcomer vouched for by nobody would publish as if the round
        # were its own samples away; a false claim can only make us publish sooner
        eta = self.eta(self.global_epoch(), everyone=True)
        if not math.isfinite(eta):   # nobody trains yet: peers gathering wait on the view (see UNKNOWN_ETA_READ)
            return self.max_refresh
        return min(max(self.max_refresh, MAX_PUBLISH), max(self.min_refresh, eta / 3))

    def _store_ended(self, done: asyncio.Future) -> None:
        _log_store_failure(done)
        # a step's new epoch (say) that came while the store before it was under way: publish it now, not a period later
        if not self._stopping and self._changed_since_published():
            self._wake.set()

    def _read_period(self) -> float:
        # By every record's claim, not only the vouched-for peers': a newcomer counts nobody else yet, and would read
        # twice a minute while the swarm it joined steps every few seconds. A false claim can only make us read sooner.
        eta = self.eta(self.global_epoch(), everyone=True)
        if not math.isfinite(eta):   # nobody trains yet (a swarm gathering, `--wait-peers`): peers wait on the view itself
            return min(self.max_read, max(self.min_read, UNKNOWN_ETA_READ))
        longest = min(self.max_read, self.record_ttl / 4) if self._aggregating() else self.max_read
        # A read costs every record (~1 KB each) from each replica asked: near the target, no more often than every
        # READ_SECONDS_PER_PEER per peer in the view, so that a peer's read bytes per second do not grow with N (a
        # third of the distance, again and again, was ~9 reads a round at 16 peers). Between reads the estimate is
        # extrapolated from the rates; matchmaking reads on its own before it forms a group.
        shortest = max(self.min_read, READ_SECONDS_PER_PEER * len(self._view.peers))
        return min(longest, max(shortest, eta / 3))

    def _aggregating(self) -> bool:
        """Whether we are one of the summaries' aggregators now: readers take a summary only while it is younger than the
        records' TTL, so an aggregator must read (and republish) more often than the far-from-the-target period."""
        if not self.summaries:
            return False
        ids = {p.peer_id for p in self._view.peers if not p.leaving} | {self.peer_id}
        return len(ids) >= self.summary_min_peers and self.peer_id in summary.chosen(self.node.run_id, clock.now(), ids)

    async def _run(self) -> None:
        # Pings wait up to their timeout on a peer that is unreachable (its link cut): they run beside the loop, so that
        # they never delay our publish and refresh past the records' lifetime (the rest of the swarm would lose us).
        touching: asyncio.Task | None = None
        poked = True
        try:
            while not self._stopping:
                self._wake.clear()   # before the work: a poke that comes during it gets a turn of its own
                # Not awaited: a store that hangs (a cut link, dead replicas) ends by its own timeouts, and must hold up
                # neither the read nor the next poke (a peer back from a network cut stepped solo before it saw the
                # swarm: tests/chaos/test_network_cut.py). One at a time: the next turn publishes once it ended.
                if not self._stores.under_way and (poked or self._publish_due()):
                    asyncio.ensure_future(self._stores()).add_done_callback(self._store_ended)
                try:
                    if poked or not self.fetched or time.monotonic() - self._read_at() >= self._read_period():
                        await asyncio.wait_for(self.refresh(), 5)
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    logger.warning("progress refresh failed: %s", describe(e))
                if touching is None or touching.done():
                    touching = asyncio.create_task(self._keep_in_touch(), name="progress-keep-in-touch")
                try:
                    await asyncio.wait_for(self._wake.wait(), self._next_turn())
                except asyncio.TimeoutError:
                    pass
                poked = self._wake.is_set()   # not the wait's outcome: a poke can land as the wait times out
        finally:
            if touching is not None:
                touching.cancel()
