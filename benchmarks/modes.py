"""Communicate less, compute more: sync, sync + overlap and DiLoCo (two H), with and without compression, on loopback.

    python -m benchmarks.modes [--duration 90] [--peers 2] [--only sync-fp32,diloco-h50] --json benchmarks/results/modes.json

Each configuration is one `swarm demo` run (a coordinator and N peers of ALBERT tiny, sequence length 32, on this
machine, the same seed, data and micro-batch of 8), for `--duration` seconds of training per peer. Sync runs
average every 32 samples (a short epoch: communication-heavy, as a slow WAN would make a larger batch); DiLoCo
runs take H inner steps per peer per outer step (target = H x peers x 8). From the peers' metrics lines:

- compute utilization: the share of the peers' training wall time spent in forward/backward (the demo's
  `compute_utilization`: summed over peers); `round_wait_share` is the share they were blocked on rounds,
  `optimizer_share` the share in opt.step's own work (accumulating; DiLoCo's inner AdamW step), `data_share` the
  share waiting for the next micro-batch;
- bytes sent per sample: all bytes the peers sent in rounds over all samples they computed;
- loss vs wall time: each epoch's mean training loss (DiLoCo: the inner models' loss during the outer step)
  against seconds since the first peer started training.

Goals (DESIGN issue "communicate less, compute more"): DiLoCo utilization >= 95%; DiLoCo bytes per sample >= 100x
below sync fp32; overlap utilization >= 20 points above plain sync. The JSON says where each stands; a PNG next
to it plots the three figures. Loopback has no bandwidth limit, so rounds are short and cost mostly CPU on a
shared machine: the figures say how much the modes save in bytes and blocking, not what a slow WAN would cost.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from swarm.config import DiLoCoConfig
from swarm.process.lifecycle import set_parent_death_signal

BASE = {"task": "albert", "task_options": {"size": "tiny", "seq_len": 32}, "micro_batch_size": 8, "seed": 0, "lr": 0.02,
        "warmup_epochs": 2, "total_epochs": 200}
SYNC_TARGET = 32

# name -> RunConfig fields on top of BASE (engine fields under "engine")
CONFIGS: dict[str, dict[str, Any]] = {
    "sync-fp32": {"mode": "sync", "engine": {"compression": "none", "target_batch_size": SYNC_TARGET}},
    "sync-fp16": {"mode": "sync", "engine": {"compression": "fp16", "target_batch_size": SYNC_TARGET}},
    "sync-overlap-fp16": {"mode": "sync", "overlap": True, "engine": {"compression": "fp16", "target_batch_size": SYNC_TARGET}},
    "sync-powersgd": {"mode": "sync", "engine": {"compression": "powersgd", "target_batch_size": SYNC_TARGET}},
    "diloco-h10": {"mode": "diloco", "diloco": {"inner_steps": 10, "inner_lr": 0.001}, "engine": {"compression": "fp16"}},
    "diloco-h50": {"mode": "diloco", "diloco": {"inner_steps": 50, "inner_lr": 0.001}, "engine": {"compression": "fp16"}},
    "diloco-h50-powersgd": {"mode": "diloco", "diloco": {"inner_steps": 50, "inner_lr": 0.001}, "engine": {"compression": "powersgd"}},
    "diloco-h50-overlap": {"mode": "diloco", "overlap": True, "diloco": {"inner_steps": 50, "inner_lr": 0.001}, "engine": {"compression": "fp16"}},
    # issue 19: H = 50 per fragment; F = 4 fragments strided over the model's modules, one per round, in the background
    "streaming-diloco": {"mode": "streaming-diloco", "diloco": {"inner_steps": 50, "inner_lr": 0.001, "fragments": 4},
                         "engine": {"compression": "fp16"}},
    "streaming-diloco-4bit": {"mode": "streaming-diloco", "diloco": {"inner_steps": 50, "inner_lr": 0.001, "fragments": 4,
                                                                     "outer_codec": "uniform4bit"}, "engine": {"compression": "fp16"}},
    # SparseLoCo (Sarfi et al. 2025): top-k 2% with 2-bit values and error feedback in place of outer momentum
    # (benchmarks/README.md, outer-gradient codecs: top-k under Nesterov momentum lags far behind), outer lr 1
    "sparseloco": {"mode": "diloco", "overlap": True, "diloco": {"inner_steps": 50, "inner_lr": 0.001, "outer_codec": "topk",
                                                                  "outer_momentum": 0.0, "outer_lr": 1.0},
                   "engine": {"compression": "fp16", "topk_fraction": 0.02, "topk_value_bits": 2}},
    # the same, the reducers sending every member's message back (SparseLoCo's all-gather; before session 25 the only
    # way): sparseloco's reducers send the top of the average (swarm.compression.topk)
    "sparseloco-exact": {"mode": "diloco", "overlap": True, "diloco": {"inner_steps": 50, "inner_lr": 0.001, "outer_codec": "topk",
                                                                        "outer_momentum": 0.0, "outer_lr": 1.0},
                         "engine": {"compression": "fp16", "topk_fraction": 0.02, "topk_value_bits": 2, "topk_result": "exact"}},
}
LOCAL_STEP_MODES = ("diloco", "streaming-diloco")   # modes whose rounds average pseudo-gradients of H local steps


def _local_steps(name: str) -> bool:
    return CONFIGS.get(name, {}).get("mode") in LOCAL_STEP_MODES


def run_one(name: str, fields: dict[str, Any], peers: int, duration: float, work: Path) -> dict[str, Any]:
    config = {**BASE, **fields, "run_id": f"modes-{name}"}
    config["engine"] = dict(fields.get("engine", {}))
    if config.get("mode") in LOCAL_STEP_MODES:   # one outer step = H inner steps of every peer, streaming: a fragment's share
        d = DiLoCoConfig(**config["diloco"])          # (what `swarm demo` derives too)
        config["engine"]["target_batch_size"] = d.target_batch_size(peers * config["micro_batch_size"], streaming=config["mode"] == "streaming-diloco")
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    report_path = work / f"{name}.report.json"
    cmd = [sys.executable, "-m", "swarm.cli", "-q", "demo", "--config", str(path), "--peers", str(peers), "--duration", str(duration),
           "--run-dir", str(work / "runs"), "--port", "0", "--report", str(report_path), "--checkpoint-every", "1000"]
    started = time.monotonic()
    print(f"{name}: {' '.join(cmd[2:])}", flush=True)
    log = work / f"{name}.log"
    with open(log, "w") as out:   # the demo (and through it every peer) ends with this process
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=set_parent_death_signal)
        try:
            proc.wait(duration + 600)
        except (KeyboardInterrupt, subprocess.TimeoutExpired):
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
    if proc.returncode != 0 or not report_path.exists():
        return {"error": f"demo exited {proc.returncode}: see {log}"}
    report = json.loads(report_path.read_text())
    run_dir = work / "runs" / config["run_id"]
    report["loss_curve"] = _loss_curve(run_dir, peers)
    report["wall_s"] = round(time.monotonic() - started, 1)
    return report


def _loss_curve(run_dir: Path, peers: int) -> list[tuple[float, float, int]]:
    """(seconds since the first peer started training, mean loss of the epoch, samples in the global batches so far)
    per epoch."""
    rows: dict[int, list[dict]] = {}
    for i in range(peers):
        path = run_dir / f"peer{i}.jsonl"
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not r.get("final") and r.get("loss") == r.get("loss"):
                rows.setdefault(r["epoch"], []).append(r)
    if not rows:
        return []
    first = min(rows)
    start = min(r["time"] - r.get("wall_seconds", 0.0) for r in rows[first])
    curve, samples = [], 0
    for e, rs in sorted(rows.items()):
        samples += int(rs[0].get("samples", 0))
        curve.append((round(min(r["time"] for r in rs) - start, 2), sum(r["loss"] for r in rs) / len(rs), samples))
    return curve


def _loss_at(curve: list, x: float, axis: int) -> float | None:
    """The loss of the last epoch at or before x on `axis` (0: seconds, 2: samples); None if none is."""
    before = [point[1] for point in curve if len(point) > axis and point[axis] <= x]
    return round(before[-1], 4) if before else None


def summarize(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    def get(name: str, key: str) -> float | None:
        value = results.get(name, {}).get(key)
        return float(value) if isinstance(value, (int, float)) else None

    fp32 = get("sync-fp32", "bytes_sent_per_sample")
    out: dict[str, Any] = {"bytes_per_sample_reduction_vs_sync_fp32": {}}
    for name, r in results.items():
        b = r.get("bytes_sent_per_sample")
        if fp32 and b:
            out["bytes_per_sample_reduction_vs_sync_fp32"][name] = round(fp32 / b, 1)
    diloco_util = {n: get(n, "compute_utilization") for n in results if _local_steps(n)}
    best_reduction = max((v for n, v in out["bytes_per_sample_reduction_vs_sync_fp32"].items() if _local_steps(n)), default=None)
    plain_sync = "sync-fp16" if "sync-fp16" in results else "sync-fp32"   # overlap's baseline: the same codec where it ran
    sync_u, overlap_u = get(plain_sync, "compute_utilization"), get("sync-overlap-fp16", "compute_utilization")
    # what each saving costs: the loss at the same wall time and at the same samples (the shortest run's end)
    curves = {n: r.get("loss_curve") or [] for n, r in results.items() if r.get("loss_curve")}
    if curves:
        wall = min(c[-1][0] for c in curves.values())
        seen = min((c[-1][2] for c in curves.values() if len(c[-1]) > 2), default=None)
        out["loss_at_equal_wall_time"] = {"seconds": wall, "loss": {n: _loss_at(c, wall, 0) for n, c in curves.items()}}
        if seen:
            out["loss_at_equal_samples"] = {"samples": seen, "loss": {n: _loss_at(c, seen, 2) for n, c in curves.items()}}
    sync_loss = out.get("loss_at_equal_wall_time", {}).get("loss", {}).get("sync-fp32")
    diloco_loss = {n: v for n, v in out.get("loss_at_equal_wall_time", {}).get("loss", {}).items() if _local_steps(n)}
    out["goals"] = {
        "diloco_loss_at_equal_wall_time_below_sync": {
            "sync_fp32": sync_loss, "diloco": diloco_loss,
            "met": sync_loss is not None and bool(diloco_loss) and all(v is not None and v < sync_loss for v in diloco_loss.values()),
        },
        "diloco_utilization_ge_95pct": {"measured": diloco_util, "met": bool(diloco_util) and all(v is not None and v >= 0.95 for v in diloco_util.values())},
        "diloco_bytes_per_sample_100x_below_sync_fp32": {"best_measured": best_reduction, "met": best_reduction is not None and best_reduction >= 100},
        "overlap_utilization_20_points_above_sync": {
            "sync": sync_u, "sync_config": plain_sync, "overlap": overlap_u,
            "points": round(100 * (overlap_u - sync_u), 1) if sync_u is not None and overlap_u is not None else None,
            "met": sync_u is not None and overlap_u is not None and overlap_u - sync_u >= 0.20,
        },
    }
    return out


def main(argv: list[str] | None = None) -> int:
    from swarm.cli import prefer_huge_pages

    prefer_huge_pages()  # inherited by the peers this benchmark starts
    parser = argparse.ArgumentParser(prog="python -m benchmarks.modes", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=90.0, help="training seconds per configuration")
    parser.add_argument("--peers", type=int, default=2)
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(CONFIGS)}")
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--work-dir", type=Path, help="configs, logs and demo reports (default: a temporary folder)")
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(CONFIGS)
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        print(f"benchmarks.modes: unknown configuration(s) {', '.join(unknown)}", file=sys.stderr)
        return 2
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench-modes-"))
    work.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "benchmark": "modes", "peers": args.peers, "duration_s": args.duration, "task": "albert tiny (seq 32)", "base": BASE,
        "sync_target_batch_size": SYNC_TARGET,
        "configs": {n: CONFIGS[n] for n in names}, "results": {},
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f} at start",
    }
    for name in names:
        result = run_one(name, CONFIGS[name], args.peers, args.duration, work)
        result["load_after"] = round(os.getloadavg()[0], 1)
        report["results"][name] = result
        print(f"{name}: utilization {result.get('compute_utilization')}, wait {result.get('round_wait_share')}, "
              f"optimizer {result.get('optimizer_share')}, data {result.get('data_share')}, "
              f"{result.get('bytes_sent_per_sample')} B/sample, {result.get('epochs')} epochs, loss {result.get('loss_first')} -> "
              f"{result.get('loss_last')}, codecs {result.get('codecs')}", flush=True)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        report["summary"] = summarize(report["results"])
        args.json.write_text(json.dumps(report, indent=2, default=float) + "\n")
    report["machine"] += f", {os.getloadavg()[0]:.1f} at end"
    args.json.write_text(json.dumps(report, indent=2, default=float) + "\n")
    _plot(report, args.json.with_suffix(".png"))
    print(json.dumps(report["summary"], indent=2))
    return 0


def _plot(report: dict[str, Any], path: Path) -> None:
    plot_modes(report["results"], path,
               f"{report['task']}, {report['peers']} peers on loopback, {report['duration_s']:.0f}s each ({report['machine']})")


def plot_modes(all_results: dict[str, dict[str, Any]], path: Path, title: str) -> None:
    """Loss vs wall time of every configuration, its compute-utilization split and its bytes sent per sample
    (shared with benchmarks.training, the same configurations on an emulated network)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = {n: r for n, r in all_results.items() if "error" not in r}
    if not results:
        return
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for name, r in results.items():
        curve = r.get("loss_curve") or []
        if curve:
            axes[0].plot([point[0] for point in curve], [point[1] for point in curve], marker=".", label=name)
    axes[0].set_xlabel("seconds of training")
    axes[0].set_ylabel("training loss (mean per epoch, or per bin)")
    axes[0].set_title("loss vs wall time")
    axes[0].legend(fontsize=7)
    names = list(results)
    x = range(len(names))
    bottom = [0.0] * len(names)
    for key, color, label in (("compute_utilization", "tab:green", "forward/backward"), ("optimizer_share", "tab:orange", "opt.step work"),
                              ("data_share", "tab:gray", "next micro-batch"), ("round_wait_share", "tab:red", "blocked on rounds")):
        values = [100 * (results[n].get(key) or 0) for n in names]
        axes[1].bar(x, values, bottom=bottom, color=color, label=label)
        bottom = [b + v for b, v in zip(bottom, values)]
    axes[1].axhline(95, color="k", ls=":", lw=1)
    axes[1].set_xticks(list(x), names, rotation=35, ha="right", fontsize=8)
    axes[1].set_ylabel("% of training wall time")
    axes[1].set_title("compute utilization")
    axes[1].legend(fontsize=7)
    per_sample = [results[n].get("bytes_sent_per_sample") or float("nan") for n in names]
    if any(r.get("net_bytes_sent_per_sample") for r in results.values()):   # emulated: the interfaces' count next to the rounds'
        on_wire = [results[n].get("net_bytes_sent_per_sample") or float("nan") for n in names]
        axes[2].bar([i - 0.2 for i in x], per_sample, width=0.4, color="tab:blue", label="in rounds (swarm's count)")
        axes[2].bar([i + 0.2 for i in x], on_wire, width=0.4, color="tab:cyan", label="on the wire (interface counters)")
        axes[2].legend(fontsize=7)
    else:
        axes[2].bar(x, per_sample, color="tab:blue")
    axes[2].set_yscale("log")
    axes[2].set_xticks(list(x), names, rotation=35, ha="right", fontsize=8)
    axes[2].set_ylabel("bytes sent per sample")
    axes[2].set_title("communication")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
