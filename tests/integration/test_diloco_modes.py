"""Real peers on loopback in the new modes: DiLoCo outer steps, overlapped sync rounds, PowerSGD rounds."""
from __future__ import annotations

import pytest

from tests.helpers.procs import read_jsonl

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def steps(path):
    return {r["epoch"]: r for r in read_jsonl(path) if "final" not in r}


def final(path):
    return next((r for r in read_jsonl(path) if r.get("final")), None)


def _swarm(peers, n, *args, extra=None):
    """n toy peers that start training together (a loaded machine can take a minute to start a peer)."""
    extra = extra or {}
    args = (*args, "--wait-timeout", "120")
    first = peers("p0", "--seed", "0", *args, *extra.get(0, []))
    addr = first.maddr
    return [first] + [peers(f"p{i}", "--seed", str(i), "--initial-peers", addr, *args, *extra.get(i, [])) for i in range(1, n)]


def test_diloco_peers_end_every_outer_step_with_identical_parameters(peers, tmp_path):
    # 3 peers x micro-batch 8 x ~10 inner steps per outer step
    args = ["--mode", "diloco", "--duration", "60", "--steps", "5", "--target", "240", "--wait-peers", "3", "--step-sleep", "0.03"]
    procs = _swarm(peers, 3, *args)
    for p in procs:
        assert p.proc.wait(150) == 0
    logs = [steps(tmp_path / f"p{i}.jsonl") for i in range(3)]
    common = set(logs[0]) & set(logs[1]) & set(logs[2])
    assert len(common) >= 3, f"too few common outer steps: {[sorted(l) for l in logs]}"
    for epoch in common:
        if epoch >= 2:   # start-up races re-sync within an epoch (see test_toy_swarm)
            assert len({log[epoch]["hash"] for log in logs}) == 1, f"outer parameters differ at epoch {epoch}"
    assert max(log[e]["group"] for log in logs for e in common) == 3
    assert all(r["staleness"] == 0 for log in logs for r in log.values())
    finals = [final(tmp_path / f"p{i}.jsonl") for i in range(3)]
    assert all(f is not None and f["epoch"] == 5 for f in finals)
    assert len({f["hash"] for f in finals}) == 1


def test_diloco_peer_killed_during_inner_steps_does_not_block_the_outer_step(peers, tmp_path):
    args = ["--mode", "diloco", "--duration", "75", "--steps", "6", "--target", "240", "--wait-peers", "3", "--step-sleep", "0.03"]
    procs = _swarm(peers, 3, *args, extra={1: ["--die-during-inner-steps", "2"]})
    victim = procs[1]
    assert victim.proc.wait(150) == -9
    assert any(line.startswith("DYING 2") for line in victim.lines)
    for p in (procs[0], procs[2]):
        assert p.proc.wait(150) == 0
    a, b = steps(tmp_path / "p0.jsonl"), steps(tmp_path / "p2.jsonl")
    assert max(a) == 6 and max(b) == 6
    for epoch in set(a) & set(b):
        if epoch >= 2:
            assert a[epoch]["hash"] == b[epoch]["hash"], f"survivors differ at epoch {epoch}"
    # the outer step the victim died in went on without it, promptly: its round is no slower than a healthy one
    # plus the leader's patience for a missing peer (gather_timeout 1.5 s) and a sender timeout (3 s)
    assert a[3]["group"] == 2 and a[3]["seconds"] < 10
    assert a[3]["time"] - a[2]["time"] < 15
    assert all(a[e]["group"] == 2 for e in a if e >= 4)


def test_overlap_never_applies_an_update_more_than_one_step_late(peers, tmp_path):
    args = ["--overlap", "--duration", "60", "--steps", "8", "--target", "192", "--wait-peers", "3"]
    procs = _swarm(peers, 3, *args)
    for p in procs:
        assert p.proc.wait(150) == 0
    logs = [steps(tmp_path / f"p{i}.jsonl") for i in range(3)]
    rows = [r for log in logs for r in log.values()]
    assert rows and all(r["staleness"] <= 1 for r in rows)
    assert any(r["staleness"] == 1 for r in rows), "no round ever overlapped with computation"
    common = set(logs[0]) & set(logs[1]) & set(logs[2])
    assert len(common) >= 4
    for epoch in common:
        if epoch >= 3:
            assert len({log[epoch]["hash"] for log in logs}) == 1, f"parameters differ at epoch {epoch}"
    for i in range(3):
        epochs = sorted(logs[i])
        assert epochs == list(range(epochs[0], epochs[-1] + 1)), "an update was skipped or applied twice"


def test_powersgd_rounds_keep_peers_identical_with_an_auxiliary_peer(peers, tmp_path):
    args = ["--compression", "powersgd", "--duration", "60", "--steps", "5", "--target", "128", "--wait-peers", "3"]
    procs = _swarm(peers, 2, *args)
    peers("aux", "--seed", "9", "--role", "aux", "--initial-peers", procs[0].maddr, *args)
    for p in procs:
        assert p.proc.wait(150) == 0
    a, b = steps(tmp_path / "p0.jsonl"), steps(tmp_path / "p1.jsonl")
    assert max(a) == 5 and max(b) == 5
    assert all(r["codec"] == "powersgd" for r in list(a.values()) + list(b.values()))
    assert max(r["group"] for r in a.values()) == 3, "the auxiliary peer took part in the two-phase rounds"
    for epoch in set(a) & set(b):
        if epoch >= 2:
            assert a[epoch]["hash"] == b[epoch]["hash"]


def test_streaming_diloco_peers_hold_identical_outer_parameters_after_every_fragment_round(peers, tmp_path):
    """Real matchmaking with the fragmented schema: each round averages one of the toy model's 2 layers, in turn, in
    the background; every peer that applied the round of an epoch holds the same outer parameters."""
    args = ["--mode", "streaming-diloco", "--duration", "60", "--steps", "6", "--target", "120", "--wait-peers", "3",
            "--step-sleep", "0.03"]
    procs = _swarm(peers, 3, *args)
    for p in procs:
        assert p.proc.wait(150) == 0
    logs = [steps(tmp_path / f"p{i}.jsonl") for i in range(3)]
    common = set(logs[0]) & set(logs[1]) & set(logs[2])
    assert len(common) >= 4, f"too few common fragment rounds: {[sorted(l) for l in logs]}"
    for epoch in common:
        if epoch >= 2:   # start-up races re-sync within an epoch (see test_toy_swarm)
            assert len({log[epoch]["hash"] for log in logs}) == 1, f"outer parameters differ at epoch {epoch}"
    assert max(log[e]["group"] for log in logs for e in common) == 3
    assert all(r["staleness"] <= 1 for log in logs for r in log.values())
