"""coordinator.server: every route against a stand-in coordinator (no network beyond the test client)."""
from __future__ import annotations

import asyncio
import math
import time

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from coordinator.history import History
from coordinator.metrics import CoordinatorMetrics
from coordinator.server import make_app
from coordinator.status_view import render


class FakeCoordinator:
    def __init__(self, history: History):
        self.history = history
        self.metrics = CoordinatorMetrics("r")
        self.ready = True

    def status(self) -> dict:
        now = time.time()
        return {
            "run_id": "r", "task": "albert", "state": "running", "epoch": 3, "samples_per_second": 12.5, "loss": float("nan"),
            "target_batch_size": 64, "peers_by_role": {"trainer": 1},
            "coordinator": {"join_command": "swarm join --config x --initial-peers y"},
            "peers": [{"id": "12D3KooWabcdefghijkl", "role": "trainer", "device": "cpu", "epoch": 3, "samples_per_second": 12.5,
                       "upload_bps": 1.25e6, "download_bps": 2.5e6, "samples_contributed": 1234, "online_since": now - 100,
                       "last_seen": now, "client_mode": False, "loss": 4.2}],
            "rounds": [{"epoch": 3, "time": now, "members": 1, "seconds": 0.2, "bytes_sent": 1000, "reporters": 1}],
            "checkpoints": [{"epoch": 2, "time": now, "bytes": 5_500_000, "donor": "x", "path": "/p", "digest": "d", "removed": False}],
            "leaderboard": [{"id": "12D3KooWabcdefghijkl", "samples": 1234}],
            "updated_at": now,
        }

    def config_yaml(self) -> str:
        return "run_id: r\n"


def run(coro):
    return asyncio.run(coro)


@pytest.mark.integration  # starts a process or opens a socket
def test_routes(tmp_path):
    history = History(tmp_path / "h.sqlite")
    for i in range(20):
        history.add_sample(100.0 + i, epoch=i, samples_per_second=float(i), loss=10.0 - i / 10, peers=2)
    fake = FakeCoordinator(history)
    fake.metrics.set_swarm(epoch=3, samples_per_second=12.5, loss=4.2, peers_by_role={"trainer": 1})

    async def go():
        async with TestClient(TestServer(make_app(fake))) as client:
            r = await client.get("/api/status")
            assert r.status == 200
            status = await r.json()
            assert status["loss"] is None                       # NaN is not JSON: null
            assert status["peers"][0]["samples_contributed"] == 1234
            r = await client.get("/api/history", params={"metric": "loss", "points": "5"})
            body = await r.json()
            assert body["metric"] == "loss" and 4 <= len(body["points"]) <= 6
            assert (await client.get("/api/history", params={"metric": "epoch", "since": "115"})).status == 200
            assert (await client.get("/api/history", params={"metric": "bogus"})).status == 400
            assert (await client.get("/api/history", params={"points": "many"})).status == 400
            r = await client.get("/metrics")
            text = await r.text()
            names = {f.name for f in text_string_to_metric_families(text)}
            assert {"swarm_epoch", "swarm_samples_per_second", "swarm_loss", "swarm_peers", "swarm_round_seconds", "swarm_bytes_sent"} <= names
            assert (await client.get("/healthz")).status == 200
            fake.ready = False
            assert (await client.get("/healthz")).status == 503
            r = await client.get("/")
            html = await r.text()
            assert 'id="loss-chart"' in html and "/static/dashboard.js" in html and "http" not in html.split("<body>")[1].split("<footer")[0]
            js = await (await client.get("/static/dashboard.js")).text()
            assert "/api/status" in js and "https://" not in js    # nothing fetched from elsewhere
            assert (await client.get("/static/dashboard.css")).status == 200
            assert (await client.get("/api/config")).status == 200

    run(go())
    history.close()


def test_status_renders_in_the_terminal():
    from rich.console import Console

    fake = FakeCoordinator.__new__(FakeCoordinator)
    console = Console(record=True, width=160)
    console.print(render(FakeCoordinator.status(fake)))
    text = console.export_text()
    for expected in ("epoch", "12.5", "peers", "recent rounds", "contributors", "checkpoints", "1,234", "10 Mbit/s / 20 Mbit/s"):
        assert expected in text, expected
    assert not math.isnan(0.0)
