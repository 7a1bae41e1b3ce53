"""The dashboard in headless Chromium shows a volunteer's way in (the one-line invite and a join command with no
local path) and the run's progress toward total_epochs with an ETA.

The page is the real one (coordinator.server.make_app and its static files) over a real History; the status comes
from a stand-in coordinator whose progress is computed by coordinator.run_progress from that history, as the
Coordinator does: no peers need to train for minutes to have an epoch rate.
"""
from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from coordinator.history import History
from coordinator.metrics import CoordinatorMetrics
from coordinator.run_progress import ETA_WINDOW, run_progress
from coordinator.server import make_app, start_server
from tests.helpers.chromium import Chromium

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
LINK = ("swarm://albert:EprAaFfL:Uu4Auc0DaHwIVdkw:8kW6SUDfJ52yrlVVBU4UzZ@/ip4/203.0.113.7/tcp/31337/p2p/"
        "12D3KooWHCcrL5hiVJhv5DH7JXyZgckXNry3ab2yXbQfnFe9nGZ3")


class StandIn:
    """What coordinator.server reads from a Coordinator: status(), history, metrics, ready, config_yaml()."""

    def __init__(self, history: History):
        self.history = history
        self.metrics = CoordinatorMetrics("albert", total_epochs=1000)
        self.ready = True

    def status(self) -> dict:
        epochs = self.history.series("epoch", since=time.time() - ETA_WINDOW, points=60)
        progress = run_progress(epoch=int(epochs[-1][1]), total_epochs=1000, epochs=epochs, peers=1, ready=True)
        return {
            "run_id": "albert", "task": "albert", "state": progress.state, "progress": progress.to_json(), "epoch": progress.epoch,
            "samples_per_second": 120.0, "loss": 5.5, "target_batch_size": 4096, "peers_by_role": {"trainer": 1},
            "coordinator": {"join_command": f"swarm join {LINK}", "invite": LINK, "bootstrap": "", "dashboard": "", "peer_id": ""},
            "peers": [], "rounds": [], "checkpoints": [], "leaderboard": [], "updated_at": time.time(), "seed": None,
        }

    def config_yaml(self) -> str:
        return "run_id: albert\n"


@pytest.fixture
def dashboard(tmp_path):
    loop = asyncio.new_event_loop()
    started = threading.Event()
    box: dict = {}

    def serve() -> None:   # SQLite wants its connection used by the thread that opened it: the server's
        asyncio.set_event_loop(loop)
        box["history"] = history = History(tmp_path / "history.sqlite")
        now = time.time()
        for i in range(11):   # 20 epochs in the last 500 s: 144 epochs/h, 880 left -> ETA 6h 06m 40s
            history.add_sample(now - 500 + 50 * i, epoch=100 + 2 * i, samples_per_second=120.0, loss=5.5, peers=1)
        box["runner"], box["port"] = loop.run_until_complete(start_server(make_app(StandIn(history)), "127.0.0.1", 0))
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert started.wait(30)
    try:
        yield f"http://127.0.0.1:{box['port']}/"
    finally:
        asyncio.run_coroutine_threadsafe(box["runner"].cleanup(), loop).result(30)
        loop.call_soon_threadsafe(box["history"].close)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)


def test_dashboard_shows_invite_progress_and_eta(dashboard, tmp_path):
    if Chromium.find() is None:
        pytest.skip("chromium is not installed (apt-get install chromium; CI installs it)")
    with Chromium(dashboard, width=1280, height=900, log=tmp_path / "chromium.log") as page:
        page.wait_for("document.getElementById('progress-text').textContent !== '-'", timeout=60)
        text = lambda element: page.evaluate(f"document.getElementById('{element}').textContent")   # noqa: E731
        assert text("progress-text") == "epoch 120 / 1000 (12.0%)"
        assert text("eta") == "6h 06m"
        assert page.evaluate("document.getElementById('progress-bar').style.width") == "12%"
        assert text("invite") == LINK and len(LINK) < 300
        join = text("join-command")
        assert join == f"swarm join {LINK}" and "--config" not in join
        shot = page.screenshot(ARTIFACTS / "dashboard-progress.png")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
