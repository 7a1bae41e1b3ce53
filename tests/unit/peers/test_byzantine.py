"""peers.attack.byzantine: what each byzantine kind sends; peers.attack.byzantine_run: its spec and its figures."""
from __future__ import annotations

import math

import pytest
import torch

from peers.attack.byzantine import HUGE, INFLATION, byzantine_round_class, corrupt
from peers.attack.byzantine_run import parse_specs, phase_figures
from swarm.averaging.allreduce import AllReduceRound
from swarm.errors import ConfigError

pytestmark = pytest.mark.timeout(60)


def test_each_kind_sends_what_it_names():
    g = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(corrupt("sign_flip", g), -g)
    assert torch.equal(corrupt("inflated_weight", g), -g)
    huge = corrupt("huge", g)
    assert torch.isfinite(huge).all() and float(huge.min()) == pytest.approx(HUGE)
    noise = corrupt("gaussian", g, seed=3)
    assert 8 < float(noise.norm() / g.norm()) < 12
    assert abs(float(torch.nn.functional.cosine_similarity(noise, g, dim=0))) < 0.15


def test_alie_stays_within_the_honest_spread_and_biases_every_coordinate_towards_zero():
    g = torch.randn(1000, generator=torch.Generator().manual_seed(1))
    last = g + 0.1 * torch.randn(1000, generator=torch.Generator().manual_seed(2))
    sent = corrupt("alie", g, last)
    assert torch.all((sent - g).abs() <= (g - last).abs() + 1e-6)       # a little...
    assert torch.all((sent - g) * torch.sign(g) <= 0)                    # ...always towards zero
    assert float((sent - g).norm()) > 0


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError):
        corrupt("nice", torch.zeros(3))
    with pytest.raises(ValueError):
        byzantine_round_class("nice", AllReduceRound)


def test_the_byzantine_round_is_a_subclass_of_the_round_it_corrupts():
    cls = byzantine_round_class("huge", AllReduceRound)
    assert issubclass(cls, AllReduceRound) and cls.__name__ == "Byzantine_huge"
    assert INFLATION > 1


def test_specs_parse_and_bad_ones_get_one_clear_error():
    assert parse_specs("sign_flip:1, huge:2,alie") == [("sign_flip", 1), ("huge", 2), ("alie", 1)]
    for bad in ("nice:1", "huge:x", "huge:0", ""):
        with pytest.raises(ConfigError):
            parse_specs(bad)


def test_phase_figures_compare_loss_at_one_epoch_and_catch_nan_and_divergence():
    peer_a = [{"epoch": e, "loss": 10.0 - e, "params_hash": f"h{e}", "round_seconds": 1.0, "time": 100.0 + 2 * e} for e in range(1, 7)]
    peer_b = [{"epoch": e, "loss": 10.0 - e, "params_hash": f"h{e}", "round_seconds": 3.0, "time": 90.0 + 4 * e + (e == 1) * 50}
              for e in range(1, 7)]
    fig = phase_figures([peer_a, peer_b], epoch=5)
    assert fig["loss"] == pytest.approx(6.0)   # epochs 3, 4, 5
    assert fig["identical_params"] and not fig["nan"] and fig["round_seconds_median"] == 2.0
    assert fig["step_seconds_median"] == pytest.approx(3.0)   # 2 s and 4 s a step, the first epoch (start-up) left out
    peer_b[2] = {**peer_b[2], "params_hash": "other", "loss": math.nan}
    fig = phase_figures([peer_a, peer_b], epoch=5)
    assert fig["nan"] and not fig["identical_params"] and fig["divergent_epochs"] == [3]


def test_strikes_are_split_between_byzantine_and_honest_peers():
    from peers.attack.byzantine_run import strike_figures

    logs = ["16:03:39 W swarm.averaging.robust: round 111ecedf: gt45iSb4 clipped hard (1.00 of its pull cut): strike 1\n"
            "16:03:43 W swarm.averaging.robust: gt45iSb4 excluded from the parts this peer reduces after 2 strikes\n"
            "16:03:44 W swarm.averaging.robust: round 2: HoNeSt01 clipped hard (0.80 of its pull cut): strike 1\n"
            "16:03:45 W swarm.averaging.bans: banning gt45iSb4: its contributions were absurd in repeated rounds\n"]
    fig = strike_figures(logs, {"12D3KooWxxxxgt45iSb4"})
    assert fig == {"strikes": {"byzantine": 1, "honest": 1}, "exclusions": {"byzantine": 1, "honest": 0},
                   "bans": {"byzantine": 1, "honest": 0}}


def test_a_lying_reducer_adds_noise_to_what_it_averages_and_sends_its_own_values_honestly():
    from peers.attack.byzantine import lying_reduction
    from swarm.averaging.reduction import Reduction

    honest, lying = Reduction(100), lying_reduction(Reduction)(100)
    for r in (honest, lying):
        r.add(torch.ones(100), 1.0, sender=0)
        r.add(3 * torch.ones(100), 1.0, sender=1)
    assert torch.equal(honest.result(), 2 * torch.ones(100))
    assert 0.5 < float((lying.result() - honest.result()).norm() / honest.result().norm()) < 1.5
    with pytest.raises(ValueError):
        corrupt("lying_reducer", torch.zeros(3))   # not a sender-side corruption


def test_ban_figures_say_whether_every_honest_peer_banned_every_attacker():
    from peers.attack.byzantine_run import ban_figures

    attacker = "12D3KooWattackerXYZabcdefgh"
    logs = [f"x swarm.averaging.bans: banning {attacker[-8:]}: audit of part 0", f"banning {attacker[-8:]}: two results", "nothing"]
    rows = [[{"epoch": 1, "group_size": 4}, {"epoch": 2, "group_size": 3}], [{"epoch": 1, "group_size": 4}, {"epoch": 2, "group_size": 4}], []]
    figures = ban_figures(logs, rows, {attacker}, honest=3)
    assert figures == {"banned_by_every_honest_peer": False, "honest_peers_banning": 2, "steps_with_attackers_max": 2}
    assert ban_figures(logs[:2], rows[:2], {attacker}, honest=3)["banned_by_every_honest_peer"]
    assert not ban_figures(logs, rows, set(), honest=3)["banned_by_every_honest_peer"]
