"""peers.attack.report: the invariants of `swarm attack`, computed from a harness's records (no processes)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from peers.attack.cli import _kinds
from peers.attack.report import build_report
from swarm.errors import ConfigError

pytestmark = pytest.mark.timeout(30)


def harness(rows_a, rows_b, epochs):
    peers = [SimpleNamespace(slot="p0", rows=rows_a), SimpleNamespace(slot="p1", rows=rows_b)]
    return SimpleNamespace(closing_at=None, instances=[SimpleNamespace(slot="coordinator", rows=[]), *peers], new_epochs=epochs)


def row(epoch, seen, samples=64, h="x"):
    return {"epoch": epoch, "_seen": seen, "samples": samples, "params_hash": h}


def event(kind, t0, t1, **kw):
    base = {"kind": kind, "t0": t0, "t1": t1, "coordinator_alive": True, "healthz": True, "attacker": {}}
    return base | kw


def test_a_clean_run_holds_every_invariant():
    epochs = [(float(t), t) for t in range(0, 40, 2)]
    rows = [row(e, t) for t, e in epochs]
    events = [event("far_epoch", 10.0, 20.0),
              event("idle_streams", 20.0, 30.0, rss_before_mb=500.0, rss_peak_mb=530.0, attacker={"opened": 300})]
    report = build_report(harness(rows, rows, epochs), events, baseline=(0.0, 10.0), target_batch_size=64, wall_s=40.0, summary={})
    assert report["coordinator_crashes"] == 0 and report["premature_steps"] == 0
    assert report["round_interval_s"] == 2.0 and report["longest_stall_s"] == 2.0
    assert report["attacks"][1]["rss_growth_per_stream_mb"] == pytest.approx(0.1)
    assert all(report["invariants"].values()), report["invariants"]


def test_each_broken_invariant_is_flagged():
    epochs = [(0.0, 1), (2.0, 2), (4.0, 3), (6.0, 4), (30.0, 5)]   # nothing new from 6 s to 30 s
    rows_a = [row(1, 0.0), row(2, 2.0), row(3, 4.0), row(4, 6.0), row(5, 30.0, samples=20)]
    rows_b = [row(1, 0.0), row(2, 2.0), row(3, 4.0), row(4, 6.0, h="other"), row(5, 30.0)]
    events = [event("huge_ints", 6.0, 31.0, coordinator_alive=False),
              event("huge_chunk", 31.0, 33.0, rss_before_mb=500.0, rss_peak_mb=1200.0)]
    report = build_report(harness(rows_a, rows_b, epochs), events, baseline=(0.0, 6.0), target_batch_size=64, wall_s=40.0, summary={})
    broken = {k for k, ok in report["invariants"].items() if not ok}
    assert broken == {"no_coordinator_crash", "stall_within_one_round", "no_premature_step", "rss_per_stream_below_64mb",
                      "identical_parameters"}
    assert report["divergent_epochs"] == [4]


def test_unknown_attack_kind_is_one_clear_error():
    assert _kinds("far_epoch, idle_streams") == ["far_epoch", "idle_streams"]
    with pytest.raises(ConfigError, match="unknown attack"):
        _kinds("far_epoch,rm_rf")


def test_a_refused_chunk_is_not_charged_with_the_peers_own_rss_swing_but_an_accepted_one_is():
    epochs = [(float(t), t) for t in range(0, 40, 2)]
    rows = [row(e, t) for t, e in epochs]
    refused = event("huge_chunk", 10.0, 12.0, rss_before_mb=500.0, rss_peak_mb=572.0, attacker={"sent_bytes": 0})
    taken = event("huge_chunk", 20.0, 22.0, rss_before_mb=500.0, rss_peak_mb=900.0, attacker={"sent_bytes": 400 * 2**20})
    report = build_report(harness(rows, rows, epochs), [refused], baseline=(0.0, 10.0), target_batch_size=64, wall_s=40.0, summary={})
    assert report["attacks"][0]["rss_growth_per_stream_mb"] == 0.0 and report["invariants"]["rss_per_stream_below_64mb"]
    report = build_report(harness(rows, rows, epochs), [taken], baseline=(0.0, 10.0), target_batch_size=64, wall_s=40.0, summary={})
    assert report["attacks"][0]["rss_growth_per_stream_mb"] == 400.0 and not report["invariants"]["rss_per_stream_below_64mb"]
