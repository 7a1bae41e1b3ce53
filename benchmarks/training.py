"""Collaborative training on an emulated network: swarm's modes against hivemind.Optimizer, on one scenario.

    python -m benchmarks.training --scenario hybrid --configs sync-fp32,sync-overlap-fp16,diloco-h10,hivemind \\
        [--duration 150] [--append] --json benchmarks/results/training-hybrid.json

Every configuration trains the scenario's training workload (the task plug-in, ALBERT tiny in the shipped
scenarios) on a fresh emulated network (real peers in network namespaces with tc-shaped links; needs root),
for the same duration, with the same micro-batches, compute slow-down (a local step at compute c takes
step_seconds / c; peers sleep the difference) and, in sync mode, the same target batch. The swarm
configurations are those of the loopback benchmark (benchmarks.modes.CONFIGS: mode, overlap, DiLoCo's H and
inner lr, codec; the target batch is the scenario's, and DiLoCo's outer batch is H micro-batches of every
trainer); `hivemind` and `hivemind-local` are hivemind.Optimizer with the workload's codec, plain and with
use_local_updates=True. `--append` adds the configurations to an existing JSON (one emulation per call, so a
shared machine can interleave other work between them).

Per configuration, from the peers' events (swarm.simulate.emulate.training_figures):
- compute utilization: the trainers' forward/backward seconds (emulated compute included) over their training
  wall time; blocked on rounds and opt.step shares next to it;
- bytes sent per sample: the rounds' bytes (swarm's own count, all peers) over the samples the trainers
  computed, and the same from the namespaces' interface counters (everything on the wire: DHT, headers; the
  only figure hivemind has), each with its ratio to sync-fp32;
- loss vs wall time: the mean micro-batch loss of all trainers per 15 s bin (DiLoCo: its inner models'), and
  the loss at equal wall time and at equal samples computed (benchmarks.modes.summarize);
- samples/s in completed global batches, the trainers' solo sum, and their ratio (the older utilization figure);
- with `--protocols`, what swarm's peers sent per protocol per sample (`protocols`: benchmarks.protocol_bytes's
  categories; the wire's remainder is the p2p daemons' own traffic and framing).
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

from benchmarks.modes import CONFIGS as MODE_CONFIGS
from benchmarks.modes import plot_modes, summarize
from swarm.simulate.emulate import Emulation, gather, run_training, training_figures
from swarm.simulate.network import ROUTER_ADDRESS, require_root
from swarm.simulate.scenario import Scenario, TrainingWorkload, load_scenario


def _workload_changes(fields: dict[str, Any]) -> dict[str, Any]:
    """The TrainingWorkload fields of a benchmarks.modes configuration (its sync target batch is the loopback's)."""
    return {"mode": fields.get("mode", "sync"), "overlap": fields.get("overlap", False), "diloco": fields.get("diloco", {}),
            "compression": fields.get("engine", {}).get("compression", "fp16")}


# name -> ("swarm", workload changes) or ("hivemind", hivemind_trainer flags)
CONFIGS: dict[str, tuple[str, Any]] = {
    **{name: ("swarm", _workload_changes(fields)) for name, fields in MODE_CONFIGS.items()},
    "hivemind": ("hivemind", []),
    "hivemind-local": ("hivemind", ["--use-local-updates"]),
}


COUNTED_WORKER = "benchmarks.workers.counted_training_peer"


def protocol_breakdown(peers: list[dict[str, Any]], samples: float) -> dict[str, dict[str, float]]:
    """Bytes every peer sent per protocol (benchmarks.protocol_bytes, counted by COUNTED_WORKER), per sample computed."""
    sent: dict[str, float] = {}
    for peer in peers:
        for category, n in (peer.get("protocol_bytes") or {}).get("sent", {}).items():
            sent[category] = sent.get(category, 0) + n
    return {"sent_per_sample": {k: round(v / samples, 1) for k, v in sorted(sent.items(), key=lambda kv: -kv[1])}} if samples else {}


def bench_swarm(scenario: Scenario, log_dir: Path, protocols: bool = False) -> dict[str, Any]:
    report = run_training(scenario, log_dir, progress=lambda s: print(s, flush=True),
                          worker=COUNTED_WORKER if protocols else "swarm.simulate.worker")
    if protocols:
        report["protocols"] = protocol_breakdown(report["peers_detail"], report.get("samples") or 0)
    return {"samples_per_second": report.pop("swarm_samples_per_second"), "started": report.pop("started"),
            **{k: v for k, v in report.items() if k not in ("scenario", "peers", "duration")}}


def bench_hivemind(scenario: Scenario, log_dir: Path, flags: list[str]) -> dict[str, Any]:
    workload = scenario.workload
    assert isinstance(workload, TrainingWorkload)
    payload = json.dumps(workload.model_dump())
    with Emulation(scenario, log_dir) as emu:
        boot = emu.python(None, "benchmarks.workers.hivemind_trainer", ["--bootstrap", "--host", ROUTER_ADDRESS], "bootstrap")
        initial = [m for m in boot.expect("ready", 120)["maddrs"] if ROUTER_ADDRESS in m]
        procs = [emu.python(p.index, "benchmarks.workers.hivemind_trainer",
                            ["--host", emu.network.address(p.index), "--initial-peers", *initial, "--index", str(p.index),
                             "--role", p.role, "--compute", str(p.compute), "--workload", payload, *flags], f"hivemind{p.index}-{p.name}")
                 for p in emu.peers]
        gather(procs, "ready", 300)
        print(f"hivemind{' '.join(['', *flags])}: {len(procs)} peers up; training for {workload.duration:.0f}s", flush=True)
        started = time.time()
        for proc in procs:
            proc.send(cmd="go", duration=workload.duration)
        summaries = gather(procs, "summary", workload.duration + 300)
        histories = [list(proc.history) for proc in procs]
    brings = [p.brings for p in emu.peers]
    trainers = [s for s, b in zip(summaries, brings) if b]
    epochs = max(s["epoch"] for s in trainers)
    solo = sum(s["samples"] / s["compute_seconds"] for s in trainers if s.get("compute_seconds"))
    rate = epochs * workload.target_batch_size / workload.duration
    return {"samples_per_second": rate, "solo_samples_per_second": solo, "utilization": rate / solo if solo else float("nan"),
            "epochs": epochs, "started": started, "flags": flags, **training_figures(brings, summaries, histories, started, workload.duration),
            "peers_detail": summaries}


def run_config(name: str, scenario: Scenario, log_dir: Path, protocols: bool = False) -> dict[str, Any]:
    system, spec = CONFIGS[name]
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    try:
        if system == "swarm":
            result = bench_swarm(scenario.with_workload(**spec), log_dir, protocols)
        else:
            result = bench_hivemind(scenario, log_dir, spec)
    except KeyboardInterrupt:
        raise
    except Exception as e:
        result = {"samples_per_second": float("nan"), "error": f"{type(e).__name__}: {e}"[:500]}
    result.update(system=system, wall_s=round(time.monotonic() - started, 1), load_before=round(load_before, 1),
                  load_after=round(os.getloadavg()[0], 1), inner_steps=(spec.get("diloco") or {}).get("inner_steps") if system == "swarm" else None)
    return result


def net_reduction(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """sync-fp32's wire bytes per sample over each configuration's (interface counters: comparable with hivemind)."""
    base = results.get("sync-fp32", {}).get("net_bytes_sent_per_sample")
    return {n: round(base / r["net_bytes_sent_per_sample"], 1) for n, r in results.items()
            if base and r.get("net_bytes_sent_per_sample")}


def main(argv: list[str] | None = None) -> int:
    from swarm.cli import prefer_huge_pages

    prefer_huge_pages()  # inherited by the peers this benchmark starts
    parser = argparse.ArgumentParser(prog="python -m benchmarks.training", description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", required=True)
    parser.add_argument("--duration", type=float, help="training seconds per configuration (default: the scenario's)")
    parser.add_argument("--configs", default="sync-fp16,hivemind", help=f"comma-separated, of {','.join(CONFIGS)}")
    parser.add_argument("--append", action="store_true", help="add to the results already in --json (same scenario)")
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--log-dir", type=Path)
    parser.add_argument("--protocols", action="store_true", help="count what swarm's peers send per protocol "
                        "(benchmarks.protocol_bytes; result key `protocols`)")
    args = parser.parse_args(argv)
    names = [n for n in args.configs.split(",") if n]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown or not names:
        print(f"benchmarks.training: unknown configuration(s) {', '.join(unknown) or '(none)'}; known: {', '.join(CONFIGS)}", file=sys.stderr)
        return 2
    try:
        require_root("benchmarks.training")
        scenario = load_scenario(args.scenario).with_workload("training", duration=args.duration)
    except Exception as e:
        print(f"benchmarks.training: {e}", file=sys.stderr)
        return 2
    report: dict[str, Any] = {}
    if args.append and args.json.exists():
        report = json.loads(args.json.read_text())
        if report.get("scenario") != scenario.name:
            print(f"benchmarks.training: {args.json} holds scenario {report.get('scenario')}, not {scenario.name}", file=sys.stderr)
            return 2
    report = {"benchmark": "training", "scenario": scenario.name, "peers": scenario.size, "workload": scenario.workload.model_dump(),
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": f"{platform.machine()} {os.cpu_count()} cores", **report}
    report.setdefault("results", {})
    report.setdefault("configs", {})
    log_root = args.log_dir or Path(tempfile.mkdtemp(prefix="bench-training-"))
    for name in names:
        result = run_config(name, scenario, log_root / name, args.protocols)
        result["duration_s"] = scenario.workload.duration
        report["results"][name] = result
        report["configs"][name] = CONFIGS[name][1]
        print(f"{name}: utilization {_pct(result.get('compute_utilization'))} (with the inner optimizer steps "
              f"{_pct(result.get('training_utilization'))}), blocked {_pct(result.get('round_wait_share'))}, "
              f"{_num(result.get('bytes_sent_per_sample'))} B/sample in rounds, {_num(result.get('net_bytes_sent_per_sample'))} on the wire, "
              f"{result.get('epochs')} epochs, {result.get('failed_rounds')} failed peer-rounds, load {result['load_before']} -> {result['load_after']}"
              + (f", error {result['error']}" if "error" in result else ""), flush=True)
    finish(report, args.json)
    print(json.dumps(report["summary"], indent=2))
    return 0


def finish(report: dict[str, Any], path: Path) -> None:
    """Summarize the results (benchmarks.modes.summarize) and write the JSON and the PNG. The loss at equal wall time
    and at equal samples compares only the configurations whose loss curve holds (nearly) all their samples: a curve
    cut short by NaN losses (`nan_losses`) or missing events would pull the common point back for every other one."""
    ok = {n: r for n, r in report["results"].items() if "error" not in r}
    complete = {n: r for n, r in ok.items() if r.get("loss_curve") and r["loss_curve"][-1][2] >= 0.95 * (r.get("samples") or 0)}
    report["summary"] = summary = summarize(ok)
    by_loss = summarize(complete)
    for key in ("loss_at_equal_wall_time", "loss_at_equal_samples"):
        summary.pop(key, None)
        if key in by_loss:
            summary[key] = by_loss[key]
    summary["goals"]["diloco_loss_at_equal_wall_time_below_sync"] = by_loss["goals"]["diloco_loss_at_equal_wall_time_below_sync"]
    summary["loss_curve_incomplete"] = sorted(set(ok) - set(complete))
    summary["net_bytes_per_sample_reduction_vs_sync_fp32"] = net_reduction(ok)
    loads = [x for r in report["results"].values() for x in (r.get("load_before"), r.get("load_after")) if x is not None]
    report["load_1min"] = {"min": min(loads), "max": max(loads), "mean": round(statistics.mean(loads), 1)} if loads else None
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=float) + "\n")
    _plot(report, path.with_suffix(".png"))


def _pct(x: Any) -> str:
    return f"{x:.0%}" if isinstance(x, (int, float)) else "-"


def _num(x: Any) -> str:
    return f"{x:,.0f}" if isinstance(x, (int, float)) else "-"


def _plot(report: dict[str, Any], path: Path) -> None:
    """Loss vs wall time for every configuration, utilization and bytes-per-sample bars (benchmarks.modes' figure)."""
    durations = {r.get("duration_s") for r in report["results"].values() if r.get("duration_s")}
    load = report.get("load_1min") or {}
    title = (f"{report['scenario']} emulated ({report['peers']} peers), {', '.join(f'{d:.0f}' for d in sorted(durations))} s each; "
             f"{report.get('machine', '')}, load {load.get('min', '?')}-{load.get('max', '?')}")
    plot_modes(report["results"], path, title)


if __name__ == "__main__":
    sys.exit(main())
