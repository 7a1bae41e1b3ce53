"""DeDLOC load balancing: which share of the vector each group member reduces, chosen by a linear program.

A group averages a vector of N bytes with a butterfly all-reduce (reduce-scatter, then all-gather).
Member i reduces a share w_i of the vector (sum w = 1; w_i = 0 where it cannot reduce, e.g. a
client-mode peer behind NAT). With g members bringing gradients and m members needing the result:

    upload_i   = N (1 - w_i) [if it brings gradients]  +  N w_i (m - needs_i)
    download_i = N w_i (g - brings_i)                   +  N (1 - w_i) [if it needs the result]

(a full trainer: uploads N(1 - w_i) + N w_i (m - 1), downloads N w_i (g - 1) + N(1 - w_i); an
auxiliary peer has no gradient terms: uploads N w_i m, downloads N w_i g). With rates U_i, D_i the
round takes at least T(w) = max_i max(upload_i / U_i, download_i / D_i). `optimal_shares` solves

    minimise T  subject to  upload_i(w) <= T U_i,  download_i(w) <= T D_i,  sum w = 1,  w >= 0

with HiGHS; its optimum is the bound that benchmarks report as `lp_bound_s`. With one symmetric rate
b_i per peer and all full trainers this is DeDLOC's LP, minimise max_i N (1 + (n - 2) w_i) / b_i.
Among the optimal w it then picks one with the smallest largest share, so that load is spread
(n = 2 equal peers get 1/2 each, not 1 and 0) and a dead reducer's part costs as little as possible.
The rates are measured (`BandwidthEstimator`, an EMA of observed transfers), not typed in by users.

Guarantees: shares are >= 0, sum to 1 and are exactly 0 where `can_reduce` is False; the returned T
is `round_seconds` of the returned shares, within 1e-9 (relative) of the LP optimum once shares
below 1e-8 (solver dust) are rounded to 0, and never exceeds that of `uniform_shares`. Compute the
shares once per group (e.g. at matchmaking) and send them to every member: LP solvers on different
machines need not agree to the last bit.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
from scipy import sparse
from scipy.optimize import linprog

__all__ = [
    "MemberLink",
    "optimal_shares",
    "round_seconds",
    "uniform_shares",
    "split_sizes",
    "sustained_rate",
    "delivered_rate",
    "BandwidthEstimator",
]

logger = logging.getLogger(__name__)

_DUST = 1e-8  # shares below this are solver tolerance, not load


@dataclass(frozen=True)
class MemberLink:
    """One group member's measured link and role in the all-reduce."""

    upload_bps: float  # bytes per second
    download_bps: float  # bytes per second
    brings_gradients: bool = True  # trainers (client-mode included) True; auxiliary False
    needs_result: bool = True  # trainers True; auxiliary False
    can_reduce: bool = True  # False for client-mode peers

    def __post_init__(self) -> None:
        for field in ("upload_bps", "download_bps"):
            rate = getattr(self, field)
            if isinstance(rate, bool) or not (isinstance(rate, (int, float, np.number)) and math.isfinite(rate) and rate > 0):
                raise ValueError(f"MemberLink.{field} must be a positive finite number of bytes/s, got {rate!r}")


