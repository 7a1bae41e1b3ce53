"""Process faults of a live swarm (issue 5), one test per kind, each bounded in time.

Real toy peers (tests/helpers/toy_peer.py) on loopback; faults are injected by subclassing the piece
that fails (the toy's flags) or by signals from the test. Every test checks the swarm's invariants:
- survivors hold bitwise-identical parameters at every epoch they all committed (JSONL "hash");
- no committed round took longer than the averaging deadline (+ slack);
- each peer's epochs only increase, and the swarm keeps stepping after the fault;
- a dead peer's children (p2pd, watchdog) are gone within 5 s; none survives the test.
The SIGKILL-in-reduce-scatter, mid-reduce and Ctrl-C cases live in tests/integration/test_toy_swarm.py.
"""
from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import pytest

from swarm.process.lifecycle import pids_alive
from tests.helpers.procs import PeerProcess, read_jsonl, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

DEADLINE = 8.0          # --averaging-timeout of every test
SLACK = 1.0
FIRST_CHECKED_EPOCH = 3  # at start-up two groups can race for an epoch; the hash vote re-syncs (see test_toy_swarm)


@pytest.fixture
def swarm(tmp_path):
    """`swarm(name, *args, clock_offset=None)` starts a toy peer; all are stopped (and their children reaped) after."""
    started: list[PeerProcess] = []

    def start(name: str, *args: str, clock_offset: float | None = None) -> PeerProcess:
        out, log = tmp_path / f"{name}.jsonl", tmp_path / f"{name}.log"
        if clock_offset is None:
            p = PeerProcess.toy(out, *args, log=log)
        else:
            p = PeerProcess([sys.executable, "-m", "tests.helpers.skewed_clock", str(clock_offset), "--out", str(out), *args], log=log)
        started.append(p)
        return p

    yield start
    children: set[int] = set()
    for p in started:
        if p.proc.poll() is None:
            try:
                p.proc.send_signal(signal.SIGCONT)  # a stopped peer cannot act on SIGINT
            except ProcessLookupError:
                pass
        p.stop()
        children |= p.children
    assert wait_until(lambda: not pids_alive(children), 5.0), f"orphans: {pids_alive(children)}"


def steps(path: Path) -> dict[int, dict]:
    return {r["epoch"]: r for r in read_jsonl(path) if "final" not in r}


def final(path: Path) -> dict | None:
    return next((r for r in read_jsonl(path) if r.get("final")), None)


def check_invariants(paths: list[Path], *, first: int = FIRST_CHECKED_EPOCH) -> None:
    logs = {p.stem: [r for r in read_jsonl(p) if "final" not in r] for p in paths}
    for name, rows in logs.items():
        epochs = [r["epoch"] for r in rows]
        assert epochs == sorted(set(epochs)), f"{name}: epochs not increasing: {epochs}"
        late = [(r["epoch"], r["seconds"]) for r in rows if r["seconds"] > DEADLINE + SLACK]
        assert not late, f"{name}: rounds past the {DEADLINE}s deadline: {late}"
    by_epoch: dict[int, dict[str, str]] = {}
    for name, rows in logs.items():
        for r in rows:
            by_epoch.setdefault(r["epoch"], {})[name] = r["hash"]
    for epoch, hashes in sorted(by_epoch.items()):
        if epoch >= first and len(hashes) > 1:
            assert len(set(hashes.values())) == 1, f"parameters differ at epoch {epoch}: {hashes}"


def assert_children_gone_within_5s(victim: PeerProcess) -> None:
    died = time.monotonic()
    children = set(victim.children)
    assert children, "the peer should own a p2pd and a watchdog"
    assert wait_until(lambda: not pids_alive(children), 5.0), f"children of the dead peer alive: {pids_alive(children)}"
    assert time.monotonic() - died < 5.0


def base_args(steps_: int, duration: float = 90, wait: int = 3) -> list[str]:
    return ["--duration", str(duration), "--steps", str(steps_), "--target", "192", "--chunk-elements", "1024",
            "--averaging-timeout", str(DEADLINE), "--wait-peers", str(wait), "--wait-timeout", "150"]


