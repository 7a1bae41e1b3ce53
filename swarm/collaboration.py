"""The central object a training loop talks to: a peer's membership in one run.

    import swarm
    collab = swarm.join(run_id="demo", initial_peers=["/ip4/1.2.3.4/tcp/31337/p2p/Qm..."])
    opt = collab.optimizer(model.parameters(), torch.optim.AdamW, lr=1e-3)
    for batch in loader:
        model(**batch).loss.backward()
        opt.step(samples=len(batch))
        opt.zero_grad()
    collab.shutdown()

It owns, explicitly and in this order: the Reaper (every child process dies with this
one, SIGKILL included; one watchdog shared by the peers of a process), the engine loop thread, the node (p2pd + DHT), the progress
tracker, and the protocol services (matchmaking, all-reduce, state). `shutdown()` (or
leaving the `with` block) withdraws the progress record and stops all of them.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import hashlib
import logging
import time
from typing import Any, Callable, Iterable, Sequence

import torch

from swarm.averaging.allreduce import AllReduceRound
from swarm.averaging.balancing import BandwidthEstimator, MemberLink
from swarm.averaging.auditor import Auditor
from swarm.averaging.bans import BanList
from swarm.averaging.deadlines import MAX_LIMIT, round_limits
from swarm.averaging.group import GroupView
from swarm.averaging.hierarchy import HierarchicalRound
from swarm.averaging.late import fetch_group_result
from swarm.averaging.layout import TensorLayout
from swarm.averaging.claims import capped, claim_ceiling
from swarm.averaging.matchmaking import ROBUST_MIN_TRAINERS, Matchmaker, robust_group_problem
from swarm.averaging.phase_stats import PhaseStats
from swarm.averaging.progress import ProgressTracker
from swarm.averaging.reduction import Reduction
from swarm.averaging.robust import CenteredClipReduction, StrikeBook, counted_samples
from swarm.averaging.rounds import RoundReport, RoundRequest
from swarm.averaging.service import AggregateService
from swarm.averaging.state_sync import StateServer, TrainingState, download_from_any
from swarm.averaging.subgroups import column_limits, plan_hierarchy
from swarm.compression.policy import FixedRoundCodec
from swarm.compression.round_codec import RoundCodec, RoundContext
from swarm.net import records
from swarm.net.auth import SwarmAuthorizer
from swarm.net.node import Node, NodeOptions
from swarm.process.lifecycle import SharedReaper
from swarm.process.runtime import EngineLoop

from .config import EngineConfig, RunConfig
from .errors import Alone, ConfigError, LateForGroup, NetworkError, RoundFailed, describe
from .proto import swarm_pb2

logger = logging.getLogger(__name__)

DISTRUST_FOR = 60.0  # seconds a donor that failed to serve its claimed epoch does not vote on the swarm's epoch

MBIT = 1e6 / 8
# A peer that finds itself alone in a group steps solo only once no other training peer has shown up in its view
# for this many record lifetimes: a peer cut off from the swarm (or a swarm whose DHT lost it) does not diverge.
SOLO_AFTER_TTLS = 3
# What a round's waiter allows past the round budget, for the engine loop to deliver the result.
ROUND_GRACE_SECONDS = 10.0
# Seconds a read or store of the run's ban records may take (swarm.averaging.bans).
BAN_IO_TIMEOUT = 3.0


def member_links(info: swarm_pb2.GroupInfo) -> list[MemberLink]:
    """The members' links and roles from the leader's GroupInfo."""
    return [
        MemberLink(upload_bps=max(m.upload_bps, 1.0), download_bps=max(m.download_bps, 1.0), brings_gradients=m.role != "aux",
                   needs_result=m.role != "aux", can_reduce=m.role != "client")
        for m in info.members
    ]


class GroupPhases:
    """The all-reduce phases of one formed group, run by a round codec's `average` (`RoundContext.phase`).

    Phase 0 runs under the group's round id, later phases under ids derived from it, so that a late
    message of one phase can never be taken for another's. Each phase's transfer stats are kept for the
    bandwidth estimates and the round report."""

    def __init__(self, collab: "Collaboration", group: GroupView, epoch: int, links: Sequence[MemberLink]):
        self.collab, self.group, self.epoch, self.links = collab, group, epoch, list(links)
        # robust rounds need a group in which one bad member is outvoted: `on` refuses a smaller one (Collaboration.
        # _check_robust_group); `auto` averages it with the plain mean, so that the first two volunteers of a new open
        # run train together instead of waiting for a third
        short = robust_group_problem(list(group.roles))
        self.robust = collab.robust and not short
        if collab.robust and short:
            if not collab.short_groups:
                logger.info("epoch %d: %s; averaging it with the plain mean (engine.robust: on would refuse it)", epoch, short)
            collab.short_groups += 1
        self.stats: list[PhaseStats] = []
        self.subgroups = 0   # subgroups the last phase averaged in (0: flat)

    async def run(self, layout: TensorLayout, local: list[torch.Tensor] | None) -> list[torch.Tensor] | None:
        collab, cfg = self.collab, self.collab.config
        assert collab.node is not None and collab.aggregate is not None and collab.matchmaker is not None
        index = len(self.stats)
        round_id = self.group.round_id if index == 0 else hashlib.sha256(self.group.round_id + index.to_bytes(2, "big")).digest()[:16]
        # this phase's silence limit from its own vector (a low-rank phase sends far less than the full one)
        limits = round_limits(layout.wire_bytes(), self.links, self.group.shares, chunk_bytes=layout.chunk_bytes(cfg.chunk_elements),
                              floor_silence=cfg.sender_timeout, floor_averaging=cfg.averaging_timeout)
        group = dataclasses.replace(self.group, round_id=round_id)
        reduction = CenteredClipReduction if self.robust else Reduction
        plan = plan_hierarchy(group.roles, group.shares, group.max_group_size) if group.max_group_size else None
        round_: AllReduceRound | HierarchicalRound
        self.subgroups = len(plan.subgroups) if plan is not None else 0
        if plan is None:
            round_ = collab.round_class(collab.node.p2p, group, layout, local, chunk_elements=cfg.chunk_elements, sender_timeout=limits.silence,
                                        reduction=reduction, excluded=collab.strikes.excluded() | collab.bans.banned,
                                        signer=collab.node.private_key if self.robust else None,
                                        keep_contribution=collab.auditor.store.put_contribution if collab.auditor is not None else None,
                                        claim_ceiling=claim_ceiling(cfg.target_batch_size) if self.robust else None)
            collab.aggregate.open(round_)
        else:   # the leader's group is larger than its bound: subgroups, then each part across them (the round opens its own)
            column = column_limits(plan, self.links, layout.wire_bytes(), chunk_bytes=layout.chunk_bytes(cfg.chunk_elements),
                                   floor_silence=cfg.sender_timeout, floor_averaging=cfg.averaging_timeout)
            round_ = HierarchicalRound(collab.node.p2p, group, layout, local, plan, service=collab.aggregate, chunk_elements=cfg.chunk_elements,
                                       sender_timeout=limits.silence, column_silence=column.silence, column_seconds=column.averaging,
                                       reduction=reduction, excluded=collab.strikes.excluded() | collab.bans.banned,
                                       signer=collab.node.private_key if self.robust else None,
                                       keep_contribution=collab.auditor.store.put_contribution if collab.auditor is not None else None)
        self.stats.append(round_.stats)
        stepped = False
        try:
            result = await round_.run()
            stepped = True
            return result
        except RoundFailed:
            collab.matchmaker.round_failed(self.epoch)
            raise
        finally:
            if plan is None:
                collab.aggregate.close(round_id)
                if collab.auditor is not None and isinstance(round_, AllReduceRound):
                    collab.auditor.after_round(round_, stepped)   # swarm.averaging.audits
            elif collab.auditor is not None and isinstance(round_, HierarchicalRound) and round_.column is not None:
                collab.auditor.after_round(round_.column, stepped)   # its column's reducers, from the committed partials
            collab.strikes.record(round_.stats.clipped_share, round_id.hex()[:8], round_.stats.bad_data)
            collab.bans.observe(collab.strikes.banned())
            proven = bool(collab.bans.accuse(round_.stats.proofs)) if round_.stats.proofs else False
            claimed = bool(collab.bans.claim(round_.stats.overclaims)) if round_.stats.overclaims else False
            if proven or claimed:
                await collab.bans_io(publish=True)


class Collaboration:
    # The services' classes: tests inject faults by subclassing them (set before start(); see tests/helpers/toy_peer.py).
    state_server_class: type[StateServer] = StateServer
    matchmaker_class: type[Matchmaker] = Matchmaker

    def __init__(
        self,
        run_id: str,
        *,
        initial_peers: Sequence[str] = (),
        role: str = "trainer",
        config: EngineConfig | None = None,
        host_maddrs: Sequence[str] = ("/ip4/127.0.0.1/tcp/0",),
        announce_maddrs: Sequence[str] | None = None,
        identity_path: str | None = None,
        authorizer: SwarmAuthorizer | None = None,
        organizer_key: bytes | None = None,
        start: bool = True,
    ):
        """`authorizer`: an invite-only run's access (swarm.net.auth; `swarm.join(INVITE)` makes it); None: an open run.
        `organizer_key`: the run's organizer (from an invite): only its config record counts, and without
        `config` the engine settings are the run's own, read from that record once the node is up."""
        if role not in ("trainer", "client", "aux"):
            raise ConfigError(f"unknown role {role!r}: trainer, client or aux")
        self.run_id = run_id
        self.role = role
        self.config = config or EngineConfig()
        self.authorizer = authorizer
        self.organizer_key = organizer_key
        self.run_config: RunConfig | None = None     # the run's own config, when read from the organizer's record
        self._config_from_run = config is None and organizer_key is not None
        self.node_options = NodeOptions(
            initial_peers=tuple(initial_peers), host_maddrs=tuple(host_maddrs), announce_maddrs=announce_maddrs,
            client_mode=role == "client", identity_path=identity_path,
        )
        prior = self.config.bandwidth_mbps * MBIT
        self.upload = BandwidthEstimator(prior, first_replaces_prior=True)
        self.download = BandwidthEstimator(prior, first_replaces_prior=True)
        self.reaper = SharedReaper()   # this process's watchdog, shared with any other peer it runs
        self.loop = EngineLoop()
        self.node: Node | None = None
        self.tracker: ProgressTracker | None = None  # type: ignore[assignment]
        self.aggregate: AggregateService | None = None
        self.auditor: Auditor | None = None   # robust mode: serves my contributions to auditors, audits reducers
        self._ban_read: asyncio.Task | None = None   # the read of the run's ban records under way (_read_bans_aside)
        self.state_server: StateServer | None = None
        self.matchmaker: Matchmaker | None = None
        self.rounds: list[RoundReport] = []
        self.short_groups = 0   # robust auto: groups too small to outvote a bad member, averaged with the plain mean
        self.round_class: type[AllReduceRound] = AllReduceRound  # tests inject faults by subclassing it
        self.strikes = StrikeBook()   # senders my reducers clipped hard; past a threshold their contributions are ignored
        self.bans = BanList(self.config.target_batch_size)         # peers proven to equivocate (swarm.averaging.bans): refused at matchmaking
        self._snapshot: Callable[[], TrainingState | None] = lambda: None
        self._failed_donors: dict[str, float] = {}   # donor -> until when it is not asked again (monotonic)
        self.download_progress: Callable[[int, int], None] | None = None   # (received, total) bytes of a state download
        if start:
            self.start()

    # -- lifecycle -----------------------------------------------------------------------------------------------

    def start(self) -> "Collaboration":
        self.reaper.start()
        self.loop.start()
        try:
            self.node = self.loop.run(Node.create(self.run_id, self.node_options, authorizer=self.authorizer), timeout=self.node_options.startup_timeout + 15)
            if self._config_from_run:
                from .observer import read_run_config

                self.run_config = self.loop.run(read_run_config(self.node, self.organizer_key), timeout=50)  # type: ignore[arg-type]
                self.config = self.run_config.engine
                self.bans.target_batch_size = self.config.target_batch_size   # the claim ceiling is the run's
                prior = self.config.bandwidth_mbps * MBIT   # the run's prior, until measured
                self.upload = BandwidthEstimator(prior, first_replaces_prior=True)
                self.download = BandwidthEstimator(prior, first_replaces_prior=True)
            self.loop.run(self._start_services(), timeout=15)
        except BaseException:
            self.shutdown(withdraw=False)
            raise
        self.reaper.scan()
        return self

    async def _start_services(self) -> None:
        assert self.node is not None
        cfg = self.config
        self.tracker = ProgressTracker(
            self.node, cfg.target_batch_size, self.role, lambda: (self.upload.value, self.download.value),
            record_ttl=cfg.record_ttl, serves_state=self.role != "client", summaries=cfg.progress_summaries,
            replicas=cfg.progress_replicas,
        )
        self.aggregate = AggregateService(self.node.p2p, authorizer=self.authorizer)
        await self.aggregate.start()
        self.state_server = self.state_server_class(self.node.p2p, self.run_id, lambda: self._snapshot(), authorizer=self.authorizer)
        self.state_server.on_asked = self.tracker.poke                 # publish the new count at once
        self.tracker.states_asked = lambda: self.state_server.asked if self.state_server is not None else 0
        await self.state_server.start()
        self.matchmaker = self.matchmaker_class(
            self.node.p2p, self.run_id, self.tracker, gather_timeout=cfg.gather_timeout,
            allreduce_timeout=cfg.averaging_timeout, sender_timeout=cfg.sender_timeout, balance=cfg.load_balancing, authorizer=self.authorizer,
            max_group_size=cfg.max_group_size,
        )
        self.matchmaker.banned = self.bans.banned
        if self.robust:
            if self.config.robust == "on":   # auto averages a short group with the plain mean instead (GroupPhases)
                self.matchmaker.min_trainers = ROBUST_MIN_TRAINERS
            self.auditor = Auditor(self.node.p2p, self.bans, cfg.audits_per_part, publish=lambda: self.bans_io(publish=True))
            await self.auditor.start()
        await self.matchmaker.start()
        self.tracker.start()
        await self.tracker.wait_refresh(3.0)

    def shutdown(self, withdraw: bool = True) -> None:
        """Leave the swarm: withdraw our progress record, stop p2pd and the engine loop, reap children."""
        try:
            if self.node is not None:
                async def _stop() -> None:
                    if self.tracker is not None:
                        await self.tracker.stop(withdraw=withdraw)
                    if self.matchmaker is not None:
                        await self.matchmaker.stop()
                    if self.aggregate is not None:
                        self.aggregate.stop()
                    if self.auditor is not None:
                        self.auditor.stop()
                    if self._ban_read is not None:
                        self._ban_read.cancel()
                        await asyncio.gather(self._ban_read, return_exceptions=True)
                    await self.node.shutdown()  # type: ignore[union-attr]
                try:
                    self.loop.run(_stop(), timeout=6)
                except Exception as e:  # leaving anyway; the reaper ends what is left
                    logger.debug("shutdown: %s", e)
                self.node = None
            self.loop.stop()
        finally:
            self.reaper.close()

    def interrupt(self) -> None:
        """Abandon the round or download in flight (from a signal handler): the caller's call raises at once."""
        self.loop.cancel_all()

    def __enter__(self) -> "Collaboration":
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    async def bans_io(self, publish: bool) -> None:
        """Publish my proofs to the DHT for the other peers to verify (`publish`; a failed store is retried with the next
        proof), or ban the peers whose proofs others published, each verified here (at most every few seconds)."""
        assert self.node is not None
        try:
            await asyncio.wait_for((self.bans.publish if publish else self.bans.refresh)(self.node), BAN_IO_TIMEOUT)
        except Exception as e:
            logger.log(logging.WARNING if publish else logging.DEBUG, "ban records: could not %s: %s",
                       "publish" if publish else "read", describe(e))

    def _read_bans_aside(self) -> None:
        """Read the run's ban records beside the round, not before it: awaited before matchmaking, a read of a loaded DHT
        held a peer up to BAN_IO_TIMEOUT, and in the emulated hybrid run 3 of 12 peers reached a formed group too late.
        A ban read now counts from the next round on (the matchmaker and the reducers consult the ban list as they go)."""
        if self._ban_read is None or self._ban_read.done():
            self._ban_read = asyncio.create_task(self._read_bans())

    async def _read_bans(self) -> None:
        await self.bans_io(publish=False)
        if self.auditor is not None:
            self.auditor.verify_pending()   # others' accusations, each audited here before it bans anybody

    @property
    def robust(self) -> bool:
        """Whether this peer's reducers aggregate with CenteredClip (engine.robust; auto: on unless invite-only)."""
        return self.config.robust == "on" or (self.config.robust == "auto" and self.authorizer is None)

    @property
    def peer_id(self) -> str:
        assert self.node is not None
        return str(self.node.peer_id)

    def visible_maddrs(self) -> list[str]:
        assert self.node is not None
        return self.loop.run(self.node.visible_maddrs(), timeout=10)

    # -- the optimizer --------------------------------------------------------------------------------------------

    def optimizer(self, params: Iterable[torch.nn.Parameter], optimizer: Any, *, mode: str = "sync", overlap: bool = False, **kwargs: Any):
        """Wrap a torch optimizer (class or instance) so that it steps with the swarm; downloads the state if late.

        mode="sync" (DeDLOC's large-batch steps), "diloco" or "streaming-diloco" (the optimizer is the inner one;
        outer_lr, outer_momentum, nesterov go to the outer SGD), or a RunMode such as
        `StreamingDiLoCo(fragments=4, layers=layers_of(model))` (swarm.optim.strategies); overlap=True averages in the background while the next
        batch is computed (the update lands one step late). See swarm.optim.core for the other keywords."""
        from .optim.core import CollaborativeOptimizer

        opt = CollaborativeOptimizer(self, params, optimizer, mode=mode, overlap=overlap, **kwargs)
        if self.role != "aux":
            try:
                opt.load_state_from_peers()
            except NetworkError as e:
                logger.warning("could not download the state yet (%s); will retry while training", e)
        return opt

    def begin_training(self, schema: TensorLayout, snapshot: Callable[[], TrainingState | None]) -> None:
        """This peer averages tensors of `schema` from now on (matchmaking accepts only that schema) and serves
        `snapshot()` as its state to newcomers (client-mode peers serve nothing)."""
        assert self.node is not None and self.tracker is not None and self.matchmaker is not None
        self._snapshot = snapshot if self.role != "client" else (lambda: None)
        vector_bytes = schema.wire_bytes()
        chunk_bytes = schema.chunk_bytes(self.config.chunk_elements)
        self.matchmaker.set_schema(schema.schema_hash(), lambda: vector_bytes, lambda: chunk_bytes)
        self.tracker.local.training = True
        self.tracker.poke()

    # -- the round: one entry point, one time budget ------------------------------------------------------------

    def round_budget(self, averaging_timeout: float | None = None) -> float:
        """Seconds one round may take, matchmaking included (a codec may run two all-reduce phases). Until the group
        is formed the configured averaging timeout stands in for the group's; `averaging_timeout` is the group's."""
        cfg = self.config
        return cfg.matchmaking_timeout + 2 * max(cfg.averaging_timeout, averaging_timeout or 0.0) + 5

    def submit_round(self, request: RoundRequest, codec: RoundCodec, tensors: list[torch.Tensor] | None) -> RoundRequest:
        """Form a group for `request.epoch` and average `tensors` (None: an auxiliary peer) through `codec`.

        Returns at once, with `request.future` and `request.deadline` set: `request.wait()` gives
        (Averaged, RoundReport) or raises RoundFailed within `round_budget()`; `interrupt()` cancels it."""
        budget = self.round_budget()
        codec.validate(tensors)

        def extend(averaging_timeout: float) -> None:
            """The group is formed: its deadline follows the work (swarm.averaging.deadlines), so the round's does."""
            longer = self.round_budget(averaging_timeout)
            if longer > budget:
                scope.reschedule(asyncio.get_running_loop().time() - (time.monotonic() - request.started) + longer)
                request.deadline = request.started + longer + ROUND_GRACE_SECONDS

        async def bounded():
            nonlocal scope
            try:
                async with asyncio.timeout(budget) as scope:
                    return await self._run_round(request.epoch, request.weight, codec, tensors, extend)
            except TimeoutError:
                allowed = request.deadline - request.started - ROUND_GRACE_SECONDS
                raise RoundFailed(f"round of epoch {request.epoch} did not finish within {allowed:.0f}s") from None
            except NetworkError as e:
                raise RoundFailed(str(e)) from e

        scope: asyncio.Timeout
        request.started = time.monotonic()
        request.deadline = request.started + budget + ROUND_GRACE_SECONDS
        request.future = self.loop.submit(bounded())
        return request

    async def _run_round(self, epoch: int, weight: float, codec: RoundCodec, tensors: list[torch.Tensor] | None,
                         extend: Callable[[float], None] = lambda seconds: None):
        assert self.matchmaker is not None and self.aggregate is not None and self.node is not None
        cfg = self.config
        if self.robust:
            weight = capped(weight, cfg.target_batch_size)   # a claim over the ceiling proves a lie (swarm.averaging.claims)
        request = swarm_pb2.JoinRequest(
            run_id=self.run_id, epoch=epoch, peer_id=self.peer_id, role=self.role, weight=weight,
            upload_bps=self.upload.value, download_bps=self.download.value, schema_hash=codec.schema.schema_hash(),
        )
        started = time.monotonic()
        if self.robust:
            self._read_bans_aside()
        try:
            info = await self.matchmaker.form_group(request, started + cfg.matchmaking_timeout)
        except LateForGroup as late:
            self._check_robust_group(epoch, late.group)
            extend(late.group.timeout)
            return await self._take_group_result(epoch, late, codec)
        self._check_robust_group(epoch, info)
        self._check_my_weight(epoch, info, request.weight)
        alone = self.tracker.seconds_alone()  # type: ignore[union-attr]
        if len(info.members) == 1 and alone < SOLO_AFTER_TTLS * cfg.record_ttl:
            # Nobody joined although others trained with us moments ago: we are cut off (or they are). A solo step
            # would run ahead of the swarm, and on reconnection the swarm would take our epoch's state over its own.
            self.matchmaker.alone(epoch)
            raise Alone(f"alone in the group of epoch {epoch}, {alone:.0f}s after others were seen: not stepping solo")
        links = member_links(info)
        phases = GroupPhases(self, GroupView.from_info(info, self.peer_id), epoch, links)
        extend(info.timeout)
        try:
            result = await codec.average(RoundContext(group=phases.group, links=links, phase=phases.run, epoch=epoch), tensors)
        finally:
            # A failed round's transfers are measurements too: without them a swarm whose limits are too tight for its
            # links would fail the same way every round. Busy seconds, not the round's: a peer that waits for others
            # would otherwise look as slow as they are.
            for stats in phases.stats:
                self.upload.observe(stats.bytes_sent, stats.send_seconds or stats.seconds)
                self.download.observe(stats.bytes_received, stats.receive_seconds or stats.seconds)
        seconds = sum(st.seconds for st in phases.stats)
        report = RoundReport(
            epoch=epoch, group_size=len(phases.group.peer_ids), round_seconds=seconds,
            bytes_sent=sum(st.bytes_sent for st in phases.stats), bytes_received=sum(st.bytes_received for st in phases.stats),
            samples=counted_samples(phases.group.weights, phases.robust), round_id=phases.group.round_id.hex(),
            excluded=sorted({p for st in phases.stats for p in st.excluded}),
            codec=result.codec, predicted_seconds=result.predicted_seconds, subgroups=phases.subgroups,
        )
        self.rounds.append(report)
        logger.debug(   # the peer's own line per epoch (peers.daemon) says what a volunteer needs; this is the detail
            "epoch %d: averaged in a group of %d in %.2fs (matchmaking %.2fs), sent %.1f MB%s",
            epoch, report.group_size, seconds, time.monotonic() - started - seconds, report.bytes_sent / 1e6,
            f" ({report.codec}" + (f", {len(phases.stats)} phases)" if len(phases.stats) > 1 else ")") if report.codec else "",
        )
        return result, report

    def _check_my_weight(self, epoch: int, info: swarm_pb2.GroupInfo, asked: float) -> None:
        """Refuse a group that gives me another weight than I asked for: I would sign it in my commitment, and a leader
        must not make me claim what I did not (swarm.averaging.claims), nor weigh my values otherwise."""
        mine = next((m.weight for m in info.members if m.peer_id == self.peer_id), asked)
        if mine != asked:
            raise RoundFailed(f"the group of epoch {epoch} gives me weight {mine}, I asked for {asked} (leader {info.leader[-8:]})")

    def _check_robust_group(self, epoch: int, info: swarm_pb2.GroupInfo) -> None:
        """Robust mode `on`: refuse a group in which one bad member cannot be outvoted. Our own leader would not have
        formed it, but the leader may be the bad member. (`auto` averages such a group with the plain mean: GroupPhases.)"""
        problem = robust_group_problem([m.role for m in info.members]) if self.robust and self.config.robust == "on" else ""
        if problem:
            assert self.matchmaker is not None
            self.matchmaker.round_failed(epoch)
            self.matchmaker.pass_over(epoch, info.leader, problem)   # the trainers it lacks may follow another leader
            raise RoundFailed(f"epoch {epoch}: {problem} (leader {info.leader[-8:]}); not averaging")

    async def _take_group_result(self, epoch: int, late: LateForGroup, codec: RoundCodec):
        """Late for the epoch's group: step with its result, fetched from its reducers (swarm.averaging.late), instead
        of failing the round. Only a one-phase codec without local state (FixedRoundCodec) can: a later phase needs the
        peer's own values, and error feedback would book values it never sent."""
        info = late.group
        if self.role == "aux" or not isinstance(codec, FixedRoundCodec):
            raise late
        assert self.node is not None
        links = member_links(info)
        started = time.monotonic()

        async def phase(layout: TensorLayout, local: list[torch.Tensor] | None) -> list[torch.Tensor]:
            return await fetch_group_result(self.node.p2p, info, layout, links, chunk_elements=self.config.chunk_elements,
                                            floor_silence=self.config.sender_timeout, authorizer=self.authorizer)

        result = await codec.average(RoundContext(group=GroupView.observed(info), links=links, phase=phase, epoch=epoch), None)
        seconds = time.monotonic() - started
        report = RoundReport(epoch=epoch, group_size=len(info.members), round_seconds=seconds, bytes_sent=0,
                             bytes_received=codec.schema.wire_bytes(), samples=counted_samples([m.weight for m in info.members], self.robust),
                             round_id=info.round_id.hex(), codec=result.codec, predicted_seconds=result.predicted_seconds)
        self.rounds.append(report)
        logger.info("epoch %d: late for the group of %d; took its result from the reducers in %.2fs", epoch, len(info.members), seconds)
        return result, report

    def download_state(self, donors: list[str], min_epoch: int) -> TrainingState:
        """A verified state from one of `donors`. A donor that failed (dead, or refused) is not asked again for a record
        lifetime: a dead donor's record outlives it, and the view that still lists it would send every retry there."""
        assert self.node is not None
        timeout = self.config.state_timeout
        now = time.monotonic()
        self._failed_donors = {d: until for d, until in self._failed_donors.items() if until > now}
        usable = [d for d in donors if d not in self._failed_donors]
        if not usable:
            raise NetworkError(f"every donor failed in the last {self.config.record_ttl:.0f}s")

        def failed(donor: str) -> None:
            self._failed_donors[donor] = time.monotonic() + self.config.record_ttl
            if self.tracker is not None:   # its epoch claim no longer moves the swarm's (swarm.averaging.progress)
                self.tracker.distrust(donor, DISTRUST_FOR)

        received = 0

        def progress(got: int, total: int) -> None:
            nonlocal received
            received = got
            if self.download_progress is not None:
                self.download_progress(got, total)

        try:   # a fresh view: which donors other newcomers asked moments ago
            self.loop.run(self.tracker.refresh(), timeout=3.0)   # type: ignore[union-attr]
        except Exception as e:
            logger.debug("refresh before the state download failed: %s", describe(e))
        asked = {p.peer_id: p.states_asked for p in self.tracker.view.peers} if self.tracker is not None else {}
        started = time.monotonic()
        try:
            state, donor = self.loop.run(
                download_from_any(self.node.p2p, self.run_id, usable, min_epoch, timeout, authorizer=self.authorizer, failed=failed,
                                  progress=progress, rate_bps=self.download.value, asked=asked),
                # each of the 3 attempts bounds itself (a donor that keeps sending may take up to MAX_LIMIT)
                timeout=3 * (MAX_LIMIT + timeout) + 5,
            )
        except concurrent.futures.CancelledError:
            raise NetworkError("state download interrupted") from None
        # A newcomer's first round has no measured rates yet: the state it just downloaded seeds its download estimate
        # (the round's limits follow the estimates, see swarm.averaging.deadlines)
        self.download.observe(received, time.monotonic() - started)
        return state

    def publish_metrics(self, record: records.MetricsRecord) -> None:
        """Publish a metrics record without blocking the training loop (failures are logged)."""
        assert self.node is not None
        future = self.loop.submit(self.node.store_record(records.metrics_key(self.run_id), record, self.config.record_ttl * 4,
                                                         blind=True))
        future.add_done_callback(lambda f: f.cancelled() or f.exception() is None or logger.debug("metrics not published: %s", f.exception()))

    # -- auxiliary peers --------------------------------------------------------------------------------------

    def run_auxiliary(self, codec: RoundCodec, should_stop: Callable[[], bool]) -> None:
        """An auxiliary peer's loop: follow the swarm's epoch and reduce a share of every round of `codec`'s tensors."""
        assert self.tracker is not None
        attempted: set[int] = set()
        while not should_stop():
            epoch = self.tracker.view.epoch
            self.tracker.report(epoch=epoch)
            if epoch in attempted or not self.tracker.ready(epoch):
                time.sleep(0.05)
                continue
            attempted.add(epoch)
            try:   # auto compression refuses auxiliary peers here (ConfigError): they never receive its agreed budget
                self.submit_round(RoundRequest(epoch, 0.0), codec, None).wait()
            except RoundFailed as e:
                logger.info("epoch %d: auxiliary round failed: %s", epoch, e)

    # -- the run's config record ------------------------------------------------------------------------------

    def publish_config(self, record: records.ConfigRecord, ttl: float = 3600.0) -> None:
        assert self.node is not None
        self.loop.run(self.node.store_record(records.config_key(self.run_id), record, ttl), timeout=15)

    def fetch_configs(self, owner: bytes | None = None) -> list[records.ConfigRecord]:
        """Every config record under the run's key (one per owner), earliest created first. `owner` (default: the
        organizer key of the invite, if any): only the record signed by this RSA public key. Which one counts is the
        caller's decision: the earliest is anyone's to forge in an open run."""
        assert self.node is not None
        owner = owner or self.organizer_key
        found = self.loop.run(self.node.fetch_records(records.config_key(self.run_id), records.ConfigRecord, owner=owner), timeout=15)
        return sorted(found, key=lambda r: r.created_at)  # type: ignore[union-attr, attr-defined, return-value]


def join(run_id: str = "demo", initial_peers: Sequence[str] = (), **kwargs: Any) -> Collaboration:
    """Join a run with its invite, `swarm.join("swarm://...")`, or an open run (or start one) by id:
    `swarm.join(run_id=..., initial_peers=[...])`.

    With an invite, the run id and initial peers come from it, an invite-only run's access token is
    obtained and kept fresh, and without `config=` the engine settings are the run's own, read from
    the config record signed by the invite's organizer key."""
    if run_id.startswith("swarm://"):
        from swarm.net.auth import InviteAccess
        from swarm.net.identity import read_identity

        identity = kwargs.get("identity_path")   # a persistent peer id asks for its token with its own key
        access = InviteAccess(run_id, private_key=read_identity(identity) if identity else None)
        peers = [*access.invite.initial_peers, *initial_peers]
        return Collaboration(access.run_id, initial_peers=peers, authorizer=access.authorizer(),
                             organizer_key=access.invite.organizer_key, **kwargs)
    return Collaboration(run_id, initial_peers=initial_peers, **kwargs)
