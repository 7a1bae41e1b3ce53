"""`swarm simulate model`: an event-driven fluid model of swarm's protocol, for hundreds to thousands of peers.

What it models, and how (the engine's modules in brackets):

- Transfers (allreduce): one group per epoch (but see Structure); each member reduces its LP share of the vector
  (balancing.optimal_shares over the members' *estimated* rates). Every member that brings values
  streams its slice of part j to reducer j; reducer j streams the averaged part back to every member
  that needs it, chunk by chunk, as soon as every sender's copy of a chunk has arrived (so an output
  stream never gets ahead of the slowest input into its reducer, less one chunk). Streams are fluid
  flows; the rates at any moment are max-min fair over every peer's upload and download (TCP
  flows sharing bottlenecks get about equal shares), with each link's capacity its rate times
  `efficiency` (TCP/IP goodput of a shaped link). The model advances from event to event (a flow
  ends, an output stream catches up with its reducer, a step of at most 1/50 of the round).
- Structure (averaging.subgroups, averaging.hierarchy): a group above the engine's `max_group_size` averages
  hierarchically, with the engine's own partition (`plan_hierarchy`): reduce-scatter inside every subgroup, then
  each part's column all-reduces it, then all-gather inside every subgroup, one stage after the other (the engine
  stores and forwards); concurrent subgroups (columns) with the same links and shares are modelled once.
  `ModelParams.flat` keeps one flat group (the engine before issue 15). Streams a member opens are counted.
- A shared host (`ModelParams.host_Bps`): peers on one machine share its CPU and loopback; every flow of a
  round then also shares that rate (benchmarks.model_vs_real checks the model against such real swarms).
- Estimates (balancing.BandwidthEstimator, allreduce.PhaseStats.finish): the first round uses the prior
  (config `bandwidth_mbps`); after each round every peer folds in what the engine would measure: the
  best rate its download sustained over a quarter of its bytes, and for the upload the same, or, when
  its own streams carry less than the transport buffers, the lower bound from its acknowledged chunks.
  So the model shows how shares converge (with ideal clocks: no buffering, no CPU stalls).
- Progress and matchmaking (training): trainers accumulate samples at their rates (compute x base
  rate); the swarm is ready when the sum reaches the target batch, noticed after half a progress
  refresh; matchmaking costs a fixed `matchmaking_seconds`; training stops during averaging
  (the collaborative optimizer averages inside `step`). Commit: every member steps.
- Churn: trainers leave (Poisson, per trainer) and join (Poisson, for the swarm; a joiner downloads
  the state at its download rate first). A reducer that leaves mid-round makes the round fail for
  everyone after `sender_timeout`; a sender that leaves is excluded after `sender_timeout`.

Peers with identical specs form a class; flows between classes are counted with multiplicity, so a
swarm of thousands of peers drawn from a few specs costs no more than a few peers.

The control plane's bytes (progress reads and publishes, matchmaking, DHT upkeep): swarm.simulate.control.

Not modelled: CPU limits (but for a shared host's byte rate), latency (the emulator has none either; a fixed
`round_overhead` per stage stands for it), TCP's own dynamics (slow start, losses).
"""
from __future__ import annotations

import math
import random
import statistics
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from swarm.averaging.balancing import (
    BandwidthEstimator,
    MemberLink,
    delivered_rate,
    optimal_shares,
    split_sizes,
    sustained_rate,
    uniform_shares,
)
from swarm.averaging.layout import DEFAULT_CHUNK_ELEMENTS, MIN_CHUNK_ELEMENTS, PIPELINE_DEPTH
from swarm.averaging.phase_stats import TRANSPORT_BUFFER_BYTES
from swarm.averaging.subgroups import plan_hierarchy

from .control import control_bytes
from .model_report import role_rows
from .scenario import MBIT, AllreduceWorkload, PeerInstance, Scenario, TrainingWorkload

__all__ = ["ModelParams", "SimulatedRound", "simulate_round", "model_allreduce", "model_training", "run_model"]


