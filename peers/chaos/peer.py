"""A volunteer peer (`swarm join`) that can be made to fail at a precise point: the chaos harness's peer.

    python -m peers.chaos.peer --chaos-dir DIR --slot p2 [--clock-skew-minutes M] [--wait-file F] join --config ...

(the arguments after `join` are swarm join's). With `--wait-file` it is a standby: it imports everything, then
waits for the file to exist before it joins, so that a newcomer joins in seconds even on a loaded machine.

It runs the normal peer daemon; faults are injected by subclassing the piece that fails, not by patching
the engine: the Collaboration's `round_class` becomes a `ChaosRound` (an AllReduceRound) and the state
server's snapshot callable is wrapped. Each fault is armed by the harness as a file `DIR/arm/ID.json`
(`{"kind": ..., "target": SLOT or "any"}`); the first peer that reaches the fault's point claims it with
`DIR/arm/ID.claimed` (O_EXCL: one peer per fault, carrying its pid, slot and epoch) and then fails:

- kill_reduce_scatter: SIGKILL while sending its second chunk to a reducer (reduce-scatter).
- kill_all_gather: SIGKILL when the second averaged chunk lands in its result (all-gather under way).
- stall_mid_round: SIGSTOP at the same point as kill_reduce_scatter (the harness SIGCONTs it later).
- kill_leader: SIGKILL at the start of a round this peer leads (the lowest peer id of the group, which is how
  matchmaking picks its leader when every member is a reachable trainer), after it answered the group.
- kill_state_donor: SIGKILL while serving a state download, after the first tensor is streamed.

`--clock-skew-minutes M` emulates a wall clock that is off by M minutes: `time.time` (and so hivemind's
`get_dht_time`, which is `time.time` bound at import) returns the real time + M minutes in this process and
in the processes it forks (its DHT); p2pd and other peers keep the real time.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

ROUND_FAULTS = ("kill_reduce_scatter", "kill_all_gather", "stall_mid_round", "kill_leader")
DONOR_FAULT = "kill_state_donor"


class ArmedFaults:
    """The faults the harness armed for this peer (re-read at most every `interval` seconds)."""

    def __init__(self, chaos_dir: Path, slot: str, epoch=lambda: -1, interval: float = 0.3):
        self.dir = Path(chaos_dir) / "arm"
        self.slot = slot
        self.epoch = epoch
        self.interval = interval
        self._read_at = 0.0
        self._armed: list[tuple[str, dict]] = []

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._read_at < self.interval:
            return
        self._read_at = now
        armed = []
        try:
            for entry in os.scandir(self.dir):
                if entry.name.endswith(".json"):
                    try:
                        armed.append((entry.name[:-5], json.loads(Path(entry.path).read_text())))
                    except (OSError, ValueError):
                        pass  # being written
        except FileNotFoundError:
            pass
        self._armed = armed

    def take(self, *kinds: str) -> str | None:
        """The kind of an armed fault for this peer among `kinds`, now claimed by it; None if there is none."""
        self._refresh()
        for fault_id, spec in self._armed:
            if spec.get("kind") not in kinds or spec.get("target") not in (self.slot, "any"):
                continue
            try:
                fd = os.open(self.dir / f"{fault_id}.claimed", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                continue
            with os.fdopen(fd, "w") as f:
                json.dump({"pid": os.getpid(), "slot": self.slot, "epoch": self.epoch(), "time": time.time()}, f)
            self._armed = [a for a in self._armed if a[0] != fault_id]
            return spec["kind"]
        return None


def act(kind: str) -> None:
    os.kill(os.getpid(), signal.SIGSTOP if kind == "stall_mid_round" else signal.SIGKILL)


def chaos_round_class(armed: ArmedFaults):
    from swarm.averaging.allreduce import AllReduceRound

    class ChaosRound(AllReduceRound):
        """An AllReduceRound that fails where an armed fault says (see the module docstring)."""

        _sent = 0
        _stored = 0

        def _outgoing(self, chunk):
            self._sent += 1
            if self._sent == 2:
                kind = armed.take("kill_reduce_scatter", "stall_mid_round")
                if kind:
                    act(kind)
            return super()._outgoing(chunk)

        def _store_result(self, chunk, values):
            super()._store_result(chunk, values)
            self._stored += 1
            if self._stored == 2 and armed.take("kill_all_gather"):
                act("kill_all_gather")

        async def run(self):
            if self.group.my_index == 0 and armed.take("kill_leader"):
                act("kill_leader")
            return await super().run()

    return ChaosRound


class _DyingTensors(dict):
    """A snapshot's tensors whose streaming ends the process after the first tensor (the donor dies mid-download)."""

    def values(self):  # type: ignore[override]
        for i, t in enumerate(super().values()):
            if i == 1:
                act(DONOR_FAULT)
            yield t


