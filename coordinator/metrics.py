"""The coordinator's Prometheus metrics, in a CollectorRegistry of its own (nothing global).

    swarm_epoch                      the swarm's epoch (highest among live peers)
    swarm_samples_per_second         the swarm's throughput (sum of the peers' rates)
    swarm_loss                       mean of the live peers' latest training loss (NaN before the first step)
    swarm_peers{role=...}            live peers by role (trainer, client, aux)
    swarm_round_seconds              histogram: each peer's all-reduce seconds per round
    swarm_bytes_sent_total           bytes the peers sent in all-reduce rounds (restored from history on restart)
    swarm_checkpoints_total          checkpoints written by this process
    swarm_last_checkpoint_epoch      epoch of the newest checkpoint
    swarm_tracker_updates_total      reads of the swarm's records (a stalled coordinator stops counting)
    swarm_total_epochs               the run's total_epochs (its end)
    swarm_progress_ratio             epoch / total_epochs, 0 to 1
    swarm_eta_seconds                seconds to total_epochs at the recent epoch rate (NaN while unknown)
    swarm_run_info{run_id=...}       always 1: the run this coordinator serves (join on it to label other series)
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

ROLES = ("trainer", "client", "aux")
ROUND_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


class CoordinatorMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, run_id: str, total_epochs: int = 0) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.epoch = Gauge("swarm_epoch", "The swarm's epoch (highest among live peers)", registry=r)
        self.samples_per_second = Gauge("swarm_samples_per_second", "The swarm's training throughput", registry=r)
        self.loss = Gauge("swarm_loss", "Mean of the live peers' latest training loss", registry=r)
        self.peers = Gauge("swarm_peers", "Live peers by role", ["role"], registry=r)
        self.round_seconds = Histogram("swarm_round_seconds", "All-reduce seconds, per peer and round", buckets=ROUND_BUCKETS, registry=r)
        self.bytes_sent = Counter("swarm_bytes_sent", "Bytes sent by peers in all-reduce rounds", registry=r)
        self.checkpoints = Counter("swarm_checkpoints", "Checkpoints written by this coordinator process", registry=r)
        self.last_checkpoint_epoch = Gauge("swarm_last_checkpoint_epoch", "Epoch of the newest checkpoint", registry=r)
        self.tracker_updates = Counter("swarm_tracker_updates", "Reads of the swarm's DHT records", registry=r)
        self.total_epochs = Gauge("swarm_total_epochs", "The run's total_epochs", registry=r)
        self.progress = Gauge("swarm_progress_ratio", "Epoch over total_epochs, 0 to 1", registry=r)
        self.eta = Gauge("swarm_eta_seconds", "Seconds to total_epochs at the recent epoch rate (NaN: unknown)", registry=r)
        self.total_epochs.set(total_epochs)
        self.eta.set(float("nan"))
        info = Gauge("swarm_run_info", "The run this coordinator serves", ["run_id"], registry=r)
        info.labels(run_id=run_id).set(1)
        self.loss.set(float("nan"))
        for role in ROLES:
            self.peers.labels(role=role).set(0)

    def set_swarm(self, *, epoch: int, samples_per_second: float, loss: float | None, peers_by_role: dict[str, int]) -> None:
        self.epoch.set(epoch)
        self.samples_per_second.set(samples_per_second)
        self.loss.set(float("nan") if loss is None else loss)
        for role in set(ROLES) | set(peers_by_role):
            self.peers.labels(role=role).set(peers_by_role.get(role, 0))
        self.tracker_updates.inc()

    def set_progress(self, fraction: float, eta_s: float | None) -> None:
        self.progress.set(fraction)
        self.eta.set(float("nan") if eta_s is None else eta_s)

    def observe_round(self, seconds: float, bytes_sent: int) -> None:
        self.round_seconds.observe(seconds)
        if bytes_sent > 0:
            self.bytes_sent.inc(bytes_sent)

    def render(self) -> bytes:
        return generate_latest(self.registry)
