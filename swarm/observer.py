"""A node that joins a run without training: the bootstrap peer of a demo, and the coordinator's eyes.

It owns a Reaper, an engine loop and a Node (p2pd + DHT) like a trainer does, publishes
no progress, and reads everyone's progress and metrics records.
"""
from __future__ import annotations

import logging
from typing import Sequence

from hivemind.utils.crypto import RSAPrivateKey

from swarm.net import records
from swarm.net.auth import InviteAccess, SwarmAuthorizer
from swarm.net.node import Node, NodeOptions
from swarm.process.lifecycle import SharedReaper
from swarm.process.runtime import EngineLoop

from .config import RunConfig
from .errors import ConfigError, NetworkError

logger = logging.getLogger(__name__)


class Observer:
    def __init__(self, run_id: str, *, initial_peers: Sequence[str] = (), host_maddrs: Sequence[str] = ("/ip4/127.0.0.1/tcp/0",),
                 announce_maddrs: Sequence[str] | None = None, identity_path: str | None = None,
                 private_key: RSAPrivateKey | None = None, authorizer: SwarmAuthorizer | None = None):
        """`identity_path`: p2p identity file (a stable peer id); `private_key`: the RSA key that signs this
        node's records (a stable owner, e.g. the organizer's key); both are fresh per process when None.
        `authorizer`: an invite-only run's (swarm.net.auth), None for an open run."""
        self.run_id = run_id
        self.reaper = SharedReaper().start()   # shared with any other node of this process: closing mine must not reap theirs
        self.loop = EngineLoop(name="swarm-observer").start()
        options = NodeOptions(initial_peers=tuple(initial_peers), host_maddrs=tuple(host_maddrs),
                              announce_maddrs=announce_maddrs, identity_path=identity_path)
        try:
            self.node: Node | None = self.loop.run(Node.create(run_id, options, private_key, authorizer), timeout=options.startup_timeout + 15)
        except BaseException:
            self.loop.stop()
            self.reaper.close()
            raise
        self.reaper.scan()

    def _node(self) -> Node:
        if self.node is None:
            raise NetworkError("observer is shut down")
        return self.node

    @property
    def peer_id(self) -> str:
        return str(self._node().peer_id)

    def visible_maddrs(self) -> list[str]:
        return self.loop.run(self._node().visible_maddrs(), timeout=10)

    def progress(self) -> list[records.ProgressRecord]:
        return self.loop.run(self._node().fetch_records(records.progress_key(self.run_id), records.ProgressRecord), timeout=15)  # type: ignore[return-value]

    def metrics(self) -> list[records.MetricsRecord]:
        return self.loop.run(self._node().fetch_records(records.metrics_key(self.run_id), records.MetricsRecord), timeout=15)  # type: ignore[return-value]

    def publish_config(self, record: records.ConfigRecord, ttl: float = 3600.0) -> bool:
        return self.loop.run(self._node().store_record(records.config_key(self.run_id), record, ttl), timeout=15)

    def shutdown(self) -> None:
        try:
            if self.node is not None:
                try:
                    self.loop.run(self.node.shutdown(), timeout=6)
                except Exception as e:
                    logger.debug("observer shutdown: %s", e)
                self.node = None
            self.loop.stop()
        finally:
            self.reaper.close()

    def __enter__(self) -> "Observer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


async def read_run_config(node: Node, organizer_key: bytes, wait: float = 20.0) -> RunConfig:
    """The run's RunConfig from the config record signed by `organizer_key` (any other owner's is ignored),
    waiting up to `wait` seconds for it to appear; ConfigError when there is none or it is not a config."""
    import asyncio
    import time

    deadline = time.monotonic() + wait
    while True:
        found = await node.fetch_records(records.config_key(node.run_id), records.ConfigRecord, owner=organizer_key)
        if found or time.monotonic() > deadline:
            break
        await asyncio.sleep(1.0)
    if not found:
        raise ConfigError(f"run {node.run_id} has no config record signed by its organizer: is its coordinator running?")
    record = min(found, key=lambda r: r.created_at)  # type: ignore[attr-defined]
    if not record.run_config:  # type: ignore[attr-defined]
        raise ConfigError(f"run {node.run_id}'s config record does not carry its full config: join with --config FILE")
    try:
        return RunConfig.model_validate_json(record.run_config)  # type: ignore[attr-defined]
    except ValueError as e:
        raise ConfigError(f"run {node.run_id}'s config record is not a valid config: {str(e).splitlines()[0]}") from None


def fetch_run_config(access: InviteAccess, initial_peers: Sequence[str] | None = None, wait: float = 20.0) -> RunConfig:
    """The run's RunConfig (see read_run_config), read by a short-lived node; its access token stays in `access`
    for the node that trains next. Call it before this process starts other child processes: when no other node of
    this process holds the shared Reaper, the probe's close ends every descendant of the process (`swarm join` calls it
    first thing)."""
    with Observer(access.run_id, initial_peers=initial_peers or access.invite.initial_peers,
                  private_key=access.private_key, authorizer=access.authorizer()) as probe:
        return probe.loop.run(read_run_config(probe._node(), access.invite.organizer_key, wait), timeout=wait + 30)
