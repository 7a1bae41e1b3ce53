"""The coordinator against a live swarm: a `swarm launch` and two `swarm join` ALBERT-tiny peers on loopback.

One swarm serves the whole module (each ALBERT peer takes tens of seconds to start on a loaded CI box);
the tests run in order: API, history, metrics, the terminal view, checkpoints and export, then the
coordinator is killed with -9 and restarted on the same folder, and last a new run starts from one of
its checkpoints.
"""
from __future__ import annotations

import socket
import subprocess
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from swarm.process.lifecycle import pids_alive
from tests.helpers.procs import wait_until
from tests.helpers.running_swarm import RunningSwarm, swarm_cli

pytestmark = pytest.mark.integration

PEERS = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def swarm(tmp_path_factory):
    s = RunningSwarm(tmp_path_factory.mktemp("coordinator"), run_id="itest")
    try:
        s.start_coordinator("--checkpoint-every", "2", "--keep-checkpoints", "2")
        s.peer_metrics_port = free_port()
        s.add_peer("--metrics-port", str(s.peer_metrics_port))
        for _ in range(PEERS - 1):
            s.add_peer()
        yield s
    finally:
        s.close()


def db_epochs(swarm: RunningSwarm, table: str) -> list[int]:
    """Epochs recorded in the coordinator's SQLite history (read-only, while it runs)."""
    import sqlite3

    db = sqlite3.connect(f"file:{swarm.run_dir / 'history.sqlite'}?mode=ro", uri=True, timeout=5)
    try:
        return [int(e) for (e,) in db.execute(f"SELECT DISTINCT epoch FROM {table}")]
    finally:
        db.close()


def training(status: dict) -> bool:
    peers = status["peers"]
    return (len(peers) == PEERS and all(p["samples_per_second"] > 0 for p in peers)
            and status["loss"] is not None and status["epoch"] >= 2 and len(status["rounds"]) >= 1)


@pytest.mark.timeout(600)
def test_status_lists_every_peer_with_figures(swarm):
    status = swarm.wait_status(training, timeout=420, what="two training peers")
    assert status["run_id"] == "itest" and status["task"] == "albert" and status["state"] == "running"
    assert status["peers_by_role"] == {"trainer": PEERS}
    assert status["samples_per_second"] > 0
    for p in status["peers"]:
        assert set(p) >= {"id", "role", "device", "samples_per_second", "upload_bps", "download_bps", "samples_contributed",
                          "online_since", "last_seen", "client_mode"}
        assert p["role"] == "trainer" and p["device"] == "cpu" and p["client_mode"] is False
        assert p["upload_bps"] > 0 and p["online_since"] <= p["last_seen"]
    status = swarm.wait_status(lambda s: any(r["members"] == PEERS and r["bytes_sent"] > 0 for r in s["rounds"]), 120, "a full round")
    r = status["rounds"][0]
    assert r["seconds"] > 0 and r["epoch"] >= 1
    status = swarm.wait_status(lambda s: all(p["samples_contributed"] > 0 for p in s["peers"]), 120, "contributions")
    assert {row["id"] for row in status["leaderboard"]} == {p["id"] for p in status["peers"]}
    join = status["coordinator"]["join_command"]   # works on another machine: no path of the organizer's disk
    assert join == f"swarm join {status['coordinator']['invite']}" and join.endswith("@" + swarm.bootstrap)
    assert len(status["coordinator"]["invite"]) < 300 and "--config" not in join and str(swarm.root) not in join
    assert swarm.get("/healthz") == b"ok\n"


@pytest.mark.timeout(120)
def test_history_series(swarm):
    for metric in ("loss", "samples_per_second", "epoch"):
        # the tracker samples every few seconds: the previous test can end right after the first sample
        assert wait_until(lambda: len(swarm.api(f"/api/history?metric={metric}")["points"]) >= 2, 60), metric
        points = swarm.api(f"/api/history?metric={metric}")["points"]
        assert all(len(p) == 2 and p[1] is not None for p in points)
    epochs = [v for _, v in swarm.api("/api/history?metric=epoch&points=5000")["points"]]
    assert epochs == sorted(epochs) and epochs[-1] >= 2


