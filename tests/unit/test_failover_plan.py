"""The failover's plan, the same on every member: who backs up a lost part, and how long a failover may take."""
from __future__ import annotations

from swarm.averaging.deadlines import reply_timeout
from swarm.averaging.failover import backups, failover_limit


def test_backups_are_the_members_that_can_reduce_in_group_order_without_the_lost_reducer():
    roles = ("trainer", "client", "aux", "trainer", "client")
    assert backups(roles, 0) == [2, 3]
    assert backups(roles, 3) == [0, 2]
    assert backups(roles, 2) == [0, 3]


def test_a_group_with_no_other_reducer_has_no_backup():
    assert backups(("trainer", "client", "client"), 0) == []


def test_the_failover_limit_covers_the_backups_waits_and_follows_the_silence_limit():
    for silence in (1.0, 3.0, 10.0):
        # the backup's own exchange, the holders' answers, the part's average: a reply limit each, and one to spare
        assert failover_limit(silence) >= 4 * reply_timeout(silence)
    assert failover_limit(10.0) > failover_limit(3.0)
