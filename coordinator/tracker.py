"""The tracker: turns the swarm's DHT records into swarm-wide figures, history and metrics.

Every `tracker_period` seconds the coordinator fetches all progress and metrics records of the
run and calls `Tracker.update()`. The live peers are those with an unexpired, non-leaving
progress record (a peer whose record expired drops off the table by itself). From them:

- epoch: the swarm's vouched epoch (`swarm.averaging.progress.swarm_epoch`: one record claiming
  epoch 10**9 does not move it); samples/s: the sum of the peers' rates (trainers and clients);
- loss: the mean of the live peers' latest loss (their last global step's mean micro-batch loss);
- peers by role; per peer: device, samples/s, bandwidth (its measured upload/download EMA),
  samples contributed (summed over the processes of that peer id, kept in history), online since,
  last seen, client mode.

Each metrics record also describes the round that reached its epoch (group size, seconds, bytes):
it is stored once per (epoch, peer), which gives the recent-rounds table, the round-seconds
histogram and the bytes counter. `aggregate()` is pure (unit-tested without a network).
"""
from __future__ import annotations

import logging
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Iterable

from swarm.averaging.progress import swarm_epoch
from swarm.net.records import MetricsRecord, ProgressRecord

from .history import History, PeerSeen
from .metrics import CoordinatorMetrics

logger = logging.getLogger(__name__)

ABSENCE = 30.0   # seconds unseen (while the coordinator was watching) that end a peer's online session


@dataclass
class PeerRow:
    id: str
    role: str
    device: str
    epoch: int
    samples_per_second: float
    upload_bps: float
    download_bps: float
    samples_contributed: int
    online_since: float
    last_seen: float
    client_mode: bool
    loss: float | None


@dataclass
class SwarmFigures:
    epoch: int = 0
    samples_per_second: float = 0.0
    loss: float | None = None
    peers: list[PeerRow] = field(default_factory=list)
    peers_by_role: dict[str, int] = field(default_factory=dict)
    updated_at: float = 0.0

    def to_json(self) -> dict:
        return asdict(self)


def aggregate(progress: Iterable[ProgressRecord], metrics: Iterable[MetricsRecord], seen: dict[str, PeerSeen],
              now: float, exclude: set[str] = frozenset()) -> SwarmFigures:  # type: ignore[assignment]
    live = {p.peer_id: p for p in progress if not p.leaving and p.peer_id not in exclude}
    latest: dict[str, MetricsRecord] = {}
    for m in metrics:
        if m.peer_id in live and (m.peer_id not in latest or m.time > latest[m.peer_id].time):
            latest[m.peer_id] = m
    rows = []
    for pid, p in sorted(live.items(), key=lambda kv: (kv[1].role, kv[0])):
        m = latest.get(pid)
        s = seen.get(pid)
        rows.append(PeerRow(
            id=pid, role=p.role, device=m.device if m else (s.device if s else ""), epoch=p.epoch,
            samples_per_second=p.samples_per_second, upload_bps=p.upload_bps, download_bps=p.download_bps,
            samples_contributed=s.samples_contributed if s else (m.samples_total if m else 0),
            online_since=s.online_since if s else now, last_seen=now, client_mode=p.role == "client",
            loss=m.loss if m is not None and m.loss >= 0 else None,
        ))
    losses = [r.loss for r in rows if r.loss is not None]
    by_role: dict[str, int] = {}
    for r in rows:
        by_role[r.role] = by_role.get(r.role, 0) + 1
    return SwarmFigures(
        epoch=swarm_epoch([r.epoch for r in rows]),
        samples_per_second=sum(r.samples_per_second for r in rows if r.role != "aux"),
        loss=statistics.fmean(losses) if losses else None,
        peers=rows, peers_by_role=by_role, updated_at=now,
    )


class Tracker:
    def __init__(self, history: History, metrics: CoordinatorMetrics, exclude: set[str] | None = None):
        self.history = history
        self.metrics = metrics
        self.exclude = set(exclude or ())
        self.figures = SwarmFigures()
        last = history.last_sample()
        if last is not None:   # a restarted coordinator shows the last known figures until the first read
            self.figures = SwarmFigures(epoch=last["epoch"], samples_per_second=0.0, loss=last["loss"], updated_at=last["time"])
        for seconds in history.round_seconds_all():
            metrics.round_seconds.observe(seconds)
        metrics.bytes_sent.inc(history.bytes_sent_total())

    def update(self, progress: list[ProgressRecord], metrics: list[MetricsRecord], now: float | None = None) -> SwarmFigures:
        now = time.time() if now is None else now
        live_ids = [p.peer_id for p in progress if not p.leaving and p.peer_id not in self.exclude]
        latest: dict[str, MetricsRecord] = {}
        for m in metrics:
            if m.peer_id not in latest or m.time > latest[m.peer_id].time:
                latest[m.peer_id] = m
        # a peer we did not see for ABSENCE seconds while we were watching starts a new online session
        absent_before = self.figures.updated_at - ABSENCE if self.figures.updated_at else None
        for p in progress:
            if p.peer_id in live_ids:
                m = latest.get(p.peer_id)
                self.history.see_peer(p.peer_id, role=p.role, device=m.device if m else "", t=now,
                                      samples_total=m.samples_total if m else None, absent_before=absent_before)
        for m in latest.values():
            if m.epoch > 0 and m.peer_id not in self.exclude and self.history.add_round_report(
                m.epoch, m.peer_id, t=m.time, group_size=m.group_size, seconds=m.round_seconds,
                bytes_sent=m.bytes_sent, bytes_received=m.bytes_received,
            ):
                self.metrics.observe_round(m.round_seconds, m.bytes_sent)
        figures = aggregate(progress, latest.values(), self.history.peers_by_id(live_ids), now, self.exclude)
        if not figures.peers:   # nobody online: the run is still at the epoch it reached
            figures.epoch = self.figures.epoch
        self.history.add_sample(now, epoch=figures.epoch, samples_per_second=figures.samples_per_second,
                                loss=figures.loss, peers=len(figures.peers))
        self.metrics.set_swarm(epoch=figures.epoch, samples_per_second=figures.samples_per_second,
                               loss=figures.loss, peers_by_role=figures.peers_by_role)
        self.figures = figures
        return figures