def test_sigkill_during_all_gather(swarm, tmp_path):
    """A reducer dies after sending back part of its averaged part: nobody steps on a partial vector."""
    args = base_args(7)
    first = swarm("p0", "--seed", "0", *args)
    addr = first.maddr
    victim = swarm("victim", "--seed", "1", "--initial-peers", addr, "--die-at-epoch", "3", "--die-phase", "gather", *args)
    third = swarm("p2", "--seed", "2", "--initial-peers", addr, *args)
    victim.wait_line("CHILDREN")
    victim.remember_children()
    assert victim.proc.wait(120) == -signal.SIGKILL
    assert_children_gone_within_5s(victim)
    for p in (first, third):
        assert p.proc.wait(90) == 0
    a, b = steps(tmp_path / "p0.jsonl"), steps(tmp_path / "p2.jsonl")
    assert max(a) == 7 and max(b) == 7
    death = max(steps(tmp_path / "victim.jsonl"), default=0) + 1   # it dies in its first round at epoch 3 or later
    assert death >= 4
    check_invariants([tmp_path / "p0.jsonl", tmp_path / "p2.jsonl", tmp_path / "victim.jsonl"])
    assert min(a[e]["group"] for e in a if e > death) == 2  # the dead peer is gone from later groups


def test_donor_killed_during_state_download(swarm, tmp_path):
    """A newcomer's donor dies mid-transfer: the newcomer refuses the partial state and downloads from another donor.

    Donors are drawn at random, so two newcomers come at once (one of them asks the dying donor first, but for a
    chance of 1 in 4); if none did, they leave and two others come, time permitting. (Three at once made two groups
    form for one epoch now and then: a matchmaking race between newcomers, not this fault; see the issue's notes.)"""
    args = ["--duration", "150", "--steps", "10000", "--target", "192", "--averaging-timeout", str(DEADLINE), "--wait-peers", "2",
            "--wait-timeout", "150"]
    healthy = swarm("p0", "--seed", "0", *args)
    addr = healthy.maddr
    donor = swarm("donor", "--seed", "1", "--initial-peers", addr, "--die-serving-state", "3", *args)
    donor.wait_line("CHILDREN")
    donor.remember_children()
    assert wait_until(lambda: max(steps(tmp_path / "p0.jsonl"), default=0) >= 3, 90)

    def loaded(name: str) -> bool:
        return "loaded the state" in (tmp_path / f"{name}.log").read_text()

    started = time.monotonic()
    for draw in range(2):
        if draw and time.monotonic() - started > 70:
            pytest.skip("both newcomers asked the healthy donor first, and this slow machine leaves no time for two more")
        names = [f"late{draw}{k}" for k in range(2)]
        joiners = [swarm(n, "--seed", str(5 + k), "--initial-peers", addr, "--duration", "20", "--target", "192",
                         "--averaging-timeout", str(DEADLINE)) for k, n in enumerate(names)]
        for j in joiners:
            j.wait_line("MADDR", 100)  # start-ups at once take a while on a loaded 2-core box
        assert wait_until(lambda: donor.proc.poll() is not None or all(loaded(n) for n in names), 40), "newcomers never got the state"
        if donor.proc.poll() is not None:
            break
        for j in joiners:  # they all asked the healthy donor first: others come, another draw
            j.stop()
    else:
        pytest.skip("four newcomers in a row asked the healthy donor first")
    died = time.monotonic()
    assert donor.proc.returncode == -signal.SIGKILL and any(line.startswith("DYING serving") for line in donor.lines)
    assert_children_gone_within_5s(donor)
    # every newcomer has the state soon, the one whose donor died included: it refused the partial state, asked another
    assert wait_until(lambda: all(loaded(n) for n in names), 30), "a newcomer did not find another donor in time"
    assert time.monotonic() - died < 30
    logs = "".join((tmp_path / f"{n}.log").read_text() for n in names)
    assert "state download from" in logs and "failed" in logs
    for j in joiners:
        assert j.proc.wait(90) == 0
    for n in names:
        f = final(tmp_path / f"{n}.jsonl")
        assert f is not None and f["downloads"] >= 1
        assert len(steps(tmp_path / f"{n}.jsonl")) >= 2, f"{n} never stepped with the swarm"
    check_invariants([tmp_path / f"{n}.jsonl" for n in names] + [tmp_path / "p0.jsonl"])


