"""benchmarks.model_vs_real: the model's sizes come from the calibration run, and a run whose swarm did not hold is
reported, not compared."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.model_vs_real import calibrate, predict

pytestmark = pytest.mark.timeout(60)
RESULTS = Path(__file__).resolve().parents[3] / "benchmarks" / "results"


def runs(name: str) -> list[dict]:
    return [r for r in json.loads((RESULTS / name).read_text())["runs"] if r["phase"] == "training"]


def test_the_calibration_run_predicts_its_own_wire_bytes_and_the_rules_carry_to_another_size():
    toy = runs("control-plane-s23-toy.json")
    at16 = next(r for r in toy if r["peers"] == 16)
    cp, mp, fitted = calibrate([at16])
    assert fitted["round_overhead_s"] == pytest.approx(at16["round_stats"]["round_s_median"])   # a flat group: one stage
    own = predict(at16, cp, mp)
    # the daemons' share is what makes the model's wire bytes the run's own at the calibration size
    assert own["wire_control_Bps"]["error"] == pytest.approx(0.0, abs=1e-6)
    at64 = predict(next(r for r in toy if r["peers"] == 64), cp, mp)
    assert at64["compared"] and at64["round_s"]["subgroups"] >= 3 and at64["streams_per_peer_round"]["model"] <= 16


def test_a_swarm_that_did_not_hold_is_not_compared():
    collapsed = next(r for r in runs("control-plane-s23-1M.json") if r["peers"] == 64)
    cp, mp, _ = calibrate([next(r for r in runs("control-plane-s23-toy.json") if r["peers"] == 16)])
    out = predict(collapsed, cp, mp)
    assert not out["compared"] and "did not hold" in out["why"]
