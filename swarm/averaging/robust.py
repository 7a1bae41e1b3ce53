"""Robust aggregation for a reducer that cannot trust its senders: CenteredClip with bounded weights.

CenteredClip (Karimireddy, He and Jaggi 2021; per part in BTARD-SGD, Gorbunov et al. 2022). Given contributions
x_1..x_n with weights w_1..w_n, start from a robust centre v (the weighted medoid: the contribution whose weighted
median distance to the others is smallest) and iterate

    v <- v + sum_i w_i * (x_i - v) * min(1, tau / ||x_i - v||) / sum_i w_i

A contribution within `tau` of the centre counts in full, one farther away pulls with a force of at most `tau`:
with honest contributions around their mean and a minority of arbitrary ones (sign flips, huge values, noise),
the result stays within O(tau * attackers' weight share) of the honest mean, whatever the attackers send.

Choices, and why:
- `tau` follows the group: `tau_scale` times the medoid's weighted median distance to the others, over sqrt(2)
  (about one honest contribution's distance from the honest mean). A fixed tau is wrong at every scale but one
  (gradients of a 10M-parameter model and of a tiny one differ by orders of magnitude), and the median distance
  is what an honest majority makes it.
- Cost: every iterate is an affine combination of the contributions, so the iteration runs on n coefficients
  and the contributions' Gram matrix (their dot products, taken as they arrive); the result is one more pass.
  First the weighted mean is tried: when it clips nobody (an honest group) it is the iteration's limit exactly,
  and the result. A coordinate-wise median start cost a sort across senders, 40 ms per 512 KB chunk, 100x the mean.
- Weights are bounded before anything else (`bound_weights`): a sender cannot buy influence by claiming samples.
  No weight exceeds `max_weight_ratio` times the median weight: k attackers among n then hold at most
  1.5k / (1.5k + n - k) of the weight (2 of 8: 33%), a minority CenteredClip bounds. Weighting honest peers more
  evenly changes the variance of their average, not its expectation.
- Measured on 8 contributions of 4096 values (tests/unit/swarm/test_robust.py's data): the distance of the result
  from the honest mean, in units of one honest contribution's distance from it, is 0.15-0.23 with one attacker
  (huge, sign flip, noise or 1e12 claimed samples) and 0.26-0.58 with two (0.26-0.64 from the coordinate-wise
  median start, 0.36-0.79 with tau_scale 2, 40 for two weight-inflating attackers with max_weight_ratio 4);
  honest-only input gives its weighted mean.
- Each sender's clipped share (how much of its pull was cut) is reported, so a sender whose contributions are
  always far outside the group's can be counted against it and, past a threshold, excluded.

With every contribution honest and close together, nothing is clipped and the result is the weighted mean.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Iterable

import torch

from swarm.averaging.reduction import Reduction

logger = logging.getLogger(__name__)

__all__ = ["bound_weights", "centered_clip", "ClipResult", "CenteredClipReduction", "StrikeBook", "HARD_CLIP", "STRIKES_TO_EXCLUDE",
           "ABSURD_CLIP", "ABSURD_STRIKES_TO_BAN"]

DEFAULT_TAU_SCALE = 1.0
DEFAULT_MAX_WEIGHT_RATIO = 1.5
DEFAULT_ITERATIONS = 100   # each costs O(n^2) on the coefficients, not a pass over the values
DEFAULT_TOLERANCE = 1e-6
# Up to this many rows (a group's senders) the iteration runs on plain floats (_iterate_floats), beyond it on tensors.
FLOAT_ITERATION_MAX_ROWS = 24
# Largest distance float32 computes safely (its squares stay far below float32's 3.4e38).
FLOAT32_NORM_LIMIT = 1e17
# A contribution whose pull was cut by at least this much (it lay 4x tau or more from the centre) is a strike against
# its sender. Honest contributions lie near tau from the centre by construction (tau is about their distance from
# their mean): measured in tests/integration/test_robust_rounds.py, at most 0.001 for honest senders, 0.84-1.0 for
# the attacks (sign flip 0.85, a sign flip with inflated weight 0.84, 10x noise 0.97, 1e30 1.0). An honest peer whose gradient
# noise is 4x the others' (a batch 1/16 of theirs) would reach it too: keep micro-batches within that range.
HARD_CLIP = 0.75
# Strikes after which a reducer ignores a sender: two hard-clipped rounds exclude it from the third on.
STRIKES_TO_EXCLUDE = 2
# A contribution whose pull was cut by this much lay 1000x tau or more from the centre: its norm is absurd (finite
# 1e30 gives 1.0, 10x noise 0.97, a sign flip 0.85). An honest sender would need gradient noise 1000x the others'.
# Rounds with such a contribution after which the reducer's peer bans the sender (swarm.averaging.bans.BanList.observe).
ABSURD_CLIP = 0.999
ABSURD_STRIKES_TO_BAN = 2


def _bounded(weights: list[float], max_weight_ratio: float) -> list[float]:
    w = [max(x, 0.0) if math.isfinite(x) else 0.0 for x in weights]
    positive = sorted(x for x in w if x > 0)
    if not positive:
        return w
    cap = positive[(len(positive) - 1) // 2] * max_weight_ratio   # the lower median, as torch.median
    return [min(x, cap) for x in w]


def counted_samples(weights: Sequence[float], robust: bool, max_weight_ratio: float = DEFAULT_MAX_WEIGHT_RATIO) -> int:
    """The samples a round's average holds, for its report (logs, metrics, the dashboard): in a robust round the
    weights as the reducers bound them, so a member claiming 2**53 samples counts for 1.5x the median, not 2**53."""
    return int(sum(_bounded(list(weights), max_weight_ratio) if robust else weights))


def bound_weights(weights: torch.Tensor, max_weight_ratio: float = DEFAULT_MAX_WEIGHT_RATIO) -> torch.Tensor:
    """Weights clipped to [0, max_weight_ratio * the (lower) median of the positive ones]; non-finite ones become 0."""
    return torch.tensor(_bounded([float(x) for x in weights.tolist()], max_weight_ratio), dtype=torch.float64)


def _squared_distances(gram: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
    """||y_i - v||^2 for every row y_i, where v = sum_k a_k y_k (sum a = 1), from the rows' Gram matrix."""
    g_a = gram @ coefficients
    return (gram.diagonal() - 2 * g_a + coefficients @ g_a).clamp(min=0)


