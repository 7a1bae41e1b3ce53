"""How a chaos fault judges its newcomers (peers.chaos.faults._visit): a newcomer that committed a step is a join
that worked, one that died without committing is a failed join, unless an in-peer fault killed it first (a newcomer
can lead a round, and kill_leader then kills it): that is the other fault's doing, said apart, and not a failure."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from peers.chaos.faults import _visit

pytestmark = pytest.mark.timeout(30)


def newcomer(tmp_path: Path, name: str, committed: int, alive: bool = False):
    log = tmp_path / f"{name}.log"
    log.write_text("loaded the state\n")
    return SimpleNamespace(name=name, alive=alive, rows=[{"epoch": e} for e in range(committed)], log=log, died_at=1.0,
                           proc=SimpleNamespace(send_signal=lambda sig: None))


def judge(tmp_path: Path, crowd, victims=()) -> dict:
    h = SimpleNamespace(followups=[], fault_victims=set(victims), max_epoch=7, kill=lambda inst: None)
    ctx = SimpleNamespace(join_timeout=60.0, at=lambda: 1.0)
    event = {"kind": "newcomer_burst", "target": "2 newcomers", "outcome": "", "pending": True}
    _visit(h, ctx, event, crowd)
    assert h.followups[0]() is True
    return event


def test_a_newcomer_killed_by_another_fault_before_its_first_step_is_not_a_failed_join(tmp_path):
    event = judge(tmp_path, [newcomer(tmp_path, "v1-0", 0), newcomer(tmp_path, "v2-0", 1)], victims={"v1-0"})
    assert event["ok"] and "1/2 newcomers committed a step, 1 killed by another fault first" in event["outcome"]
    assert [v["killed_by_fault"] for v in event["visitors"]] == [True, False]


def test_a_newcomer_that_died_on_its_own_without_a_step_is_a_failed_join(tmp_path):
    event = judge(tmp_path, [newcomer(tmp_path, "v1-0", 0), newcomer(tmp_path, "v2-0", 1)], victims={"p3-1"})
    assert not event["ok"] and "1/2 newcomers committed a step, 0 download failures" in event["outcome"]
