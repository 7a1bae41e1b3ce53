"""The Coordinator: the organizer's long-running process, and the owner of everything in it.

    coordinator = Coordinator(run_config, CoordinatorSettings(port=8080))
    asyncio.run(coordinator.run())          # until cancelled (SIGINT/SIGTERM in `swarm launch`)

Start-up, in order, failing fast with one line on anything a user can get wrong: validate the
run folder against the config (a folder holds one run), verify `--from-checkpoint`, bind the HTTP
port, build the task's fingerprint, load the organizer's keys, start the bootstrap node (an
`Observer` with the persistent p2p identity and signing key, rejoining the peers last seen if this
is a restart), publish the config record, then run as sibling tasks of one TaskGroup:

- the tracker loop: read progress and metrics records every `tracker_period`, update figures,
  history and metrics; remember the peers' multiaddrs (a restarted coordinator dials them), and
  ping known peers missing from the DHT routing table back into it (see swarm.net.contacts);
- the checkpointer: when the swarm crosses a multiple of `checkpoint_every` epochs, download the
  state from a peer of the newest epoch with `swarm.averaging.state_sync.download_from_any` (exactly what a
  newcomer does), write it atomically, keep the newest K;
- the config republisher: store the config record again every third of its TTL (same created_at);
- the seed, for a run started from a checkpoint (see coordinator.seed).

Threads: the main thread runs this asyncio loop (HTTP server, tracker, checkpointer, SQLite); the
Observer's engine loop thread owns p2pd and the DHT node; DHT calls hop to it with
`_engine(coro)`. Blocking file work (checkpoint writes, the task's tokenizer) runs in
`asyncio.to_thread`. On exit every task is cancelled, the HTTP server closed, the node shut down
and its p2pd reaped (the Observer's Reaper also reaps it if this process is killed with -9).
"""
from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, TypeVar

import yaml

from swarm.averaging.state_sync import TrainingState, download_from_any
from swarm.config import RunConfig
from swarm.errors import ConfigError, NetworkError, SwarmError
from swarm.net import records
from swarm.net.contacts import keep_in_touch
from swarm.net.invite_link import make_link

from .access import AccessControl
from .checkpoints import CheckpointError, doomed_checkpoints, list_checkpoints, load_checkpoint, prune, write_checkpoint
from .history import History
from .identity import load_or_create_rsa_key
from .metrics import CoordinatorMetrics
from .run_folder import FolderState, RunFolder
from .run_progress import ETA_WINDOW, RunProgress, run_progress
from .seed import StateSeed
from .server import make_app, start_server
from .settings import CoordinatorSettings
from .tracker import Tracker

logger = logging.getLogger(__name__)
T = TypeVar("T")

REJOIN_WITHIN = 3600.0        # a restarted coordinator dials the peers seen in the last hour
MADDRS_EVERY = 15.0           # seconds between two reads of the p2p peer store
CHECKPOINT_RETRY = 10.0
KEEP_IN_TOUCH_WITHIN = 600.0  # peers seen in the last 10 minutes are pinged back into the DHT routing table


def invite_addresses(bootstrap: str, maddrs: list[str]) -> list[str]:
    """The launch invite's peers: the bootstrap address first, then every other one but loopback (a peer listening on
    0.0.0.0 is reachable on each interface, and a volunteer may reach only one of them). The link takes the most
    public (swarm.net.invite_link.most_public)."""
    return [bootstrap, *(m for m in maddrs if m != bootstrap and not m.startswith(("/ip4/127.", "/ip6/::1/")))]


INVITE_ONLY_JOIN = "swarm join INVITE (invite-only run: the organizer makes invites with `swarm invite create`)"