def _coefficients(members: Sequence[MemberLink]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per member, (upload, download) in vectors as `const + slope * w_i`: (up_const, up_slope, down_const, down_slope)."""
    if len(members) == 0:
        raise ValueError("a group needs at least one member")
    if not any(member.can_reduce for member in members):
        raise ValueError("no member can reduce: a group needs at least one reachable (non-client-mode) member")
    brings = np.array([member.brings_gradients for member in members], dtype=float)
    needs = np.array([member.needs_result for member in members], dtype=float)
    g, m = brings.sum(), needs.sum()
    if g == 0:
        raise ValueError("no member brings gradients: there is nothing to average")
    # upload = brings (1 - w) + w (m - needs);  download = w (g - brings) + needs (1 - w)
    return brings, (m - needs) - brings, needs, (g - brings) - needs


def _check_shares(members: Sequence[MemberLink], shares: Sequence[float] | np.ndarray) -> np.ndarray:
    w = np.asarray(shares, dtype=float)
    if w.shape != (len(members),):
        raise ValueError(f"expected {len(members)} shares, got shape {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError(f"shares must be finite and >= 0, got {w.tolist()}")
    return w


def round_seconds(vector_bytes: int, members: Sequence[MemberLink], shares: Sequence[float] | np.ndarray) -> float:
    """The time bound T of one all-reduce of `vector_bytes` with these shares: max_i max(up_i / U_i, down_i / D_i)."""
    if vector_bytes < 0:
        raise ValueError(f"vector_bytes must be >= 0, got {vector_bytes}")
    w = _check_shares(members, shares)
    up_const, up_slope, down_const, down_slope = _coefficients(members)
    upload = vector_bytes * (up_const + up_slope * w)
    download = vector_bytes * (down_const + down_slope * w)
    rates_up = np.array([member.upload_bps for member in members], dtype=float)
    rates_down = np.array([member.download_bps for member in members], dtype=float)
    return float(max(np.max(upload / rates_up), np.max(download / rates_down), 0.0))


def uniform_shares(members: Sequence[MemberLink]) -> np.ndarray:
    """Equal shares among the members that can reduce, 0 for the others (the split hivemind uses by default)."""
    can_reduce = np.array([member.can_reduce for member in members], dtype=bool)
    if not can_reduce.any():
        raise ValueError("no member can reduce: a group needs at least one reachable (non-client-mode) member")
    return can_reduce / can_reduce.sum()


def optimal_shares(vector_bytes: int, members: Sequence[MemberLink]) -> tuple[np.ndarray, float]:
    """Shares minimising the round time T (the DeDLOC LP, solved with HiGHS), and that T in seconds."""
    if vector_bytes < 0:
        raise ValueError(f"vector_bytes must be >= 0, got {vector_bytes}")
    up_const, up_slope, down_const, down_slope = _coefficients(members)
    n = len(members)
    reducers = [i for i, member in enumerate(members) if member.can_reduce]
    if n == 1 or vector_bytes == 0:
        shares = uniform_shares(members)
        return shares, round_seconds(vector_bytes, members, shares)

    # Work in units of the slowest link's time per vector, so coefficients are O(1) for the solver.
    seconds_up = np.array([1.0 / member.upload_bps for member in members])
    seconds_down = np.array([1.0 / member.download_bps for member in members])
    unit = float(max(seconds_up.max(), seconds_down.max()))
    seconds_up, seconds_down = seconds_up / unit, seconds_down / unit

    # Variables x = (w_1..w_n, T). Rows: const_i s_i + slope_i s_i w_i - T <= 0, for upload and download.
    # Sparse (two non-zeros a row): a dense matrix makes a group of thousands take seconds on the leader.
    coefficient = np.empty(2 * n)
    coefficient[0::2], coefficient[1::2] = up_slope * seconds_up, down_slope * seconds_down
    b_ub = np.empty(2 * n)
    b_ub[0::2], b_ub[1::2] = -up_const * seconds_up, -down_const * seconds_down
    a_w = sparse.csr_matrix((coefficient, (np.arange(2 * n), np.repeat(np.arange(n), 2))), shape=(2 * n, n))
    a_ub = sparse.hstack([a_w, sparse.csr_matrix(-np.ones((2 * n, 1)))], format="csr")
    a_eq = np.zeros((1, n + 1))
    a_eq[0, reducers] = 1.0
    bounds = [(0.0, 1.0) if member.can_reduce else (0.0, 0.0) for member in members] + [(0.0, None)]
    cost = np.zeros(n + 1)
    cost[n] = 1.0
    first = linprog(cost, A_ub=a_ub, b_ub=b_ub, A_eq=a_eq, b_eq=[1.0], bounds=bounds, method="highs")
    if first.status != 0:  # uniform shares are always feasible, so this is solver trouble: fall back to them
        logger.warning("load-balancing LP failed (%s); using uniform shares", first.message)
        shares = uniform_shares(members)
        return shares, round_seconds(vector_bytes, members, shares)
    shares = first.x[:n]

    # Second stage: keep T within a hair of the optimum, minimise the largest share z (variables w, z).
    t_max = first.x[n] * (1 + 1e-9) + 1e-12
    spread_rows = sparse.hstack([a_w, sparse.csr_matrix((2 * n, 1))])
    spread_rhs = b_ub + t_max
    max_rows = sparse.hstack([sparse.identity(n, format="csr")[reducers], sparse.csr_matrix(-np.ones((len(reducers), 1)))])
    second = linprog(
        cost,
        A_ub=sparse.vstack([spread_rows, max_rows], format="csr"),
        b_ub=np.concatenate([spread_rhs, np.zeros(len(reducers))]),
        A_eq=a_eq,
        b_eq=[1.0],
        bounds=bounds[:n] + [(0.0, None)],
        method="highs",
    )
    if second.status == 0:
        shares = second.x[:n]

    shares = _normalise(shares, members)
    best = round_seconds(vector_bytes, members, shares)
    uniform = uniform_shares(members)
    uniform_t = round_seconds(vector_bytes, members, uniform)
    if uniform_t < best:  # only possible by solver round-off; never return worse than the default split
        return uniform, uniform_t
    return shares, best


def _normalise(shares: np.ndarray, members: Sequence[MemberLink]) -> np.ndarray:
    """Clip solver round-off: >= 0, exactly 0 where a member cannot reduce or the share is dust, summing to 1."""
    w = np.clip(np.asarray(shares, dtype=float), 0.0, None)
    w[[not member.can_reduce for member in members]] = 0.0
    w[w < _DUST] = 0.0  # a part of a few elements would cost a round trip and save nothing
    total = w.sum()
    return w / total if total > 0 else uniform_shares(members)


def split_sizes(total: int, shares: Sequence[float] | np.ndarray) -> list[int]:
    """Integer part sizes summing exactly to `total`, proportional to `shares` (largest remainder), 0 where a share is 0.

    Exact rational arithmetic, so every member computes the same sizes. Ties go to the lower index.

    >>> split_sizes(10, [0.5, 0.25, 0.25, 0.0])
    [5, 3, 2, 0]
    """
    if total < 0:
        raise ValueError(f"total must be >= 0, got {total}")
    values = [float(share) for share in shares]
    if any(not math.isfinite(v) or v < 0 for v in values) or sum(values) <= 0:
        raise ValueError(f"shares must be finite, >= 0 and not all 0, got {values}")
    fractions = [Fraction(v) for v in values]
    denominator = sum(fractions)
    quotas = [total * f / denominator for f in fractions]
    sizes = [math.floor(q) for q in quotas]
    left = total - sum(sizes)
    order = sorted((i for i, f in enumerate(fractions) if f > 0), key=lambda i: (-(quotas[i] - sizes[i]), i))
    for i in order[:left]:
        sizes[i] += 1
    return sizes


def sustained_rate(log: Sequence[tuple[float, int]], fraction: float = 0.25, min_messages: int = 3) -> float | None:
    """The highest rate (bytes/s) a transfer log sustained over any stretch carrying >= `fraction` of its bytes.

    `log` is (time, nbytes) per message, in time order: when a message was handed to the transport
    (sending) or arrived (receiving). A stretch from message i to message j carries the bytes of
    messages i+1..j in t_j - t_i seconds, and spans at least `min_messages` messages. None when the
    log is too short to tell.

    Why not total bytes over the round's seconds: a peer waits for others (for the slowest sender of
    each chunk, for the reducers of slow peers), so its link sits idle for part of a round and that
    average says more about the others than about its link. Observed throughput is a lower bound of
    a link's capacity; the best stretch of a round is the tightest one a round reveals, and a stretch of
    a quarter of the bytes is long enough that buffering at its start does not inflate it much.

    >>> sustained_rate([(0.0, 100), (1.0, 100), (2.0, 100), (2.5, 100), (3.0, 100), (9.0, 100)], fraction=0.5)  # 300 bytes from t=1 to t=3
    150.0
    """
    if len(log) < min_messages + 1:
        return None
    total = sum(n for _, n in log)
    need = fraction * total
    best = 0.0
    j = 0
    carried = 0  # bytes of messages i+1 .. j-1
    for i in range(len(log)):
        if j <= i:
            j, carried = i + 1, 0
        while j < len(log) and (carried < need or j - i - 1 < min_messages):
            carried += log[j][1]
            j += 1
        if carried < need or j - i - 1 < min_messages:
            break
        seconds = log[j - 1][0] - log[i][0]
        if seconds > 0:
            best = max(best, carried / seconds)
        if i + 1 < j:
            carried -= log[i + 1][1]
    return best if best > 0 else None


def delivered_rate(log: Sequence[tuple[float, int]], min_seconds: float = 0.05) -> float | None:
    """A lower bound of a link's rate (bytes/s) from (time, nbytes) records of bytes known to be across it by then.

    If `b` bytes had crossed a link `t` seconds after it started carrying them, the link does at least b / t;
    this is the best such bound over the log (times from the transfer's start, records before `min_seconds`
    ignored). Never an overestimate, but as low as the link was idle.

    >>> delivered_rate([(1.0, 100), (2.0, 100), (4.0, 100)])
    100.0
    """
    best, total = 0.0, 0
    for seconds, nbytes in log:
        total += nbytes
        if seconds >= min_seconds:
            best = max(best, total / seconds)
    return best if best > 0 else None


class BandwidthEstimator:
    """Exponential moving average of a link's observed transfer rate, in bytes per second.

    Starts at `prior_bps`; each observation of at least `min_bytes` moves it by `alpha` towards
    nbytes / seconds. Small or instantaneous transfers are ignored: latency, not bandwidth, dominates them.
    With `first_replaces_prior`, the first observation replaces the prior (a guess, typed in or a
    default) instead of being averaged with it, so a swarm balances its load from its second round on.

    >>> est = BandwidthEstimator(prior_bps=1e6, alpha=0.5)
    >>> est.observe(4_000_000, 2.0); est.value
    1500000.0
    >>> est = BandwidthEstimator(prior_bps=1e6, alpha=0.5, first_replaces_prior=True)
    >>> est.observe(4_000_000, 2.0); est.value
    2000000.0
    """

    def __init__(self, prior_bps: float, alpha: float = 0.3, min_bytes: int = 65536, first_replaces_prior: bool = False) -> None:
        if not (math.isfinite(prior_bps) and prior_bps > 0):
            raise ValueError(f"prior_bps must be a positive finite rate, got {prior_bps!r}")
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha!r}")
        if min_bytes < 0:
            raise ValueError(f"min_bytes must be >= 0, got {min_bytes!r}")
        self._value = float(prior_bps)
        self.alpha = float(alpha)
        self.min_bytes = int(min_bytes)
        self.first_replaces_prior = bool(first_replaces_prior)
        self.samples = 0

    def observe(self, nbytes: int, seconds: float) -> None:
        """Fold in one transfer of `nbytes` that took `seconds`; ignores tiny, zero-time or non-finite samples."""
        if nbytes < max(self.min_bytes, 1) or not (math.isfinite(seconds) and seconds > 0):
            return
        rate = nbytes / seconds
        if not math.isfinite(rate):
            return
        if self.samples == 0 and self.first_replaces_prior:
            self._value = rate
        else:
            self._value += self.alpha * (rate - self._value)
        self.samples += 1

    @property
    def value(self) -> float:
        """The current estimate in bytes per second."""
        return self._value
