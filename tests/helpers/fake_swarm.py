"""An in-process stand-in for a swarm, for unit tests of optimizers and round codecs: no network, no DHT.

`FakeSwarm(n)` holds n `FakeCollab`s. Each peer runs in its own thread (as a training loop would); a round's
phases meet at an exchange that waits for every member and returns the exact weighted mean of each bucket,
like the real all-reduce does (every member gets the same tensors). `delay` slows every round down, so
that overlapped optimizers see rounds in flight; `ready` decides when a peer's tracker says the batch is
complete (default: this peer alone has `per_peer_target` samples at its epoch).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from typing import Any, Callable

import torch

from swarm.averaging.balancing import MemberLink
from swarm.averaging.group import GroupView
from swarm.averaging.layout import TensorLayout
from swarm.averaging.progress import LocalProgress, SwarmView
from swarm.averaging.rounds import RoundReport, RoundRequest
from swarm.compression.round_codec import RoundCodec, RoundContext
from swarm.config import EngineConfig
from swarm.errors import Alone, NetworkError, RoundFailed


class FakeTracker:
    def __init__(self, swarm: "FakeSwarm", index: int, target_batch_size: int):
        self.swarm, self.index = swarm, index
        self.target_batch_size = target_batch_size
        self.local = LocalProgress()
        self.view = SwarmView(epoch=0, peers=(), fetched_at=time.monotonic())
        self.reports: list[dict] = []

    def report(self, **kw: Any) -> None:
        for key, value in kw.items():
            if value is not None:
                setattr(self.local, key, value)
        self.reports.append(dict(kw))

    def ready(self, epoch: int) -> bool:
        return self.swarm.ready(self, epoch)

    def poke(self) -> None:
        pass


class FakeCollab:
    role = "trainer"

    def __init__(self, swarm: "FakeSwarm", index: int, config: EngineConfig):
        self.swarm, self.index, self.config = swarm, index, config
        self.peer_id = f"peer{index}"
        self.tracker = FakeTracker(swarm, index, config.target_batch_size)
        self.rounds: list[RoundReport] = []
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"fake-engine-{index}")
        self._attempts: dict[int, int] = {}

    def begin_training(self, schema: TensorLayout, snapshot: Callable) -> None:
        self.schema, self.snapshot = schema, snapshot

    def round_budget(self, averaging_timeout: float | None = None) -> float:
        return 30.0 + 2 * (averaging_timeout or 0.0)

    def submit_round(self, request: RoundRequest, codec: RoundCodec, tensors) -> RoundRequest:
        codec.validate(tensors)
        request.started = time.monotonic()
        request.deadline = request.started + self.round_budget() + 30.0
        request.future = self._pool.submit(lambda: asyncio.run(self._run(request.epoch, request.weight, codec, tensors)))
        return request

    async def _run(self, epoch: int, weight: float, codec: RoundCodec, tensors):
        n = self.swarm.n
        group = GroupView(round_id=bytes(16), peer_ids=tuple(f"peer{i}" for i in range(n)), roles=("trainer",) * n,
                          weights=(1.0,) * n, shares=tuple([1.0 / n] * n), my_index=self.index, timeout=30.0)
        links = [MemberLink(upload_bps=self.swarm.bandwidth_bps, download_bps=self.swarm.bandwidth_bps) for _ in range(n)]
        phases: list[float] = []
        attempt = self._attempts[epoch] = self._attempts.get(epoch, -1) + 1
        if attempt < self.swarm.alone_tries.get(epoch, 0):
            raise Alone(f"alone in the group of epoch {epoch} (fake)")

        async def phase(layout: TensorLayout, local):
            k = len(phases)
            averaged, total = await asyncio.to_thread(self.swarm.exchange, self.index, epoch, k, local, weight, attempt)
            phases.append(total)
            return averaged

        result = await codec.average(RoundContext(group=group, links=links, phase=phase, epoch=epoch), tensors)
        outcome = RoundReport(epoch=epoch, group_size=n, round_seconds=0.0, bytes_sent=0, bytes_received=0,
                              samples=int(phases[0]) if phases else 0, round_id="0" * 32, codec=result.codec)
        self.rounds.append(outcome)
        return result, outcome

    def download_state(self, donors, min_epoch):
        raise NetworkError("no state in a fake swarm")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class FakeSwarm:
    def __init__(self, n: int, *, target_batch_size: int = 64, per_peer_target: int | None = None, delay: float = 0.0,
                 config: EngineConfig | None = None, bandwidth_bps: float = 1e8, timeout: float = 30.0):
        self.n = n
        self.delay = delay
        self.timeout = timeout
        self.bandwidth_bps = bandwidth_bps
        self.per_peer_target = per_peer_target if per_peer_target is not None else max(1, target_batch_size // n)
        cfg = config or EngineConfig(target_batch_size=target_batch_size)
        self.collabs = [FakeCollab(self, i, cfg) for i in range(n)]
        self._cond = threading.Condition()
        self._slots: dict[tuple[int, int, int], dict[int, tuple[Any, float]]] = {}
        self._results: dict[tuple[int, int, int], Any] = {}
        self.fail_epochs: set[int] = set()
        self.alone_tries: dict[int, int] = {}   # epoch -> how many first attempts find the peer alone (swarm.errors.Alone)

    def ready(self, tracker: FakeTracker, epoch: int) -> bool:
        return tracker.local.epoch == epoch and tracker.local.samples >= self.per_peer_target

    def exchange(self, index: int, epoch: int, phase: int, local, weight: float, attempt: int = 0):
        """Wait for every member's buckets of this phase; return the weighted mean (None for a member without values).

        The first attempt at an epoch in `fail_epochs` fails for every member (after the exchange); the first
        `alone_tries[epoch]` attempts of a peer find it alone in its group (before any exchange)."""
        key = (epoch, attempt, phase)
        with self._cond:
            self._slots.setdefault(key, {})[index] = (local, weight)
            self._cond.notify_all()
            if not self._cond.wait_for(lambda: len(self._slots[key]) == self.n or key in self._results, self.timeout):
                raise RoundFailed("fake round timed out")
            if key not in self._results:
                contributions = list(self._slots[key].values())
                self._results[key] = (self._mean(contributions), sum(w for _, w in contributions))
            result, total = self._results[key]
        if self.delay:
            time.sleep(self.delay)
        if epoch in self.fail_epochs and attempt == 0:
            raise RoundFailed(f"fake failure at epoch {epoch}")
        if local is None:
            return None, total
        return [t.clone() for t in result], total

    @staticmethod
    def _mean(contributions):
        with_values = [(local, w) for local, w in contributions if local is not None]
        total = sum(w for _, w in with_values)
        buckets = len(with_values[0][0])
        out = []
        for b in range(buckets):
            acc = torch.zeros_like(with_values[0][0][b], dtype=torch.float32)
            for local, w in with_values:
                acc += local[b].float() * w
            out.append(acc / total if total > 0 else acc)
        return out

    def run_peers(self, fn: Callable[[int, FakeCollab], Any], timeout: float = 60.0) -> list[Any]:
        """Run fn(i, collab) for every peer in its own thread; return their results (re-raising any error)."""
        results: list[Any] = [None] * self.n
        errors: list[BaseException] = []

        def target(i: int) -> None:
            try:
                results[i] = fn(i, self.collabs[i])
            except BaseException as e:  # surfaced below
                errors.append(e)

        threads = [threading.Thread(target=target, args=(i,), daemon=True) for i in range(self.n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout)
        if any(t.is_alive() for t in threads):
            raise TimeoutError("a fake peer did not finish")
        if errors:
            raise errors[0]
        return results

    def close(self) -> None:
        for c in self.collabs:
            c.close()
