"""The DeDLOC load-balancing LP, the round-time formulas, split_sizes and the bandwidth EMA."""

import numpy as np
import pytest

from swarm.averaging.balancing import (
    BandwidthEstimator,
    MemberLink,
    optimal_shares,
    round_seconds,
    split_sizes,
    uniform_shares,
)

pytestmark = pytest.mark.timeout(60)

MBIT = 1e6 / 8  # bytes per second in one Mbit/s
N = 100 * 2**20


def trainer(mbit, down=None, **kwargs):
    return MemberLink(mbit * MBIT, (down if down is not None else mbit) * MBIT, **kwargs)


def client(mbit):
    return trainer(mbit, can_reduce=False)


def aux(mbit):
    return trainer(mbit, brings_gradients=False, needs_result=False)


def assert_valid(shares, members):
    assert shares.shape == (len(members),)
    assert np.all(shares >= 0)
    assert shares.sum() == pytest.approx(1.0, abs=1e-12)
    for share, member in zip(shares, members):
        if not member.can_reduce:
            assert share == 0.0


@pytest.mark.parametrize("n", [2, 3, 5, 8])
def test_equal_bandwidths_give_equal_shares(n):
    members = [trainer(100)] * n
    shares, t = optimal_shares(N, members)
    assert_valid(shares, members)
    np.testing.assert_allclose(shares, np.full(n, 1 / n), atol=1e-9)
    assert t == pytest.approx(N * (1 + (n - 2) / n) / (100 * MBIT), rel=1e-8)


def test_client_mode_peer_reduces_nothing():
    members = [trainer(100), client(1000), trainer(100)]
    shares, t = optimal_shares(N, members)
    assert_valid(shares, members)
    assert shares[1] == 0.0
    assert t == pytest.approx(round_seconds(N, members, shares))


def test_slower_peer_gets_less():
    members = [trainer(100), trainer(100), trainer(25), trainer(100)]
    shares, _ = optimal_shares(N, members)
    assert_valid(shares, members)
    assert shares[2] < shares[0] - 1e-6
    np.testing.assert_allclose(shares[[0, 1, 3]], shares[0], rtol=1e-6)


def test_asymmetric_links_limit_by_the_slower_direction():
    # Peer 0 has fast download but slow upload: its reduced part must be sent to every other member.
    members = [trainer(1000, down=1000), trainer(1000, down=1000), trainer(20, down=1000), trainer(1000, down=1000)]
    shares, t = optimal_shares(N, members)
    assert shares[2] < shares[0]
    assert t <= round_seconds(N, members, uniform_shares(members))


def test_aux_peer_gets_a_share_and_has_no_gradient_terms():
    members = [trainer(50), trainer(50), trainer(50), aux(1000)]
    shares, t = optimal_shares(N, members)
    assert_valid(shares, members)
    assert shares[3] > 0.5  # the fast aux peer takes most of the reduction
    # An aux peer alone with share w: uploads N w m and downloads N w g, nothing else.
    members_aux = [trainer(1e6), trainer(1e6), trainer(1e6, can_reduce=False), aux(80)]
    w = np.array([0.2, 0.3, 0.0, 0.5])
    g = m = 3
    aux_time = max(N * w[3] * m, N * w[3] * g) / (80 * MBIT)
    assert round_seconds(N, members_aux, w) == pytest.approx(aux_time, rel=1e-12)
    assert round_seconds(N, members_aux, [0.5, 0.5, 0.0, 0.0]) < aux_time  # with w = 0 the aux peer moves nothing


def test_round_seconds_formulas_per_role():
    # One member per role, each given a huge rate except the one under test, to isolate its terms.
    fast = 1e12
    w = np.array([0.5, 0.0, 0.5])
    g, m = 2, 2  # trainer and client bring and need; the aux peer neither
    members = [MemberLink(100.0, fast), MemberLink(fast, fast, can_reduce=False), MemberLink(fast, fast, False, False)]
    assert round_seconds(N, members, w) == pytest.approx(N * ((1 - 0.5) + 0.5 * (m - 1)) / 100.0)
    members = [MemberLink(fast, 100.0), MemberLink(fast, fast, can_reduce=False), MemberLink(fast, fast, False, False)]
    assert round_seconds(N, members, w) == pytest.approx(N * (0.5 * (g - 1) + (1 - 0.5)) / 100.0)
    members = [MemberLink(fast, fast), MemberLink(100.0, 200.0, can_reduce=False), MemberLink(fast, fast, False, False)]
    assert round_seconds(N, members, w) == pytest.approx(N / 100.0)  # client uploads N, downloads N
    members = [MemberLink(fast, fast), MemberLink(fast, fast, can_reduce=False), MemberLink(100.0, 1000.0, False, False)]
    assert round_seconds(N, members, w) == pytest.approx(N * 0.5 * m / 100.0)


def test_reduces_to_dedloc_lp_for_symmetric_full_trainers():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(2, 20))
        rates = rng.uniform(1e5, 1e8, size=n)
        members = [MemberLink(b, b) for b in rates]
        w = rng.dirichlet(np.ones(n))
        dedloc = np.max(N * (1 + (n - 2) * w) / rates)
        assert round_seconds(N, members, w) == pytest.approx(dedloc, rel=1e-12)


