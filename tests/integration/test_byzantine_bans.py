"""Real toy peers in robust mode with one byzantine peer: it is banned within 3 rounds of its first attack and kept
out of the honest peers' groups, and nobody bans an honest peer.

equivocating_reducer: its two signed results for one part are the proof (swarm.averaging.result_statements), each
honest member of its first group finds it, bans it and publishes it (swarm.averaging.bans). lying_reducer: the members
that audit its part (swarm.averaging.audits) recompute it from its committed inputs, ban it and publish an accusation
that every other honest peer audits itself before it bans. huge (1e30, inf in
the fp16 codec): an honest reducer that refuses its chunks as bad data twice bans it on its own observation
(swarm.averaging.robust.StrikeBook.banned; no proof to publish), so only the reducers that saw it twice ban it: once
a banning peer leads, the attacker is out of the groups (at most 3 steps with it, checked for every honest peer).
inflated_weight (1000x its samples): its commitment signs a weight over the run's claim ceiling, a proof every reducer
of its first group holds and publishes (swarm.averaging.claims).
"""
from __future__ import annotations

import re
from datetime import datetime

import pytest

from tests.helpers.procs import read_jsonl

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

HONEST = 3


def attack_times(log) -> list[float]:
    """When a byzantine reducer had a part to attack (peers.attack.byzantine logs each such round), as time.time()."""
    stamps = re.findall(r"^(\S+ \S+) .*byzantine \w+_reducer: attacking in", log.read_text(errors="replace"), flags=re.M)
    return [datetime.strptime(s, "%Y-%m-%d %H:%M:%S,%f").timestamp() for s in stamps]


@pytest.mark.parametrize("kind", ["equivocating_reducer", "lying_reducer", "huge", "inflated_weight"])
def test_the_attacker_is_banned_and_kept_out_within_three_rounds(peers, tmp_path, kind):
    args = ["--duration", "90", "--steps", "8", "--target", "256", "--chunk-elements", "1024", "--wait-peers", "4", "--robust", "on"]
    first = peers("p0", "--seed", "0", *args)
    addr = first.maddr
    honest = [first] + [peers(f"p{i}", "--seed", str(i), "--initial-peers", addr, *args) for i in range(1, HONEST)]
    bad = peers("bad", "--seed", "9", "--initial-peers", addr, "--byzantine", kind, *args)
    bad_id = bad.maddr.rsplit("/p2p/", 1)[1]
    for p in honest:
        p.proc.wait(180)
    bans = {i: set(re.findall(r"banning (\S+):", (tmp_path / f"p{i}.log").read_text(errors="replace"))) for i in range(HONEST)}
    assert all(b <= {bad_id[-8:]} for b in bans.values()), bans            # no honest peer is ever banned
    attacked = attack_times(tmp_path / "bad.log")
    if kind in ("equivocating_reducer", "lying_reducer") and not attacked:
        # a reducer attack needs a part to reduce: an attacker that never got one attacked nobody (the harness logs
        # each round it had a part in), and nobody may ban it
        assert not any(bans.values()), bans
        return
    rows_of = {i: [r for r in read_jsonl(tmp_path / f"p{i}.jsonl") if "final" not in r] for i in range(HONEST)}
    if kind == "inflated_weight" and not any(bans.values()) and not any(r["group"] > HONEST for rows in rows_of.values() for r in rows):
        # its claim travels in its commitments, sent only in a round it averages in: one that never stepped in a group
        # with the honest peers may have shown its claim to nobody (a round it joined that failed may still have, and
        # then every honest peer bans it: checked below)
        return
    if kind in ("equivocating_reducer", "lying_reducer", "inflated_weight"):   # a published proof or accusation: every honest peer checks it and bans
        assert all(b == {bad_id[-8:]} for b in bans.values()), bans
    else:   # an observation, not a proof: the reducers that saw it twice ban it, and a leader among them keeps it out
        assert any(bans.values()), bans
    for i in range(HONEST):
        rows = rows_of[i]
        since = attacked[0] - 1.0 if attacked else 0.0   # a reducer attack starts with its first part
        with_attacker = [r["epoch"] for r in rows if r["group"] > HONEST and r["time"] >= since]
        assert len(with_attacker) <= 3, (i, [(r["epoch"], r["group"]) for r in rows])   # steps in a group with it
        # robust mode refuses a group of two (swarm.averaging.matchmaking.robust_group_problem): the attacker would
        # reduce half the vector for one honest peer with nobody to compare (before that rule, 1 run in 2 here)
        assert all(r["group"] != 2 for r in rows), (i, [(r["epoch"], r["group"]) for r in rows])
        assert rows and max(r["epoch"] for r in rows) >= 6, (i, rows)                     # and training went on
