"""GPU check: two peers train ALBERT with mixed precision (fp16 autocast + GradScaler) on one CUDA machine.

    python -m benchmarks.gpu [--duration 60] [--size small] [--out benchmarks/results/gpu.json]

It starts a coordinator and two `swarm join` peers on loopback, both on the GPU with `precision: fp16`,
lets them train for --duration seconds, and reports the swarm's samples per second, the median round
time, whether the peers hold identical parameters at their last common epoch, the GPU's name and the
steps the GradScaler skipped (the demo report's figures, peers.demo.build_report). Where there is no
CUDA device it says so and exits 0, so CI machines without a GPU pass.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

PEERS = 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=60.0, help="seconds each peer trains (default 60)")
    p.add_argument("--size", default="small", help="ALBERT size: tiny, small, base, large (default small)")
    p.add_argument("--micro-batch-size", type=int, default=32)
    p.add_argument("--target-batch-size", type=int, default=1024)
    p.add_argument("--precision", default="fp16", choices=("fp16", "bf16", "fp32"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu.json"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("benchmarks.gpu: no CUDA device on this machine: nothing to measure (run it where a GPU is)", flush=True)
        return 0
    from peers.demo import build_report
    from peers.local_swarm import peer_command, read_jsonl, start_coordinator, stop_all
    from swarm.config import RunConfig
    from swarm.process.lifecycle import set_parent_death_signal

    config = RunConfig(run_id="gpu", task="albert", task_options={"size": args.size}, micro_batch_size=args.micro_batch_size,
                       precision=args.precision, warmup_epochs=0, engine={"target_batch_size": args.target_batch_size})
    root = Path(tempfile.mkdtemp(prefix="swarm-gpu-"))
    run_dir = root / config.run_id
    run_dir.mkdir(parents=True)
    config_path = run_dir / "experiment.yaml"
    config_path.write_text(yaml.safe_dump(config.model_dump(), sort_keys=False))
    procs: list[subprocess.Popen] = []
    coordinator = None
    started = time.monotonic()
    try:
        coordinator, bootstrap, _ = start_coordinator(config_path, root, run_dir, checkpoint_every=0)
        for i in range(PEERS):
            with open(run_dir / f"peer{i}.log", "w") as log:
                procs.append(subprocess.Popen(peer_command(config_path, bootstrap, run_dir / f"peer{i}.jsonl", worker_seed=i,
                                                           duration=args.duration),
                                              stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                              preexec_fn=set_parent_death_signal))
        deadline = time.monotonic() + args.duration + 300
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            time.sleep(1.0)
    finally:
        stop_all(procs)
        if coordinator is not None:
            stop_all([coordinator])
    report = build_report(config, run_dir, PEERS, time.monotonic() - started)
    finals = [row for i in range(PEERS) for row in read_jsonl(run_dir / f"peer{i}.jsonl") if row.get("final")]
    report.update({"device": torch.cuda.get_device_name(0), "precision": args.precision, "size": args.size,
                   "amp_skipped_steps": sum(f.get("amp_skipped_steps", 0) for f in finals), "logs": str(run_dir)})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("device", "samples_per_second", "round_seconds_median", "params_identical",
                                             "epochs", "amp_skipped_steps")}, indent=2))
    print(f"report written to {args.out}")
    return 0 if report["params_identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
