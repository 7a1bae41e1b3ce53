"""Where a run stands: its state, its progress toward `total_epochs` and an ETA.

    p = run_progress(epoch=120, total_epochs=1000, epochs=[(t0, 100), ..., (t1, 120)], peers=3, ready=True)
    p.state, p.fraction, p.eta_s        # "running", 0.12, seconds left at the recent epoch rate (None: unknown)

The ETA divides the epochs left by the rate of the last `window` seconds of the coordinator's
history (epochs gained over the time between the first and last sample of that window). It is
None until the swarm has gained an epoch in the window, and 0 once the run is finished. The state
says what a user needs to know first: `starting`, `running`, `waiting for peers` (the coordinator
is up but no peer is online; the run resumes when one joins) or `finished`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

ETA_WINDOW = 600.0   # seconds of history the epoch rate is measured over


@dataclass(frozen=True)
class RunProgress:
    state: str
    epoch: int
    total_epochs: int
    fraction: float              # epoch / total_epochs, in [0, 1]
    epochs_per_hour: float | None
    eta_s: float | None          # seconds to total_epochs at the recent rate; None: not known yet

    def to_json(self) -> dict:
        return asdict(self)


def epoch_rate(epochs: Sequence[tuple[float, float]]) -> float | None:
    """Epochs per second over (time, epoch) samples, or None when no epoch was gained."""
    if len(epochs) < 2:
        return None
    (t0, e0), (t1, e1) = epochs[0], epochs[-1]
    if t1 <= t0 or e1 <= e0:
        return None
    return (e1 - e0) / (t1 - t0)


def run_progress(*, epoch: int, total_epochs: int, epochs: Sequence[tuple[float, float]], peers: int, ready: bool) -> RunProgress:
    total = max(int(total_epochs), 1)
    finished = epoch >= total
    state = "starting" if not ready else "finished" if finished else "running" if peers else "waiting for peers"
    rate = epoch_rate(epochs)
    eta = 0.0 if finished else (total - epoch) / rate if rate and state == "running" else None   # nobody trains: unknown
    return RunProgress(state=state, epoch=epoch, total_epochs=total, fraction=min(epoch / total, 1.0),
                       epochs_per_hour=rate * 3600 if rate else None, eta_s=eta)


def format_eta(seconds: float | None) -> str:
    """`3h 05m`, `12m 30s`, `45s`; `-` when unknown."""
    if seconds is None:
        return "-"
    s = int(round(seconds))
    if s >= 86400:
        return f"{s // 86400}d {s % 86400 // 3600:02d}h"
    if s >= 3600:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s}s"
