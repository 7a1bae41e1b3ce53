"""deploy/grafana/swarm-dashboard.json only queries metrics that the coordinator or a peer exports."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from coordinator.metrics import CoordinatorMetrics
from peers.metrics_server import PeerMetricsServer

DASHBOARD = Path(__file__).resolve().parents[3] / "deploy" / "grafana" / "swarm-dashboard.json"


def exported_series() -> set[str]:
    from prometheus_client import generate_latest

    peer = PeerMetricsServer(0)
    try:
        texts = [CoordinatorMetrics("r").render().decode(), generate_latest(peer.registry).decode()]
    finally:
        peer.close()
    return {s.name for text in texts for f in text_string_to_metric_families(text) for s in f.samples}


@pytest.mark.integration  # starts a process or opens a socket
def test_dashboard_queries_existing_metrics():
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\bswarm_[a-z_]+", e)}
    assert used, "no queries"
    missing = used - exported_series()
    assert not missing, f"the dashboard queries metrics nobody exports: {sorted(missing)}"
    assert {"swarm_loss", "swarm_samples_per_second", "swarm_peers", "swarm_round_seconds_bucket", "swarm_bytes_sent_total"} <= used