def process_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def test_sigstop_past_the_deadline_then_sigcont(swarm, tmp_path):
    """A peer frozen mid-round (a laptop asleep) for longer than the deadline: the others go on without it, and once
    it wakes up it notices it is behind, re-syncs and contributes again with identical parameters."""
    args = base_args(10000, duration=120)
    first = swarm("p0", "--seed", "0", *args)
    addr = first.maddr
    sleeper = swarm("sleeper", "--seed", "1", "--initial-peers", addr, "--stop-at-epoch", "3", *args)
    swarm("p2", "--seed", "2", "--initial-peers", addr, *args)
    sleeper.wait_line("STOPPING", 120)
    assert wait_until(lambda: process_state(sleeper.proc.pid) == "T", 10)
    stopped, stopped_at = time.monotonic(), max(steps(tmp_path / "p0.jsonl"), default=0)
    # the others' round ends without it (by its deadline) and they keep stepping as a pair. When the frozen peer is
    # the leader candidate, their retry first waits out a join request to it (gather + request timeout): ~13 s in all.
    assert wait_until(lambda: max(steps(tmp_path / "p0.jsonl"), default=0) >= stopped_at + 1, 40), "the others stalled while a peer was stopped"
    time.sleep(max(0.0, DEADLINE + 4 - (time.monotonic() - stopped)))  # frozen for longer than the deadline
    assert process_state(sleeper.proc.pid) == "T"
    sleeper.proc.send_signal(signal.SIGCONT)
    woke_at = max(steps(tmp_path / "p0.jsonl"))
    assert wait_until(lambda: any(e > woke_at and r["group"] == 3 for e, r in steps(tmp_path / "sleeper.jsonl").items()), 90), \
        "the woken peer never stepped with the swarm again"
    # it re-synced: by a state download, or, when the others are only one epoch ahead, by taking that epoch's
    # result from its group's reducers (swarm.averaging.late); check_invariants below proves the parameters agree
    log = (tmp_path / "sleeper.log").read_text()
    assert "downloading the state" in log or "took its result from the reducers" in log
    assert wait_until(lambda: len(set(steps(tmp_path / "sleeper.jsonl")) - set(range(woke_at + 1))) >= 3, 60)
    check_invariants([tmp_path / "p0.jsonl", tmp_path / "p2.jsonl", tmp_path / "sleeper.jsonl"])


def test_leader_killed_while_forming_the_group(swarm, tmp_path):
    """The round's leader (lowest peer id) dies holding the others' join requests: they elect the next, no one hangs."""
    args = base_args(8) + ["--die-leading-at-epoch", "3"]  # every peer carries it; only the first leader of epoch 3 dies
    first = swarm("p0", "--seed", "0", *args)
    addr = first.maddr
    others = [swarm(f"p{i}", "--seed", str(i), "--initial-peers", addr, *args) for i in (1, 2)]
    peers = [first, *others]
    for p in peers:
        p.wait_line("CHILDREN")
        p.remember_children()
    assert wait_until(lambda: any(p.proc.poll() is not None for p in peers), 120)
    victim = next(p for p in peers if p.proc.poll() is not None)
    assert victim.proc.returncode == -signal.SIGKILL and any(line.startswith("DYING leading 3") for line in victim.lines)
    assert_children_gone_within_5s(victim)
    survivors = [p for p in peers if p is not victim]
    for p in survivors:
        assert p.proc.wait(90) == 0
    names = [f"p{peers.index(p)}" for p in survivors]
    logs = [steps(tmp_path / f"{n}.jsonl") for n in names]
    assert all(max(log) == 8 for log in logs)
    assert all(log[e]["group"] == 2 for log in logs for e in log if e > 4)
    check_invariants([tmp_path / f"{n}.jsonl" for n in names] + [tmp_path / f"p{peers.index(victim)}.jsonl"])


@pytest.mark.parametrize("bootstrap_offset", [0.0, 300.0])
def test_peers_with_clocks_off_by_minutes(swarm, tmp_path, bootstrap_offset):
    """Hosts whose wall clocks are 5 min apart train together (the DHT's expirations run on the swarm's clock)."""
    args = base_args(8)
    first = swarm("p0", "--seed", "0", *args, clock_offset=bootstrap_offset)
    addr = first.maddr
    ahead = swarm("ahead", "--seed", "1", "--initial-peers", addr, *args, clock_offset=bootstrap_offset + 300)
    behind = swarm("behind", "--seed", "2", "--initial-peers", addr, *args, clock_offset=bootstrap_offset - 300)
    for p in (first, ahead, behind):
        assert p.proc.wait(120) == 0, (p.args[3:5], p.lines[-3:])
    paths = [tmp_path / f"{n}.jsonl" for n in ("p0", "ahead", "behind")]
    logs = [steps(p) for p in paths]
    assert all(max(log) == 8 for log in logs)
    assert max(log[e]["group"] for log in logs for e in log) == 3  # the skewed peers are in the groups, not around them
    check_invariants(paths)
    finals = [final(p) for p in paths]
    assert len({f["hash"] for f in finals}) == 1