@dataclass
class ClipResult:
    value: torch.Tensor                 # the aggregate, float32 [d]
    tau: float                          # the clipping radius used
    clipped_share: torch.Tensor         # per sender, in [0, 1]: how much of its pull was cut at the last iteration
    iterations: int = 0                 # 0: the weighted mean clipped nobody and is the result, exactly
    weights: torch.Tensor = field(default_factory=lambda: torch.empty(0))  # the bounded weights used


@dataclass
class _Solution:
    """CenteredClip solved on the rows' Gram matrix: the result is sum_k coefficients_k x_k (sum 1)."""
    coefficients: torch.Tensor          # float64 [n]; the bounded weights over their sum when `mean`
    mean: bool                          # nothing was clipped at the weighted mean: it is the result
    tau: float
    clipped_share: torch.Tensor
    iterations: int
    weights: torch.Tensor


def _start_and_radius(distance: list[list[float]], weight: list[float]) -> tuple[int, float]:
    """The weighted medoid (the row whose weighted median distance to the other rows is smallest) and the radius:
    its weighted median distance to the others over sqrt(2).

    Why a medoid: the rows within its median distance hold half of the other rows' weight; with an honest majority
    of the (bounded) weight one of them is honest, so the start lies within one honest row's median distance of an
    honest row, whatever the attackers send; and it is a row, so the iteration stays in the rows' span. Why over
    sqrt(2): two honest rows lie about sqrt(2) times as far apart as each from their mean, so the radius is about
    one honest row's distance from the honest mean, the scale CenteredClip needs.
    """
    candidates = [i for i, w in enumerate(weight) if w > 0]
    if len(candidates) == 1:
        return candidates[0], 0.0
    best, radius = candidates[0], math.inf
    for i in candidates:
        others = sorted((distance[i][j], weight[j]) for j in candidates if j != i)
        half, cumulative = sum(wj for _, wj in others) / 2, 0.0
        median = others[-1][0]
        for d, wj in others:   # the lower weighted median: the first distance at which half the weight is reached
            cumulative += wj
            if cumulative >= half:
                median = d
                break
        if median < radius:
            best, radius = i, median
    return best, radius / math.sqrt(2)


