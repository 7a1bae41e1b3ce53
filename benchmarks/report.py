"""Render benchmarks/results/*.json as the markdown tables of benchmarks/README.md.

    python -m benchmarks.report [--results benchmarks/results]
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any


def _f(value: Any, fmt: str = "{:.2f}") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return fmt.format(value)


def allreduce_table(reports: list[dict[str, Any]]) -> str:
    lines = [
        "| scenario | peers | vector | LP bound | TCP bound | system | seconds (median) | x LP bound | x TCP bound | swarm faster by | notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for report in reports:
        sections = [("fp32", report)] + ([("fp16", report["fp16"])] if "fp16" in report else [])
        for codec, section in sections:
            results = section["results"]
            swarm_s = results.get("swarm", {}).get("seconds")
            for name, r in results.items():
                notes = []
                if name == "swarm" and r.get("first_round_s"):
                    notes.append(f"first round (prior) {r['first_round_s']:.2f}s")
                if r.get("nat_lifted"):
                    notes.append("NAT filters lifted")
                if r.get("aux_sit_out"):
                    notes.append(f"{r['aux_sit_out']} aux sit out")
                if r.get("failed_rounds"):
                    notes.append(f"{r['failed_rounds']} failed rounds")
                if r.get("error"):
                    notes.append("error: " + r["error"][:80])
                speedup = "" if name == "swarm" or not swarm_s or not r.get("seconds") else _f(r["seconds"] / swarm_s, "{:.2f}x")
                lines.append(
                    f"| {report['scenario']} | {report['peers']} | {section['vector_bytes'] / 1e6:.0f} MB {codec} | "
                    f"{section['lp_bound_s']:.2f}s | {_f(section.get('tcp_bound_s'), '{:.2f}s')} | {name} | {_f(r.get('seconds'), '{:.2f}s')} | "
                    f"{_f(r.get('ratio_to_bound'))} | {_f(r.get('ratio_to_tcp_bound'))} | {speedup} | {'; '.join(notes)} |"
                )
    return "\n".join(lines)


def model_table(report: dict[str, Any]) -> str:
    lines = [
        "| scenario | peers | vector | LP bound | raw TCP | emulated (rounds 2+) | model | error | model on the emulated shares | error | first round: emulated / model |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        if "error" not in r:
            lines.append(f"| {r['scenario']} | - | - | - | - | failed: {r.get('error_message', '')[:80]} | | | | | |")
            continue
        lines.append(
            f"| {r['scenario']} | {r['peers']} | {r['vector_bytes'] / 1e6:.1f} MB | {r['lp_bound_s']:.2f}s | {_f(r.get('tcp_efficiency'), '{:.0%}')} | {_f(r['emulated_s'], '{:.2f}s')} | "
            f"{r['model_s']:.2f}s | {_f(r['error'], '{:+.0%}')} | {_f(r['model_same_shares_s'], '{:.2f}s')} | {_f(r['same_shares_error'], '{:+.0%}')} | "
            f"{_f(r['first_round_emulated_s'], '{:.2f}s')} / {r['first_round_model_s']:.2f}s |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    reports = [json.loads(p.read_text()) for p in sorted(args.results.glob("allreduce-*.json"))]
    if reports:
        print("### All-reduce on emulated networks\n")
        for r in reports:
            probe = r.get("tcp_probe", {})
            print(f"- {r['scenario']}: {r['date']}, {r['machine']}; raw TCP on {probe.get('peer', '?')}'s links: "
                  f"{_f(probe.get('upload_efficiency'), '{:.0%}')} up, {_f(probe.get('download_efficiency'), '{:.0%}')} down of nominal")
        print()
        print(allreduce_table(reports))
    mve = args.results / "model-vs-emulate.json"
    if mve.exists():
        report = json.loads(mve.read_text())
        print(f"\n### Model vs emulator\n\n{report['date']}, {report['machine']}, model efficiency {report['efficiency']}\n")
        print(model_table(report))
    for name in ("loopback", "overhead"):
        path = args.results / f"{name}.json"
        if path.exists():
            print(f"\n### {name}\n\n```json\n{json.dumps({k: v for k, v in json.loads(path.read_text()).items() if k != 'profile_top'}, indent=1)[:3000]}\n```")
    for path in sorted(args.results.glob("training-*.json")):
        print(f"\n### {path.stem}\n\n```json\n{json.dumps(json.loads(path.read_text())['results'], indent=1)}\n```")


if __name__ == "__main__":
    main()
