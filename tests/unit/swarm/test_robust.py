"""swarm.averaging.robust: CenteredClip keeps a minority of arbitrary contributions from moving the aggregate far."""
from __future__ import annotations

import pytest
import torch

from swarm.averaging.reduction import Reduction
from swarm.averaging.robust import HARD_CLIP, CenteredClipReduction, StrikeBook, bound_weights, centered_clip, counted_samples

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


def test_only_absurd_contributions_in_two_rounds_ban_their_sender():
    book = StrikeBook()
    for _ in range(3):   # 1e30 (1.0), 10x noise (0.97) and a sign flip (0.85): all struck, only the absurd one banned
        book.record({"huge": 1.0, "noise": 0.97, "flip": 0.85, "honest": 0.001})
        assert book.banned() <= {"huge"}
    assert book.banned() == {"huge"} and book.excluded() == {"huge", "noise", "flip"}
    bad = StrikeBook()   # non-finite or undecodable chunks: absurd as well
    bad.record({}, bad_data=["nan"])
    bad.record({"nan": 0.0}, bad_data=["nan", "nan"])
    assert bad.banned() == {"nan"} and bad.strikes == {"nan": 2}
    once = StrikeBook()
    once.record({"x": 1.0})
    once.record({"x": 0.5})
    assert once.banned() == frozenset()


@pytest.mark.parametrize("setting, invite_only, robust", [
    ("auto", False, True), ("auto", True, False), ("on", True, True), ("off", False, False),
])
def test_robust_mode_is_on_in_open_runs_unless_turned_off(setting, invite_only, robust):
    from swarm.collaboration import Collaboration
    from swarm.config import EngineConfig

    collab = Collaboration("run", config=EngineConfig(robust=setting), authorizer=object() if invite_only else None, start=False)  # type: ignore[arg-type]
    assert collab.robust is robust


def _vector_space_clip(rows: torch.Tensor, weights: torch.Tensor, tau: float, steps: int = 500) -> torch.Tensor:
    """The textbook iteration on the values themselves (float64), from the weighted medoid: the slow path."""
    x, w = rows.to(torch.float64), bound_weights(weights)
    pairwise = torch.cdist(x, x)
    n = len(x)

    def median_to_others(i: int) -> float:
        others = [j for j in range(n) if j != i]
        d, order = pairwise[i, others].sort()
        cumulative = w[others][order].cumsum(0)
        return float(d[min(int((cumulative < w[others].sum() / 2).sum()), len(others) - 1)])

    v = x[min(range(n), key=median_to_others)].clone()
    for _ in range(steps):
        distances = (x - v).norm(dim=1)
        scale = torch.where(distances > tau, tau / distances, torch.ones_like(distances))
        v = v + (w * scale / w.sum()) @ (x - v)
    return v


def test_an_honest_group_takes_the_fast_path_and_it_is_the_slow_paths_limit():
    rows, weights = honest(8, seed=4), torch.tensor([1.0, 1.4, 0.8, 1, 1.2, 1, 0.9, 1.1])
    clip = centered_clip(rows, weights)
    assert clip.iterations == 0 and float(clip.clipped_share.max()) == 0.0   # the mean clipped nobody
    mean = (rows.to(torch.float64) * (weights / weights.sum()).unsqueeze(1).to(torch.float64)).sum(0)
    slow = _vector_space_clip(rows, weights, clip.tau)
    assert float((slow - mean).norm()) < 1e-6 * float(mean.norm())   # the iteration converges to the mean
    assert float((clip.value - mean).norm()) < 1e-6 * float(mean.norm())   # float32 rounding only


def test_the_reduction_of_an_honest_group_is_the_plain_mean_bit_for_bit():
    rows, weights = honest(6, seed=2), [1.0, 1.3, 0.9, 1.0, 1.2, 0.8]
    robust, plain = CenteredClipReduction(D), Reduction(D)
    for i, (row, weight) in enumerate(zip(rows, weights)):
        robust.add(row, weight, sender=i)
        plain.add(row, weight, sender=i)
    assert torch.equal(robust.result(), plain.result())
    assert robust.iterations == 0 and max(robust.clipped_share.values()) == 0.0


def test_gradients_close_together_are_not_clipped_by_rounding():
    """Rows 1e-4 of their norm apart: a Gram matrix of the raw rows would lose their distances in float32."""
    g = torch.Generator().manual_seed(1)
    base = 100 * torch.randn(D, generator=g)
    rows = base + 1e-2 * torch.randn(6, D, generator=g)
    clip = centered_clip(rows, torch.ones(6))
    assert clip.iterations == 0 and float(clip.clipped_share.max()) == 0.0
    assert 0.5 < clip.tau / spread(rows) < 2   # the radius is one honest spread, not rounding noise