@dataclass
class ModelParams:
    efficiency: float = 0.94          # TCP payload per byte of shaped rate (1448/1514 per frame, less ACKs and framing)
    round_overhead: float = 0.05      # seconds per round outside transfers (stream setup, first encode, last decode)
    matchmaking_seconds: float = 0.5  # leader gather + join RPCs, once everyone is ready
    refresh_seconds: float = 1.0      # progress refresh period while waiting for the batch
    state_bytes: int = 0              # what a joiner downloads (training; 0: 3x the vector)
    sender_timeout: float = 5.0
    max_events: int = 200_000
    flat: bool = False                # one flat group whatever its size (the engine before issue 15; comparisons)
    host_Bps: float = math.inf        # all peers on one machine: the bytes/s its CPU and loopback carry for all rounds


@dataclass
class SimulatedRound:
    seconds: float                         # the slowest member's all-reduce time
    per_class_seconds: list[float]
    shares: list[float]                    # per member (expanded)
    sent: list[float]                      # bytes per member
    received: list[float]
    upload_rate: list[float | None]        # what each member's estimator sees (sustained rate), per member
    download_rate: list[float | None]
    events: int = 0
    subgroups: int = 0                     # 0: one flat group; else the hierarchy's subgroups (swarm.averaging.subgroups)
    streams: float = 0.0                   # all-reduce streams a member opens, mean over the members
    stage_seconds: tuple[float, ...] = ()  # hierarchical: reduce-scatter in subgroups, the columns, all-gather


# ---------------------------------------------------------------------------------------------------------
# One all-reduce round


@dataclass
class _Class:
    members: list[int]
    upload: float        # bytes/s, after efficiency
    download: float
    brings: bool
    needs: bool
    part: float          # bytes each member of the class reduces


def _classes(peers: Sequence[PeerInstance], parts: Sequence[float], efficiency: float) -> list[_Class]:
    groups: dict[tuple, _Class] = {}
    for p, part in zip(peers, parts):
        key = (p.upload_bps, p.download_bps, p.brings, p.needs, part)
        if key not in groups:
            groups[key] = _Class([], p.upload_bps * efficiency, p.download_bps * efficiency, p.brings, p.needs, part)
        groups[key].members.append(p.index)
    return list(groups.values())


def _max_min(src: np.ndarray, dst: np.ndarray, m_out: np.ndarray, m_in: np.ndarray, active: np.ndarray,
             caps: np.ndarray, up: np.ndarray, down: np.ndarray, host: float = math.inf,
             count: np.ndarray | None = None) -> np.ndarray:
    """Max-min fair rates per flow type (progressive filling), flows counted with multiplicity on each link.
    `host`: bytes/s that every flow of the round shares besides its links (peers on one machine: its CPU and
    loopback), each flow type weighing its number of flows (`count` of its source class times `m_out`)."""
    rate = np.zeros(len(src))
    frozen = ~active
    used_up = np.zeros(len(up))
    used_down = np.zeros(len(down))
    used_host = 0.0
    weight = m_out * (count[src] if count is not None else 1.0)
    while not frozen.all():
        free = ~frozen
        w_up = np.bincount(src[free], weights=m_out[free], minlength=len(up))
        w_down = np.bincount(dst[free], weights=m_in[free], minlength=len(down))
        with np.errstate(divide="ignore", invalid="ignore"):
            lvl_up = np.where(w_up > 0, (up - used_up) / w_up, np.inf)
            lvl_down = np.where(w_down > 0, (down - used_down) / w_down, np.inf)
        lvl_host = (host - used_host) / weight[free].sum() if math.isfinite(host) else np.inf
        level = min(lvl_up.min(), lvl_down.min(), lvl_host, caps[free].min() if free.any() else np.inf)
        level = max(level, 0.0)
        tol = 1e-9 * max(level, 1.0)
        hit = free & ((lvl_up[src] <= level + tol) | (lvl_down[dst] <= level + tol) | (caps <= level + tol))
        if lvl_host <= level + tol or not hit.any():  # the host is the bottleneck (or a numerical corner): all at this level
            hit = free
        rate[hit] = np.minimum(level, caps[hit])
        frozen |= hit
        np.add.at(used_up, src[hit], m_out[hit] * rate[hit])
        np.add.at(used_down, dst[hit], m_in[hit] * rate[hit])
        used_host += float((weight[hit] * rate[hit]).sum())
    return rate


