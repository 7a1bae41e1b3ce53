"""Real peers on loopback: averaging keeps peers bitwise identical, faults cost only the faulty peer."""
from __future__ import annotations

import time

import pytest

from swarm.process.lifecycle import pids_alive
from tests.helpers.procs import read_jsonl, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def steps(path):
    return {r["epoch"]: r for r in read_jsonl(path) if "final" not in r}


def final(path):
    return next((r for r in read_jsonl(path) if r.get("final")), None)


def test_three_peers_end_bitwise_identical(peers, tmp_path):
    args = ["--duration", "40", "--steps", "8", "--target", "256", "--wait-peers", "3"]
    first = peers("p0", "--seed", "0", *args)
    addr = first.maddr
    others = [peers(f"p{i}", "--seed", str(i), "--initial-peers", addr, *args) for i in (1, 2)]
    for p in [first, *others]:
        p.proc.wait(120)
    logs = [steps(tmp_path / f"p{i}.jsonl") for i in range(3)]
    common = set(logs[0]) & set(logs[1]) & set(logs[2])
    assert len(common) >= 4, f"too few common epochs: {[sorted(l) for l in logs]}"
    # At start-up two groups can form for the same epoch from inconsistent DHT views; the parameter-hash
    # vote then re-syncs the minority within an epoch. From epoch 3 on, every step must agree.
    for epoch in common:
        if epoch >= 3:
            assert len({log[epoch]["hash"] for log in logs}) == 1, f"parameters differ at epoch {epoch}"
    assert max(log[e]["group"] for log in logs for e in common) == 3
    finals = [final(tmp_path / f"p{i}.jsonl") for i in range(3)]
    assert all(f is not None and f["epoch"] == 8 for f in finals)
    assert len({f["hash"] for f in finals}) == 1


def test_four_peers_averaging_in_subgroups_of_two_end_bitwise_identical(peers, tmp_path):
    """max_group_size 2: each group of 4 averages hierarchically (swarm.averaging.hierarchy), end to end."""
    args = ["--duration", "50", "--steps", "6", "--target", "256", "--wait-peers", "4", "--max-group-size", "2"]
    first = peers("p0", "--seed", "0", *args)
    addr = first.maddr
    others = [peers(f"p{i}", "--seed", str(i), "--initial-peers", addr, *args) for i in (1, 2, 3)]
    for p in [first, *others]:
        p.proc.wait(150)
    logs = [steps(tmp_path / f"p{i}.jsonl") for i in range(4)]
    common = set.intersection(*(set(log) for log in logs))
    whole = [e for e in common if e >= 3 and all(log[e]["group"] == 4 for log in logs)]
    assert whole, f"no epoch averaged by all 4 peers: {[sorted(log) for log in logs]}"
    assert all(log[e]["subgroups"] == 2 for log in logs for e in whole), "groups of 4 average in 2 subgroups of 2"
    for epoch in common:
        if epoch >= 3:   # see test_three_peers_end_bitwise_identical
            assert len({log[epoch]["hash"] for log in logs}) == 1, f"parameters differ at epoch {epoch}"
    assert all(final(tmp_path / f"p{i}.jsonl") is not None for i in range(4))


@pytest.mark.parametrize("phase", ["send", "reduce", "gather"])
def test_peer_killed_mid_round_leaves_survivors_identical(peers, tmp_path, phase):
    timeout = 8.0
    common_args = ["--duration", "60", "--steps", "7", "--target", "192", "--chunk-elements", "1024", "--averaging-timeout", str(timeout), "--wait-peers", "3"]
    first = peers("p0", "--seed", "0", *common_args)
    addr = first.maddr
    victim = peers("p1", "--seed", "1", "--initial-peers", addr, "--die-at-epoch", "3", "--die-phase", phase, *common_args)
    third = peers("p2", "--seed", "2", "--initial-peers", addr, *common_args)
    victim.wait_line("CHILDREN")
    victim.remember_children()
    children = set(victim.children)
    assert children, "the peer should own a p2pd and a watchdog"
    assert victim.proc.wait(90) == -9
    died = time.monotonic()
    assert wait_until(lambda: not pids_alive(children), 5.0), f"children of the killed peer still alive: {pids_alive(children)}"
    assert time.monotonic() - died < 5.0
    for p in (first, third):
        assert p.proc.wait(90) == 0
    a, b = steps(tmp_path / "p0.jsonl"), steps(tmp_path / "p2.jsonl")
    assert max(a) == 7 and max(b) == 7
    for epoch in set(a) & set(b):
        if epoch < 3:
            continue  # see test_three_peers_end_bitwise_identical
        assert a[epoch]["hash"] == b[epoch]["hash"], f"survivors differ at epoch {epoch}"
        assert a[epoch]["seconds"] <= timeout + 1
    death = max(steps(tmp_path / "p1.jsonl"), default=0) + 1   # the epoch its last round would have made
    assert death >= 4
    assert min(a[e]["group"] for e in a if e > death) == 2  # the dead peer is gone from later groups
    if phase == "gather":   # it died reducing: a backup finished its part, so the round of its death committed without it
        assert any(log.get(death, {}).get("group") == 3 for log in (a, b)), "the round whose reducer died did not commit"