def install(collab, armed: ArmedFaults) -> None:
    """Make `collab` fail where armed faults say: its rounds, and the state it serves."""
    from swarm.averaging.state_sync import TrainingState

    armed.epoch = lambda: collab.tracker.local.epoch if collab.tracker is not None else -1
    collab.round_class = chaos_round_class(armed)
    server = collab.state_server
    snapshot = server.snapshot

    def chaos_snapshot():
        state = snapshot()
        if state is not None and len(state.tensors) > 1 and armed.take(DONOR_FAULT):
            return TrainingState(epoch=state.epoch, tensors=_DyingTensors(state.tensors), extra=state.extra)
        return state

    server.snapshot = chaos_snapshot


def skew_clock(minutes: float) -> None:
    """Offset this process's wall clock (time.time) by `minutes`; call before hivemind is imported."""
    real = time.time
    offset = 60.0 * minutes
    time.time = lambda: real() + offset  # type: ignore[assignment]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "join" not in argv:
        print("usage: python -m peers.chaos.peer --chaos-dir DIR --slot SLOT [--clock-skew-minutes M] join ...", file=sys.stderr)
        return 2
    split = argv.index("join")
    import argparse

    p = argparse.ArgumentParser(prog="peers.chaos.peer")
    p.add_argument("--chaos-dir", type=Path, required=True)
    p.add_argument("--slot", required=True)
    p.add_argument("--clock-skew-minutes", type=float, default=0.0)
    p.add_argument("--wait-file", type=Path, help="a standby: import everything, then wait until this file exists to join")
    p.add_argument("--byzantine", help="a byzantine peer of this kind (peers.attack.byzantine.KINDS)")
    own = p.parse_args(argv[:split])
    if own.clock_skew_minutes:
        skew_clock(own.clock_skew_minutes)   # before swarm (and hivemind) are imported

    from swarm.cli import build_parser, setup_logging
    from swarm.errors import SwarmError

    from ..cli import cmd_join

    args = build_parser().parse_args(argv[split:])
    if own.wait_file is not None:
        import importlib

        from .. import daemon  # noqa: F401  (the slow imports first: torch, hivemind, the task's libraries)
        from ..cli import run_config_from_args

        importlib.import_module(f"peers.tasks.{run_config_from_args(args).task}")
        while not own.wait_file.exists():
            time.sleep(0.2)
        # its words (written before it appeared) are more initial peers, alive when the harness let it join
        args.initial_peers += own.wait_file.read_text().split()
    setup_logging(args.verbose, args.quiet)
    armed = ArmedFaults(own.chaos_dir, own.slot)
    try:
        def on_collaboration(collab) -> None:
            install(collab, armed)
            if own.byzantine:
                from ..attack import byzantine

                byzantine.install(collab, own.byzantine)

        return int(cmd_join(args, on_collaboration=on_collaboration) or 0)
    except SwarmError as e:
        print(f"swarm: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    finally:
        import gc

        gc.freeze()   # exiting: as swarm.cli.main does, keep the final collection off the corpus and model


if __name__ == "__main__":
    sys.exit(main())
