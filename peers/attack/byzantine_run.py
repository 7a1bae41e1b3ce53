"""`swarm attack --byzantine KIND:COUNT[,KIND:COUNT...]`: loopback runs with byzantine trainers, against an honest run.

Each phase is a fresh loopback run (coordinator + `--peers` honest trainers + COUNT byzantine ones of KIND,
peers.attack.byzantine) trained until the honest peers reach `--epochs` global epochs (equal samples: an epoch is
target_batch_size samples) or `--phase-timeout` passes. Two honest phases come first: robust mode on (the reference)
and off (robust mode's round-time overhead). Report per phase: the honest peers' loss at the last common epoch
(mean of their rows of the last 3 epochs) and its ratio to the honest run's, NaN seen, parameters identical among
the honest peers at every epoch two of them reached, the median round time and wall time per global step.
"""
from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

from swarm.errors import ConfigError

LOSS_WINDOW = 3   # epochs whose loss rows are averaged (one peer's loss of one mini-batch is noisy)


def parse_specs(text: str) -> list[tuple[str, int]]:
    """'sign_flip:1,huge:2' -> [('sign_flip', 1), ('huge', 2)]; ConfigError naming the bad item."""
    from .byzantine import KINDS

    specs = []
    for item in (s.strip() for s in text.split(",") if s.strip()):
        kind, _, count = item.partition(":")
        if kind not in KINDS:
            raise ConfigError(f"unknown byzantine kind {kind!r}: one of {', '.join(KINDS)}")
        try:
            n = int(count or "1")
        except ValueError:
            raise ConfigError(f"--byzantine {item!r}: COUNT must be a whole number") from None
        if not 1 <= n <= 16:
            raise ConfigError(f"--byzantine {item!r}: COUNT must be 1..16")
        specs.append((kind, n))
    if not specs:
        raise ConfigError("--byzantine needs KIND:COUNT, e.g. sign_flip:1")
    return specs


def phase_figures(honest_rows: list[list[dict]], epoch: int) -> dict:
    """What one phase's honest peers show at `epoch` (their metrics rows, one list per peer)."""
    rows = [r for peer in honest_rows for r in peer if not r.get("final")]
    window = [r["loss"] for r in rows if epoch - LOSS_WINDOW < r["epoch"] <= epoch and r.get("loss") is not None]
    nan = any(r.get("loss") is not None and not math.isfinite(r["loss"]) for r in rows)
    hashes: dict[int, set[str]] = {}
    for r in rows:
        if r.get("params_hash"):
            hashes.setdefault(r["epoch"], set()).add(r["params_hash"])
    rounds = [r["round_seconds"] for r in rows if r.get("round_seconds")]
    steps = [s for s in (_step_seconds(peer) for peer in honest_rows) if s is not None]
    finite = [x for x in window if math.isfinite(x)]
    return {
        "loss": statistics.fmean(finite) if finite else None,
        "nan": nan,
        "identical_params": all(len(h) == 1 for h in hashes.values()),
        "divergent_epochs": sorted(e for e, h in hashes.items() if len(h) > 1),
        "round_seconds_median": statistics.median(rounds) if rounds else None,
        "step_seconds_median": statistics.median(steps) if steps else None,
        "max_epoch": max((r["epoch"] for r in rows), default=-1),
    }


def _step_seconds(rows: list[dict]) -> float | None:
    """One peer's wall seconds per global step, from its second epoch to its last (the first holds the start-up): what
    a round's cost does to training, the round being a few percent of a step."""
    times = {r["epoch"]: r["time"] for r in rows if not r.get("final") and isinstance(r.get("time"), (int, float))}
    epochs = sorted(times)
    if len(epochs) < 3:
        return None
    return (times[epochs[-1]] - times[epochs[1]]) / (epochs[-1] - epochs[1])


def _run_phase(args: argparse.Namespace, config, label: str, kind: str, count: int, robust: str) -> dict:
    from ..chaos.cli import write_run_folder
    from ..chaos.harness import ChaosSwarm

    phase = config.model_copy(deep=True)
    phase.run_id = f"{config.run_id}-{label}"
    phase.engine.robust = robust
    run_dir, config_path = write_run_folder(args.run_dir, phase)
    h = ChaosSwarm(config_path, args.run_dir, run_dir, restart_after=10.0)
    started = time.monotonic()
    try:
        h.start_coordinator(fresh=True)
        honest = [h.spawn(f"p{i}", base=True, worker_seed=i) for i in range(args.peers)]
        for i in range(count):
            h.spawn(f"b{i}", base=False, worker_seed=100 + i, byzantine=kind)
        reached = h.wait_for(lambda: h.max_epoch >= args.epochs and all(
            any(r.get("epoch", -1) >= args.epochs for r in inst.rows) for inst in honest if inst.alive), args.phase_timeout)
    finally:
        h.close()
    rows = [[r for i in h.instances if i.slot == inst.slot for r in i.rows] for inst in honest]
    byzantine_ids = {r["peer_id"] for i in h.instances if i.slot.startswith("b") for r in i.rows if r.get("peer_id")}
    logs = [i.log.read_text(errors="replace") for i in h.instances if i.slot.startswith("p")]
    return {"label": label, "kind": kind, "attackers": count, "robust": robust, "reached_epochs": reached,
            "seconds": round(time.monotonic() - started, 1), "rows": rows, "run_dir": str(run_dir),
            **strike_figures(logs, byzantine_ids), **ban_figures(logs, rows, byzantine_ids, args.peers)}