@pytest.mark.timeout(120)
def test_metrics_parse_as_prometheus_text(swarm):
    families = {f.name: f for f in text_string_to_metric_families(swarm.get("/metrics").decode())}
    assert families["swarm_epoch"].samples[0].value >= 2
    assert families["swarm_samples_per_second"].samples[0].value > 0
    assert families["swarm_loss"].samples[0].value > 0
    roles = {s.labels["role"]: s.value for s in families["swarm_peers"].samples}
    assert roles["trainer"] == PEERS
    assert families["swarm_round_seconds"].type == "histogram"
    assert next(s.value for s in families["swarm_round_seconds"].samples if s.name == "swarm_round_seconds_count") >= 1
    assert families["swarm_bytes_sent"].samples[0].value > 0
    # the peer's own endpoint
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{swarm.peer_metrics_port}/metrics", timeout=10) as r:
        peer = {f.name: f for f in text_string_to_metric_families(r.read().decode())}
    assert peer["swarm_peer_epoch"].samples[0].value >= 1
    assert peer["swarm_peer_loss"].samples[0].value > 0
    assert peer["swarm_peer_samples_per_second"].samples[0].value > 0
    assert peer["swarm_peer_round_seconds"].type == "histogram"


@pytest.mark.timeout(120)
def test_swarm_status_in_the_terminal(swarm):
    out = subprocess.run(swarm_cli("status", "--url", swarm.url), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "itest" in out.stdout and "peers" in out.stdout and "recent rounds" in out.stdout
    assert "trainer" in out.stdout
    raw = subprocess.run(swarm_cli("status", "--url", swarm.url, "--json"), capture_output=True, text=True, timeout=60)
    assert raw.returncode == 0 and '"run_id": "itest"' in raw.stdout
    down = subprocess.run(swarm_cli("status", "--url", f"http://127.0.0.1:{free_port()}"), capture_output=True, text=True, timeout=60)
    assert down.returncode != 0 and down.stderr.strip().count("\n") == 0 and "no coordinator at" in down.stderr


@pytest.mark.timeout(400)
def test_checkpoints_are_kept_and_export_to_transformers(swarm, tmp_path):
    swarm.wait_status(lambda s: len(s["checkpoints"]) >= 2, timeout=240, what="two checkpoints")
    folder = swarm.run_dir / "checkpoints"
    # The swarm goes on checkpointing (every 2 epochs, a few seconds apart): between renaming a new checkpoint into
    # place and pruning the oldest there are 3, and a hidden folder is a write in progress. Look again until a
    # listing falls between two writes; a checkpoint under its real name must always be whole.
    for _ in range(50):
        try:
            on_disk = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
            contents = {name: {f.name for f in (folder / name).iterdir()} for name in on_disk}
        except FileNotFoundError:   # pruned while we looked
            continue
        assert all(files == {"state.safetensors", "meta.json"} for files in contents.values()), contents
        if 1 <= len(on_disk) <= 2:
            break
        time.sleep(0.1)
    assert 1 <= len(on_disk) <= 2, on_disk   # keep 2
    listed = {c["epoch"] for c in swarm.api()["checkpoints"]}
    assert {int(n.split("-")[1]) for n in on_disk} <= listed
    out = subprocess.run(swarm_cli("export", "itest", "--runs-dir", str(swarm.runs_dir), "--format", "hf", "--out", str(tmp_path / "hf")),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    from transformers import AlbertForPreTraining

    model = AlbertForPreTraining.from_pretrained(tmp_path / "hf")
    assert model.config.hidden_size == 128


@pytest.mark.timeout(600)
def test_kill_9_and_restart_keeps_everything(swarm):
    before = swarm.wait_status(training, timeout=120, what="training")
    history_before = swarm.api("/api/history?metric=epoch&points=5000")["points"]
    rounds_before = {r["epoch"] for r in before["rounds"]}
    checkpoints_before = set(db_epochs(swarm, "checkpoints"))
    old = swarm.coordinator
    old.remember()
    children = set(old.known)
    assert children, "the coordinator should own p2pd and a watchdog"
    old.kill9()
    down_at = time.monotonic()
    deadline = time.monotonic() + 10
    while pids_alive(children) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not pids_alive(children), "the coordinator's p2pd outlived it"
    # the swarm keeps training while the coordinator is down
    epoch_down = max((r["epoch"] for i in range(PEERS) for r in swarm.peer_steps(i)), default=0)
    end = time.monotonic() + 120
    while time.monotonic() < end and max((r["epoch"] for i in range(PEERS) for r in swarm.peer_steps(i)), default=0) < epoch_down + 2:
        time.sleep(1)
    assert max(r["epoch"] for i in range(PEERS) for r in swarm.peer_steps(i)) >= epoch_down + 2, "training stopped with the coordinator"
    bootstrap = swarm.bootstrap
    swarm.start_coordinator("--checkpoint-every", "2", "--keep-checkpoints", "2")
    assert swarm.bootstrap == bootstrap, "a restarted coordinator must keep its peer id and port"
    after = swarm.wait_status(lambda s: len(s["peers"]) == PEERS and s["epoch"] > before["epoch"], timeout=180,
                              what="the restarted coordinator to see the peers again")
    history_after = swarm.api("/api/history?metric=epoch&points=5000")["points"]
    assert len(history_after) > len(history_before)
    assert history_after[0][0] == history_before[0][0]           # the series still starts where it started
    assert checkpoints_before <= set(db_epochs(swarm, "checkpoints"))
    assert rounds_before <= set(db_epochs(swarm, "round_reports"))
    assert all((swarm.run_dir / "checkpoints" / f"epoch-{e:08d}").exists() for e in {c["epoch"] for c in after["checkpoints"]})
    down_since = time.time() - (time.monotonic() - down_at)
    assert all(p["online_since"] < down_since for p in after["peers"]), "the peers' online sessions were reset"


@pytest.mark.timeout(600)
def test_new_run_starts_from_a_checkpoint(swarm):
    import shutil

    from coordinator.checkpoints import CheckpointError, load_checkpoint

    path = swarm.root / "kept-checkpoint"
    for _ in range(10):   # copy the newest checkpoint out of the run folder before retention deletes it
        newest = max(c["epoch"] for c in swarm.api()["checkpoints"])
        shutil.rmtree(path, ignore_errors=True)
        try:
            shutil.copytree(swarm.run_dir / "checkpoints" / f"epoch-{newest:08d}", path)
            load_checkpoint(path)
            break
        except (OSError, CheckpointError):
            time.sleep(0.5)
    seeded = RunningSwarm(swarm.root / "seeded", run_id="seeded")
    try:
        seeded.start_coordinator("--from-checkpoint", str(path), "--checkpoint-every", "0")
        assert seeded.api()["seed"] == {"epoch": newest, "active": True, "served": 0}
        assert seeded.api()["epoch"] == 0          # the seed is not a peer: it is not in the table
        seeded.add_peer()
        status = seeded.wait_status(lambda s: s["seed"]["served"] >= 1 and not s["seed"]["active"] and s["peers"], timeout=300,
                                    what="the first peer to download the checkpoint")
        assert status["epoch"] >= newest
        log = seeded.peers[0].text()
        assert f"loaded the state of epoch {newest}" in log, log[-3000:]
    finally:
        seeded.close()


@pytest.mark.timeout(600)
def test_an_emptied_swarm_resumes_from_the_newest_checkpoint(swarm):
    """Every peer leaves (a night without volunteers): the coordinator serves its newest checkpoint, and the next
    peer resumes from that epoch instead of training a fresh model from epoch 0. (Last in the module: it stops the
    module's peers.)"""
    for peer in swarm.peers:
        peer.stop()
    status = swarm.wait_status(lambda s: (s.get("seed") or {}).get("active") and not s["peers"], timeout=180,
                               what="the coordinator to serve its newest checkpoint once the swarm is empty")
    epoch = status["seed"]["epoch"]
    assert epoch > 0 and epoch == max(c["epoch"] for c in status["checkpoints"]), status["checkpoints"]
    swarm.add_peer()
    newcomer = len(swarm.peers) - 1
    swarm.wait_status(lambda s: s["seed"]["served"] >= 1 and not s["seed"]["active"], timeout=300,
                      what="the next peer to download the checkpoint and the seed to step back")
    end = time.monotonic() + 120
    while time.monotonic() < end and not swarm.peer_steps(newcomer):
        time.sleep(1)
    log = swarm.peers[newcomer].text()
    assert f"loaded the state of epoch {epoch}" in log, log[-3000:]
    steps = swarm.peer_steps(newcomer)
    assert steps and min(r["epoch"] for r in steps) > epoch, f"the newcomer trained from scratch: {steps[:3]}"