def simulate_round(peers: Sequence[PeerInstance], shares: Sequence[float], vector_bytes: int, *,
                   chunk_bytes: int = 2**19, params: ModelParams | None = None, kinds: tuple[int, ...] = (0, 1),
                   host: float = math.inf) -> SimulatedRound:
    """One all-reduce of `vector_bytes` with these shares over the peers' links (bytes/s).
    `kinds`: (0, 1) the whole round, its reduce-scatter pipelined with its all-gather; (0,) the reduce-scatter
    alone, (1,) the all-gather alone (a hierarchical round's first and last stages, store and forward).
    `host`: bytes/s the whole round shares (see _max_min)."""
    params = params or ModelParams()
    n = len(peers)
    parts = [float(s) for s in split_sizes(vector_bytes, shares)] if vector_bytes > 0 else [0.0] * n
    classes = _classes(peers, parts, params.efficiency)
    c = len(classes)
    count = np.array([len(k.members) for k in classes], dtype=float)
    up = np.array([k.upload for k in classes])
    down = np.array([k.download for k in classes])

    # Flow types: (kind, src class, dst class, reducer class); kind 0: input slice to a reducer, 1: averaged part back.
    src, dst, kind, red, size, m_out, m_in = [], [], [], [], [], [], []
    for a, ka in enumerate(classes):
        for b, kb in enumerate(classes):
            pairs_out = count[b] - (a == b)   # flows per member of a towards members of b
            pairs_in = count[a] - (a == b)    # flows per member of b from members of a
            if pairs_out <= 0:
                continue
            if 0 in kinds and ka.brings and kb.part > 0:     # a's slice of b's part
                src.append(a); dst.append(b); kind.append(0); red.append(b); size.append(kb.part)
                m_out.append(pairs_out); m_in.append(pairs_in)
            if 1 in kinds and ka.part > 0 and kb.needs and kb.brings:  # a's averaged part back to b (on the stream b opened)
                src.append(a); dst.append(b); kind.append(1); red.append(a); size.append(ka.part)
                m_out.append(pairs_out); m_in.append(pairs_in)
    src_a, dst_a, kind_a, red_a = (np.array(x, dtype=int) for x in (src, dst, kind, red))
    size_a, m_out_a, m_in_a = (np.array(x, dtype=float) for x in (size, m_out, m_in))
    f = len(src_a)
    done = np.zeros(f)
    finish = np.full(f, np.nan)
    t = 0.0
    inputs_of = [np.where((kind_a == 0) & (dst_a == j))[0] for j in range(c)]
    chunk = float(chunk_bytes)
    # allreduce.plan_parts: a part is cut into PIPELINE_DEPTH chunks or more, down to MIN_CHUNK_ELEMENTS values
    floor = chunk * MIN_CHUNK_ELEMENTS / DEFAULT_CHUNK_ELEMENTS
    lag = [min(chunk, max(floor, k.part / PIPELINE_DEPTH)) for k in classes]  # a reducer's first chunk
    log_up: list[list[tuple[float, float]]] = [[(0.0, 0.0)] for _ in range(c)]
    log_down: list[list[tuple[float, float]]] = [[(0.0, 0.0)] for _ in range(c)]
    log_acks: list[list[tuple[float, float]]] = [[(0.0, 0.0)] for _ in range(c)]  # averaged chunks back on own streams
    horizon = max(1e-3, sum(parts) / max(min(up.min(), down.min()), 1.0) / 50)  # longest step
    events = 0

    def availability() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Bytes of each reducer's part ready to send back, the index of its slowest input (or -1), and
        whether its first whole chunk is still missing (nothing can go out yet)."""
        avail = np.array([k.part for k in classes])
        slowest = np.full(c, -1)
        pinned = np.zeros(c, dtype=bool)
        for j in range(c):
            ins = inputs_of[j]
            if len(ins) == 0:
                continue
            fr = done[ins] / size_a[ins]
            k = int(np.argmin(fr))
            slowest[j] = ins[k]
            if fr[k] < 1.0 - 1e-12:
                avail[j] = max(0.0, fr[k] * classes[j].part - lag[j])
                pinned[j] = fr[k] * classes[j].part - lag[j] <= 0
        return avail, slowest, pinned

    while True:
        remaining = size_a - done
        active = remaining > 1e-6
        if not active.any():
            break
        events += 1
        if events > params.max_events:
            raise RuntimeError("model did not converge (too many events)")
        avail, slowest, pinned = availability()
        caught = active & (kind_a == 1) & (done >= avail[red_a] - 1e-6) & (avail[red_a] < size_a - 1e-6)
        caps = np.full(f, np.inf)
        caps[caught] = 0.0
        for _ in range(4):  # caught-up outputs go as fast as their reducer's slowest input lets them
            rate = _max_min(src_a, dst_a, m_out_a, m_in_a, active, caps, up, down, host, count)
            growth = np.zeros(c)
            for j in range(c):
                s = slowest[j]
                if s >= 0 and not pinned[j]:
                    growth[j] = rate[s] / size_a[s] * classes[j].part
            new_caps = np.where(caught, growth[red_a], np.inf)
            if np.allclose(new_caps, caps, rtol=1e-6, atol=1e-3, equal_nan=True):
                break
            caps = new_caps
        # next event: a flow ends, an output catches up with its reducer, or the longest step
        dt = horizon
        moving = active & (rate > 0)
        if moving.any():
            dt = min(dt, float((remaining[moving] / rate[moving]).min()))
        for j in range(c):  # a reducer's first chunk completes: its outputs may start
            s = slowest[j]
            if pinned[j] and s >= 0 and rate[s] > 0 and classes[j].part > lag[j]:
                dt = min(dt, (lag[j] / classes[j].part - done[s] / size_a[s]) * size_a[s] / rate[s] + 1e-9)
        gaining = active & (kind_a == 1) & ~caught & (rate > growth[red_a])
        if gaining.any():
            gap = avail[red_a][gaining] - done[gaining]
            dt = min(dt, float((gap / (rate[gaining] - growth[red_a][gaining])).min()))
        dt = max(dt, 1e-9)
        done = np.minimum(size_a, done + rate * dt)
        t += dt
        ended = active & (size_a - done <= 1e-6) & np.isnan(finish)
        finish[ended] = t
        sent = np.bincount(src_a, weights=m_out_a * done, minlength=c)
        got = np.bincount(dst_a, weights=m_in_a * done, minlength=c)
        acked = np.bincount(dst_a, weights=np.where(kind_a == 1, m_in_a * done, 0.0), minlength=c)
        for k in range(c):
            log_up[k].append((t, sent[k]))
            log_down[k].append((t, got[k]))
            log_acks[k].append((t, acked[k]))

    per_class = np.zeros(c)
    for k in range(c):
        mine = (src_a == k) | (dst_a == k)
        per_class[k] = float(np.nanmax(finish[mine])) if mine.any() and not np.isnan(finish[mine]).all() else 0.0
    per_class += params.round_overhead
    # the engine's upload estimate (allreduce.PhaseStats.finish): the best sustained rate when the member's own
    # streams carry more than the transport buffers, else the bound from its acknowledged chunks
    own_per_stream = np.bincount(src_a, weights=np.where(kind_a == 0, size_a, 0.0), minlength=c) / np.maximum(
        np.bincount(src_a, weights=np.where(kind_a == 0, m_out_a, 0.0), minlength=c), 1.0)
    up_rate = [
        _rate_from_cumulative(log_up[k], chunk) if own_per_stream[k] >= TRANSPORT_BUFFER_BYTES or not classes[k].brings
        else delivered_rate([(t_, int(b)) for t_, b in _increments(log_acks[k])]) or _rate_from_cumulative(log_up[k], chunk)
        for k in range(c)
    ]
    down_rate = [_rate_from_cumulative(log_down[k], chunk) for k in range(c)]
    sent_total = np.bincount(src_a, weights=m_out_a * size_a, minlength=c)
    got_total = np.bincount(dst_a, weights=m_in_a * size_a, minlength=c)
    by_member: dict[int, int] = {i: k for k, cls in enumerate(classes) for i in cls.members}
    order = [p.index for p in peers]
    reducers = sum(1 for part in parts if part > 0)
    return SimulatedRound(
        streams=sum(reducers - (part > 0) for p, part in zip(peers, parts) if p.brings) / n if n else 0.0,
        seconds=float(per_class.max()) if c else 0.0,
        per_class_seconds=[float(per_class[by_member[i]]) for i in order],
        shares=[float(s) for s in shares],
        sent=[float(sent_total[by_member[i]]) for i in order],
        received=[float(got_total[by_member[i]]) for i in order],
        upload_rate=[up_rate[by_member[i]] for i in order],
        download_rate=[down_rate[by_member[i]] for i in order],
        events=events,
    )


def _increments(log: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """(time, bytes added since the previous record) from a cumulative trace."""
    return [(t1, b1 - b0) for (_, b0), (t1, b1) in zip(log, log[1:]) if b1 > b0]


def _rate_from_cumulative(log: list[tuple[float, float]], chunk: float) -> float | None:
    """Cut a cumulative (time, bytes) trace into chunk-sized messages and apply the engine's estimator statistic."""
    messages: list[tuple[float, int]] = []
    mark = chunk
    for (t0, b0), (t1, b1) in zip(log, log[1:]):
        while b1 > b0 and mark <= b1 + 1e-6:
            messages.append((t0 + (t1 - t0) * (mark - b0) / (b1 - b0), int(chunk)))
            mark += chunk
    final_t, final_b = log[-1]
    if final_b - (mark - chunk) > 1:
        messages.append((final_t, int(final_b - (mark - chunk))))
    return sustained_rate(messages)


