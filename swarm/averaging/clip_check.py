"""Checking a reducer's CenteredClip result when some of its inputs cannot be had (an audit's missing inputs).

An audit recomputes a part from every input its reducer listed (swarm.averaging.audits). One input only the reducer
holds: its own contribution to its own part, which it sends nobody. A lying reducer that refuses auditors that input
used to make every audit of its part inconclusive, and escaped; so did any part with a sender an auditor cannot dial
(behind NAT). This module checks the result without those inputs.

CenteredClip's result x (swarm.averaging.robust) is the fixed point of its iteration: with bounded weights w_i and
radius tau,

    sum_i w_i clip(g_i - x, tau) = 0,     clip(v, tau) = v min(1, tau / ||v||)   (||clip(v, tau)|| <= tau)

With the inputs of a set M unknown, the sum over the known ones G is minus the unknown ones' sum, so

    || sum_{i in G} w_i clip(g_i - x, tau) ||  <=  tau sum_{j in M} w_j.

Any x that passes is a CenteredClip fixed point for *some* values of the unknown inputs: what those senders could have
made it by sending those values. A reducer that lies within that bound gains no more influence than a byzantine
sender of its weight has anyway, which CenteredClip bounds; one that adds noise of its part's norm (the harness's
liar) leaves every known input pulling against it, and fails by far.

The radius tau is the reducer's: it signs each chunk's tau in its statement (result_statements, `radii`). The
auditor bounds it from the known inputs (`radius_bounds`): tau is tau_scale / sqrt(2) times the smallest weighted
median distance of a row to the others (robust._start_and_radius). For a known row the median lies between its value
with the unknown distances at 0 and at infinity; for an unknown row m it is at least half the smallest radius around a
known row that holds the known share of the weight m's median must cover (the rows within m's median hold half of
the others' weight, and lie pairwise within twice that median). A claimed tau outside the bounds is a lie; one inside
them gives the reducer no more room than above. The reducer's float32 Gram products give its tau to ~0.1% (robust
RAW_GRAM_MIN_SPREAD): the bounds have RADIUS_MARGIN of room.

The slack covers what an honest reducer's x may miss the fixed point by: its iteration's tolerance (1e-6 tau a step,
100 steps: CONVERGENCE_SLACK of tau, far more), float32 rounding of x (1e-6 of its norm), and the codec's rounding of
the result as sent (`rounding_bound`: half an fp16 step per value; exact for `none`). Other codecs' rounding is not
bounded here, and such a part's audit with missing inputs stays inconclusive.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from swarm.averaging.robust import DEFAULT_MAX_WEIGHT_RATIO, DEFAULT_TAU_SCALE, _bounded

__all__ = ["ClipCheck", "check_without", "radius_bounds", "rounding_bound", "RADIUS_MARGIN", "CONVERGENCE_SLACK"]

RADIUS_MARGIN = 0.02        # relative room on the radius bounds (the reducer computes distances in float32)
CONVERGENCE_SLACK = 0.01    # of tau x the total weight: an honest iteration stops within 1e-6 of it
FLOAT_SLACK = 1e-6          # of ||x|| x the total weight: x is float32
_TIE = 1e-9                 # the weighted median's half-weight threshold moved by this much (float sums in other orders)
_EXACT_UNIT = 2.0**-10      # weights that are multiples of this (and below _EXACT_MAX) sum exactly in any order
_EXACT_MAX = 2.0**40
_FP16_MAX = float(torch.finfo(torch.float16).max)


@dataclass
class ClipCheck:
    verdict: str        # "honest", "lied" or "inconclusive"
    detail: str
    ratio: float = 0.0  # the known inputs' pull over what the unknown ones could cancel (above 1: a lie)


def _weighted_median(pairs: list[tuple[float, float]], threshold: float) -> float:
    """The first distance at which the cumulative weight of `pairs` (distance, weight), by distance, reaches
    `threshold` (robust._start_and_radius's lower weighted median); inf if it never does."""
    cumulative = 0.0
    for d, w in sorted(pairs):
        cumulative += w
        if cumulative >= threshold:
            return d
    return math.inf


def radius_bounds(distance: list[list[float]], known: Sequence[float], unknown: Sequence[float],
                  tau_scale: float = DEFAULT_TAU_SCALE) -> tuple[float, float]:
    """Bounds (low, high) on the reducer's tau, from the known rows' pairwise distances, their bounded weights `known`
    and the unknown rows' bounded weights `unknown` (see the module docstring). Rows of weight 0 count for nothing."""
    n = len(known)
    lows, highs = [], []
    unknown_weight = sum(w for w in unknown if w > 0)
    # Sample counts, and the bound 1.5 x a median of them, sum exactly in any order: the reducer's median test then
    # sees the same ties as here. Other weights' sums may round either way at a tie, so the threshold gets room.
    tie = 0.0 if all(w <= 0 or (w < _EXACT_MAX and (w / _EXACT_UNIT).is_integer()) for w in [*known, *unknown]) else _TIE
    for i in range(n):
        if known[i] <= 0:
            continue
        others = [(distance[i][j], known[j]) for j in range(n) if j != i and known[j] > 0]
        half = (sum(w for _, w in others) + unknown_weight) / 2
        lows.append(_weighted_median(others + [(0.0, w) for w in unknown if w > 0], half * (1 - tie)))
        highs.append(_weighted_median(others + [(math.inf, w) for w in unknown if w > 0], half * (1 + tie)))
    total = sum(w for w in known if w > 0) + unknown_weight
    for w_m in unknown:
        if w_m <= 0:
            continue
        # the known rows within m's median distance of m hold at least this much weight
        need = (total - w_m) / 2 - (unknown_weight - w_m)
        if need <= 0:
            lows.append(0.0)
            continue
        cover = min((_weighted_median([(distance[j][k], known[k]) for k in range(n) if known[k] > 0], need * (1 - tie))
                     for j in range(n) if known[j] > 0), default=math.inf)
        lows.append(cover / 2)
    candidates = sum(1 for w in known if w > 0) + sum(1 for w in unknown if w > 0)
    if candidates <= 1:
        return 0.0, 0.0
    scale = tau_scale / math.sqrt(2)
    return scale * min(lows, default=0.0), scale * min(highs, default=math.inf)


def rounding_bound(codec_name: str, sent: torch.Tensor) -> float | None:
    """A bound on ||x - sent||, where `sent` is x as the codec `codec_name` decodes it (None: not bounded here)."""
    if codec_name == "none":
        return 0.0
    if codec_name == "fp16":
        magnitude = sent.abs().to(torch.float64)
        if magnitude.numel() and float(magnitude.max()) >= _FP16_MAX:
            return None     # a value clamped to fp16's range: the true one may be anything larger
        # half a step of fp16 at each value: 2**-11 of it for normal numbers, 2**-25 below them
        return float((magnitude * 2.0**-11 + 2.0**-25).norm())
    return None


def check_without(known: Sequence[tuple[torch.Tensor, float]], unknown: Sequence[float], sent: torch.Tensor, tau: float,
                  codec_name: str, tau_scale: float = DEFAULT_TAU_SCALE,
                  max_weight_ratio: float = DEFAULT_MAX_WEIGHT_RATIO) -> ClipCheck:
    """Whether `sent` (one chunk of a reducer's part, decoded) can be CenteredClip with radius `tau` of the `known`
    inputs (values decoded, raw weight) and inputs of the raw weights `unknown` whose values nobody could give."""
    weights = _bounded([w for _, w in known] + list(unknown), max_weight_ratio)
    w_known, w_unknown = weights[: len(known)], weights[len(known):]
    rows = [(values.to(torch.float64), w) for (values, _), w in zip(known, w_known) if w > 0]
    if not rows:
        return ClipCheck("inconclusive", "no known input with a weight")
    if not (math.isfinite(tau) and tau >= 0):
        return ClipCheck("lied", f"it signed a radius of {tau}", math.inf)
    stacked = torch.stack([r for r, _ in rows])
    stacked = torch.where(torch.isfinite(stacked), stacked, torch.zeros_like(stacked))
    distance = torch.cdist(stacked, stacked).tolist()
    low, high = radius_bounds(distance, [w for _, w in rows], w_unknown, tau_scale)
    if not math.isfinite(high):
        return ClipCheck("inconclusive", "the missing inputs hold half the weight or more")
    if tau < low * (1 - RADIUS_MARGIN) or tau > high * (1 + RADIUS_MARGIN):
        return ClipCheck("lied", f"it signed a radius of {tau:.4g}, outside [{low:.4g}, {high:.4g}] its known inputs allow",
                         math.inf)
    if tau <= 0:
        return ClipCheck("inconclusive", "a radius of 0 cannot be checked without every input")
    rounding = rounding_bound(codec_name, sent)
    if rounding is None:
        return ClipCheck("inconclusive", f"codec {codec_name}'s rounding is not bounded here")
    x = sent.to(torch.float64)
    offsets = stacked - x
    norms = offsets.norm(dim=1)
    scale = torch.where(norms > tau, tau / norms.clamp(min=1e-300), torch.ones_like(norms))
    coefficients = torch.tensor([w for _, w in rows], dtype=torch.float64) * scale
    pull = float((coefficients @ offsets).norm())
    total_known, total = sum(w for _, w in rows), sum(w for w in weights if w > 0)
    room = ((1 + RADIUS_MARGIN) * sum(w for w in w_unknown if w > 0) * tau
            + total * (CONVERGENCE_SLACK * tau + FLOAT_SLACK * float(x.norm())) + total_known * rounding)
    ratio = pull / room if room > 0 else (0.0 if pull == 0 else math.inf)
    if ratio > 1:
        return ClipCheck("lied", f"its known inputs pull {ratio:.3g}x as hard as the missing ones could cancel", ratio)
    return ClipCheck("honest", f"its known inputs pull {ratio:.2g} of what the missing ones could cancel", ratio)
