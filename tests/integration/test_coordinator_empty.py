"""A coordinator with no peers yet: every endpoint answers, with an empty swarm (uses the `running_swarm` fixture)."""
from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.running_swarm import running_swarm  # noqa: F401  (the fixture)

pytestmark = pytest.mark.integration


@pytest.mark.timeout(240)
def test_empty_swarm(running_swarm):  # noqa: F811
    swarm = running_swarm(peers=0)
    # up, with nobody training: not "running"
    status = swarm.wait_status(lambda s: s["state"] == "waiting for peers" and s["updated_at"], timeout=60, what="a first tracker read")
    assert status["peers"] == [] and status["epoch"] == 0 and status["loss"] is None and status["checkpoints"] == []
    assert status["progress"]["fraction"] == 0.0 and status["progress"]["eta_s"] is None
    assert status["coordinator"]["join_command"] == f"swarm join {status['coordinator']['invite']}"
    assert status["coordinator"]["bootstrap"] == swarm.bootstrap and swarm.bootstrap.startswith("/ip4/127.0.0.1/tcp/")
    assert swarm.api("/api/history?metric=loss")["points"] == []
    assert len(swarm.api("/api/history?metric=peers")["points"]) >= 1
    assert swarm.get("/healthz") == b"ok\n"
    families = {f.name: f for f in text_string_to_metric_families(swarm.get("/metrics").decode())}
    assert families["swarm_peers"].samples and all(s.value == 0 for s in families["swarm_peers"].samples)
    assert b"task: albert" in swarm.get("/api/config")
    html = swarm.get("/").decode()
    assert "<title>swarm dashboard</title>" in html
