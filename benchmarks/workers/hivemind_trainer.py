"""A hivemind.Optimizer peer training a task plug-in (the training baseline): `python -m benchmarks.workers.hivemind_trainer`.

The same task, micro-batches, compute slow-down (each local step padded to step_seconds / compute by sleeping)
and target batch as swarm's emulated trainers (swarm.simulate.worker, training mode), with hivemind's defaults
otherwise. `--use-local-updates` is hivemind.Optimizer(use_local_updates=True): every micro-batch steps the
local optimizer, and the peers average parameters (and optimizer state) in the background every target batch
(with the workload's codec as state_averaging_compression). `--bootstrap` runs a plain hivemind DHT for the
others to join. On `go` it trains for the duration and reports, like swarm's emulated trainers, one `local`
event per micro-batch (time, loss, samples) and a summary: samples, seconds spent computing, seconds in
opt.step (hivemind's rounds block there unless local updates), the epoch reached, and the bytes this peer's
network namespace sent and received meanwhile (interface counters of /proc/net/dev, swarm.averaging.linkmeter: hivemind
does not count its own averaging bytes, so these include its DHT traffic and headers). Auxiliary peers call
step() in a loop (hivemind's way for them to help average). A Reaper ends hivemind's child processes with us.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time

import torch


def emit(event: str, **fields) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", action="store_true")
    parser.add_argument("--host", required=True)
    parser.add_argument("--initial-peers", nargs="*", default=[])
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--role", default="trainer", choices=["trainer", "client", "aux"])
    parser.add_argument("--compute", type=float, default=1.0)
    parser.add_argument("--workload", default="{}")
    parser.add_argument("--use-local-updates", action="store_true", help="hivemind.Optimizer(use_local_updates=True)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format=f"%(asctime)s [hivemind-train:{args.index}] %(name)s: %(message)s")
    torch.set_num_threads(1)
    from swarm.averaging.linkmeter import read_counters
    from swarm.process.lifecycle import Reaper
    from swarm.simulate.worker import net_sent

    reaper = Reaper().start()
    import hivemind
    from hivemind.compression import Float16Compression, NoCompression

    client = args.role == "client"
    # wait_timeout 10 s, not hivemind's 3 s: a dozen peers starting at once on a loaded 2-core machine miss the
    # bootstrap node's answer to their first ping within 3 s ("DHTNode bootstrap failed"), and the run has no reference
    dht = hivemind.DHT(initial_peers=args.initial_peers, host_maddrs=[f"/ip4/{args.host}/tcp/0"], client_mode=client, start=True,
                       wait_timeout=10)
    reaper.scan()
    opt = None
    try:
        if args.bootstrap:
            emit("ready", maddrs=[str(m) for m in dht.get_visible_maddrs()])
            sys.stdin.readline()
            return
        workload = json.loads(args.workload)
        from peers.tasks import TaskSettings, get_task

        task = get_task(workload["task"], TaskSettings(micro_batch_size=workload["micro_batch_size"], seed=0, options=dict(workload.get("task_options") or {})))
        torch.manual_seed(0)
        model = task.build_model()
        aux = args.role == "aux"
        codec = Float16Compression() if workload.get("compression") == "fp16" else NoCompression()
        opt = hivemind.Optimizer(
            dht=dht, run_id="bench-train", target_batch_size=workload["target_batch_size"],
            batch_size_per_step=None if aux else workload["micro_batch_size"],
            optimizer=lambda params: task.make_optimizer(params, workload["lr"]), params=model.parameters(),
            matchmaking_time=3.0, averaging_timeout=120.0, client_mode=client, auxiliary=aux,
            grad_compression=codec, state_averaging_compression=codec if args.use_local_updates else NoCompression(),
            use_local_updates=args.use_local_updates,
        )
        reaper.scan()
        emit("ready", maddrs=[str(m) for m in dht.get_visible_maddrs()])
        go = json.loads(sys.stdin.readline() or "{}")
        if go.get("cmd") != "go":
            return
        deadline = time.monotonic() + float(go.get("duration", workload["duration"]))
        counters = read_counters()
        if aux:
            while time.monotonic() < deadline:
                opt.step()
                time.sleep(0.1)
            emit("summary", role="aux", epoch=opt.local_epoch, **net_sent(counters, read_counters()))
            return
        step_seconds = (workload.get("step_seconds") or 0.0) / max(args.compute, 1e-6)
        samples = compute_seconds = step_seconds_spent = 0.0
        started = time.monotonic()
        model.train()
        for batch in task.batches(args.index):
            if time.monotonic() > deadline:
                break
            t0 = time.monotonic()
            loss, n = task.loss(model, batch)
            loss.backward()
            spent = time.monotonic() - t0
            pad = max(0.0, step_seconds - spent) if step_seconds else spent * (1.0 / args.compute - 1.0)
            if pad > 0:
                time.sleep(pad)
            compute_seconds += time.monotonic() - t0
            samples += n
            emit("local", time=time.time(), loss=float(loss.detach()), samples=n)
            t1 = time.monotonic()
            opt.step()
            opt.zero_grad()
            step_seconds_spent += time.monotonic() - t1
        emit("summary", role=args.role, samples=samples, elapsed=time.monotonic() - started, compute_seconds=compute_seconds,
             step_seconds=step_seconds_spent, epoch=opt.local_epoch, **net_sent(counters, read_counters()))
    finally:
        if opt is not None:
            opt.shutdown()
        dht.shutdown()
        reaper.close()


if __name__ == "__main__":
    main()