def _solve(gram: list[list[float]], weights: list[float], tau_scale: float, max_weight_ratio: float,
           iterations: int, tolerance: float) -> _Solution:
    """CenteredClip on the coefficients of the rows (see the module docstring).

    Every iterate is an affine combination of the rows (the start is a row, each step a combination of offsets
    from rows), and every distance it needs follows from the rows' Gram matrix (of the rows centred on any one
    point): the iterations cost O(n^2) each, not a pass over the values. Up to the test of the weighted mean (an
    honest group's whole cost) it runs on plain floats: n is a group's size, and tensor operations on a few
    numbers cost more than arithmetic on them.
    """
    n = len(gram)
    w = _bounded(weights, max_weight_ratio)
    total = sum(w)
    if n == 0 or total <= 0:
        raise ValueError("no contribution with a positive weight")
    pairwise = [[math.sqrt(max(gram[i][i] + gram[j][j] - 2 * gram[i][j], 0.0)) for j in range(n)] for i in range(n)]
    start, tau = _start_and_radius(pairwise, w)
    tau *= tau_scale
    mean = [x / total for x in w]
    g_mean = [sum(g * m for g, m in zip(row, mean)) for row in gram]
    spread = sum(m * g for m, g in zip(mean, g_mean))
    if all(gram[i][i] - 2 * g_mean[i] + spread <= tau * tau for i in range(n) if w[i] > 0):
        # Nothing is clipped at the weighted mean: it is a fixed point of the iteration, and its limit (the iteration
        # minimises sum_i w_i huber_tau(||x_i - v||), convex, and strictly so near the mean, where it is quadratic).
        return _Solution(torch.tensor(mean, dtype=torch.float64), True, tau, torch.zeros(n), 0,
                         torch.tensor(w, dtype=torch.float64))
    if n <= FLOAT_ITERATION_MAX_ROWS:
        return _iterate_floats(gram, w, start, tau, iterations, tolerance)
    gram_t, w_t = torch.tensor(gram, dtype=torch.float64), torch.tensor(w, dtype=torch.float64)
    keep = w_t > 0
    return _iterate(gram_t, w_t, keep, start, tau, iterations, tolerance)


def _iterate_floats(gram: list[list[float]], w: list[float], start: int, tau: float, iterations: int,
                    tolerance: float) -> _Solution:
    """_iterate on plain floats, for a group's few rows: the same steps, at a tenth of the cost (each torch operation
    on n numbers costs microseconds; an honest group's chunk iterates ~10 times, and a 1.4 MB round has ~40 chunks)."""
    n, total = len(gram), sum(w)
    a = [0.0] * n
    a[start] = 1.0
    scale = [1.0] * n
    done = 0
    for done in range(1, iterations + 1):
        g_a = [sum(g * x for g, x in zip(row, a)) for row in gram]
        a_g_a = sum(x * g for x, g in zip(a, g_a))
        distances = [math.sqrt(max(gram[i][i] - 2 * g_a[i] + a_g_a, 0.0)) for i in range(n)]
        if tau == 0:
            scale = [0.0 if d > 0 else 1.0 for d in distances]
        else:
            scale = [tau / max(d, 1e-300) if d > tau else 1.0 for d in distances]
        pull = [wi * si / total for wi, si in zip(w, scale)]
        pulled = sum(pull)
        step = [p - x * pulled for p, x in zip(pull, a)]
        a = [x + s for x, s in zip(a, step)]
        g_s = [sum(g * s for g, s in zip(row, step)) for row in gram]
        if math.sqrt(max(sum(s * g for s, g in zip(step, g_s)), 0.0)) <= tolerance * tau:
            break
    clipped = [1 - s if wi > 0 else 0.0 for s, wi in zip(scale, w)]
    return _Solution(torch.tensor(a, dtype=torch.float64), False, tau, torch.tensor(clipped, dtype=torch.float32), done,
                     torch.tensor(w, dtype=torch.float64))