def test_late_joiner_downloads_state_then_matches(peers, tmp_path):
    args = ["--duration", "90", "--target", "192", "--steps", "1000"]
    first = peers("p0", "--seed", "0", "--wait-peers", "2", *args)
    addr = first.maddr
    peers("p1", "--seed", "1", "--initial-peers", addr, "--wait-peers", "2", *args)
    assert wait_until(lambda: max(steps(tmp_path / "p0.jsonl"), default=0) >= 3, 60)
    late = peers("late", "--seed", "5", "--initial-peers", addr, "--duration", "25", "--target", "192")
    assert late.proc.wait(90) == 0
    f = final(tmp_path / "late.jsonl")
    assert f is not None and f["downloads"] >= 1
    mine, theirs = steps(tmp_path / "late.jsonl"), steps(tmp_path / "p0.jsonl")
    assert len(mine) >= 2, "the late joiner never stepped with the swarm"
    assert min(mine) > 3
    assert all(mine[e]["group"] >= 2 for e in mine)
    for epoch in mine:
        if epoch in theirs:
            assert mine[epoch]["hash"] == theirs[epoch]["hash"]


def test_nan_from_a_peer_is_excluded_and_the_swarm_stays_finite(peers, tmp_path):
    args = ["--duration", "60", "--steps", "6", "--target", "192", "--chunk-elements", "1024", "--wait-peers", "3"]
    first = peers("p0", "--seed", "0", *args)
    addr = first.maddr
    peers("bad", "--seed", "1", "--initial-peers", addr, "--garbage-at-epoch", "2", *args)
    third = peers("p2", "--seed", "2", "--initial-peers", addr, *args)
    assert first.proc.wait(90) == 0 and third.proc.wait(90) == 0
    a, b = steps(tmp_path / "p0.jsonl"), steps(tmp_path / "p2.jsonl")
    assert max(a) == 6 and max(b) == 6
    assert all(a[e]["hash"] == b[e]["hash"] for e in set(a) & set(b) if e >= 3)
    log = (tmp_path / "p0.log").read_text() + (tmp_path / "p2.log").read_text()
    assert "bad data" in log  # the NaN chunks were refused, not averaged


def test_ctrl_c_leaves_within_5s_and_the_swarm_goes_on(peers, tmp_path):
    """Ctrl-C in the middle of a round's all-reduce: the peer leaves within 5 s, withdraws its progress record
    (the others stop seeing it at once, not after the record's 8 s of life), and the round it was in completes
    without it: the others reach the next epoch within the round's deadline, with identical parameters."""
    deadline = 15.0  # the toy's --averaging-timeout
    args = ["--duration", "90", "--target", "192", "--wait-peers", "3", "--steps", "1000"]
    first = peers("p0", "--seed", "0", *args)
    addr = first.maddr
    leaver = peers("p1", "--seed", "1", "--initial-peers", addr, "--hold-at-epoch", "3", "--hold-seconds", "2", *args)
    peers("p2", "--seed", "2", "--initial-peers", addr, *args)
    leaver.wait_line("CHILDREN")
    leaver.remember_children()
    children = set(leaver.children)
    leaver.wait_line("HOLDING", 120)  # in the middle of the all-reduce of epoch 3
    sent, sent_wall = time.monotonic(), time.time()
    leaver.proc.send_signal(2)  # SIGINT, as Ctrl-C
    assert leaver.proc.wait(10) == 0
    assert time.monotonic() - sent < 5.0, "a peer must leave within 5 s of Ctrl-C"
    assert wait_until(lambda: not pids_alive(children), 5.0)
    assert 4 not in steps(tmp_path / "p1.jsonl"), "the leaver must not step with the round it left"
    # the round of epoch 3 completes without it, within its deadline, and the survivors agree
    assert wait_until(lambda: all(4 in steps(tmp_path / f"p{i}.jsonl") for i in (0, 2)), deadline + 30)
    a, b = steps(tmp_path / "p0.jsonl"), steps(tmp_path / "p2.jsonl")
    assert a[4]["hash"] == b[4]["hash"]
    assert a[4]["seconds"] <= deadline + 1 and b[4]["seconds"] <= deadline + 1
    # the others keep training without it: several more epochs, in groups that no longer wait for it
    assert wait_until(lambda: max(steps(tmp_path / "p0.jsonl"), default=0) >= 8, 60)
    later = [r for e, r in steps(tmp_path / "p0.jsonl").items() if e > 5]
    assert later and all(r["group"] == 2 for r in later)
    # its record was withdrawn: 3 s after Ctrl-C (the record would live 8 s) nobody sees it any more
    after = [r for log in (steps(tmp_path / "p0.jsonl"), steps(tmp_path / "p2.jsonl")) for r in log.values() if r["time"] > sent_wall + 3.0]
    assert after and all(r["seen"] == 2 for r in after), [(r["epoch"], round(r["time"] - sent_wall, 1), r["seen"]) for r in after]
    assert any(r["time"] < sent_wall + 8.0 for r in after), "no step between 3 and 8 s after Ctrl-C: cannot tell withdrawal from expiry"