def test_lp_optimum_never_worse_than_uniform_and_is_a_lower_bound():
    rng = np.random.default_rng(1)
    for _ in range(40):
        n = int(rng.integers(2, 12))
        kinds = rng.choice(["trainer", "client", "aux"], size=n)
        members = [
            MemberLink(
                rng.uniform(1, 100) * MBIT,
                rng.uniform(1, 100) * MBIT,
                brings_gradients=kind != "aux",
                needs_result=kind != "aux",
                can_reduce=kind != "client",
            )
            for kind in kinds
        ]
        if not any(m.can_reduce for m in members) or not any(m.brings_gradients for m in members):
            continue
        shares, t = optimal_shares(N, members)
        assert_valid(shares, members)
        assert t == pytest.approx(round_seconds(N, members, shares), rel=1e-12)
        assert t <= round_seconds(N, members, uniform_shares(members)) * (1 + 1e-9)
        for _ in range(20):  # no random feasible split beats the LP
            w = rng.dirichlet(np.ones(n)) * np.array([m.can_reduce for m in members])
            w /= w.sum()
            assert t <= round_seconds(N, members, w) * (1 + 1e-7)


def test_dedloc_example_ratio():
    members = [trainer(200)] * 4 + [trainer(100)] * 8 + [trainer(50)] * 4
    shares, t = optimal_shares(N, members)
    uniform_t = round_seconds(N, members, uniform_shares(members))
    ratio = uniform_t / t
    print(f"DeDLOC example (4x200, 8x100, 4x50 Mbit/s): uniform {uniform_t:.2f}s, LP {t:.2f}s, ratio {ratio:.3f}")
    # Uniform: the 50 Mbit/s peers move N (1 + 14/16). LP: they reduce nothing, so T = N / 50 Mbit/s.
    assert ratio == pytest.approx(1.875, rel=1e-6)
    assert np.all(shares[12:] == 0.0)
    assert t == pytest.approx(N / (50 * MBIT), rel=1e-6)


def test_single_member_and_zero_bytes():
    shares, t = optimal_shares(N, [trainer(10)])
    assert shares.tolist() == [1.0] and t == 0.0
    shares, t = optimal_shares(0, [trainer(10), trainer(20)])
    assert_valid(shares, [trainer(10), trainer(20)])
    assert t == 0.0


def test_errors():
    with pytest.raises(ValueError, match="can reduce"):
        optimal_shares(N, [client(10), client(20)])
    with pytest.raises(ValueError, match="can reduce"):
        uniform_shares([client(10)])
    with pytest.raises(ValueError, match="gradients"):
        optimal_shares(N, [aux(10), aux(20)])
    with pytest.raises(ValueError, match="gradients"):
        round_seconds(N, [aux(10)], [1.0])
    with pytest.raises(ValueError, match="at least one"):
        optimal_shares(N, [])
    with pytest.raises(ValueError, match="upload_bps"):
        MemberLink(0.0, 1.0)
    with pytest.raises(ValueError, match="download_bps"):
        MemberLink(1.0, float("inf"))
    with pytest.raises(ValueError, match="shares"):
        round_seconds(N, [trainer(10), trainer(10)], [1.0])
    with pytest.raises(ValueError, match="shares"):
        round_seconds(N, [trainer(10), trainer(10)], [1.5, -0.5])


def test_split_sizes():
    assert split_sizes(10, [0.5, 0.25, 0.25, 0.0]) == [5, 3, 2, 0]
    assert split_sizes(7, [1 / 3] * 3) == [3, 2, 2]
    assert split_sizes(0, [0.5, 0.5]) == [0, 0]
    assert split_sizes(1, [0.0, 0.5, 0.5]) == [0, 1, 0]
    rng = np.random.default_rng(2)
    for _ in range(200):
        n = int(rng.integers(1, 30))
        shares = rng.dirichlet(np.ones(n)) * (rng.random(n) > 0.3)
        if shares.sum() == 0:
            continue
        total = int(rng.integers(0, 10**7))
        sizes = split_sizes(total, shares)
        assert sum(sizes) == total
        assert all(s == 0 for s, w in zip(sizes, shares) if w == 0)
        exact = total * shares / shares.sum()
        assert np.all(np.abs(np.array(sizes) - exact) < 1 + 1e-9)
    with pytest.raises(ValueError):
        split_sizes(-1, [1.0])
    with pytest.raises(ValueError):
        split_sizes(10, [0.0, 0.0])
    with pytest.raises(ValueError):
        split_sizes(10, [0.5, -0.5, 1.0])


def test_bandwidth_estimator_ema():
    est = BandwidthEstimator(prior_bps=1e6, alpha=0.5, min_bytes=1000)
    assert est.value == 1e6
    est.observe(4_000_000, 2.0)  # 2e6 B/s
    assert est.value == pytest.approx(1.5e6)
    est.observe(4_000_000, 2.0)
    assert est.value == pytest.approx(1.75e6)
    for _ in range(60):
        est.observe(3_000_000, 1.0)
    assert est.value == pytest.approx(3e6, rel=1e-9)
    samples = est.samples
    est.observe(999, 1e-6)  # below min_bytes
    est.observe(10**6, 0.0)  # zero time
    est.observe(10**6, -1.0)
    est.observe(10**6, float("nan"))
    assert est.value == pytest.approx(3e6, rel=1e-9) and est.samples == samples


def test_bandwidth_estimator_default_alpha_and_errors():
    est = BandwidthEstimator(prior_bps=100.0)
    est.observe(65536, 65536 / 200.0)
    assert est.value == pytest.approx(0.7 * 100 + 0.3 * 200)
    est.observe(65535, 1.0)  # below the default min_bytes
    assert est.value == pytest.approx(130.0)
    for kwargs in (dict(prior_bps=0.0), dict(prior_bps=1.0, alpha=0.0), dict(prior_bps=1.0, alpha=1.5), dict(prior_bps=1.0, min_bytes=-1)):
        with pytest.raises(ValueError):
            BandwidthEstimator(**kwargs)