def _iterate(gram: torch.Tensor, w: torch.Tensor, keep: torch.Tensor, start: int, tau: float, iterations: int,
             tolerance: float) -> _Solution:
    """The iteration from row `start`, on the coefficients a of v = sum_k a_k x_k (see _solve)."""
    n, total = gram.shape[0], w.sum()
    a = torch.zeros(n, dtype=torch.float64)
    a[start] = 1.0
    scale = torch.ones(n, dtype=torch.float64)
    done = 0
    for done in range(1, iterations + 1):
        distances = _squared_distances(gram, a).sqrt()
        if tau == 0:
            scale = torch.where(distances > 0, torch.zeros_like(distances), torch.ones_like(distances))
        else:
            scale = torch.where(distances > tau, tau / distances.clamp(min=1e-300), torch.ones_like(distances))
        pull = w * scale / total
        step = pull - a * pull.sum()                 # sum_i pull_i (x_i - v), as coefficients of the rows
        a = a + step
        # the step's length: its coefficients sum to 0, so the Gram matrix of the centred rows measures it
        if float((step @ gram @ step).clamp(min=0).sqrt()) <= tolerance * tau:
            break
    clipped = torch.where(keep, 1 - scale, torch.zeros_like(scale))
    return _Solution(a, False, tau, clipped.to(torch.float32), done, w)


def _safe_for_float32(gram: torch.Tensor) -> bool:
    return bool(torch.isfinite(gram).all()) and float(gram.diagonal().max()) <= FLOAT32_NORM_LIMIT**2


def centered_clip(
    values: torch.Tensor,
    weights: torch.Tensor,
    tau_scale: float = DEFAULT_TAU_SCALE,
    max_weight_ratio: float = DEFAULT_MAX_WEIGHT_RATIO,
    iterations: int = DEFAULT_ITERATIONS,
    tolerance: float = DEFAULT_TOLERANCE,
) -> ClipResult:
    """CenteredClip of rows `values` [n, d] with `weights` [n] (see the module docstring).

    The rows are centred on the first one before their Gram matrix: its entries are then on the scale of the
    distances, not of the rows (honest gradients 1e-3 of their norm apart keep 3 digits in float32 products).
    Float32 unless a distance could overflow it, else float64 (a contribution of 1e30 must not overflow the
    distances that clip it).
    """
    if values.dim() != 2 or weights.shape != (values.shape[0],):
        raise ValueError(f"values [n, d] and weights [n] expected, got {tuple(values.shape)} and {tuple(weights.shape)}")
    x = values.to(torch.float32)
    if x.shape[0]:
        y = x - x[0]
        gram = (y @ y.T).to(torch.float64)
        if not _safe_for_float32(gram):
            x = values.to(torch.float64)
            x = torch.where(torch.isfinite(x), x, torch.zeros_like(x))  # a codec never lets one through; be safe anyway
            y = x - x[0]
            gram = y @ y.T
    else:
        y, gram = x, torch.empty(0, 0, dtype=torch.float64)
    solution = _solve(gram.tolist(), [float(v) for v in weights.tolist()], tau_scale, max_weight_ratio, iterations, tolerance)
    value = x[0] + solution.coefficients.to(y.dtype) @ y
    return ClipResult(value=value.to(torch.float32), tau=solution.tau, clipped_share=solution.clipped_share,
                      iterations=solution.iterations, weights=solution.weights)


# Products of raw copies give their distances only where the distances are not lost in the products' rounding:
# float32 dot products of n values err by up to ~1e-4 of the squared norms in practice, so a pair of copies whose squared
# distance is below this share of their squared norms is measured again, from offsets (exact, one copy per sender).
RAW_GRAM_MIN_SPREAD = 0.05