# ---------------------------------------------------------------------------------------------------------
# One group's round in the engine's structure: flat, or hierarchical above max_group_size


def _stage(instances: Sequence[tuple[Sequence[PeerInstance], Sequence[float], int]], kinds: tuple[int, ...],
           chunk_bytes: int, params: ModelParams, host: float) -> dict[int, tuple[float, float, float, float | None, float | None]]:
    """Concurrent rounds (subgroups, or columns) of one stage: per peer index, (its instance's seconds, sent,
    received, upload rate, download rate). Instances with the same links, roles and shares are modelled once (a
    swarm of thousands has few distinct subgroups); a shared `host` is divided among the instances by their bytes."""
    weights = [len(members) * vector for members, _, vector in instances]
    total = sum(weights) or 1.0
    done: dict[tuple, SimulatedRound] = {}
    out: dict[int, tuple[float, float, float, float | None, float | None]] = {}
    for (members, shares, vector), weight in zip(instances, weights):
        order = sorted(range(len(members)), key=lambda k: (members[k].upload_bps, members[k].download_bps, members[k].role, shares[k]))
        key = (tuple((members[k].upload_bps, members[k].download_bps, members[k].role, shares[k]) for k in order), vector)
        if key not in done:   # through the rounds' cache: a training model's epochs repeat the same subgroups
            canon = [PeerInstance(j, members[k].name, members[k].role, members[k].upload_bps, members[k].download_bps, members[k].compute)
                     for j, k in enumerate(order)]
            done[key] = _cached_round(canon, [shares[k] for k in order], vector, chunk_bytes, params,
                                      host * weight / total if math.isfinite(host) else host, kinds)
        r = done[key]
        for j, k in enumerate(order):
            out[members[k].index] = (r.seconds, r.sent[j], r.received[j], r.upload_rate[j], r.download_rate[j])
    return out


