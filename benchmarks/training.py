"""Collaborative training on an emulated network: swarm against hivemind.Optimizer, against the peers' solo speed.

    python -m benchmarks.training --scenario mini-hetero [--duration 180] [--json results/training-mini-hetero.json]

Both systems train the scenario's training workload (the task plug-in, ALBERT tiny in the shipped scenarios) on
a fresh emulated network each (needs root), for the same duration, with the same micro-batches, target batch,
compute slow-down (a local step at compute c takes step_seconds / c; peers sleep the difference) and fp16 gradients.

- swarm samples/s: samples in the global batches the swarm completed, over the duration.
- solo samples/s: the sum over trainers of samples / seconds spent computing (what each would do alone).
- compute utilization: swarm samples/s over the solo sum (1.0: averaging costs no compute time).
The same figures for `hivemind_optimizer` (epochs reached x target batch, over the duration).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from swarm.simulate.emulate import Emulation, gather, run_training
from swarm.simulate.network import ROUTER_ADDRESS, require_root
from swarm.simulate.scenario import Scenario, TrainingWorkload, load_scenario


def bench_swarm(scenario: Scenario, log_dir: Path) -> dict[str, Any]:
    report = run_training(scenario, log_dir, progress=lambda s: print(s, flush=True))
    return {
        "samples_per_second": report["swarm_samples_per_second"], "solo_samples_per_second": report["solo_samples_per_second"],
        "utilization": report["utilization"], "epochs": report["epochs"], "median_round_seconds": report["median_round_seconds"],
        "consistent": report["consistent"], "nominal_solo_samples_per_second": report["nominal_solo_samples_per_second"],
    }


def bench_hivemind(scenario: Scenario, log_dir: Path) -> dict[str, Any]:
    workload = scenario.workload
    assert isinstance(workload, TrainingWorkload)
    payload = json.dumps(workload.model_dump())
    with Emulation(scenario, log_dir) as emu:
        boot = emu.python(None, "benchmarks.workers.hivemind_trainer", ["--bootstrap", "--host", ROUTER_ADDRESS], "bootstrap")
        initial = [m for m in boot.expect("ready", 120)["maddrs"] if ROUTER_ADDRESS in m]
        procs = [emu.python(p.index, "benchmarks.workers.hivemind_trainer",
                            ["--host", emu.network.address(p.index), "--initial-peers", *initial, "--index", str(p.index),
                             "--role", p.role, "--compute", str(p.compute), "--workload", payload], f"hivemind{p.index}-{p.name}")
                 for p in emu.peers]
        gather(procs, "ready", 300)
        print(f"hivemind: {len(procs)} peers up; training for {workload.duration:.0f}s", flush=True)
        for proc in procs:
            proc.send(cmd="go", duration=workload.duration)
        summaries = gather(procs, "summary", workload.duration + 300)
    trainers = [s for s, p in zip(summaries, emu.peers) if p.brings]
    epochs = max(s["epoch"] for s in trainers)
    solo = sum(s["samples"] / s["compute_seconds"] for s in trainers if s.get("compute_seconds"))
    rate = epochs * workload.target_batch_size / workload.duration
    return {"samples_per_second": rate, "solo_samples_per_second": solo, "utilization": rate / solo if solo else float("nan"),
            "epochs": epochs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.training", description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", required=True)
    parser.add_argument("--duration", type=float)
    parser.add_argument("--systems", default="swarm,hivemind_optimizer")
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--log-dir", type=Path)
    args = parser.parse_args(argv)
    try:
        require_root("benchmarks.training")
    except Exception as e:
        print(f"benchmarks.training: {e}", file=sys.stderr)
        return 2
    scenario = load_scenario(args.scenario).with_workload("training", duration=args.duration)
    log_root = args.log_dir or Path(tempfile.mkdtemp(prefix="bench-training-"))
    report: dict[str, Any] = {"benchmark": "training", "scenario": scenario.name, "peers": scenario.size,
                              "workload": scenario.workload.model_dump(), "results": {},
                              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                              "machine": f"{platform.machine()} {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f} at start"}
    for system in args.systems.split(","):
        started = time.monotonic()
        try:
            result = bench_swarm(scenario, log_root / system) if system == "swarm" else bench_hivemind(scenario, log_root / system)
        except KeyboardInterrupt:
            raise
        except Exception as e:
            result = {"samples_per_second": float("nan"), "error": f"{type(e).__name__}: {e}"[:500]}
        result["wall_s"] = time.monotonic() - started
        report["results"][system] = result
        print(f"{system}: {result['samples_per_second']:.2f} samples/s, utilization {result.get('utilization', float('nan')):.0%}", flush=True)
    report["machine"] += f", {os.getloadavg()[0]:.1f} at end"
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, default=float) + "\n")
    _plot(report, args.json.with_suffix(".png"))
    return 0


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["results"])
    swarm_rate = [report["results"][n]["samples_per_second"] for n in names]
    solo = [report["results"][n].get("solo_samples_per_second", float("nan")) for n in names]
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    x = range(len(names))
    ax.bar([i - 0.2 for i in x], solo, width=0.4, label="sum of solo samples/s", color="tab:gray")
    ax.bar([i + 0.2 for i in x], swarm_rate, width=0.4, label="swarm samples/s", color="tab:green")
    ax.set_xticks(list(x), names)
    ax.set_ylabel("samples/s")
    ax.set_title(f"training on {report['scenario']} ({report['peers']} peers)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