class Coordinator:
    def __init__(self, config: RunConfig, settings: CoordinatorSettings | None = None, *,
                 from_checkpoint: Path | None = None, announce: Callable[[str], None] = print):
        self.config = config
        self.settings = settings or CoordinatorSettings()
        self.from_checkpoint = from_checkpoint
        self.announce = announce
        self.folder = RunFolder.open(self.settings.runs_dir, config.run_id)
        self.ready = False
        self.started_at = time.time()
        self.observer: Any = None
        self.history: History = None  # type: ignore[assignment]
        self.metrics = CoordinatorMetrics(config.run_id, config.total_epochs)
        self.tracker: Tracker | None = None
        self.seed: StateSeed | None = None
        self.fingerprint: dict[str, str] = {}
        self.bootstrap = ""
        self.url = ""
        self.peer_id = ""
        self.progress: list[records.ProgressRecord] = []
        self.checkpoint_error: str | None = None
        self._last_checkpoint_epoch = -1
        self._checkpoint_retry_at = 0.0
        self._maddrs_known: set[str] = set()   # peers whose multiaddrs the history holds (a restart dials them)
        self._orphaned_since: float | None = None     # since when no peer holds the newest checkpoint's epoch
        self._folder_state: FolderState | None = None
        self.access: AccessControl | None = None      # invites and tokens (coordinator.access)
        self.invite: str = ""                         # the launch invite (swarm://...)

    # -- start-up ----------------------------------------------------------------------------------------

    def _check_folder(self) -> FolderState:
        self.folder.lock()   # one coordinator per run folder; the kernel releases it even on kill -9
        if self.settings.fresh:
            self.folder.reset()
        state = self.folder.load_state()
        digest = self.config.digest()
        if state is not None and state.config_digest != digest:
            raise ConfigError(
                f"{self.folder.root} belongs to run {state.run_id!r} launched with another config; "
                "launch with the same config, or pass --fresh to start this run over (keeps its keys)"
            )
        if state is None:
            state = FolderState(run_id=self.config.run_id, task=self.config.task, config_digest=digest, created_at=time.time())
        self.folder.config_path.write_text(yaml.safe_dump(self.config.model_dump(mode="json"), sort_keys=False))
        return state

    def _load_seed_state(self) -> TrainingState | None:
        if self.from_checkpoint is None:
            return None
        state, meta = load_checkpoint(self.from_checkpoint)
        if meta["task"] != self.config.task:
            raise CheckpointError(f"checkpoint {self.from_checkpoint} is of task {meta['task']!r}, this run trains {self.config.task!r}")
        want = meta.get("fingerprint") or {}
        for key, value in want.items():
            if self.fingerprint.get(key) not in (None, value):
                raise CheckpointError(f"checkpoint {self.from_checkpoint} was trained with another {key}: use the same task options and data")
        return state

    def _fingerprint(self) -> dict[str, str]:
        from peers.tasks import TaskSettings, get_task

        c = self.config
        task = get_task(c.task, TaskSettings(data_path=c.data_path, micro_batch_size=c.micro_batch_size, seed=c.seed, options=dict(c.task_options)))
        return task.fingerprint()

    def _start_observer(self, port: int, initial: list[str]):
        from swarm.observer import Observer

        s = self.settings
        return Observer(
            self.config.run_id, initial_peers=initial, host_maddrs=[f"/ip4/{s.p2p_host}/tcp/{port}"],
            announce_maddrs=s.announce_maddrs, identity_path=str(self.folder.identity_path),
            private_key=load_or_create_rsa_key(self.folder.organizer_key_path),
            authorizer=self.access.authorizer() if self.access is not None else None,
        )

    def _observer_with_fallbacks(self, stored_port: int, initial: list[str]) -> Any:
        """Rejoin the peers seen last (`initial`, after a restart), else start alone; reuse the folder's p2p port if free."""
        port = self.settings.p2p_port or stored_port
        attempts = [(port, initial)] if initial else []
        attempts.append((port, []))
        if port and not self.settings.p2p_port:
            attempts.append((0, []))
        error: Exception | None = None
        for p, peers in attempts:
            try:
                return self._start_observer(p, peers)
            except NetworkError as e:
                error = e
                logger.warning("bootstrap node on port %s with %d known peers did not start: %s", p or "(any)", len(peers), e)
        raise NetworkError(f"the bootstrap node did not start: {error}")

    async def _engine(self, coro: Awaitable[T], timeout: float = 20.0) -> T:
        """Run a coroutine on the Observer's engine loop (where the DHT lives) and await it here."""
        future = self.observer.loop.submit(coro)
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.wrap_future(future)
        except TimeoutError:
            future.cancel()
            raise NetworkError(f"DHT call did not finish in {timeout:.0f}s") from None

    # -- the service -------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Start everything, announce the URLs, and serve until cancelled; always cleans up."""
        s = self.settings
        self._folder_state = await asyncio.to_thread(self._check_folder)
        self.history = History(self.folder.history_path)
        self.access = AccessControl(self.folder, self.config.run_id, load_or_create_rsa_key(self.folder.organizer_key_path),
                                    invite_only=s.invite_only, token_lifetime=s.token_lifetime, invite_expires=s.invite_expires)
        runner = None
        try:
            runner, port = await start_server(make_app(self), s.host, s.port)
            shown_host = "127.0.0.1" if s.host in ("0.0.0.0", "") else s.host
            self.url = f"http://{shown_host}:{port}/"
            self.fingerprint = await asyncio.to_thread(self._fingerprint)
            seed_state = await asyncio.to_thread(self._load_seed_state)
            known = self.history.recent_maddrs(REJOIN_WITHIN)
            self.observer = await asyncio.to_thread(self._observer_with_fallbacks, self._folder_state.p2p_port, known)
            try:
                await self._serve(seed_state)
            finally:
                self.ready = False
                observer, self.observer = self.observer, None
                # hivemind's control-connection reader dies with p2pd and logs "never retrieved": expected here
                logging.getLogger("asyncio").setLevel(logging.CRITICAL)
                await asyncio.to_thread(observer.shutdown)
        finally:
            if runner is not None:
                await runner.cleanup()
            self.history.close()
            if self.access is not None:
                self.access.close()

    async def _serve(self, seed_state: TrainingState | None) -> None:
        node = self.observer.node
        await self._engine(self.access.start(node))   # the token issuer (invite-only runs), before anything else
        self.peer_id = str(node.peer_id)
        maddrs = await self._engine(node.visible_maddrs())
        self.bootstrap = next((m for m in maddrs if "/ip4/127." not in m), maddrs[0]) if maddrs else ""
        port = int(self.bootstrap.split("/tcp/")[1].split("/")[0]) if "/tcp/" in self.bootstrap else 0
        self._folder_state.p2p_port = port
        self._folder_state.dashboard = self.url
        self.folder.save_state(self._folder_state)
        self.tracker = Tracker(self.history, self.metrics, exclude={self.peer_id})
        done = list_checkpoints(self.folder.checkpoints)
        self._last_checkpoint_epoch = max([c.epoch for c in done], default=-1)
        if seed_state is not None:
            self.seed = StateSeed(node, seed_state, record_ttl=self.config.engine.record_ttl)
            await self._engine(self.seed.start())
            self._last_checkpoint_epoch = max(self._last_checkpoint_epoch, seed_state.epoch)
        await self._publish_config()
        await self.access.publish_revocations(self._store_record, force=True)
        invite = await asyncio.to_thread(self.access.launch_invite, invite_addresses(self.bootstrap, maddrs)) if self.bootstrap else None
        self.invite = make_link(invite) if invite is not None else ""
        self.ready = True
        self.announce(f"swarm coordinator: run {self.config.run_id} (task {self.config.task}), peer {self.peer_id}")
        self.announce(f"dashboard: {self.url}")
        self.announce(f"bootstrap: {self.bootstrap}")
        for other in maddrs:
            if other != self.bootstrap:
                logger.info("also reachable at %s", other)
        if self.access.invite_only:
            self.announce(f"invite-only run: this invite admits anyone for {self.settings.invite_expires / 86400:g} days "
                          "(swarm invite create / list / revoke manage invites)")
        self.announce(f"join with: swarm join {self.invite}")
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._track_forever(), name="tracker")
            tasks.create_task(self.access.keep_revocations_published(self._store_record), name="revocations")
            tasks.create_task(self._republish_config_forever(), name="config-republisher")

    async def _publish_config(self) -> None:
        from peers.daemon import config_record

        record = config_record(self.config, self.fingerprint).model_copy(update={"created_at": self._folder_state.created_at})
        await self._engine(self.observer.node.store_record(records.config_key(self.config.run_id), record, self.settings.config_ttl))

    async def _store_record(self, key: str, record: records._Record, ttl: float) -> bool:
        return await self._engine(self.observer.node.store_record(key, record, ttl))

    async def _republish_config_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.config_ttl / 3)
            try:
                await self._publish_config()
            except SwarmError as e:
                logger.warning("config record not republished: %s", e)

    async def _track_forever(self) -> None:
        node = self.observer.node
        run_id = self.config.run_id
        next_maddrs = 0.0
        while True:
            started = time.monotonic()
            try:
                progress = await self._engine(node.fetch_records(records.progress_key(run_id), records.ProgressRecord))
                metrics = await self._engine(node.fetch_records(records.metrics_key(run_id), records.MetricsRecord))
                self.progress = progress  # type: ignore[assignment]
                figures = self.tracker.update(progress, metrics)  # type: ignore[union-attr, arg-type]
                self.run_progress()
                if self.seed is not None and self.seed.active:
                    await self._engine(self.seed.tick(self.progress))
                else:
                    await self._maybe_reseed(progress)  # type: ignore[arg-type]
                live = {p.id for p in figures.peers}
                if time.monotonic() >= next_maddrs or live - self._maddrs_known:   # a newcomer's at once: a restart
                    next_maddrs = time.monotonic() + MADDRS_EVERY                  # soon after it must find it again
                    await self._remember_maddrs(live)
                recent = self.history.recent_peers(KEEP_IN_TOUCH_WITHIN)
                await self._engine(keep_in_touch(node, recent, recent), timeout=15)
                await self._maybe_checkpoint(figures.epoch)
            except SwarmError as e:
                logger.warning("tracker: %s", e)
            except Exception as e:   # a record no schema bound foresaw must cost one read, never the coordinator
                logger.warning("tracker: skipped a read (%s: %s)", type(e).__name__, e)
            await asyncio.sleep(max(0.1, self.settings.tracker_period - (time.monotonic() - started)))

    async def _remember_maddrs(self, live: set[str]) -> None:
        infos = await self._engine(self.observer.node.p2p.list_peers(), timeout=5)
        for info in infos:
            pid = str(info.peer_id)
            if pid in live and info.addrs:
                self.history.set_maddrs(pid, [f"{a}/p2p/{pid}" for a in info.addrs])
                self._maddrs_known.add(pid)

    # -- checkpoints -------------------------------------------------------------------------------------

    async def _maybe_reseed(self, progress: list[records.ProgressRecord]) -> None:
        """When no peer has held the newest checkpoint's epoch (or a later one) for a record lifetime, the swarm
        has emptied: serve that checkpoint, so that the next peer resumes from it instead of from a fresh model."""
        newest = list_checkpoints(self.folder.checkpoints)
        if not newest or newest[-1].epoch <= 0:
            return
        epoch = newest[-1].epoch
        if any(p.peer_id != self.peer_id and not p.leaving and p.role not in ("client", "aux") and p.epoch >= epoch for p in progress):
            self._orphaned_since = None
            return
        now = time.monotonic()
        if self._orphaned_since is None:
            self._orphaned_since = now
        if now - self._orphaned_since < self.config.engine.record_ttl:
            return   # a DHT read that missed the peers, or a swarm between two records: wait one record lifetime
        for checkpoint in reversed(newest):   # the newest that loads (a corrupted one is skipped, with a warning)
            try:
                state, _ = await asyncio.to_thread(load_checkpoint, checkpoint.path)
                break
            except CheckpointError as e:
                logger.warning("not seeding from %s: %s", checkpoint.path, e)
        else:
            return
        if self.seed is None:
            self.seed = StateSeed(self.observer.node, state, record_ttl=self.config.engine.record_ttl)
            await self._engine(self.seed.start())
        else:
            await self._engine(self.seed.reseed(state))
        self._orphaned_since = None
        self.announce(f"no peer holds the run's state any more: serving the checkpoint of epoch {state.epoch} to the next peers")

    async def _maybe_checkpoint(self, epoch: int) -> None:
        every = self.settings.checkpoint_every
        last = self._last_checkpoint_epoch
        if every <= 0 or epoch < every or time.monotonic() < self._checkpoint_retry_at:
            return
        if last >= 0 and epoch // every <= last // every:
            return   # no multiple of `every` crossed since the last checkpoint
        try:
            await self.checkpoint_now(epoch)
            self.checkpoint_error = None
        except SwarmError as e:
            self.checkpoint_error = str(e)
            self._checkpoint_retry_at = time.monotonic() + CHECKPOINT_RETRY
            logger.warning("checkpoint at epoch %d failed: %s", epoch, e)

    async def checkpoint_now(self, epoch: int) -> Any:
        """Download the state of `epoch` (or newer) from a peer, as a newcomer would, and keep it."""
        donors = [
            p.peer_id for p in self.progress
            if p.epoch >= epoch and p.serves_state and p.role not in ("client", "aux") and not p.leaving and p.peer_id != self.peer_id
        ]
        if not donors:
            raise NetworkError(f"no peer serves the state of epoch {epoch}")
        timeout = self.settings.checkpoint_timeout
        state, donor = await self._engine(
            download_from_any(self.observer.node.p2p, self.config.run_id, donors, epoch, timeout, authorizer=self.observer.node.authorizer),
            timeout=3 * timeout + 5
        )
        meta = {
            "run_id": self.config.run_id, "task": self.config.task, "task_options": dict(self.config.task_options),
            "run_config": self.config.model_dump(mode="json"), "fingerprint": self.fingerprint, "donor": donor,
        }
        checkpoint = await asyncio.to_thread(write_checkpoint, self.folder.checkpoints, state, meta)
        self.history.add_checkpoint(checkpoint.epoch, t=time.time(), path=str(checkpoint.path), digest=checkpoint.digest,
                                    size=checkpoint.size, donor=donor)
        for doomed in await asyncio.to_thread(doomed_checkpoints, self.folder.checkpoints, self.settings.keep_checkpoints):
            self.history.mark_removed(doomed.epoch)   # first: see doomed_checkpoints
        await asyncio.to_thread(prune, self.folder.checkpoints, self.settings.keep_checkpoints)
        self._last_checkpoint_epoch = checkpoint.epoch
        self.metrics.checkpoints.inc()
        self.metrics.last_checkpoint_epoch.set(checkpoint.epoch)
        logger.info("checkpoint of epoch %d from %s: %s (%.1f MB)", checkpoint.epoch, donor[-8:], checkpoint.path, checkpoint.size / 1e6)
        return checkpoint

    # -- what the HTTP server shows ----------------------------------------------------------------------

    @property
    def invite_only(self) -> bool:
        return self.access is not None and self.access.invite_only

    def config_yaml(self) -> str:
        return yaml.safe_dump(self.config.model_dump(mode="json"), sort_keys=False)

    def run_progress(self) -> RunProgress:
        """The run's state, progress toward total_epochs and ETA (also set on /metrics)."""
        figures = self.tracker.figures if self.tracker is not None else None
        epochs = self.history.series("epoch", since=time.time() - ETA_WINDOW, points=60) if self.history is not None else []
        progress = run_progress(epoch=figures.epoch if figures else 0, total_epochs=self.config.total_epochs, epochs=epochs,
                                peers=len(figures.peers) if figures else 0, ready=self.ready)
        self.metrics.set_progress(progress.fraction, progress.eta_s)
        return progress

    def status(self) -> dict[str, Any]:
        figures = self.tracker.figures if self.tracker is not None else None
        progress = self.run_progress()
        data: dict[str, Any] = {
            "run_id": self.config.run_id,
            "task": self.config.task,
            "state": progress.state,
            "progress": progress.to_json(),
            "target_batch_size": self.config.engine.target_batch_size,
            "coordinator": {
                "peer_id": self.peer_id, "bootstrap": self.bootstrap, "dashboard": self.url, "started_at": self.started_at,
                "join_command": (INVITE_ONLY_JOIN if self.invite_only   # never show an invite-only run's invite
                                 else f"swarm join {self.invite}") if self.invite else "",
                "invite": "" if self.invite_only else self.invite,
            },
            "epoch": figures.epoch if figures else 0,
            "samples_per_second": figures.samples_per_second if figures else 0.0,
            "loss": figures.loss if figures else None,
            "peers_by_role": figures.peers_by_role if figures else {},
            "peers": [vars(p) for p in figures.peers] if figures else [],
            "updated_at": figures.updated_at if figures else None,
            "rounds": [], "checkpoints": [], "leaderboard": [],
            "checkpoint_every": self.settings.checkpoint_every,
            "checkpoint_error": self.checkpoint_error,
            "seed": None,
        }
        if self.history is not None:
            data["rounds"] = [vars(r) for r in self.history.rounds(self.settings.rounds_shown)]
            data["checkpoints"] = self.history.checkpoints()
            data["leaderboard"] = [{"id": pid, "samples": n} for pid, n in self.history.leaderboard()]
        if self.seed is not None:
            data["seed"] = {"epoch": self.seed.state.epoch, "active": self.seed.active, "served": self.seed.served}
        return data

