"""`swarm simulate`: emulate a scenario with real peers, or model it (a plug-in of the `swarm` command).

    swarm simulate list
    swarm simulate emulate --scenario mini-hetero [--params 1M] [--rounds 3] [--json out.json]
    swarm simulate emulate --scenario hybrid --workload training --mode diloco --inner-steps 10 [--overlap]
    swarm simulate model --scenario dedloc-albert [--peers 2000] [--json out.json]
    swarm simulate cleanup            # namespaces left behind by an emulator that was SIGKILLed
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .scenario import AllreduceWorkload, TrainingWorkload, list_scenarios, load_scenario, parse_count

logger = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate", help="emulate or model a swarm on a heterogeneous network",
                       description="Run a scenario with real peers on an emulated network (emulate), or model it (model).")
    modes = p.add_subparsers(dest="simulate_mode", metavar="MODE")

    ls = modes.add_parser("list", help="the shipped scenarios")
    ls.set_defaults(func=cmd_list)

    em = modes.add_parser("emulate", help="real peers in network namespaces, links shaped with tc (needs root)",
                          description="Real peers, one network namespace each, behind a router; upload and download shaped "
                                      "with tc tbf; nat peers drop inbound connections. netem is unavailable here, so links "
                                      "add no latency.")
    _common(em)
    em.add_argument("--log-dir", type=Path, help="peer logs (default: a temporary folder)")
    em.set_defaults(func=cmd_emulate)

    mo = modes.add_parser("model", help="event-driven model of the protocol (thousands of peers in seconds)")
    _common(mo)
    mo.add_argument("--peers", type=int, help="scale the scenario's mix of peers to this many")
    mo.add_argument("--efficiency", type=float, help="TCP payload per byte of link rate (default 0.94)")
    mo.add_argument("--model-params", type=parse_count, help="training: values in the model's gradient (default 11M)")
    mo.add_argument("--target-batch-size", type=int, help="training: samples per global step (default: the scenario's; "
                                                          "a swarm of many peers needs a larger one)")
    mo.add_argument("--png", type=Path, help="write the plot here (default SCENARIO-model.png in this folder)")
    mo.set_defaults(func=cmd_model)

    cl = modes.add_parser("cleanup", help="delete namespaces left by emulators that died")
    cl.set_defaults(func=cmd_cleanup)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scenario", required=True, help=f"a YAML file or a shipped name ({', '.join(list_scenarios())})")
    p.add_argument("--workload", choices=["allreduce", "training"], help="default: the scenario's own")
    p.add_argument("--params", type=parse_count, help="allreduce: values per vector (e.g. 1M)")
    p.add_argument("--rounds", type=int, help="allreduce: rounds")
    p.add_argument("--compression", help="codec: none, fp16, uniform8bit, quantile8bit")
    p.add_argument("--duration", type=float, help="training: seconds")
    p.add_argument("--mode", choices=["sync", "diloco", "streaming-diloco"], help="training: the run mode (default: the workload's)")
    p.add_argument("--overlap", action="store_true", default=None, help="training: average in the background (one step late)")
    p.add_argument("--inner-steps", type=int, help="training, diloco: H, local steps of every trainer per outer step")
    p.add_argument("--inner-lr", type=float, help="training, diloco: the inner AdamW's lr")
    p.add_argument("--divisor", type=float, help="divide every rate by this (overrides the scenario's bandwidth_divisor)")
    p.add_argument("--json", type=Path, help="write the report here")


def scenario_from_args(args: argparse.Namespace):
    scenario = load_scenario(args.scenario)
    if args.divisor is not None:
        if not args.divisor > 0:
            raise ConfigError("--divisor must be positive")
        scenario = scenario.model_copy(update={"bandwidth_divisor": args.divisor})
    kind = args.workload or scenario.workload.kind
    if kind == "allreduce":
        return scenario.with_workload("allreduce", params=args.params, rounds=args.rounds, compression=args.compression)
    diloco = None
    inner = {k: v for k, v in (("inner_steps", args.inner_steps), ("inner_lr", args.inner_lr)) if v is not None}
    if inner:
        diloco = scenario.with_workload("training").workload.diloco.model_dump() | inner
    return scenario.with_workload("training", duration=args.duration, compression=args.compression, mode=args.mode,
                                  overlap=args.overlap, diloco=diloco, target_batch_size=getattr(args, "target_batch_size", None))


def _write(report: dict[str, Any], path: Path | None) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2, default=float) + "\n")
        print(f"report written to {path}")


def cmd_list(args: argparse.Namespace) -> int:
    for name in list_scenarios():
        s = load_scenario(name)
        print(f"{name:16s} {s.size:4d} peers  {s.description}")
    return 0


def cmd_emulate(args: argparse.Namespace) -> int:
    from .emulate import run_allreduce, run_training
    from .network import require_root

    require_root()
    scenario = scenario_from_args(args)
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="swarm-emulate-"))
    print(f"emulating {scenario.name}: {scenario.size} peers, logs in {log_dir}", flush=True)
    started = time.monotonic()
    if isinstance(scenario.workload, AllreduceWorkload):
        report = run_allreduce(scenario, log_dir, progress=lambda s: print(s, flush=True))
        _print_allreduce(report)
    else:
        report = run_training(scenario, log_dir, progress=lambda s: print(s, flush=True))
        print(json.dumps({k: v for k, v in report.items() if k != "peers_detail"}, indent=2, default=float))
    report["elapsed_s"] = time.monotonic() - started
    _write(report, args.json)
    return 0


def _print_allreduce(report: dict[str, Any]) -> None:
    """Emulated rounds: seconds against the LP bound, how many peers committed, and the first shares (the JSON has all)."""
    bound = report["lp_bound_s"]
    print(f"{report['scenario']}: {report['peers']} peers, {report['vector_bytes'] / 1e6:.1f} MB per vector, LP bound {bound:.2f}s")
    for r, rnd in enumerate(report["rounds"]):
        shares = rnd.get("shares") or []
        shown = ", ".join(f"{s:.2f}" for s in shares[:16]) + (f", ... ({len(shares)} in all)" if len(shares) > 16 else "")
        print(f"  round {r}: {rnd['seconds']:6.2f}s ({rnd['seconds'] / bound:4.2f}x bound), {rnd['ok']} peers committed, "
              f"shares [{shown}]")


def cmd_model(args: argparse.Namespace) -> int:
    from .model import ModelParams, model_allreduce, model_training
    from .model_report import format_role_table, write_png

    if args.target_batch_size is not None and args.target_batch_size < 1:
        raise ConfigError("--target-batch-size must be at least 1")
    scenario = scenario_from_args(args)
    if args.peers:
        scenario = scenario.scaled(args.peers)
    params = ModelParams()
    if args.efficiency is not None:
        if not 0 < args.efficiency <= 1:
            raise ConfigError("--efficiency must be in (0, 1]")
        params.efficiency = args.efficiency
    started = time.monotonic()
    last: list = []
    if isinstance(scenario.workload, AllreduceWorkload):
        report = model_allreduce(scenario, params=params, last=last)
        report["elapsed_s"] = time.monotonic() - started
        bound = report["lp_bound_s"]
        print(f"{report['scenario']}: {report['peers']} peers, {report['vector_bytes'] / 1e6:.1f} MB per vector, LP bound {bound:.2f}s")
        seconds = [r["seconds"] for r in report["rounds"]]
        print("  rounds: " + ", ".join(f"{x:.2f}s" for x in seconds) + f" (median {report['median_seconds']:.2f}s, "
              f"{report['median_seconds'] / bound:.2f}x the bound); modelled in {report['elapsed_s']:.2f}s")
        last_round = report["rounds"][-1] if report["rounds"] else {}
        if last_round.get("subgroups"):
            stages = ", ".join(f"{x:.2f}s" for x in last_round["stage_seconds"])
            print(f"  hierarchical: {last_round['subgroups']} subgroups (stages {stages}), {last_round['streams']:.1f} streams per member")
    else:
        assert isinstance(scenario.workload, TrainingWorkload)
        report = model_training(scenario, params=params, vector_params=args.model_params, last=last)
        report["elapsed_s"] = time.monotonic() - started
        seconds = report["round_seconds"]
        bound = None
        print(f"{report['scenario']}: {report['peers']} peers, target batch {report['target_batch_size']}, {report['epochs']} epochs "
              f"in {report['duration']:.0f}s, {report['samples_per_second']:.1f} samples/s ({report['utilization']:.0%} of the "
              f"peers' solo sum {report['solo_samples_per_second']:.1f}), round {report['median_round_seconds']:.2f}s, "
              f"{report['failed_rounds']} failed; modelled in {report['elapsed_s']:.2f}s")
        control = report.get("control_Bps") or {}
        if control:
            top = ", ".join(f"{k} {v / 1e3:.1f}" for k, v in sorted(control.items(), key=lambda kv: -kv[1])[:3])
            print(f"control plane: {sum(control.values()) / 1e3:.1f} KB/s per peer ({top})")
        hint = batch_hint(report)
        if hint:
            print(hint)
    print(f"last round, per role (the JSON report has every peer):\n{format_role_table(report['roles'])}")
    if last:
        png = args.png or Path(f"{scenario.name}-model.png")
        title = f"{scenario.name}: {report['peers']} peers, {report['vector_bytes'] / 1e6:.1f} MB per round"
        print(f"plot written to {write_png(png, *last[-1], title=title, rounds=seconds, bound=bound)}")
    _write(report, args.json)
    return 0


def batch_hint(report: dict[str, Any], aim: float = 0.8, below: float = 0.5) -> str | None:
    """When averaging eats the run (utilization under `below`), the global batch that would keep the peers computing
    about `aim` of the time: gathering it takes aim/(1-aim) times a round."""
    if report["utilization"] >= below or not report["solo_samples_per_second"] or not report["round_seconds"]:
        return None
    rounds = report["median_round_seconds"]
    suggested = int(report["solo_samples_per_second"] * rounds * aim / (1 - aim))
    return (f"hint: a global batch of {report['target_batch_size']} gathers in "
            f"{report['target_batch_size'] / report['solo_samples_per_second']:.2f}s, a round takes {rounds:.2f}s: "
            f"--target-batch-size {suggested} would keep the peers computing about {aim:.0%} of the time")


def cmd_cleanup(args: argparse.Namespace) -> int:
    from .network import cleanup_stale, require_root

    require_root("swarm simulate cleanup")
    removed = cleanup_stale()
    print(f"removed {len(removed)} namespaces" + (f": {', '.join(removed)}" if removed else ""))
    return 0


if __name__ == "__main__":  # pragma: no cover
    from ..cli import main

    sys.exit(main(["simulate", *sys.argv[1:]]))