def simulate_group(peers: Sequence[PeerInstance], shares: Sequence[float], vector_bytes: int, *, chunk_bytes: int = 2**19,
                   params: ModelParams | None = None, max_group_size: int | None = None, host: float = math.inf) -> SimulatedRound:
    """One group's all-reduce in the structure the engine gives it: one flat round up to `max_group_size` members
    (None: always flat), else the partition of swarm.averaging.subgroups.plan_hierarchy (the same function) in its
    three stages one after the other, as swarm.averaging.hierarchy runs them (store and forward): reduce-scatter
    inside every subgroup at once, then every column's all-reduce of its part at once, then all-gather inside every
    subgroup. What a member's estimator sees: its upload in the first stage, its download in the last."""
    params = params or ModelParams()
    plan = plan_hierarchy([p.role for p in peers], shares, max_group_size) if max_group_size else None
    if plan is None:
        return _cached_round(peers, shares, vector_bytes, chunk_bytes, params, host)
    part_of = {member: p for p, column in enumerate(plan.columns) for member in column}
    subgroups = [([peers[i] for i in members], [plan.part_shares[part_of[i]] if i in part_of else 0.0 for i in members], vector_bytes)
                 for members in plan.subgroups]
    columns = [([peers[i] for i in column], [1.0 / len(column)] * len(column), max(1, math.ceil(vector_bytes * plan.part_shares[p])))
               for p, column in enumerate(plan.columns)]
    reduce = _stage(subgroups, (0,), chunk_bytes, params, host)
    column = _stage(columns, (0, 1), chunk_bytes, params, host)
    gather = _stage(subgroups, (1,), chunk_bytes, params, host)
    t1 = max(v[0] for v in reduce.values())
    t2 = max(v[0] for v in column.values())
    t3 = max(v[0] for v in gather.values())
    order = [p.index for p in peers]
    per_member = [t1 + t2 + gather[i][0] for i in order]
    sent = [reduce[i][1] + gather[i][1] + (column[i][1] if i in column else 0.0) for i in order]
    received = [reduce[i][2] + gather[i][2] + (column[i][2] if i in column else 0.0) for i in order]
    reducers = {s: sum(1 for i in members if i in part_of) for s, members in enumerate(plan.subgroups)}
    streams = [reducers[s] - (i in part_of) + (len(plan.subgroups) - 1 if i in part_of else 0)
               for s, members in enumerate(plan.subgroups) for i in members if peers[i].brings]
    return SimulatedRound(
        seconds=max(per_member), per_class_seconds=per_member, shares=[float(x) for x in shares], sent=sent, received=received,
        upload_rate=[reduce[i][3] for i in order], download_rate=[gather[i][4] for i in order],
        subgroups=len(plan.subgroups), streams=sum(streams) / len(peers), stage_seconds=(t1, t2, t3),
    )


