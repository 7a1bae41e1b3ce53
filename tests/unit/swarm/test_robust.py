"""swarm.averaging.robust: CenteredClip keeps a minority of arbitrary contributions from moving the aggregate far."""
from __future__ import annotations

import pytest
import torch

from swarm.averaging.robust import HARD_CLIP, CenteredClipReduction, StrikeBook, bound_weights, centered_clip

pytestmark = pytest.mark.timeout(60)

D = 4096


def honest(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(D, generator=g) + 0.3 * torch.randn(n, D, generator=g)


def spread(rows: torch.Tensor) -> float:
    """The typical distance of an honest contribution from the honest mean."""
    return float((rows - rows.mean(0)).norm(dim=1).median())


def test_honest_contributions_give_nearly_their_weighted_mean():
    rows, weights = honest(8), torch.tensor([1.0, 1.5, 1, 1, 1.5, 1, 1, 1.5])
    clip = centered_clip(rows, weights)
    mean = (rows * (weights / weights.sum()).unsqueeze(1)).sum(0)
    assert float((clip.value - mean).norm()) < 0.01 * spread(rows)
    assert float(clip.clipped_share.max()) < 0.05  # the farthest honest rows lose a little of their pull


@pytest.mark.parametrize("attack", ["huge", "sign_flip", "gaussian"])
@pytest.mark.parametrize("attackers", [1, 2])
def test_a_minority_of_attackers_moves_the_aggregate_less_than_an_honest_spread(attack, attackers):
    good = honest(8 - attackers, seed=attackers)
    mean = good.mean(0)
    bad = {
        "huge": torch.full((attackers, D), 1e30),
        "sign_flip": -10 * mean.expand(attackers, D),
        "gaussian": mean + 10 * mean.norm() / D**0.5 * torch.randn(attackers, D, generator=torch.Generator().manual_seed(7)),
    }[attack]
    clip = centered_clip(torch.cat([good, bad]), torch.ones(8))
    assert torch.isfinite(clip.value).all()
    plain = torch.cat([good, bad]).to(torch.float64).mean(0)
    assert float((clip.value - mean).norm()) < (0.25 if attackers == 1 else 0.75) * spread(good)
    assert float((clip.value - mean).norm()) < 0.1 * float((plain - mean).norm())  # the plain mean is poisoned
    assert float(clip.clipped_share[-attackers:].min()) > 0.5   # the attackers' pull was cut...
    assert float(clip.clipped_share[:-attackers].max()) < 0.1   # ...and hardly any honest one's


def test_a_sender_cannot_buy_influence_by_claiming_samples():
    good = honest(7)
    bad = -10 * good.mean(0, keepdim=True)
    weights = torch.tensor([1.0] * 7 + [1e12])
    assert float(bound_weights(weights)[-1]) == 1.5
    clip = centered_clip(torch.cat([good, bad]), weights)
    assert float((clip.value - good.mean(0)).norm()) < 0.5 * spread(good)


def test_non_finite_and_negative_weights_count_for_nothing():
    assert bound_weights(torch.tensor([1.0, float("inf"), float("nan"), -3.0, 2.0])).tolist() == [1.0, 0.0, 0.0, 0.0, 1.5]  # and 2 is bounded to 1.5 x the median
    with pytest.raises(ValueError, match="positive weight"):
        centered_clip(honest(2), torch.tensor([0.0, float("nan")]))


def test_the_reduction_streams_chunks_and_reports_each_senders_clipped_share():
    good = honest(5)
    reduction = CenteredClipReduction(D)
    for i, row in enumerate(good):
        reduction.add(row, 1.0, sender=i)
    reduction.add(torch.full((D,), 1e30), 1.0, sender=9)
    reduction.add(torch.zeros(D), 0.0, sender=10)  # an excluded sender leaves no trace
    value = reduction.result()
    assert value is not None and float((value - good.mean(0)).norm()) < 0.5 * spread(good)
    assert set(reduction.clipped_share) == {0, 1, 2, 3, 4, 9}
    assert reduction.clipped_share[9] > 0.99 and max(reduction.clipped_share[i] for i in range(5)) < 0.1
    assert CenteredClipReduction(D).result() is None


def test_strikes_count_only_hard_clipping():
    book = StrikeBook()
    assert book.record({"a": 0.5, "b": HARD_CLIP}) == []
    assert book.record({"a": 0.7, "b": 0.95}) == ["b"]
    assert book.excluded() == {"b"} and book.strikes == {"b": 2}


@pytest.mark.parametrize("setting, invite_only, robust", [
    ("auto", False, True), ("auto", True, False), ("on", True, True), ("off", False, False),
])
def test_robust_mode_is_on_in_open_runs_unless_turned_off(setting, invite_only, robust):
    from swarm.collaboration import Collaboration
    from swarm.config import EngineConfig

    collab = Collaboration("run", config=EngineConfig(robust=setting), authorizer=object() if invite_only else None, start=False)  # type: ignore[arg-type]
    assert collab.robust is robust
