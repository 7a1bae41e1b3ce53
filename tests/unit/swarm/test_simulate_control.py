"""swarm.simulate.control: the control plane's bytes follow the engine's read and publish rules."""
from __future__ import annotations

import pytest

from swarm.averaging.progress import MAX_PUBLISH, PUBLISH_FLOOR, READ_SECONDS_PER_PEER
from swarm.net.replicas import READ_FROM
from swarm.simulate.control import ControlParams, _turns, control_bytes

pytestmark = pytest.mark.timeout(60)


def test_far_from_the_target_turns_come_every_third_of_the_time_to_it():
    # 90 s to the target: turns at eta 90, 60, 40, 26.7, ... each a third of what is left, down to the floor
    count = _turns(100.0, 90.0, 1.0, 30.0, (), 0.0)
    left, expected, t = 90.0, 0, 0.0
    while t < 100.0:
        expected += 1
        t += min(30.0, max(1.0, max(0.0, 90.0 - t) / 3))
    assert count == expected


def test_at_the_target_the_loop_turns_every_shortest_period():
    assert _turns(10.0, 0.0, 2.0, 30.0, (), 0.0) == 5


def test_an_event_reads_unless_a_read_is_under_way():
    assert _turns(10.0, 0.0, 100.0, 100.0, (), 0.0) == 0           # the loop's period outlasts the epoch
    assert _turns(10.0, 0.0, 100.0, 100.0, (5.0,), 0.5) == 1       # the event reads
    assert _turns(10.0, 0.0, 100.0, 100.0, (5.0, 5.2), 0.5) == 1   # the second event joins the first's read
    assert _turns(10.0, 0.0, 100.0, 100.0, (5.0, 5.2), 0.1) == 2   # ... unless that read ended


def test_near_the_target_the_loops_reads_do_not_grow_with_the_swarm_but_each_epochs_own_do():
    # at the target for a whole epoch of 64 s: the loop reads every READ_SECONDS_PER_PEER per peer in the view (0.8 s
    # at 16, 3.2 s at 64), so its reads cost a peer the same bytes at both (80 reads of 16 records, 20 of 64; one turn
    # more or less where float periods meet the epoch's end)
    assert READ_SECONDS_PER_PEER * 16 == pytest.approx(0.8) and READ_SECONDS_PER_PEER * 64 == pytest.approx(3.2)
    assert _turns(64.0, 0.0, 0.8, 30.0, (), 0.0) * 16 == pytest.approx(_turns(64.0, 0.0, 3.2, 30.0, (), 0.0) * 64, rel=0.06)
    # matchmaking's and the step's reads take every record too: that part grows with N
    p = ControlParams(read_seconds=0.0, record_bytes=1000.0)
    p_members = dict(group=1.0, flat=True, robust=False, params=p)
    for n in (16, 64):
        reads = _turns(6.4, 0.0, READ_SECONDS_PER_PEER * n, 30.0, (0.0, 6.4 - 1e-9), 0.0)
        assert reads > _turns(6.4, 0.0, READ_SECONDS_PER_PEER * n, 30.0, (), 0.0) - 1
        assert control_bytes(n, 6.4, 6.4, members=n, **p_members)["progress.read"] == pytest.approx(reads / 6.4 * READ_FROM * n * 1000.0)


def test_publishes_follow_the_floor_near_the_target_and_the_epoch_change():
    p = ControlParams()
    fast = control_bytes(16, 2.0, 0.5, members=16, group=16, flat=True, robust=False, params=p)["progress.write"]
    per_publish = p.store_replicas * p.store_bytes
    # about one publish per PUBLISH_FLOOR, plus the new epoch's
    assert per_publish / PUBLISH_FLOOR <= fast <= per_publish * (1 / PUBLISH_FLOOR + 1 / 2.0) * 1.01
    idle = control_bytes(16, 600.0, 1.0, members=16, group=16, flat=True, robust=False, params=p)["progress.write"]
    assert idle < per_publish / MAX_PUBLISH * 1.5   # far from the target: every MAX_PUBLISH at most


def test_robust_checks_cost_only_flat_groups():
    flat = control_bytes(16, 5.0, 1.0, members=16, group=16, flat=True, robust=True)
    hier = control_bytes(64, 5.0, 1.0, members=64, group=64, flat=False, robust=True)
    assert flat["robust"] > 0 and hier["robust"] == 0


@pytest.mark.parametrize("epoch", [0.0, -1.0, float("inf"), float("nan")])
def test_a_bad_epoch_length_is_refused(epoch):
    with pytest.raises(ValueError, match="epoch_seconds"):
        control_bytes(16, epoch, 1.0, members=16, group=16, flat=True, robust=False)