# ---------------------------------------------------------------------------------------------------------
# Workloads


def _symmetric(peers: Sequence[PeerInstance], shares: Sequence[float]) -> list[float]:
    """Equal shares for peers with equal links and roles (their mean), rounded to 1e-4 and renormalised.

    Averaging an LP optimum over identical peers keeps it optimal (the LP is convex and symmetric in
    them), and it keeps the model's flow classes few, so a thousand identical peers cost one class.
    """
    groups: dict[tuple, list[int]] = {}
    for k, p in enumerate(peers):
        groups.setdefault((p.upload_bps, p.download_bps, p.role), []).append(k)
    out = [0.0] * len(peers)
    for members in groups.values():
        mean = sum(float(shares[k]) for k in members) / len(members)
        for k in members:
            out[k] = round(mean, 4)
    total = sum(out)
    return [x / total for x in out] if total > 0 else [float(x) for x in shares]


_ROUND_CACHE: dict[tuple, SimulatedRound] = {}


def _cached_round(peers: Sequence[PeerInstance], shares: Sequence[float], vector_bytes: int, chunk_bytes: int, params: ModelParams,
                  host: float = math.inf, kinds: tuple[int, ...] = (0, 1)) -> SimulatedRound:
    key = (tuple((p.upload_bps, p.download_bps, p.role) for p in peers), tuple(shares), vector_bytes, chunk_bytes,
           params.efficiency, params.round_overhead, host, kinds)
    if key not in _ROUND_CACHE:
        if len(_ROUND_CACHE) > 4096:
            _ROUND_CACHE.clear()
        _ROUND_CACHE[key] = simulate_round(peers, shares, vector_bytes, chunk_bytes=chunk_bytes, params=params, host=host, kinds=kinds)
    return _ROUND_CACHE[key]


def _links(peers: Sequence[PeerInstance], up: Sequence[BandwidthEstimator], down: Sequence[BandwidthEstimator]) -> list[MemberLink]:
    return [MemberLink(u.value, d.value, p.brings, p.needs, p.can_reduce) for p, u, d in zip(peers, up, down)]


