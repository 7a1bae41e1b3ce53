"""swarm.averaging.result_hashes: a part that reached members with different hashes names its reducer."""
from __future__ import annotations

import pytest

from swarm.averaging.result_hashes import equivocating_reducers

pytestmark = pytest.mark.timeout(30)


def test_one_hash_per_part_accuses_nobody_and_a_missing_part_neither():
    reported = {"a": {"a": "1", "b": "2"}, "b": {"a": "1", "b": "2"}, "c": {"a": "1"}}
    assert equivocating_reducers(reported) == {}


def test_a_reducer_whose_part_differs_between_members_is_named():
    reported = {"a": {"a": "1", "b": "2"}, "b": {"a": "1", "b": "2"}, "c": {"a": "1", "b": "3"}}
    assert equivocating_reducers(reported) == {"b": {"2", "3"}}
