"""A toy trainer for integration tests: a small MLP on a synthetic regression task.

Run as `python -m tests.helpers.toy_peer --run-id R --initial-peers ADDR --out FILE [...]`.
It prints `MADDR <addr>` once joined and `CHILDREN <pids>` (its p2pd and watchdog), and
writes one JSON line per global step to --out, then a final line.

Faults are injected by subclassing the piece that fails (FaultyRound), not by patching:
`--die-at-epoch E --die-phase send|reduce|gather` SIGKILLs this process in the middle of the
all-reduce of epoch E, or of the first one after it in which it has that phase (gather: as a reducer, once it
has sent back part of its averaged part);
`--die-serving-state E` SIGKILLs it while it serves a state of epoch >= E to a newcomer (after the
first tensor); `--die-leading-at-epoch E` SIGKILLs it when it leads epoch E's matchmaking and holds
the others' requests (only the first leader of E: one that took over from a failed one does not die);
`--stop-at-epoch E` SIGSTOPs it in the all-reduce of epoch E (the test sends SIGCONT); `--garbage-at-epoch E` sends NaN chunks in that round; `--hold-at-epoch E`
prints `HOLDING E` in the middle of that round's all-reduce and pauses there `--hold-seconds` (once),
so that a test can cut its network mid-round. `--invite I` joins an invite-only run (its coordinator
issues the access token). `--host ADDR` listens on ADDR (a network namespace's address) instead of loopback.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time

import torch

import swarm
from swarm.averaging.allreduce import AllReduceRound
from swarm.averaging.matchmaking import Matchmaker
from swarm.averaging.state_sync import StateServer
from swarm.collaboration import Collaboration
from swarm.config import EngineConfig
from swarm.process.lifecycle import descendants


def make_faulty_round(die_epoch: int, die_phase: str, garbage_epoch: int, current_epoch, hold_epoch: int = -1, hold_seconds: float = 0.0):
    held = {"done": False}

    class FaultyRound(AllReduceRound):
        def _outgoing(self, chunk):
            values = super()._outgoing(chunk)
            if current_epoch() == garbage_epoch:
                return torch.full_like(values, float("nan"))
            return values

        async def _exchange(self, j):
            if current_epoch() >= die_epoch >= 0 and die_phase == "send":
                os.kill(os.getpid(), signal.SIGKILL)
            if current_epoch() == hold_epoch and not held["done"]:
                held["done"] = True
                print("HOLDING", hold_epoch, flush=True)
                await asyncio.sleep(hold_seconds)
            return await super()._exchange(j)

        async def _consume(self, sender, first, requests, *args, **kwargs):
            if current_epoch() >= die_epoch >= 0 and die_phase == "reduce":
                os.kill(os.getpid(), signal.SIGKILL)
            return await super()._consume(sender, first, requests, *args, **kwargs)

        async def serve(self, first, requests, remote):
            async for reply in super().serve(first, requests, remote):
                yield reply
                # at or after die_epoch: under load a peer may sit out a round without a part of its own to serve
                if reply.data and current_epoch() >= die_epoch >= 0 and die_phase == "gather":
                    os.kill(os.getpid(), signal.SIGKILL)  # one averaged chunk of my part is out, the rest never will be

    return FaultyRound


def make_stopping_round(base, stop_epoch: int, current_epoch):
    stopped = {"done": False}

    class StoppingRound(base):
        async def _exchange(self, j):
            if current_epoch() == stop_epoch and not stopped["done"]:
                stopped["done"] = True
                print("STOPPING", stop_epoch, flush=True)
                os.kill(os.getpid(), signal.SIGSTOP)  # frozen mid-round, as a laptop that sleeps; the test sends SIGCONT
            return await super()._exchange(j)

    return StoppingRound


def make_dying_state_server(die_epoch: int):
    class DyingStateServer(StateServer):
        async def _handle(self, request, context):
            async for msg in super()._handle(request, context):
                yield msg
                if msg.data and request.min_epoch >= die_epoch:
                    print("DYING serving state", flush=True)
                    os.kill(os.getpid(), signal.SIGKILL)  # the metadata and the first tensor are out

    return DyingStateServer


def make_dying_leader(die_epoch: int):
    class DyingLeader(Matchmaker):
        def _make_group(self, g):
            if g.epoch == die_epoch and len(g.requests) > 1 and not self._failed.get(g.epoch):
                print("DYING leading", g.epoch, flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
            return super()._make_group(g)

    return DyingLeader


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run-id", default="toy")
    parser.add_argument("--initial-peers", nargs="*", default=[])
    parser.add_argument("--out", required=True)
    parser.add_argument("--role", default="trainer")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=10**9)
    parser.add_argument("--duration", type=float, default=60)
    parser.add_argument("--target", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--step-sleep", type=float, default=0.05)
    parser.add_argument("--lr", type=float, default=0.05, help="SGD's (momentum 0.9); long runs want less")
    parser.add_argument("--compression", default="fp16")
    parser.add_argument("--averaging-timeout", type=float, default=15)
    parser.add_argument("--chunk-elements", type=int, default=2**17)
    parser.add_argument("--max-group-size", type=int, default=EngineConfig().max_group_size, help="above it, groups average hierarchically")
    parser.add_argument("--wait-timeout", type=float, default=120, help="seconds --wait-peers waits at most (a peer can take a minute to start on a busy 2-core box)")
    parser.add_argument("--mode", default="sync", choices=["sync", "diloco", "streaming-diloco"],
                        help="diloco: AdamW inner steps, Nesterov outer steps; streaming-diloco: of one layer per round, in turn")
    parser.add_argument("--overlap", action="store_true", help="average in the background (updates one step late)")
    parser.add_argument("--inner-lr", type=float, default=0.01)
    parser.add_argument("--outer-lr", type=float, default=0.7)
    parser.add_argument("--die-during-inner-steps", type=int, default=-1, metavar="E",
                        help="diloco: SIGKILL this process after a few inner steps of epoch E (no round in flight)")
    parser.add_argument("--wait-peers", type=int, default=0, help="start training once this many peers are visible")
    parser.add_argument("--die-at-epoch", type=int, default=-1)
    parser.add_argument("--die-phase", default="send", choices=["send", "reduce", "gather"])
    parser.add_argument("--garbage-at-epoch", type=int, default=-1)
    parser.add_argument("--die-serving-state", type=int, default=-1, metavar="E")
    parser.add_argument("--die-leading-at-epoch", type=int, default=-1, metavar="E")
    parser.add_argument("--stop-at-epoch", type=int, default=-1, metavar="E", help="SIGSTOP itself in the all-reduce of epoch E")
    parser.add_argument("--progress-summaries", type=int, default=0, metavar="MIN_PEERS",
                        help="progress summaries on from this many peers in a view (0: off)")
    parser.add_argument("--hold-at-epoch", type=int, default=-1)
    parser.add_argument("--hold-seconds", type=float, default=1.0)
    parser.add_argument("--robust", default="off", choices=["on", "off", "auto"], help="engine.robust")
    parser.add_argument("--byzantine", help="a byzantine peer of this kind (peers.attack.byzantine.KINDS)")
    parser.add_argument("--host", help="listen on this IPv4 address (default: loopback)")
    parser.add_argument("--invite", help="join with this invite (swarm://...): run id, peers and access token come from it")
    parser.add_argument("--run-config", action="store_true", help="with --invite: the engine settings are the run's (its config record)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s [{args.role}:{args.seed}] %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("hivemind").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    stop = {"flag": False}
    interrupt = {"fn": lambda: None}

    def on_signal(*_):
        stop.update(flag=True)
        interrupt["fn"]()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    torch.manual_seed(1234)  # identical initial parameters on every peer
    model = torch.nn.Sequential(torch.nn.Linear(32, args.hidden), torch.nn.ReLU(), torch.nn.Linear(args.hidden, 1))
    cfg = EngineConfig(target_batch_size=args.target, compression=args.compression, averaging_timeout=args.averaging_timeout,
                       sender_timeout=3.0, matchmaking_timeout=10.0, gather_timeout=1.5, chunk_elements=max(1024, args.chunk_elements),
                       max_group_size=args.max_group_size, robust=args.robust, progress_summaries=args.progress_summaries > 0)
    if args.die_serving_state >= 0:
        Collaboration.state_server_class = make_dying_state_server(args.die_serving_state)
    if args.die_leading_at_epoch >= 0:
        Collaboration.matchmaker_class = make_dying_leader(args.die_leading_at_epoch)
    hosts = {"host_maddrs": [f"/ip4/{args.host}/tcp/0"]} if args.host else {}
    try:
        if args.invite:
            collab = swarm.join(args.invite, initial_peers=args.initial_peers, role=args.role, config=None if args.run_config else cfg, **hosts)
        else:
            collab = swarm.join(run_id=args.run_id, initial_peers=args.initial_peers, role=args.role, config=cfg, **hosts)
    except swarm.SwarmError as e:  # refused (AuthError) or unreachable: one line, the CLI's exit code
        print("ERROR", e, flush=True)
        sys.exit(e.exit_code)
    interrupt["fn"] = collab.interrupt
    if args.progress_summaries > 0:
        collab.tracker.summary_min_peers = args.progress_summaries
    print("MADDR", collab.visible_maddrs()[0], flush=True)
    print("CONFIG", f"target_batch_size={collab.config.target_batch_size}", f"from_run={collab.run_config is not None}", flush=True)
    print("CHILDREN", *descendants(os.getpid()), flush=True)
    out = open(args.out, "a")
    try:
        if args.mode == "streaming-diloco":   # the toy model's 2 layers are its 2 fragments
            from swarm.optim.strategies import StreamingDiLoCo, layers_of

            mode = StreamingDiLoCo(True, outer_lr=args.outer_lr, outer_momentum=0.9, fragments=2, layers=layers_of(model))
            opt = collab.optimizer(model.parameters(), torch.optim.AdamW, lr=args.inner_lr, mode=mode)
        elif args.mode == "diloco":
            opt = collab.optimizer(model.parameters(), torch.optim.AdamW, lr=args.inner_lr, mode="diloco", overlap=args.overlap,
                                   outer_lr=args.outer_lr, outer_momentum=0.9)
        else:
            opt = collab.optimizer(model.parameters(), torch.optim.SGD, lr=args.lr, momentum=0.9, overlap=args.overlap)
        collab.round_class = make_faulty_round(args.die_at_epoch, args.die_phase, args.garbage_at_epoch, lambda: opt.epoch,
                                               args.hold_at_epoch, args.hold_seconds)
        if args.stop_at_epoch >= 0:
            collab.round_class = make_stopping_round(collab.round_class, args.stop_at_epoch, lambda: opt.epoch)
        if args.byzantine:
            from peers.attack.byzantine import install

            install(collab, args.byzantine)
        if args.role == "aux":
            collab.run_auxiliary(opt.codec, lambda: stop["flag"])
            return
        waited = time.monotonic() + args.wait_timeout
        while sum(p.training for p in collab.tracker.view.peers) < args.wait_peers and time.monotonic() < waited:
            time.sleep(0.1)
        gen = torch.Generator().manual_seed(args.seed)
        w_true = torch.randn(32, 1, generator=torch.Generator().manual_seed(7))
        end = time.monotonic() + args.duration

        def log_step(r) -> None:
            out.write(json.dumps({"epoch": r.epoch, "hash": r.params_hash, "group": r.group_size, "seconds": r.round_seconds, "time": r.time,
                                  "staleness": r.staleness, "codec": r.codec, "samples": r.samples, "subgroups": r.subgroups,
                                  "seen": len(collab.tracker.view.peers)}) + "\n")
            out.flush()

        opt.on_step.append(log_step)
        while not stop["flag"] and time.monotonic() < end and opt.epoch < args.steps:
            x = torch.randn(8, 32, generator=gen)
            y = x @ w_true
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            opt.step(samples=8)
            if opt.epoch == args.die_during_inner_steps and getattr(opt.strategy, "inner_steps", 0) >= 3 and opt.pending is None:
                print("DYING", opt.epoch, flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
            opt.zero_grad()
            time.sleep(args.step_sleep)
        if not stop["flag"]:
            opt.finish()
        out.write(json.dumps({"final": True, "epoch": opt.epoch, "hash": opt.params_hash(), "failed": opt.rounds_failed,
                              "downloads": opt.state_downloads, "completed": opt.rounds_completed,
                              "reads": dict(collab.tracker.reads)}) + "\n")
    finally:
        out.close()
        collab.shutdown()


if __name__ == "__main__":
    main()
    # Everything is flushed and the swarm left (collab.shutdown): skip the interpreter's teardown, whose garbage
    # collection of torch's module graph alone takes seconds of CPU on a loaded machine, past the 5 s to leave.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
