"""Check the model against the emulator on the shipped scenarios (needs root).

    python -m benchmarks.model_vs_emulate [--scenarios mini-hetero,server,...] [--json results/model-vs-emulate.json]

For each scenario: `swarm simulate emulate` runs its allreduce workload (real peers, shaped links) and
`swarm simulate model` models the same workload. Compared per scenario:

- `emulated_s`: the median all-reduce seconds of the emulated rounds after the first (the first runs on the
  prior's uniform shares, the others on measured bandwidths);
- `model_s`: the same median from the model, which runs its own copy of the bandwidth estimator, with links
  that carry what raw TCP carried on the same emulated network just before (`tcp_efficiency`);
- `model_same_shares_s`: the model's time for exactly the shares the emulated swarm used, round by round
  (median), which checks the transfer model alone;
- `error` = model_s / emulated_s - 1 (goal: within +-25%), and the same for the round on the prior.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from swarm.simulate.emulate import run_allreduce
from swarm.simulate.model import ModelParams, model_allreduce, simulate_round
from swarm.simulate.network import require_root
from swarm.simulate.scenario import list_scenarios, load_scenario


def compare(name: str, log_root: Path, rounds: int) -> dict[str, Any]:
    from .allreduce import probe_tcp

    scenario = load_scenario(name).with_workload("allreduce", rounds=rounds)
    # the model's links carry what raw TCP carried on this emulated network, measured now (not fitted to swarm)
    probe = probe_tcp(scenario, log_root / name / "tcp-probe")
    params = ModelParams(efficiency=min(probe["efficiency"], 0.956))
    emulated = run_allreduce(scenario, log_root / name, progress=lambda s: print(f"  {name}: {s}", flush=True))
    modelled = model_allreduce(scenario, params=params)
    peers = scenario.peers_expanded()
    ok = [r for r in emulated["rounds"] if r["ok"] == len(r["peers"])]
    later = [r for r in emulated["rounds"][1:] if r["ok"] == len(r["peers"])]
    chunk = scenario.engine_config().chunk_elements * {"none": 4, "fp16": 2}.get(scenario.workload.compression, 1)
    same = [simulate_round(peers, r["shares"], emulated["vector_bytes"], chunk_bytes=chunk, params=params).seconds
            for r in later if r.get("shares")]
    emulated_s = statistics.median(r["seconds"] for r in later) if later else float("nan")
    model_s = statistics.median(r["seconds"] for r in modelled["rounds"][1:])
    first_emulated = emulated["rounds"][0]["seconds"] if emulated["rounds"][0]["ok"] == len(peers) else float("nan")
    return {
        "scenario": name, "peers": len(peers), "vector_bytes": emulated["vector_bytes"], "lp_bound_s": emulated["lp_bound_s"],
        "tcp_efficiency": probe["efficiency"],
        "emulated_s": emulated_s, "model_s": model_s, "model_same_shares_s": statistics.median(same) if same else float("nan"),
        "error": model_s / emulated_s - 1, "same_shares_error": (statistics.median(same) / emulated_s - 1) if same else float("nan"),
        "first_round_emulated_s": first_emulated, "first_round_model_s": modelled["rounds"][0]["seconds"],
        "first_round_error": modelled["rounds"][0]["seconds"] / first_emulated - 1,
        "emulated_rounds": [r["seconds"] for r in emulated["rounds"]], "model_rounds": [r["seconds"] for r in modelled["rounds"]],
        "failed_rounds": len(emulated["rounds"]) - len(ok), "emulated_shares": [r.get("shares") for r in emulated["rounds"]],
        "model_shares": [r["shares"] for r in modelled["rounds"]],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.model_vs_emulate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", default=",".join(list_scenarios()))
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/model-vs-emulate.json"))
    parser.add_argument("--log-dir", type=Path)
    args = parser.parse_args(argv)
    try:
        require_root("benchmarks.model_vs_emulate")
    except Exception as e:
        print(f"benchmarks.model_vs_emulate: {e}", file=sys.stderr)
        return 2
    log_root = args.log_dir or Path(tempfile.mkdtemp(prefix="bench-model-"))
    report: dict[str, Any] = {"benchmark": "model_vs_emulate", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                              "machine": f"{platform.machine()} {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f} at start",
                              "efficiency": ModelParams().efficiency, "results": []}
    for name in args.scenarios.split(","):
        try:
            row = compare(name, log_root, args.rounds)
        except KeyboardInterrupt:
            raise
        except Exception as e:
            row = {"scenario": name, "error_message": f"{type(e).__name__}: {e}"[:500]}
        report["results"].append(row)
        if "error" in row:
            print(f"{name}: emulated {row['emulated_s']:.2f}s, model {row['model_s']:.2f}s ({row['error']:+.0%}), "
                  f"model on the same shares {row['model_same_shares_s']:.2f}s ({row['same_shares_error']:+.0%})", flush=True)
        else:
            print(f"{name}: {row['error_message']}", flush=True)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=float) + "\n")
    _plot(report, args.json.with_suffix(".png"))
    return 0


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["results"] if "error" in r]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(7, 3.8))
    x = range(len(rows))
    ax.bar([i - 0.27 for i in x], [r["emulated_s"] for r in rows], width=0.27, label="emulated", color="tab:green")
    ax.bar([i for i in x], [r["model_s"] for r in rows], width=0.27, label="model", color="tab:blue")
    ax.bar([i + 0.27 for i in x], [r["lp_bound_s"] for r in rows], width=0.27, label="LP bound", color="tab:red")
    ax.set_xticks(list(x), [r["scenario"] for r in rows])
    ax.set_ylabel("all-reduce seconds (median, rounds 2+)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