def ban_figures(honest_logs: list[str], honest_rows: list[list[dict]], byzantine_ids: set[str], honest: int) -> dict:
    """Whether every honest peer banned every attacker (issue 16: within 3 rounds of its first attack), and the most
    steps an honest peer took in a group larger than the honest peers (so with an attacker in it: a lower bound)."""
    suffixes = {p[-8:] for p in byzantine_ids}
    banned = [{s for s in suffixes if any("banning " + s in line for line in text.splitlines())} for text in honest_logs]
    with_attackers = [sum(1 for r in peer if not r.get("final") and (r.get("group_size") or 0) > honest) for peer in honest_rows]
    return {"banned_by_every_honest_peer": bool(suffixes) and all(b == suffixes for b in banned),
            "honest_peers_banning": sum(1 for b in banned if b), "steps_with_attackers_max": max(with_attackers, default=0)}


def strike_figures(honest_logs: list[str], byzantine_ids: set[str]) -> dict:
    """Strikes, exclusions (swarm.averaging.robust.StrikeBook) and bans (swarm.averaging.bans) the honest peers logged,
    split by who was hit."""
    strikes = {"byzantine": 0, "honest": 0}
    excluded = {"byzantine": 0, "honest": 0}
    bans = {"byzantine": 0, "honest": 0}
    suffixes = {p[-8:] for p in byzantine_ids}
    for text in honest_logs:
        for line in text.splitlines():
            for marker, counts in (("clipped hard", strikes), ("sent bad data", strikes), ("excluded from the parts", excluded),
                                   ("banning ", bans)):
                if marker in line:
                    hit = any(s in line for s in suffixes)
                    counts["byzantine" if hit else "honest"] += 1
    return {"strikes": strikes, "exclusions": excluded, "bans": bans}


def cmd_byzantine(args: argparse.Namespace) -> dict:
    """Run the phases and return the report (see the module docstring)."""
    from ..chaos.cli import prepare_loopback_run

    specs = parse_specs(args.byzantine)
    if args.peers < 2:
        raise ConfigError("--peers must be at least 2 (parameters are compared across honest peers)")
    config, _, _ = prepare_loopback_run(args, "byzantine")
    plan = [("honest", "", 0, "on"), ("honest-robust-off", "", 0, "off")] + [(f"{k}-{n}", k, n, "on") for k, n in specs]
    phases = []
    for label, kind, count, robust in plan:
        print(f"phase {label}: {args.peers} honest trainers + {count} byzantine ({kind or '-'}), robust {robust}", flush=True)
        phases.append(_run_phase(args, config, label, kind, count, robust))
    common = min(max((r["epoch"] for peer in p["rows"] for r in peer if not r.get("final")), default=-1) for p in phases)
    reference = None
    report = {"task": config.task, "peers": args.peers, "epoch_compared": common,
              "target_batch_size": config.engine.target_batch_size, "phases": []}
    for p in phases:
        figures = phase_figures(p.pop("rows"), common)
        if p["label"] == "honest":
            reference = figures
        if reference and reference["loss"] and figures["loss"] is not None:
            figures["loss_vs_honest"] = round(figures["loss"] / reference["loss"], 4)
        report["phases"].append({**p, **figures})
        print(f"  {p['label']:22s} loss {figures['loss']} nan {figures['nan']} identical {figures['identical_params']} "
              f"round {figures['round_seconds_median']}", flush=True)
    on, off = report["phases"][0]["round_seconds_median"], report["phases"][1]["round_seconds_median"]
    report["robust_round_overhead"] = round(on / off - 1, 4) if on and off else None
    on, off = report["phases"][0]["step_seconds_median"], report["phases"][1]["step_seconds_median"]
    report["robust_step_overhead"] = round(on / off - 1, 4) if on and off else None
    return report


def write_report(report: dict, path: Path | None) -> None:
    import json

    text = json.dumps(report, indent=2)
    if path is not None:
        path.write_text(text + "\n")
        print(f"report written to {path}")
    print(text)