class CenteredClipReduction:
    """A reducer's aggregation of one chunk by CenteredClip, built as the senders' copies arrive.

    The same interface as the weighted mean (`add(values, weight)`, `result()`), plus `sender` so that the clipped
    share of each sender is known after `result()` (`clipped_share`). Each `add` keeps the copy (a reference, no
    copy made), takes its dot products with the earlier copies and adds it to the streaming weighted mean
    (swarm.averaging.reduction.Reduction); `result()` solves CenteredClip on the Gram matrix alone. When nothing is
    clipped at the weighted mean (an honest group), the result is the streaming mean itself, bit for bit what the
    plain reduction gives; otherwise one pass combines the copies. The Gram matrix of the raw copies is exact enough
    when their distances are not small next to their norms (RAW_GRAM_MIN_SPREAD: gradients of different batches);
    otherwise, or when a product could overflow float32, it is recomputed from offsets, in float64 if needed.
    """

    def __init__(self, length: int, tau_scale: float = DEFAULT_TAU_SCALE, max_weight_ratio: float = DEFAULT_MAX_WEIGHT_RATIO):
        self.length = length
        self.tau_scale = tau_scale
        self.max_weight_ratio = max_weight_ratio
        self.rows: list[torch.Tensor] = []
        self.products: list[list[float]] = []       # products[i][j]: rows i and j's dot product (j <= i)
        self.weights: list[float] = []
        self.senders: list[int | None] = []
        self.clipped_share: dict[int, float] = {}
        self.weight = 0.0
        self.iterations = 0
        self.tau = 0.0      # the radius result() used (a reducer signs it: swarm.averaging.clip_check checks against it)
        self._mean = Reduction(length)
        self._mixture: dict[int, float] | None = None

    def add(self, values: torch.Tensor, weight: float, sender: int | None = None) -> None:
        if weight > 0:
            if values.numel() != self.length:
                raise ValueError(f"a chunk of {self.length} values expected, got {values.numel()}")
            row = values.detach().to(torch.float32).reshape(-1)
            self.products.append([float(torch.dot(row, other)) for other in self.rows] + [float(torch.dot(row, row))])
            self.rows.append(row)
            self.weights.append(float(weight))
            self.senders.append(sender)
            self.weight += weight
            self._mean.add(row, weight, sender)

    def mixture(self) -> dict[int, float] | None:
        """sender -> its coefficient in `result()` (a convex combination of the copies, CenteredClip's fixed point as
        weights), as Reduction.mixture; None before result() or when a copy came without its sender."""
        return self._mixture

    def _centre(self) -> int:
        """The copy the Gram matrix is centred on: the one of smallest norm. Not the first to arrive: centred on a copy of
        1e30 (an attacker's), the others' offsets from it lose their distances to each other in rounding, and the result
        would depend on who arrived first (an auditor, swarm.averaging.audits, adds the copies in another order)."""
        norms = [self.products[i][i] for i in range(len(self.rows))]
        return min(range(len(norms)), key=lambda i: (norms[i] if math.isfinite(norms[i]) else math.inf, i))

    def _raw_gram(self, c: int) -> list[list[float]] | None:
        """The Gram matrix of the copies centred on copy c, from their raw products; None where not exact enough."""
        n = len(self.rows)
        raw = [[self.products[max(i, j)][min(i, j)] for j in range(n)] for i in range(n)]
        if not all(math.isfinite(raw[i][i]) and raw[i][i] <= FLOAT32_NORM_LIMIT**2 for i in range(n)):
            return None
        for i in range(n):
            for j in range(i):
                norms = raw[i][i] + raw[j][j]
                if norms - 2 * raw[i][j] < RAW_GRAM_MIN_SPREAD * norms:
                    return None
        return [[raw[i][j] - raw[i][c] - raw[c][j] + raw[c][c] for j in range(n)] for i in range(n)]

    def _exact_gram(self, c: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(Gram matrix of the offsets from copy c, the offsets): float32 products unless they could overflow it, else
        float64 (an attack's values: speed no longer matters)."""
        offsets = torch.stack(self.rows) - self.rows[c]
        gram = (offsets @ offsets.T).to(torch.float64)
        if _safe_for_float32(gram):
            return gram, offsets
        wide = torch.stack(self.rows).to(torch.float64)
        wide = torch.where(torch.isfinite(wide), wide, torch.zeros_like(wide))
        wide = wide - wide[c]
        return wide @ wide.T, wide

    def result(self) -> torch.Tensor | None:
        if not self.rows:
            return None
        c = self._centre()
        gram, offsets = self._raw_gram(c), None
        if gram is None:
            exact, offsets = self._exact_gram(c)
            gram = exact.tolist()
        solution = _solve(gram, self.weights, self.tau_scale, self.max_weight_ratio, DEFAULT_ITERATIONS, DEFAULT_TOLERANCE)
        self.clipped_share = {s: float(c) for s, c in zip(self.senders, solution.clipped_share) if s is not None}
        self.iterations = solution.iterations
        self.tau = solution.tau
        if solution.mean and solution.weights.tolist() == self.weights:
            self._mixture = self._mean.mixture()
            return self._mean.result()
        if all(s is not None for s in self.senders):
            self._mixture = {s: float(c) for s, c in zip(self.senders, solution.coefficients.tolist())}
        if offsets is not None:
            return (self.rows[c].to(offsets.dtype) + solution.coefficients.to(offsets.dtype) @ offsets).to(torch.float32)
        value = torch.zeros(self.length, dtype=torch.float32)
        for coefficient, row in zip(solution.coefficients.tolist(), self.rows):   # a convex combination
            if coefficient:
                value.add_(row, alpha=coefficient)
        return value


class StrikeBook:
    """Per-peer strikes a peer keeps as a reducer: a round in which a sender's contributions to my part were clipped
    hard (mean clipped share >= HARD_CLIP) is a strike; past STRIKES_TO_EXCLUDE strikes its contributions are
    ignored (`excluded`) in every later round this peer reduces. A round in which they were absurd (>= ABSURD_CLIP)
    counts towards `banned`: ABSURD_STRIKES_TO_BAN such rounds and this peer refuses the sender at matchmaking.

    Why a ban on one's own observation, with no evidence record: the values that prove an absurd norm are a part's
    worth of bytes, too large for a DHT record, and every honest reducer receives the sender's contributions itself,
    so each sees the same absurd norms and bans in the same round. Nobody can make a reducer see an honest
    sender's contribution as absurd (the stream is authenticated, and the centre is robust), so no accuser can ban
    an honest peer.

    Local to each reducer, which keeps the round consistent: every part is reduced by one reducer and sent as the
    same bytes to all members, so reducers with different books still give every member the same average.
    """

    def __init__(self, hard_clip: float = HARD_CLIP, strikes_to_exclude: int = STRIKES_TO_EXCLUDE):
        self.hard_clip, self.strikes_to_exclude = hard_clip, strikes_to_exclude
        self.strikes: dict[str, int] = {}
        self.absurd: dict[str, int] = {}

    def record(self, clipped_share: dict[str, float], round_name: str = "", bad_data: Iterable[str] = ()) -> list[str]:
        """Count one round's clipped shares (peer id -> mean share over my part) and the senders whose chunks broke the
        protocol (non-finite, undecodable: no honest peer's code sends them; they count as absurd); returns the peers
        newly excluded."""
        newly = []
        bad = set(bad_data)
        for peer, share in {**clipped_share, **{p: 1.0 for p in bad}}.items():
            if share >= ABSURD_CLIP:
                self.absurd[peer] = self.absurd.get(peer, 0) + 1
            if share >= self.hard_clip:
                self.strikes[peer] = self.strikes.get(peer, 0) + 1
                why = "sent bad data" if peer in bad else f"clipped hard ({share:.2f} of its pull cut)"
                logger.warning("round %s: %s %s: strike %d", round_name, peer[-8:], why, self.strikes[peer])
                if self.strikes[peer] == self.strikes_to_exclude:
                    logger.warning("%s excluded from the parts this peer reduces after %d strikes", peer[-8:], self.strikes[peer])
                    newly.append(peer)
        return newly

    def excluded(self) -> frozenset[str]:
        return frozenset(p for p, n in self.strikes.items() if n >= self.strikes_to_exclude)

    def banned(self) -> frozenset[str]:
        """Senders whose contributions were absurd in ABSURD_STRIKES_TO_BAN rounds."""
        return frozenset(p for p, n in self.absurd.items() if n >= ABSURD_STRIKES_TO_BAN)
