"""The two records that describe an averaging round: what a peer asked (`RoundRequest`) and what happened (`RoundReport`).

A round is submitted with `Collaboration.submit_round(request, codec, tensors)`: the request gets its
in-flight future and its deadline (the collaboration's one round budget, `round_budget()`), and
`request.wait()` returns `(averaged, report)` or raises RoundFailed, never later than that deadline.
The collaborative optimizer keeps the request while the round is in flight (overlapped modes) and
completes the report (reached epoch, parameter hash, staleness) when it applies the result.
"""
from __future__ import annotations

import concurrent.futures
import time
from dataclasses import dataclass, field
from typing import Any

from swarm.errors import RoundFailed

__all__ = ["RoundRequest", "RoundReport"]

RECHECK_SECONDS = 1.0   # how often a waiter re-reads a request's deadline


@dataclass
class RoundRequest:
    """What one peer asks of one round: average its tensors with the group of `epoch`, with weight `weight`."""

    epoch: int
    weight: float                 # samples behind this peer's tensors (0: contributes nothing, e.g. aux or overflow)
    samples: int = 0              # local samples the round carries (what a failed round gives back)
    oldest: int | None = None     # parameter version of the oldest local contribution in it (None: `epoch`)
    payload: Any = None           # what the run mode needs back when the round fails or is applied
    started: float = field(default_factory=time.monotonic)
    deadline: float = float("inf")                                   # monotonic; set by submit_round
    future: concurrent.futures.Future | None = field(default=None, repr=False)

    def done(self) -> bool:
        return self.future is not None and self.future.done()

    def wait(self, timeout: float | None = None) -> tuple[Any, RoundReport]:
        """(averaged, report), or RoundFailed: failure, cancellation, or not done by the deadline (or `timeout`)."""
        assert self.future is not None, "the request was not submitted"
        until = time.monotonic() + timeout if timeout is not None else float("inf")
        try:
            while True:  # the deadline moves once the group is formed (its limits follow the work): re-read it
                remaining = min(self.deadline, until) - time.monotonic()
                try:
                    return self.future.result(max(0.0, min(remaining, RECHECK_SECONDS)))
                except concurrent.futures.TimeoutError:
                    if min(self.deadline, until) <= time.monotonic():
                        raise
        except concurrent.futures.TimeoutError:
            self.future.cancel()
            raise RoundFailed(f"round of epoch {self.epoch} did not finish in time") from None
        except concurrent.futures.CancelledError:
            raise RoundFailed("interrupted") from None
        except RoundFailed:
            raise
        except Exception as e:  # anything else from the engine loop ends this round, not training
            raise RoundFailed(f"{type(e).__name__}: {e}") from e


@dataclass
class RoundReport:
    """What one round did, for logs, metrics and the demo report.

    The collaboration fills the network side; the optimizer that applies the round sets `epoch` to the epoch
    the step reached, `params_hash` and `staleness`."""

    epoch: int                      # the round's epoch; after the optimizer applied it, the epoch reached
    group_size: int
    round_seconds: float
    bytes_sent: int
    bytes_received: int
    samples: int                    # the group's samples in this average (sum of the weights)
    round_id: str = ""
    excluded: list[str] = field(default_factory=list)
    codec: str = ""                 # what the round sent: a codec name, or "powersgd" (compression auto picks per round)
    predicted_seconds: float = float("nan")   # the round's LP bound with the group's measured links
    params_hash: str = ""
    staleness: int = 0              # steps between the oldest gradient in this update and the update (overlap: <= 1)
    subgroups: int = 0              # subgroups the group averaged in (swarm.averaging.hierarchy); 0: one flat group
    time: float = field(default_factory=time.time)
