"""coordinator.run_progress, `swarm status` (progress, ETA, 80 columns, finding the run of this folder) and /metrics."""
from __future__ import annotations

import json
import math
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from coordinator.metrics import CoordinatorMetrics
from coordinator.run_progress import format_eta, run_progress
from coordinator.status_view import find_status, local_dashboards, render
from swarm.errors import NetworkError


def test_progress_and_eta_from_the_recent_epoch_rate():
    p = run_progress(epoch=120, total_epochs=1000, epochs=[(0.0, 100.0), (600.0, 120.0)], peers=3, ready=True)
    assert p.state == "running"
    assert p.fraction == pytest.approx(0.12)
    assert p.epochs_per_hour == pytest.approx(120.0)
    assert p.eta_s == pytest.approx(880 / 20 * 600)
    assert format_eta(p.eta_s) == "7h 20m"


def test_no_eta_before_an_epoch_is_gained_and_zero_when_finished():
    assert run_progress(epoch=5, total_epochs=10, epochs=[(0.0, 5.0), (60.0, 5.0)], peers=1, ready=True).eta_s is None
    done = run_progress(epoch=10, total_epochs=10, epochs=[], peers=0, ready=True)
    assert (done.state, done.fraction, done.eta_s) == ("finished", 1.0, 0.0)


def test_a_run_whose_peers_all_left_is_not_running():
    waiting = run_progress(epoch=7, total_epochs=100, epochs=[(0.0, 5.0), (60.0, 7.0)], peers=0, ready=True)
    assert (waiting.state, waiting.eta_s) == ("waiting for peers", None)   # nobody trains: no ETA
    assert run_progress(epoch=0, total_epochs=100, epochs=[], peers=0, ready=False).state == "starting"


def test_metrics_export_progress_and_eta():
    m = CoordinatorMetrics("r", total_epochs=50)
    m.set_progress(0.5, 90.0)
    values = {s.name: s.value for f in text_string_to_metric_families(m.render().decode()) for s in f.samples}
    assert values["swarm_total_epochs"] == 50
    assert values["swarm_progress_ratio"] == 0.5
    assert values["swarm_eta_seconds"] == 90.0
    m.set_progress(0.5, None)
    values = {s.name: s.value for f in text_string_to_metric_families(m.render().decode()) for s in f.samples}
    assert math.isnan(values["swarm_eta_seconds"])


def _status(n_peers: int = 3) -> dict:
    now = time.time()
    peers = [{"id": f"12D3KooWAbCdEfGhIjKlMnOpQrStUv{i:04d}", "role": "trainer", "device": "NVIDIA GeForce RTX 3090", "epoch": 3,
              "samples_per_second": 1234.5, "upload_bps": 12.5e6, "download_bps": 125e6, "samples_contributed": 12_345_678,
              "online_since": now - 100, "last_seen": now - 2, "client_mode": False, "loss": 4.2} for i in range(n_peers)]
    return {
        "run_id": "r", "task": "albert", "state": "running", "epoch": 120, "samples_per_second": 12.5, "loss": 4.2,
        "progress": run_progress(epoch=120, total_epochs=1000, epochs=[(0.0, 100.0), (600.0, 120.0)], peers=3, ready=True).to_json(),
        "peers_by_role": {"trainer": n_peers}, "coordinator": {"join_command": "swarm join swarm://x"},
        "peers": peers, "rounds": [{"epoch": 3, "time": now, "members": 3, "seconds": 0.25, "bytes_sent": 10_000_000}],
        "checkpoints": [{"epoch": 2, "time": now, "bytes": 5_500_000}], "leaderboard": [{"id": peers[0]["id"], "samples": 1234}],
    }


def test_status_shows_progress_and_eta():
    console = Console(record=True, width=120)
    console.print(render(_status(), width=120))
    text = console.export_text()
    assert "epoch 120 / 1000 (12.0%), ETA 7h 20m" in text


def test_status_at_80_columns_cuts_no_peer_cell():
    console = Console(record=True, width=80)
    console.print(render(_status(), width=80))
    text = console.export_text()
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= 80
    for cell in ("Uv0002", "trainer", "1234.5", "100 / 1000", "12.3M", "2s ago"):
        assert cell in text, cell


def test_status_finds_the_run_launched_from_this_folder(tmp_path, monkeypatch):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "coordinator.json").write_text(json.dumps({"dashboard": "http://127.0.0.1:1/"}))
    time.sleep(0.01)
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "coordinator.json").write_text(json.dumps({"dashboard": "http://127.0.0.1:9/"}))
    assert local_dashboards(tmp_path) == ["http://127.0.0.1:9/", "http://127.0.0.1:1/"]
    asked = []

    def fake_fetch(url, timeout=5.0):
        asked.append(url)
        if url != "http://127.0.0.1:1/":
            raise NetworkError(f"no coordinator at {url}")
        return {"run_id": "old"}

    monkeypatch.setattr("coordinator.status_view.fetch_status", fake_fetch)
    assert find_status(None, tmp_path) == ("http://127.0.0.1:1/", {"run_id": "old"})
    assert asked == ["http://127.0.0.1:9/", "http://127.0.0.1:1/"]


def test_status_with_no_coordinator_says_to_pass_url(tmp_path, monkeypatch):
    def nobody(url, timeout=5.0):
        raise NetworkError(f"no coordinator at {url}")

    monkeypatch.setattr("coordinator.status_view.fetch_status", nobody)
    with pytest.raises(NetworkError, match="--url"):
        find_status(None, tmp_path)


def test_status_prints_the_join_command_whole_at_80_columns(monkeypatch):
    from coordinator.status_view import show_status

    link = "swarm://albert:fH8etldz:UAKEV3Q8Wwqb9fP-:eWkM25Sv7a0Xp9nxYfx4jD@/ip4/192.0.2.2/tcp/34395/p2p/" + "Q" * 46
    status = _status() | {"coordinator": {"join_command": f"swarm join {link}"}}
    monkeypatch.setattr("coordinator.status_view.find_status", lambda url, runs_dir: ("http://x", status))
    console = Console(record=True, width=80)
    monkeypatch.setattr("coordinator.status_view.Console", lambda: console)
    show_status(None)
    text = console.export_text(styles=False)
    assert f"join: swarm join {link}" in text.replace("\n", "") and "…" not in text
    console = Console(record=True, width=80)
    console.print(render(status, width=80))   # --watch: the join row folds, it is not cut
    assert link in console.export_text().replace("│", "").replace(" ", "").replace("\n", "")


def test_every_coordinator_metric_is_documented():
    from pathlib import Path

    docs = (Path(__file__).resolve().parents[3] / "docs" / "coordinator.md").read_text()
    names = {f.name for f in text_string_to_metric_families(CoordinatorMetrics("r", 10).render().decode())}
    missing = sorted(n for n in names if not n.endswith("_created") and n not in docs and f"{n}_total" not in docs)
    assert not missing, f"not in docs/coordinator.md: {missing}"
    assert "swarm_run_info" in names