def model_allreduce(scenario: Scenario, *, params: ModelParams | None = None, balance: bool | None = None,
                    last: list | None = None) -> dict[str, Any]:
    """The scenario's allreduce workload: one round per `rounds`, shares from each round's estimates.
    `last`: a list that gets the last round's (peers, RoundResult), for plots."""
    params = params or ModelParams()
    workload = scenario.workload
    assert isinstance(workload, AllreduceWorkload)
    engine = scenario.engine_config()
    balance = engine.load_balancing if balance is None else balance
    peers = scenario.peers_expanded()
    vector_bytes = scenario.vector_bytes()
    chunk_bytes = engine.chunk_elements * {"none": 4, "fp16": 2}.get(workload.compression, 1)
    prior = engine.bandwidth_mbps * MBIT
    up = [BandwidthEstimator(prior, first_replaces_prior=True) for _ in peers]
    down = [BandwidthEstimator(prior, first_replaces_prior=True) for _ in peers]
    rounds = []
    for _ in range(workload.rounds):
        links = _links(peers, up, down)
        shares = _symmetric(peers, optimal_shares(vector_bytes, links)[0] if balance else uniform_shares(links))
        result = simulate_group(peers, shares, vector_bytes, chunk_bytes=chunk_bytes, params=params, host=params.host_Bps,
                                max_group_size=None if params.flat else engine.max_group_size)
        for i in range(len(peers)):
            if result.upload_rate[i]:
                up[i].observe(int(result.sent[i]), result.sent[i] / result.upload_rate[i])
            if result.download_rate[i]:
                down[i].observe(int(result.received[i]), result.received[i] / result.download_rate[i])
        rounds.append({"seconds": result.seconds, "shares": _compact(result.shares), "events": result.events,
                       "subgroups": result.subgroups, "streams": round(result.streams, 2),
                       "stage_seconds": [round(x, 3) for x in result.stage_seconds]})
    if last is not None and rounds:
        last.append((peers, result))
    return {
        "scenario": scenario.name, "peers": len(peers), "vector_bytes": vector_bytes,
        "lp_bound_s": scenario.lp_bound(vector_bytes), "rounds": rounds,
        "median_seconds": statistics.median(r["seconds"] for r in rounds),
        "roles": role_rows(peers, result) if rounds else [],
    }


def _compact(shares: Sequence[float], limit: int = 64) -> list[float]:
    return [round(float(s), 4) for s in shares[:limit]]


