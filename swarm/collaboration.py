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
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import torch

from . import records
from .allreduce import AggregateService, AllReduceRound, GroupView, TensorLayout
from .balancing import BandwidthEstimator
from .config import EngineConfig
from .errors import ConfigError, NetworkError, RoundFailed
from .lifecycle import Reaper
from .matchmaking import Matchmaker
from .node import Node, NodeOptions
from .progress import ProgressTracker
from .proto import swarm_pb2
from .runtime import EngineLoop
from .state_sync import StateServer, TrainingState, download_from_any

logger = logging.getLogger(__name__)

MBIT = 1e6 / 8


@dataclass
class RoundOutcome:
    group_size: int
    seconds: float
    bytes_sent: int
    bytes_received: int
    total_weight: float
    round_id: str
    excluded: list[str]


class Collaboration:
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
        start: bool = True,
    ):
        if role not in ("trainer", "client", "aux"):
            raise ConfigError(f"unknown role {role!r}: trainer, client or aux")
        self.run_id = run_id
        self.role = role
        self.config = config or EngineConfig()
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
        if start:
            self.start()

    # -- lifecycle -----------------------------------------------------------------------------------------------

    def start(self) -> "Collaboration":
        self.reaper.start()
        self.loop.start()
        try:
            self.node = self.loop.run(Node.create(self.run_id, self.node_options), timeout=self.node_options.startup_timeout + 15)
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
        self.aggregate = AggregateService(self.node.p2p)
        await self.aggregate.start()
        self.state_server = StateServer(self.node.p2p, self.run_id, lambda: self._snapshot())
        await self.state_server.start()
        self.matchmaker = Matchmaker(
            self.node.p2p, self.run_id, self.tracker, gather_timeout=cfg.gather_timeout,
            allreduce_timeout=cfg.averaging_timeout, balance=cfg.load_balancing,
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

    def optimizer(self, params: Iterable[torch.nn.Parameter], optimizer: Any, **kwargs: Any):
        """Wrap a torch optimizer (class or instance) so that it steps with the swarm; downloads the state if late."""
        from .optimizer import CollaborativeOptimizer

        opt = CollaborativeOptimizer(self, params, optimizer, **kwargs)
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
        layout: TensorLayout = opt.layout
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
        assert self.matchmaker is not None and self.aggregate is not None and self.node is not None
        cfg = self.config
        request = swarm_pb2.JoinRequest(
            run_id=self.run_id, epoch=epoch, peer_id=self.peer_id, role=self.role, weight=weight,
            upload_bps=self.upload.value, download_bps=self.download.value, schema_hash=layout.schema_hash(),
        )
        started = time.monotonic()
        info = await self.matchmaker.form_group(request, started + cfg.matchmaking_timeout)
        group = GroupView.from_info(info, self.peer_id)
        round_ = self.round_class(
            self.node.p2p, group, layout, local, chunk_elements=cfg.chunk_elements, sender_timeout=cfg.sender_timeout,
        )
        self.aggregate.open(round_)
        try:
            result = await round_.run()
        except RoundFailed:
            self.matchmaker.round_failed(epoch)
            raise
        finally:
            self.aggregate.close(group.round_id)
        stats = round_.stats
        # Busy seconds, not the round's: a peer that waits for others would otherwise look as slow as they are.
        self.upload.observe(stats.bytes_sent, stats.send_seconds or stats.seconds)
        self.download.observe(stats.bytes_received, stats.receive_seconds or stats.seconds)
        outcome = RoundOutcome(
            group_size=len(group.peer_ids), seconds=stats.seconds, bytes_sent=stats.bytes_sent,
            bytes_received=stats.bytes_received, total_weight=sum(group.weights), round_id=group.round_id.hex(),
            excluded=stats.excluded,
        )
        self.rounds.append(outcome)
        logger.info(
            "epoch %d: averaged with %d peers in %.2fs (matchmaking %.2fs), sent %.1f MB",
            epoch, outcome.group_size, stats.seconds, time.monotonic() - started - stats.seconds, stats.bytes_sent / 1e6,
        )
        return result, outcome

    def download_state(self, donors: list[str], min_epoch: int) -> TrainingState:
        assert self.node is not None
        timeout = self.config.state_timeout
        try:
            state, donor = self.loop.run(
                download_from_any(self.node.p2p, self.run_id, donors, min_epoch, timeout), timeout=3 * timeout + 5
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
            try:
                self.average(epoch, None, 0.0, layout)
            except RoundFailed as e:
                logger.info("epoch %d: auxiliary round failed: %s", epoch, e)

    # -- the run's config record ------------------------------------------------------------------------------

    def publish_config(self, record: records.ConfigRecord, ttl: float = 3600.0) -> None:
        assert self.node is not None
        self.loop.run(self.node.store_record(records.config_key(self.run_id), record, ttl), timeout=15)

    def fetch_config(self) -> records.ConfigRecord | None:
        """The run's config record (the earliest created, if several owners published one)."""
        assert self.node is not None
        found = self.loop.run(self.node.fetch_records(records.config_key(self.run_id), records.ConfigRecord), timeout=15)
        return min(found, key=lambda r: r.created_at) if found else None  # type: ignore[union-attr, attr-defined]


def join(run_id: str = "demo", initial_peers: Sequence[str] = (), **kwargs: Any) -> Collaboration:
    """Join (or start) a run: `swarm.join(run_id=..., initial_peers=[...])`."""
    return Collaboration(run_id, initial_peers=initial_peers, **kwargs)
