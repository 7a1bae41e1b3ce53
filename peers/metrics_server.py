"""A peer's own Prometheus endpoint (`swarm join --metrics-port N`): what this one peer sees.

    swarm_peer_epoch                 the epoch this peer reached
    swarm_peer_samples_per_second    its local throughput (EMA over micro-batches)
    swarm_peer_loss                  mean loss of its micro-batches in the last epoch
    swarm_peer_round_seconds         histogram: its all-reduce seconds per round
    swarm_peer_samples_total         samples it trained on
    swarm_peer_bytes_sent_total      bytes it sent in all-reduce rounds

prometheus_client's own HTTP server, on a daemon thread that `close()` stops; its own registry.
"""
from __future__ import annotations

import errno
import math

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from swarm.errors import ConfigError

ROUND_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


class PeerMetricsServer:
    def __init__(self, port: int, host: str = "127.0.0.1"):
        r = self.registry = CollectorRegistry()
        self.epoch = Gauge("swarm_peer_epoch", "The epoch this peer reached", registry=r)
        self.samples_per_second = Gauge("swarm_peer_samples_per_second", "This peer's local throughput", registry=r)
        self.loss = Gauge("swarm_peer_loss", "Mean micro-batch loss of this peer's last epoch", registry=r)
        self.round_seconds = Histogram("swarm_peer_round_seconds", "This peer's all-reduce seconds per round", buckets=ROUND_BUCKETS, registry=r)
        self.samples = Counter("swarm_peer_samples", "Samples this peer trained on", registry=r)
        self.bytes_sent = Counter("swarm_peer_bytes_sent", "Bytes this peer sent in all-reduce rounds", registry=r)
        self.loss.set(float("nan"))
        try:
            self.server, self.thread = start_http_server(port, addr=host, registry=r)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise ConfigError(f"--metrics-port {port} is already in use on {host}") from None
            raise ConfigError(f"cannot serve metrics on {host}:{port}: {e.strerror or e}") from None
        self.port = self.server.server_port

    def on_step(self, *, epoch: int, loss: float, samples_per_second: float, round_seconds: float, bytes_sent: int, new_samples: int) -> None:
        self.epoch.set(epoch)
        self.loss.set(loss if math.isfinite(loss) else float("nan"))
        self.samples_per_second.set(samples_per_second)
        self.round_seconds.observe(round_seconds)
        if bytes_sent > 0:
            self.bytes_sent.inc(bytes_sent)
        if new_samples > 0:
            self.samples.inc(new_samples)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)
