"""Check `swarm simulate model` against real swarms of `benchmarks.control_plane` (issue 15: "the model follows").

    python -m benchmarks.model_vs_real --real results/control-plane-calls-s22.json [--real more.json]
        [--calibrate-peers 16] [--json results/model-vs-real.json]

The model's message sizes, its per-stage round overhead and the host's bytes per second (every peer of a
control_plane run shares one machine: its CPU and loopback carry all the rounds) are measured on the runs with
`--calibrate-peers` peers; the runs with more peers are predicted and compared, never fitted:

- round time: the model's round (swarm.simulate.model.simulate_group: the engine's structure, flat or hierarchical,
  for a group of the run's median size) against the run's median (each round's slowest committer);
- streams per peer per round: the structure's, against the count at every stream's opening;
- control bytes per peer per second (swarm.simulate.control): by protocol, their sum against the run's counted
  control bytes, and with the daemons' own against the interface counters less the rounds' bytes.

The swarm's pace is the run's (seconds per round, peers per round, group size): the model is given what the peers
computed and who joined, and predicts what the structure and the control plane's rules make of it. Then the model
runs the same structure at 1,000 and 10,000 peers (allreduce of the same vector) and its time is reported.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from swarm.averaging.progress import READ_SECONDS_PER_PEER
from swarm.net.replicas import READ_FROM
from swarm.proto import swarm_pb2
from swarm.simulate.control import ControlParams, control_bytes
from swarm.simulate.model import ModelParams, model_allreduce, simulate_group
from swarm.simulate.scenario import PeerInstance, load_scenario
from swarm.averaging.subgroups import DEFAULT_MAX_GROUP_SIZE

LOOPBACK_BPS = 1e12   # the links of peers on one machine: the host, not a link, is the bottleneck
BYTES_PER_VALUE = 2   # the control_plane workers average in fp16
ROBUST = ("swarm.averaging.audit", "swarm.averaging.results")


def _entry_bytes() -> float:
    """A member's entry in the group's info, as serialized (a peer id of hivemind's RSA identities, 46 characters)."""
    member = swarm_pb2.Member(peer_id="Q" * 46, role="trainer", weight=32.0, upload_bps=1.25e8, download_bps=1.25e8)
    one = swarm_pb2.GroupInfo(members=[member], shares=[0.5]).ByteSize()
    two = swarm_pb2.GroupInfo(members=[member, member], shares=[0.5, 0.5]).ByteSize()
    return float(two - one)


def _pace(run: dict[str, Any]) -> dict[str, float]:
    stats = run["round_stats"]
    n_stable = run["measured_peers"]
    duration = run["duration_s"]
    return {
        "epoch_s": duration / stats["rounds"],
        "member_rounds": stats["peer_rounds"] / n_stable / duration,   # rounds a peer averaged in, per second
        "group": float(stats["group_median"]),
        "round_s": stats["round_s_median"],
        "churn_per_s": (run.get("churn_per_min") or 0.0) / 60,
        "refreshes": run["reads"]["full"] / n_stable / duration,
    }


def _group(size: int) -> list[PeerInstance]:
    return [PeerInstance(i, f"p{i}", "trainer", LOOPBACK_BPS, LOOPBACK_BPS, 1.0) for i in range(size)]


def _structure(size: int, params: ModelParams, vector_bytes: int) -> Any:
    return simulate_group(_group(size), [1.0 / size] * size, vector_bytes, params=params, max_group_size=DEFAULT_MAX_GROUP_SIZE,
                          host=params.host_Bps)


def _mean(run: dict[str, Any], *keys: str) -> float:
    """A protocol's bytes per peer per second, the mean of what the measured peers sent and received: with several
    peers to a process and a churn pool, the measured peers are not all the peers, and which of them serve the
    progress key's replicas (whose answers are most of the reads' bytes) is chance: sent alone or received alone
    would say whether they do. Across the whole swarm sent and received are equal."""
    return sum((run["sent_Bps"].get(k, 0.0) + run["received_Bps"].get(k, 0.0)) / 2 for k in keys)


def calibrate(runs: list[dict[str, Any]]) -> tuple[ControlParams, ModelParams, dict[str, Any]]:
    """Message sizes from the calibration runs, each from the side that does not depend on who serves the key's
    replicas; the round's overhead and the host's rate from their round times."""
    toy = [r for r in runs if not r.get("params")]
    base = toy[0] if toy else runs[0]
    pace = _pace(base)
    n = base["peers"]
    sent, received, calls = base["sent_Bps"], base["received_Bps"], base["calls_per_s"]
    records = n + pace["churn_per_s"] * ControlParams().record_ttl
    join = swarm_pb2.JoinRequest(run_id="r" * 8, epoch=1000, peer_id="Q" * 46, role="trainer", weight=32.0, upload_bps=1e8,
                                 download_bps=1e8, schema_hash=b"s" * 32).ByteSize()
    entry = _entry_bytes()
    cp = ControlParams(
        # a read's answers arrive at the reader: bytes per FIND answered, per record in it
        record_bytes=received["progress.read"] / calls["progress.read"] / records,
        # a publish leaves the publisher: bytes per STORE sent
        store_bytes=sent["progress.write"] / calls["progress.write"],
        # the join request, and the group's info without its members (both serialized here)
        matchmaking_bytes=join + swarm_pb2.GroupInfo(round_id=b"x" * 16, epoch=1000, timeout=15.0, leader="Q" * 46,
                                                     max_group_size=16).ByteSize(),
        member_entry_bytes=entry,
        robust_bytes_per_member=_mean(base, *ROBUST) / pace["member_rounds"] / max(1.0, pace["group"] - 1),
        dht_maintenance_Bps=_mean(base, "dht.maintenance"),
    )
    # the daemons' own bytes: the interface counters (every peer) less what the model counts at this pace
    counted = sum(v for k, v in _control(base, cp).items() if k != "p2pd_own")
    rounds = _mean(base, "allreduce", "state")
    cp.p2pd_own_share = max(0.0, (base["wire_Bps"] - rounds - counted) / counted)
    # the round: a fixed cost per stage (the toy run's vector moves in no time), and the host's bytes per second from
    # a run with a real vector: what its round took beyond that cost
    structure = _structure(int(pace["group"]), ModelParams(round_overhead=0.0), 1)
    stages = len(structure.stage_seconds) or 1
    overhead = pace["round_s"] / stages
    # the shared link (a shaped loopback, or the host itself): its rate for rounds and control together, from each real
    # vector's run: the bytes its round moved over the time beyond that cost, plus what its peers' control plane sent
    # meanwhile (the round shares the link with it)
    rates: dict[float, float] = {}
    for r in runs:
        if not r.get("params") or _held(r):
            continue
        rp = _pace(r)
        moved = _structure(int(rp["group"]), ModelParams(round_overhead=0.0), r["params"] * BYTES_PER_VALUE)
        spare = rp["round_s"] - overhead * (len(moved.stage_seconds) or 1)
        if spare > 0:
            rates[float(r.get("shape_mbit") or 0.0)] = sum(moved.sent) / spare + r["peers"] * _wire_control(r)
    mp = ModelParams(round_overhead=overhead)
    return cp, mp, {"calibration_peers": n, "round_overhead_s": overhead, "link_Bps": rates,
                    "control": {k: round(v, 4) for k, v in vars(cp).items()}}


def _wire_control(run: dict[str, Any]) -> float:
    """A run's control plane per peer per second on the wire: the interface counters less the rounds' bytes."""
    return run["wire_Bps"] - _mean(run, "allreduce", "state")


def _control(run: dict[str, Any], cp: ControlParams, round_seconds: float | None = None) -> dict[str, float]:
    """The model's control bytes per peer per second at this run's pace."""
    pace = _pace(run)
    n = run["peers"]
    structure_flat = pace["group"] <= DEFAULT_MAX_GROUP_SIZE
    members = pace["member_rounds"] * n * pace["epoch_s"]   # members per round, as the run had them
    spent = pace["round_s"] if round_seconds is None else round_seconds
    return control_bytes(n, pace["epoch_s"], min(pace["epoch_s"], spent), members=members, group=pace["group"],
                         flat=structure_flat, robust=True, churn_per_s=pace["churn_per_s"], params=cp)


# A run whose peers committed fewer of their rounds than this did not run the structure the model describes (groups
# of one, state downloads): it is reported, not compared.
MIN_COMMITTED = 0.9
MIN_COMMITTERS = 0.5   # and at least this share of the measured peers committed each round (the median round)


def _held(run: dict[str, Any]) -> str:
    """Why a run's swarm did not run the structure the model describes ('' if it did): its peers failed their rounds,
    or most of them committed none of a round (groups whose parts went missing, late peers)."""
    stats = run["round_stats"]
    if stats.get("committed_share", 0.0) < MIN_COMMITTED:
        return f"{stats.get('committed_share', 0.0):.0%} of peer-rounds committed (the swarm did not hold)"
    if stats.get("committers_median", 0) < MIN_COMMITTERS * run["measured_peers"]:
        return (f"{stats.get('committers_median', 0)} of {run['measured_peers']} measured peers committed a round at the "
                f"median (groups of {stats.get('group_median')})")
    return ""


def predict(run: dict[str, Any], cp: ControlParams, mp: ModelParams, rates: dict[float, float] | None = None) -> dict[str, Any]:
    why = _held(run)
    if why:
        return {"peers": run["peers"], "params": run.get("params", 0), "label": run.get("label"), "compared": False,
                "why": why, "round_stats": run["round_stats"], "seen": run.get("seen"), "load": run.get("load")}
    pace = _pace(run)
    n = run["peers"]
    size = int(pace["group"])
    vector = max(1, run.get("params", 0) * BYTES_PER_VALUE)
    link = (rates or {}).get(float(run.get("shape_mbit") or 0.0)) if run.get("params") else None
    host = math.inf
    if link is not None:   # what the link leaves the round: its rate less the control plane the model predicts
        before = _control(run, cp)
        host = max(1.0, link - n * (sum(v for k, v in before.items())))
    structure = _structure(size, dataclasses.replace(mp, host_Bps=host), vector)
    model = _control(run, cp, structure.seconds)
    counted = sum(v for k, v in model.items() if k != "p2pd_own")
    measured_control = sum(_mean(run, k) for k in set(run["sent_Bps"]) | set(run["received_Bps"]) if k not in ("allreduce", "state"))
    measured_wire_control = _wire_control(run)
    return {
        "peers": n, "params": run.get("params", 0), "label": run.get("label"), "group": size, "compared": True,
        "round_s": {"real": pace["round_s"], "model": structure.seconds, "error": structure.seconds / pace["round_s"] - 1,
                    "link_for_rounds_Bps": host,
                    "subgroups": structure.subgroups, "stage_seconds": list(structure.stage_seconds)},
        "streams_per_peer_round": {"real": run["round_stats"]["streams_per_peer_round"], "model": structure.streams},
        "control_Bps": {"real": measured_control, "model": counted, "error": counted / measured_control - 1},
        "wire_control_Bps": {"real": measured_wire_control, "model": counted + model["p2pd_own"],
                             "error": (counted + model["p2pd_own"]) / measured_wire_control - 1},
        "by_protocol": {k: {"model": round(v, 1), "real": round(_mean(run, *(ROBUST if k == "robust" else (k,))), 1)}
                        for k, v in model.items() if k != "p2pd_own"},
        "refreshes_per_s": {"real": pace["refreshes"], "read_floor_s": READ_SECONDS_PER_PEER * n},
    }


def scale(vector_bytes: int, peers: tuple[int, ...] = (1000, 10000), *, cp: ControlParams | None = None,
          epoch_s: float = 0.0, round_s: float = 0.0) -> list[dict[str, Any]]:
    """The model's own run time at these sizes (the dedloc-albert mix of links, one round of the vector, on the prior's
    shares), and with `cp` the control plane per peer at a pace of `epoch_s` per epoch of which `round_s` averaging,
    every peer in the round (one group: hierarchical)."""
    out = []
    for n in peers:
        scenario = load_scenario("dedloc-albert").scaled(n).with_workload("allreduce", rounds=1, params=max(1, vector_bytes // 2),
                                                                          compression="fp16")
        started = time.monotonic()
        report = model_allreduce(scenario)
        r = report["rounds"][-1]
        out.append({"peers": n, "elapsed_s": round(time.monotonic() - started, 2), "round_s": r["seconds"],
                    "subgroups": r["subgroups"], "streams": r["streams"], "stage_seconds": r["stage_seconds"]})
        if cp is not None and epoch_s > 0:
            control = control_bytes(n, epoch_s, min(epoch_s, round_s), members=n, group=n, flat=n <= DEFAULT_MAX_GROUP_SIZE,
                                    robust=True, params=cp)
            out[-1]["control_Bps"] = {k: round(v, 1) for k, v in control.items()}
    return out


def write_png(path: Path, results: list[dict[str, Any]], big: list[dict[str, Any]]) -> None:
    """Left: control bytes per protocol at each compared size, real against model. Right: the model's round time and
    streams per member against the swarm's size (the checks' sizes and the scale runs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    compared = [r for r in results if r["compared"]]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.4))
    width = 0.8 / max(1, 2 * len(compared))
    protocols = list(compared[0]["by_protocol"]) + ["p2pd own"] if compared else []
    for k, r in enumerate(compared):
        real = [r["by_protocol"][p]["real"] for p in protocols[:-1]] + [r["wire_control_Bps"]["real"] - r["control_Bps"]["real"]]
        model = [r["by_protocol"][p]["model"] for p in protocols[:-1]] + [r["wire_control_Bps"]["model"] - r["control_Bps"]["model"]]
        xs = range(len(protocols))
        left.bar([x + (2 * k) * width for x in xs], [v / 1e3 for v in real], width, label=f"real, {r['peers']} peers ({r['label']})")
        left.bar([x + (2 * k + 1) * width for x in xs], [v / 1e3 for v in model], width, label=f"model, {r['peers']} peers", hatch="//")
    left.set_xticks([x + width * (len(compared) - 0.5) for x in range(len(protocols))], protocols, rotation=20)
    left.set_ylabel("KB/s per peer")
    left.set_title("control plane per protocol")
    left.legend(fontsize=7)
    sizes = [b["peers"] for b in big]
    right.plot(sizes, [b["round_s"] for b in big], marker="o", label="model: round (s), dedloc-albert links")
    right.plot(sizes, [b["streams"] for b in big], marker="s", label="model: streams per member")
    for r in compared:
        right.scatter([r["peers"]], [r["streams_per_peer_round"]["real"]], marker="x", color="k")
    right.plot(sizes, [2 * n ** 0.5 for n in sizes], linestyle=":", color="grey", label="2 sqrt(N)")
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel("peers")
    right.set_title("the structure at scale (x: real streams per peer)")
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real", type=Path, action="append", required=True, help="a benchmarks.control_plane JSON (repeatable)")
    parser.add_argument("--label", action="append", default=None, help="only the runs with these labels")
    parser.add_argument("--calibrate-peers", type=int, default=16)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--png", type=Path)
    args = parser.parse_args(argv)
    runs = [r for path in args.real for r in json.loads(path.read_text())["runs"]
            if r.get("phase") == "training" and "error" not in r and (args.label is None or r.get("label") in args.label)]
    cal = [r for r in runs if r["peers"] == args.calibrate_peers]
    checks = [r for r in runs if r["peers"] > args.calibrate_peers]
    if not cal or not checks:
        parser.error(f"need training runs at {args.calibrate_peers} peers and at more")
    cp, mp, fitted = calibrate(cal)
    print(f"calibrated on {args.calibrate_peers} peers: {json.dumps(fitted)}")
    results = [predict(r, cp, mp, fitted["link_Bps"]) for r in checks]
    for r in results:
        if not r["compared"]:
            print(f"{r['peers']} peers, {r['params']} values: not compared: {r['why']}")
            continue
        print(f"{r['peers']} peers, {r['params']} values: round {r['round_s']['real']:.2f}s real, {r['round_s']['model']:.2f}s model "
              f"({r['round_s']['error']:+.0%}); streams {r['streams_per_peer_round']['real']} / {r['streams_per_peer_round']['model']:.1f}; "
              f"control {r['control_Bps']['real'] / 1e3:.1f} / {r['control_Bps']['model'] / 1e3:.1f} KB/s ({r['control_Bps']['error']:+.0%}), "
              f"with the daemons' own {r['wire_control_Bps']['real'] / 1e3:.1f} / {r['wire_control_Bps']['model'] / 1e3:.1f} "
              f"({r['wire_control_Bps']['error']:+.0%}); " + ", ".join(f"{k} {v['real'] / 1e3:.1f}/{v['model'] / 1e3:.1f}"
                                                                        for k, v in r["by_protocol"].items()))
    vector = max((r.get("params", 0) for r in checks), default=0) * BYTES_PER_VALUE or 2_000_000
    pace = _pace(next((r for r in checks if not _held(r)), checks[0]))
    big = scale(vector, (16, 64, 256, 1000, 10000), cp=cp, epoch_s=pace["epoch_s"], round_s=pace["round_s"])
    for b in big:
        control = b.get("control_Bps", {})
        print(f"model at {b['peers']} peers: {b['elapsed_s']:.1f}s to run; round {b['round_s']:.2f}s in {b['subgroups']} subgroups, "
              f"{b['streams']} streams per peer; control {sum(control.values()) / 1e3:.1f} KB/s per peer "
              f"(progress.read {control.get('progress.read', 0) / 1e3:.1f}) at the 64-peer run's pace")
    if args.png:
        write_png(args.png, results, big)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"calibration": fitted, "checks": results, "scale": big,
                                         "host": {"python": platform.python_version(), "date": datetime.now(timezone.utc).isoformat()}},
                                        indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