@pytest.mark.parametrize("attack", ["sign_flip", "huge", "far"])
def test_an_outlier_still_triggers_clipping_and_the_gram_iteration_matches_the_slow_path(attack):
    good = honest(7, seed=5)
    bad = {"sign_flip": -good.mean(0, keepdim=True), "huge": torch.full((1, D), 1e30),
           "far": good[:1] + 3 * spread(good) * torch.randn(1, D, generator=torch.Generator().manual_seed(2)) / D**0.5}[attack]
    rows, weights = torch.cat([good, bad]), torch.ones(8)
    clip = centered_clip(rows, weights)
    assert clip.iterations > 0 and float(clip.clipped_share[-1]) > 0.5
    plain = rows.to(torch.float64).mean(0)
    assert float((clip.value - good.mean(0)).norm()) < float((plain - good.mean(0)).norm())
    reduction = CenteredClipReduction(D)
    for i, row in enumerate(rows):
        reduction.add(row, 1.0, sender=i)
    streamed = reduction.result()
    assert torch.allclose(streamed, clip.value, rtol=0, atol=1e-4 * spread(good))   # the streaming build, same result
    if attack != "huge":   # the slow path's float64 distances to 1e30 rows are exact enough only for finite sizes
        slow = _vector_space_clip(rows, weights, clip.tau)
        assert float((clip.value.to(torch.float64) - slow).norm()) < 1e-3 * spread(good)


def test_a_rounds_reported_samples_bound_a_claimed_weight_in_robust_rounds_only():
    """A member claiming 2**53 samples (the largest weight matchmaking admits) makes a robust round's report count it
    for 1.5x the median weight, as the reducers do; a plain round (invite-only, trusted) reports the weights as averaged."""
    weights = [100.0, 120.0, 80.0, float(2**53)]
    assert counted_samples(weights, robust=True) == 100 + 120 + 80 + 150
    assert counted_samples(weights, robust=False) == int(sum(weights))
    assert counted_samples([], robust=True) == 0


def test_the_reduction_does_not_depend_on_whether_a_huge_copy_arrived_first():
    """Centred on the first copy to arrive, a copy of 1e30 drowned the honest copies' distances in rounding: an aux
    reducer (no own copy first) that heard from the attacker first averaged garbage, and an auditor adding the copies
    in another order (swarm.averaging.audits) recomputed another result. Now the centre is the copy of smallest norm."""
    g = torch.Generator().manual_seed(7)
    base = torch.randn(4096, generator=g)
    honest = [base + 0.3 * torch.randn(4096, generator=g) for _ in range(4)]
    huge = torch.full((4096,), 1e30)
    results = []
    for order in ([huge, *honest], [*honest, huge], [honest[2], huge, honest[0], honest[3], honest[1]]):
        r = CenteredClipReduction(4096)
        for row in order:
            r.add(row, 1.0)
        results.append(r.result())
    mean = torch.stack(honest).mean(0)
    spread = float((honest[0] - mean).norm())
    for value in results:
        assert float((value - mean).norm()) < 0.5 * spread
        assert torch.allclose(value, results[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("attack", ["sign_flip", "huge", "far"])
def test_the_float_iteration_of_a_small_group_takes_the_same_steps_as_the_tensor_one(attack, monkeypatch):
    """Groups of up to FLOAT_ITERATION_MAX_ROWS iterate on plain floats (tensor operations on a few numbers cost more
    than arithmetic on them): the same iterations, coefficients and clipped shares as on tensors."""
    import swarm.averaging.robust as robust_module

    good = honest(5, seed=7)
    bad = {"sign_flip": -2 * good.mean(0, keepdim=True), "huge": torch.full((1, D), 1e30),
           "far": good[:1] + 3 * spread(good) * torch.randn(1, D, generator=torch.Generator().manual_seed(3)) / D**0.5}[attack]
    rows, weights = torch.cat([good, bad]), torch.tensor([1.0, 1.2, 0.9, 1.1, 1.0, 1.3])
    assert len(rows) <= robust_module.FLOAT_ITERATION_MAX_ROWS
    floats = centered_clip(rows, weights)
    monkeypatch.setattr(robust_module, "FLOAT_ITERATION_MAX_ROWS", 0)
    tensors = centered_clip(rows, weights)
    assert floats.iterations == tensors.iterations > 0
    assert torch.allclose(floats.clipped_share, tensors.clipped_share, atol=1e-6)
    assert torch.allclose(floats.value, tensors.value, rtol=0, atol=1e-5 * spread(good))


def test_mixture_gives_the_result_as_a_convex_combination_of_the_copies():
    """A reducer may send the copies with these coefficients instead of its result (a bundle): they must combine to
    the result, with an attacker clipped and in an honest group (the plain weighted mean, Reduction.mixture too)."""
    g = torch.Generator().manual_seed(0)
    honest = [torch.randn(1000, generator=g) * 0.1 + 1.0 for _ in range(4)]
    for rows in (honest, honest[:3] + [honest[3] * 50]):
        for reduction in (CenteredClipReduction(1000), Reduction(1000)):
            assert reduction.mixture() is None   # nothing reduced yet
            for sender, (row, weight) in enumerate(zip(rows, [1.0, 2.0, 1.0, 1.5])):
                reduction.add(row, weight, sender=sender)
            result = reduction.result()
            mixture = reduction.mixture()
            assert sorted(mixture) == [0, 1, 2, 3] and abs(sum(mixture.values()) - 1) < 1e-9
            combined = sum(c * rows[s].double() for s, c in mixture.items()).float()
            torch.testing.assert_close(combined, result, rtol=1e-5, atol=1e-6)
        if rows[3] is not honest[3]:   # CenteredClip cut the 50x copy's coefficient far below its weight share
            clip = CenteredClipReduction(1000)
            for sender, row in enumerate(rows):
                clip.add(row, 1.0, sender=sender)
            clip.result()
            assert clip.mixture()[3] < 0.05
