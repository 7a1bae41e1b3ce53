"""A peer's network cut mid-round, then restored (issue 5): toy peers in network namespaces.

Three toy trainers, each in a namespace of an EmulatedNetwork (swarm/simulate/network.py); peer 0 is
also the bootstrap. Peer 2 pauses in the middle of the all-reduce of epoch 4 (toy `--hold-at-epoch`),
the test takes its link down (`ip link set eth0 down`: packets vanish, no reset) for longer than the
averaging deadline, then brings it up again. Checks:
- the others' rounds end by the deadline without it, they hold identical parameters, and their epochs
  keep increasing while it is cut off;
- after restoration the cut peer rejoins (downloads the state, being behind) and steps with the swarm
  again, with the swarm's parameters;
- everything started inside the namespaces ends, and no namespace is left behind.

Needs root and `ip netns` (skipped with the reason otherwise).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from swarm.simulate.network import EmulatedNetwork, LinkSpec, namespaces
from tests.helpers.netns import netns_unusable
from tests.helpers.procs import PeerProcess, read_jsonl, wait_until

_REASON = netns_unusable()
pytestmark = [pytest.mark.integration, pytest.mark.timeout(180), pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]

DEADLINE = 8.0       # --averaging-timeout
# The link stays down longer than a round's deadline and than a record's 8 s of life. The swarm's cost of the cut: the
# round it was in (its part missing, ~sender_timeout + 2 s) and the next matchmaking (the cut peer may be the first
# leader candidate until its record expires: gather + request timeouts, 6.5 s); the rest of the cut must see steps.
DOWN = DEADLINE + 12
CUT_EPOCH = 4


def steps(path):
    return {r["epoch"]: r for r in read_jsonl(path) if "final" not in r}


def test_network_cut_mid_round_then_restored(tmp_path):
    net = EmulatedNetwork([LinkSpec(upload_bps=50e6, download_bps=50e6)] * 3)
    procs: list[PeerProcess] = []
    out = [tmp_path / f"p{i}.jsonl" for i in range(3)]

    def start(i: int, *extra: str) -> PeerProcess:
        args = [*net.exec_prefix(i), sys.executable, "-m", "tests.helpers.toy_peer", "--out", str(out[i]), "--seed", str(i),
                "--host", net.address(i), "--duration", "170", "--target", "192", "--chunk-elements", "1024",
                "--averaging-timeout", str(DEADLINE), "--wait-peers", "3", *extra]
        p = PeerProcess(args, log=tmp_path / f"p{i}.log")
        procs.append(p)
        return p

    with net:
        try:
            first = start(0)
            addr = first.maddr
            start(1, "--initial-peers", addr)
            cut = start(2, "--initial-peers", addr, "--hold-at-epoch", str(CUT_EPOCH), "--hold-seconds", "2")
            cut.wait_line("HOLDING", 150)           # peer 2 is inside the all-reduce of epoch CUT_EPOCH
            net.set_link(2, False)
            cut_at = time.time()
            time.sleep(DOWN)
            during = [steps(out[i]) for i in (0, 1)]
            net.set_link(2, True)
            restored_at = time.time()
            # the cut peer comes back: it steps with the swarm again, at epochs the others also reach
            assert wait_until(lambda: any(r["time"] > restored_at and r["group"] == 3 for r in steps(out[2]).values()), 60), \
                "the restored peer never averaged with the swarm again"
            back = min(e for e, r in steps(out[2]).items() if r["time"] > restored_at)
            assert wait_until(lambda: all(max(steps(out[i]), default=0) >= back + 2 for i in range(3)), 30)
        finally:
            for p in procs:
                p.stop()
        # everything started inside the namespaces has ended on its own, before close() would have to end it
        left = [pid for ns in (net.namespace(i) for i in range(3))
                for pid in subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()]
        assert wait_until(lambda: not [p for p in left if os.path.exists(f"/proc/{p}")], 10), f"processes left in the namespaces: {left}"
    assert not [n for n in namespaces() if n.startswith(net.prefix + "-")], "namespaces left behind"

    logs = [steps(o) for o in out]
    # while peer 2 was cut off, the others kept stepping, without it, within the deadline, identically
    a, b = during
    cut_epochs = sorted(e for e in set(a) & set(b) if cut_at < a[e]["time"] <= cut_at + DOWN)
    assert len(cut_epochs) >= 3, f"the swarm stalled while a peer was cut off: {sorted(a)}"
    for e in cut_epochs:
        assert a[e]["hash"] == b[e]["hash"], f"survivors differ at epoch {e}"
    # the round it was cut in completed without it (its group still lists it), every later one is without it
    assert all(a[e]["group"] == 2 for e in cut_epochs[1:]), [(e, a[e]["group"]) for e in cut_epochs]
    for i in range(3):
        assert all(r["seconds"] <= DEADLINE + 1 for r in logs[i].values()), "a round outlived its deadline"
        order = [r["epoch"] for r in read_jsonl(out[i]) if "final" not in r]
        assert order == sorted(set(order)), f"peer {i}'s epochs went back or repeated: {order}"
    # the cut peer did not step while cut off, re-synced, and since then holds the swarm's parameters
    assert not [e for e, r in logs[2].items() if cut_at < r["time"] < restored_at]
    assert CUT_EPOCH + 1 not in logs[2] or logs[2][CUT_EPOCH + 1]["time"] < cut_at
    assert "loaded the state of epoch" in (tmp_path / "p2.log").read_text(), "the restored peer was behind: it must re-sync"
    rejoined = [e for e, r in logs[2].items() if r["time"] > restored_at and (e in logs[0] or e in logs[1])]
    assert len(rejoined) >= 2, "the restored peer did not step with the swarm again"
    for e in rejoined:
        theirs = logs[0].get(e) or logs[1][e]
        assert logs[2][e]["hash"] == theirs["hash"], f"the restored peer differs at epoch {e}"
