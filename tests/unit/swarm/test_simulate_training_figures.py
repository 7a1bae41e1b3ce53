"""swarm.simulate.emulate.training_figures: utilization, bytes per sample and the loss curve from the peers' events."""
from __future__ import annotations

import pytest

from swarm.simulate.emulate import training_figures
from swarm.simulate.worker import net_sent

pytestmark = pytest.mark.timeout(30)


def _local(t: float, loss: float, n: int = 4) -> dict:
    return {"event": "local", "time": t, "loss": loss, "samples": n}


def test_figures_of_two_trainers_and_an_aux_peer():
    started = 1000.0
    summaries = [
        {"samples": 40, "elapsed": 10.0, "compute_seconds": 9.0, "round_wait_seconds": 0.5, "step_seconds": 0.8,
         "bytes_sent": 4000, "net_bytes_sent": 5000, "rounds_completed": 2, "rounds_failed": 1},
        {"samples": 20, "elapsed": 10.0, "compute_seconds": 7.0, "round_wait_seconds": 2.5, "step_seconds": 2.8,
         "bytes_sent": 2000, "net_bytes_sent": 2600, "rounds_completed": 2, "rounds_failed": 0},
        {"role": "aux", "rounds": 2, "bytes_sent": 6000, "net_bytes_sent": 6400},
    ]
    histories = [
        [_local(1001, 8.0), _local(1004, 6.0), {"event": "step", "epoch": 1}, _local(1006, 4.0)],
        [_local(1002, 10.0), _local(1007, float("nan")), _local(1009, 2.0)],
        [_local(1003, 99.0)],   # an aux peer's events never count
    ]
    figures = training_figures([True, True, False], summaries, histories, started, bin_seconds=5.0)
    assert figures["samples"] == 60
    assert figures["compute_utilization"] == pytest.approx(16 / 20)
    assert figures["round_wait_share"] == pytest.approx(3 / 20) and figures["optimizer_share"] == pytest.approx(0.6 / 20)
    assert figures["training_utilization"] is None, "inner optimizer seconds not reported: no figure, not the fwd/bwd one"
    summaries[0]["inner_step_seconds"], summaries[1]["inner_step_seconds"] = 0.5, 0.3
    with_inner = training_figures([True, True, False], summaries, histories, started, bin_seconds=5.0)
    assert with_inner["training_utilization"] == pytest.approx((16 + 0.8) / 20)   # the inner steps count as compute
    assert figures["bytes_sent_per_sample"] == pytest.approx(12000 / 60)
    assert figures["net_bytes_sent_per_sample"] == pytest.approx(14000 / 60)
    assert figures["failed_rounds"] == 1 and figures["rounds_completed"] == 2 and figures["nan_losses"] == 1
    # bins of 5 s: [0, 5) holds 8, 6, 10 (12 samples); [5, 10) holds 4, 2 (the NaN is skipped, its samples too)
    assert figures["loss_curve"] == [[5.0, 8.0, 12], [10.0, 3.0, 20]]
    capped = training_figures([True, True, False], summaries, histories, started, duration=9.5, bin_seconds=5.0)
    assert [point[0] for point in capped["loss_curve"]] == [5.0, 9.5]   # the last bin ends with the run
    late = training_figures([True], summaries[:1], [[_local(1001, 8.0), _local(1010.5, 6.0)]], started, duration=10.0, bin_seconds=5.0)
    assert late["loss_curve"] == [[5.0, 8.0, 4], [10.0, 6.0, 8]]   # finished after the end: counted in the last bin


def test_missing_figures_are_none_not_wrong():
    """A peer that does not report a figure (hivemind: no round bytes, no round-wait seconds) leaves it None."""
    summaries = [{"samples": 8, "elapsed": 4.0, "compute_seconds": 2.0, "net_bytes_sent": 800}]
    figures = training_figures([True], summaries, [[]], 0.0)
    assert figures["compute_utilization"] == 0.5 and figures["net_bytes_sent_per_sample"] == 100
    assert figures["round_wait_share"] is None and figures["bytes_sent_per_sample"] is None
    assert figures["loss_curve"] == [] and figures["failed_rounds"] == 0
    assert training_figures([True], [{}], [[]], 0.0)["compute_utilization"] is None


def test_net_sent_is_the_counter_difference():
    assert net_sent((100, 200), (150, 1200)) == {"net_bytes_received": 50, "net_bytes_sent": 1000}
    assert net_sent(None, (1, 2)) == {} and net_sent((1, 2), None) == {}
