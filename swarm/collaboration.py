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
one, SIGKILL included), the engine loop thread, the node (p2pd + DHT), the progress
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
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import torch

from . import records
from .auth import SwarmAuthorizer
from .allreduce import AggregateService, AllReduceRound, GroupView, TensorLayout
from .balancing import BandwidthEstimator, MemberLink
from .compression_policy import RoundContext
from .config import EngineConfig, RunConfig
from .errors import ConfigError, NetworkError, RoundFailed
from .lifecycle import Reaper
from .matchmaking import Matchmaker
from .node import Node, NodeOptions
from .progress import ProgressTracker
from .proto import swarm_pb2
from .runtime import EngineLoop
from .state_sync import StateServer, TrainingState, download_from_any

logger = logging.getLogger(__name__)

DISTRUST_FOR = 60.0  # seconds a donor that failed to serve its claimed epoch does not vote on the swarm's epoch

MBIT = 1e6 / 8
# A peer that finds itself alone in a group steps solo only once no other training peer has shown up in its view
# for this many record lifetimes: a peer cut off from the swarm (or a swarm whose DHT lost it) does not diverge.
SOLO_AFTER_TTLS = 3


@dataclass
class RoundOutcome:
    group_size: int
    seconds: float
    bytes_sent: int
    bytes_received: int
    total_weight: float
    round_id: str
    excluded: list[str]
    codec: str = ""                            # what the round used (a codec name, or "powersgd")
    predicted_seconds: float = float("nan")    # the LP bound of the round with the group's measured links


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
        """`authorizer`: an invite-only run's access (swarm.auth; `swarm.join(INVITE)` makes it); None: an open run.
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
        self.reaper = Reaper()
        self.loop = EngineLoop()
        self.node: Node | None = None
        self.tracker: ProgressTracker | None = None  # type: ignore[assignment]
        self.aggregate: AggregateService | None = None
        self.state_server: StateServer | None = None
        self.matchmaker: Matchmaker | None = None
        self.optimizer_: Any = None
        self.rounds: list[RoundOutcome] = []
        self.round_class: type[AllReduceRound] = AllReduceRound  # tests inject faults by subclassing it
        self._snapshot: Callable[[], TrainingState | None] = lambda: None
        self._failed_donors: dict[str, float] = {}   # donor -> until when it is not asked again (monotonic)
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
            record_ttl=cfg.record_ttl, serves_state=self.role != "client",
        )
        self.aggregate = AggregateService(self.node.p2p, authorizer=self.authorizer)
        await self.aggregate.start()
        self.state_server = self.state_server_class(self.node.p2p, self.run_id, lambda: self._snapshot(), authorizer=self.authorizer)
        await self.state_server.start()
        self.matchmaker = self.matchmaker_class(
            self.node.p2p, self.run_id, self.tracker, gather_timeout=cfg.gather_timeout,
            allreduce_timeout=cfg.averaging_timeout, balance=cfg.load_balancing, authorizer=self.authorizer,
        )
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

        mode="sync" (DeDLOC's large-batch steps) or "diloco" (the optimizer is the inner one; outer_lr,
        outer_momentum, nesterov go to the outer SGD); overlap=True averages in the background while the next
        batch is computed (the update lands one step late)."""
        from .optimizer import CollaborativeOptimizer

        if mode == "sync":
            if overlap:
                from .overlap import OverlappedOptimizer

                opt = OverlappedOptimizer(self, params, optimizer, **kwargs)
            else:
                opt = CollaborativeOptimizer(self, params, optimizer, **kwargs)
        elif mode == "diloco":
            from .diloco import DiLoCoOptimizer

            opt = DiLoCoOptimizer(self, params, optimizer, overlap=overlap, **kwargs)
        else:
            raise ConfigError(f"unknown mode {mode!r}: sync or diloco")
        if self.role != "aux":
            try:
                opt.load_state_from_peers()
            except NetworkError as e:
                logger.warning("could not download the state yet (%s); will retry while training", e)
        return opt

    def _attach(self, opt: Any) -> None:
        """Called by CollaborativeOptimizer: the tensor layout is known, so matchmaking can start."""
        assert self.node is not None and self.tracker is not None
        self.optimizer_ = opt
        self._snapshot = opt.snapshot if self.role != "client" else (lambda: None)
        codec = getattr(opt, "round_codec", None)
        layout: TensorLayout = codec.schema if codec is not None else opt.layout
        bytes_per_value = {"none": 4, "fp16": 2}
        vector_bytes = sum(bytes_per_value.get(c.name, 1) * n for c, n in zip(layout.codecs, layout.bucket_sizes))
        assert self.matchmaker is not None
        self.matchmaker.set_schema(layout.schema_hash(), lambda: vector_bytes)
        self.tracker.local.training = True
        self.tracker.poke()

    # -- rounds (called from the training thread) ---------------------------------------------------------------

    def average(self, epoch: int, local: list[torch.Tensor] | None, weight: float, layout: TensorLayout) -> tuple[list[torch.Tensor] | None, RoundOutcome]:
        """Form a group for `epoch` and average `local` with it; raises RoundFailed."""
        cfg = self.config
        budget = cfg.matchmaking_timeout + cfg.averaging_timeout + 5
        try:
            return self.loop.run(self._average(epoch, local, weight, layout), timeout=budget)
        except NetworkError as e:
            raise RoundFailed(str(e)) from e
        except concurrent.futures.CancelledError:
            raise RoundFailed("interrupted") from None

    async def _average(self, epoch: int, local: list[torch.Tensor] | None, weight: float, layout: TensorLayout):
        async def one_phase(ctx: RoundContext) -> list[torch.Tensor] | None:
            return await ctx.phase(layout, local)

        main_codec = max(zip(layout.bucket_sizes, (c.name for c in layout.codecs)), default=(0, ""))[1]   # the largest bucket's
        return await self._average_program(epoch, weight, layout.schema_hash(), one_phase, codec=main_codec)

    # -- rounds with a program: one group, one or more all-reduce phases (PowerSGD, auto compression) ----------

    def average_program(self, epoch: int, weight: float, schema_hash: bytes, program: Callable[[RoundContext], Any]) -> tuple[Any, RoundOutcome]:
        """Form a group for `epoch` and run `program(ctx)` against it (see swarm.compression_policy); raises RoundFailed."""
        future = self.submit_program(epoch, weight, schema_hash, program)
        try:
            return future.result(self.program_budget() + 10)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise RoundFailed(f"round of epoch {epoch} did not finish in time") from None
        except concurrent.futures.CancelledError:
            raise RoundFailed("interrupted") from None

    def program_budget(self) -> float:
        cfg = self.config
        return cfg.matchmaking_timeout + 2 * cfg.averaging_timeout + 5

    def submit_program(self, epoch: int, weight: float, schema_hash: bytes, program: Callable[[RoundContext], Any]) -> concurrent.futures.Future:
        """Like average_program, without waiting: the future gives (result, outcome) or raises RoundFailed, within
        matchmaking_timeout + 2 averaging_timeouts (two phases); `interrupt()` cancels it."""
        budget = self.program_budget()

        async def bounded():
            try:
                async with asyncio.timeout(budget):
                    return await self._average_program(epoch, weight, schema_hash, program)
            except TimeoutError:
                raise RoundFailed(f"round of epoch {epoch} did not finish within {budget:.0f}s") from None
            except NetworkError as e:
                raise RoundFailed(str(e)) from e

        return self.loop.submit(bounded())

    async def _average_program(self, epoch: int, weight: float, schema_hash: bytes, program: Callable[[RoundContext], Any], codec: str = ""):
        assert self.matchmaker is not None and self.aggregate is not None and self.node is not None
        cfg = self.config
        request = swarm_pb2.JoinRequest(
            run_id=self.run_id, epoch=epoch, peer_id=self.peer_id, role=self.role, weight=weight,
            upload_bps=self.upload.value, download_bps=self.download.value, schema_hash=schema_hash,
        )
        started = time.monotonic()
        info = await self.matchmaker.form_group(request, started + cfg.matchmaking_timeout)
        alone = self.tracker.seconds_alone()  # type: ignore[union-attr]
        if len(info.members) == 1 and alone < SOLO_AFTER_TTLS * cfg.record_ttl:
            # Nobody joined although others trained with us moments ago: we are cut off (or they are). A solo step
            # would run ahead of the swarm, and on reconnection the swarm would take our epoch's state over its own.
            self.matchmaker.alone(epoch)
            raise RoundFailed(f"alone in the group of epoch {epoch}, {alone:.0f}s after others were seen: not stepping solo")
        group = GroupView.from_info(info, self.peer_id)
        all_stats = []

        async def phase(layout: TensorLayout, local: list[torch.Tensor] | None) -> list[torch.Tensor] | None:
            # phase 0 runs under the group's round id; later phases under ids derived from it
            index = len(all_stats)
            round_id = group.round_id if index == 0 else hashlib.sha256(group.round_id + index.to_bytes(2, "big")).digest()[:16]
            round_ = self.round_class(
                self.node.p2p, dataclasses.replace(group, round_id=round_id), layout, local,  # type: ignore[union-attr]
                chunk_elements=cfg.chunk_elements, sender_timeout=cfg.sender_timeout,
            )
            all_stats.append(round_.stats)
            self.aggregate.open(round_)  # type: ignore[union-attr]
            try:
                return await round_.run()
            except RoundFailed:
                self.matchmaker.round_failed(epoch)  # type: ignore[union-attr]
                raise
            finally:
                self.aggregate.close(round_id)  # type: ignore[union-attr]

        links = [
            MemberLink(upload_bps=max(m.upload_bps, 1.0), download_bps=max(m.download_bps, 1.0), brings_gradients=m.role != "aux",
                       needs_result=m.role != "aux", can_reduce=m.role != "client")
            for m in info.members
        ]
        result = await program(RoundContext(group=group, links=links, phase=phase, epoch=epoch))
        # Busy seconds, not the round's: a peer that waits for others would otherwise look as slow as they are.
        for stats in all_stats:
            self.upload.observe(stats.bytes_sent, stats.send_seconds or stats.seconds)
            self.download.observe(stats.bytes_received, stats.receive_seconds or stats.seconds)
        seconds = sum(st.seconds for st in all_stats)
        outcome = RoundOutcome(
            group_size=len(group.peer_ids), seconds=seconds, bytes_sent=sum(st.bytes_sent for st in all_stats),
            bytes_received=sum(st.bytes_received for st in all_stats), total_weight=sum(group.weights), round_id=group.round_id.hex(),
            excluded=sorted({p for st in all_stats for p in st.excluded}),
            codec=getattr(result, "codec", codec), predicted_seconds=getattr(result, "predicted_seconds", float("nan")),
        )
        self.rounds.append(outcome)
        logger.info(
            "epoch %d: averaged with %d peers in %.2fs (matchmaking %.2fs), sent %.1f MB%s",
            epoch, outcome.group_size, seconds, time.monotonic() - started - seconds, outcome.bytes_sent / 1e6,
            f" ({outcome.codec}" + (f", {len(all_stats)} phases)" if len(all_stats) > 1 else ")") if outcome.codec else "",
        )
        return result, outcome

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
            if self.tracker is not None:   # its epoch claim no longer moves the swarm's (swarm.progress)
                self.tracker.distrust(donor, DISTRUST_FOR)

        try:
            state, donor = self.loop.run(
                download_from_any(self.node.p2p, self.run_id, usable, min_epoch, timeout, authorizer=self.authorizer, failed=failed),
                timeout=3 * timeout + 5,
            )
        except concurrent.futures.CancelledError:
            raise NetworkError("state download interrupted") from None
        return state

    def publish_metrics(self, record: records.MetricsRecord) -> None:
        """Publish a metrics record without blocking the training loop (failures are logged)."""
        assert self.node is not None
        future = self.loop.submit(self.node.store_record(records.metrics_key(self.run_id), record, self.config.record_ttl * 4))
        future.add_done_callback(lambda f: f.cancelled() or f.exception() is None or logger.debug("metrics not published: %s", f.exception()))

    # -- auxiliary peers --------------------------------------------------------------------------------------

    def run_auxiliary(self, layout: TensorLayout, should_stop: Callable[[], bool]) -> None:
        """An auxiliary peer's loop: follow the swarm's epoch and reduce a share of every round."""
        assert self.tracker is not None
        from .optimizer import CollaborativeOptimizer  # noqa: F401  (layout comes from the task's model)

        attempted: set[int] = set()
        while not should_stop():
            epoch = self.tracker.view.epoch
            self.tracker.report(epoch=epoch)
            if epoch in attempted or not self.tracker.ready(epoch):
                time.sleep(0.05)
                continue
            attempted.add(epoch)
            codec = getattr(self.optimizer_, "round_codec", None)
            try:
                if codec is not None:   # PowerSGD: two phases (auto compression refuses auxiliary peers here)
                    self.average_program(epoch, 0.0, codec.schema.schema_hash(), codec.program(None))
                else:
                    self.average(epoch, None, 0.0, layout)
            except RoundFailed as e:
                logger.info("epoch %d: auxiliary round failed: %s", epoch, e)

    # -- the run's config record ------------------------------------------------------------------------------

    def publish_config(self, record: records.ConfigRecord, ttl: float = 3600.0) -> None:
        assert self.node is not None
        self.loop.run(self.node.store_record(records.config_key(self.run_id), record, ttl), timeout=15)

    def fetch_config(self, owner: bytes | None = None) -> records.ConfigRecord | None:
        """The run's config record (the earliest created, if several owners published one); `owner` (default: the
        organizer key of the invite, if any): only the record signed by this RSA public key."""
        found = self.fetch_configs(owner)
        return found[0] if found else None

    def fetch_configs(self, owner: bytes | None = None) -> list[records.ConfigRecord]:
        """Every config record under the run's key (one per owner), earliest created first; `owner` as in fetch_config."""
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
        from .auth import InviteAccess

        access = InviteAccess(run_id)
        peers = [*access.invite.initial_peers, *initial_peers]
        return Collaboration(access.run_id, initial_peers=peers, authorizer=access.authorizer(),
                             organizer_key=access.invite.organizer_key, **kwargs)
    return Collaboration(run_id, initial_peers=initial_peers, **kwargs)