def model_training(scenario: Scenario, *, params: ModelParams | None = None, duration: float | None = None,
                   vector_params: int | None = None, base_samples_per_second: float | None = None,
                   seed: int = 0, last: list | None = None) -> dict[str, Any]:
    """The training workload: epochs of accumulate -> matchmaking -> all-reduce -> step, with churn.
    `last`: a list that gets the last round's (members, RoundResult), for plots."""
    params = params or ModelParams()
    workload = scenario.training if not isinstance(scenario.workload, TrainingWorkload) else scenario.workload
    if workload is None:
        raise ValueError(f"scenario {scenario.name} has no training workload")
    engine = scenario.engine_config()
    rng = random.Random(seed)
    peers = list(scenario.peers_expanded())
    n_params = vector_params or workload.gradient_params or 11_000_000  # ALBERT-base-sized unless told
    vector_bytes = n_params * {"none": 4, "fp16": 2}.get(workload.compression, 1)
    chunk_bytes = engine.chunk_elements * {"none": 4, "fp16": 2}.get(workload.compression, 1)
    state_bytes = params.state_bytes or 3 * n_params * 4
    base = base_samples_per_second or (workload.micro_batch_size / workload.step_seconds if workload.step_seconds else 16.0)
    horizon = duration or workload.duration
    prior = engine.bandwidth_mbps * MBIT
    alive = {p.index: p for p in peers}
    up = {p.index: BandwidthEstimator(prior, first_replaces_prior=True) for p in peers}
    down = {p.index: BandwidthEstimator(prior, first_replaces_prior=True) for p in peers}
    leave_rate = scenario.churn.leave_per_hour / 3600.0
    join_rate = scenario.churn.join_per_hour / 3600.0
    templates = peers[:]
    next_index = len(peers)
    pending_joins: list[tuple[float, PeerInstance]] = []
    t = 0.0
    samples = 0.0
    epochs, failed, compute_busy = 0, 0, 0.0
    round_times: list[float] = []
    last_round: tuple[list[PeerInstance], SimulatedRound] | None = None
    while t < horizon:
        trainers = [p for p in alive.values() if p.brings]
        rate = sum(base * p.compute for p in trainers)
        if rate <= 0 or not any(p.can_reduce for p in alive.values()):
            break
        accumulate = workload.target_batch_size / rate + params.refresh_seconds / 2
        averaging_start = t + accumulate + params.matchmaking_seconds
        # churn during accumulation: leavers take their samples with them (approximation: they just leave)
        for p in list(alive.values()):
            if p.brings and rng.random() < 1 - math.exp(-leave_rate * accumulate):
                alive.pop(p.index)
        while rng.random() < 1 - math.exp(-join_rate * accumulate):
            template = rng.choice(templates)
            joiner = PeerInstance(next_index, f"joiner-{next_index}", template.role, template.upload_bps, template.download_bps, template.compute)
            next_index += 1
            pending_joins.append((t + accumulate + state_bytes / (joiner.download_bps * params.efficiency), joiner))
            up[joiner.index] = BandwidthEstimator(prior, first_replaces_prior=True)
            down[joiner.index] = BandwidthEstimator(prior, first_replaces_prior=True)
        members = sorted(alive.values(), key=lambda p: p.index)
        if not any(p.can_reduce for p in members) or not any(p.brings for p in members):
            break
        renumbered = [PeerInstance(k, p.name, p.role, p.upload_bps, p.download_bps, p.compute) for k, p in enumerate(members)]
        links = [MemberLink(up[p.index].value, down[p.index].value, p.brings, p.needs, p.can_reduce) for p in members]
        shares = _symmetric(renumbered, optimal_shares(vector_bytes, links)[0] if engine.load_balancing else uniform_shares(links))
        result = simulate_group(renumbered, shares, vector_bytes, chunk_bytes=chunk_bytes, params=params, host=params.host_Bps,
                                max_group_size=None if params.flat else engine.max_group_size)
        # a reducer leaving mid-round fails the round for everyone
        reducer_left = any(
            shares[k] > 0 and p.brings and rng.random() < 1 - math.exp(-leave_rate * result.seconds)
            for k, p in enumerate(members)
        )
        compute_busy += accumulate * rate
        if reducer_left and t + accumulate < horizon:
            failed += 1
            t = averaging_start + params.sender_timeout
            continue
        for k, p in enumerate(members):
            if result.upload_rate[k]:
                up[p.index].observe(int(result.sent[k]), result.sent[k] / result.upload_rate[k])
            if result.download_rate[k]:
                down[p.index].observe(int(result.received[k]), result.received[k] / result.download_rate[k])
        t = averaging_start + result.seconds
        last_round = (renumbered, result)
        if t <= horizon:
            epochs += 1
            samples += workload.target_batch_size
            round_times.append(result.seconds)
        for when, joiner in [j for j in pending_joins if j[0] <= t]:
            alive[joiner.index] = joiner
        pending_joins = [j for j in pending_joins if j[0] > t]
    solo = sum(base * p.compute for p in peers if p.brings)
    throughput = samples / horizon if horizon > 0 else 0.0
    control: dict[str, float] = {}
    if epochs and round_times:   # the control plane at this pace (swarm.simulate.control): every peer in each round
        n = len(alive)
        control = control_bytes(n, horizon / epochs, min(horizon / epochs, statistics.median(round_times) + params.matchmaking_seconds),
                                members=n, group=n, flat=params.flat or n <= engine.max_group_size,
                                robust=engine.robust != "off")
    if last is not None and last_round is not None:
        last.append(last_round)
    return {
        "scenario": scenario.name, "peers": len(peers), "duration": horizon, "epochs": epochs, "failed_rounds": failed,
        "samples_per_second": throughput, "solo_samples_per_second": solo,
        "utilization": throughput / solo if solo else 0.0,
        "median_round_seconds": statistics.median(round_times) if round_times else float("nan"),
        "vector_bytes": vector_bytes, "target_batch_size": workload.target_batch_size, "round_seconds": round_times,
        "control_Bps": {k: round(v, 1) for k, v in control.items()},
        "roles": role_rows(*last_round) if last_round else [],
    }


def run_model(scenario: Scenario, *, params: ModelParams | None = None, **kwargs: Any) -> dict[str, Any]:
    if isinstance(scenario.workload, TrainingWorkload):
        return model_training(scenario, params=params, **kwargs)
    return model_allreduce(scenario, params=params, **kwargs)
