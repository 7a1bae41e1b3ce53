"""Newcomers try the donor least asked for the state first (the count in its progress record), so that a crowd of
newcomers spreads over the up-to-date peers instead of all landing on one."""
from __future__ import annotations

import asyncio

import pytest

import swarm.averaging.state_sync as state_sync
from swarm.net.records import ProgressRecord

pytestmark = pytest.mark.timeout(30)


def first_donor(monkeypatch, donors, asked):
    tried = []

    async def fake_download(p2p, run_id, donor, *args, **kwargs):
        tried.append(donor)
        return "state"

    monkeypatch.setattr(state_sync, "download_state", fake_download)
    asyncio.run(state_sync.download_from_any(None, "run", donors, 0, 1.0, asked=asked))
    return tried[0]


def test_the_least_asked_donor_comes_first(monkeypatch):
    for _ in range(20):   # whatever the random order among equals
        assert first_donor(monkeypatch, ["a", "b", "c"], {"a": 3, "b": 0, "c": 1}) == "b"


def test_equally_asked_donors_are_tried_in_random_order(monkeypatch):
    firsts = {first_donor(monkeypatch, ["a", "b"], {"a": 1, "b": 1}) for _ in range(40)}
    assert firsts == {"a", "b"}


def test_the_count_is_a_bounded_record_field():
    with pytest.raises(ValueError):
        ProgressRecord(peer_id="p", epoch=0, samples=0, samples_per_second=0.0, role="trainer", upload_bps=1.0,
                       download_bps=1.0, time=0.0, states_asked=-1)
