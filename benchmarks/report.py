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
                if name == "swarm" and "first_round_s" in r:  # NaN: a member of the first round missed a part
                    first = r["first_round_s"]
                    notes.append(f"first round (prior) {first:.2f}s" if first == first else "first round (prior) failed")
                if r.get("nat_lifted"):
                    notes.append("NAT filters lifted")
                if r.get("aux_sit_out"):
                    notes.append(f"{r['aux_sit_out']} aux sit out")
                if r.get("failed_rounds"):
                    total = len(r.get("rounds", [])) + len(r.get("warmup_rounds", []))
                    notes.append(f"{r['failed_rounds']} of {total} rounds failed" if total else f"{r['failed_rounds']} failed rounds")
                for failure in r.get("failures", []):
                    notes.append(f"round {failure['round']}: " + ", ".join(f"{who}: {why}" for who, why in failure["errors"].items()))
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


def _pct(value: Any) -> str:
    return _f(value, "{:.0%}")


def _meta(report: dict[str, Any]) -> str:
    return f"{report.get('date', '?')}, {report.get('machine', '?')}"


def _png(results: Path, stem: str) -> str:
    return f"![{stem}](results/{stem}.png)" if (results / f"{stem}.png").exists() else ""


def loopback_table(report: dict[str, Any]) -> str:
    res = report["results"]
    stream = res.get("p2p_stream", {}).get("mib_per_s")
    lines = ["| system | MiB/s per peer | seconds per round | CPU s per GiB | x raw stream | notes |", "|---|---|---|---|---|---|"]
    for name, r in res.items():
        cpu = r.get("cpu_s_per_gib_sent", r.get("receiver_cpu_s_per_gib"))
        notes = []
        if name == "p2p_stream":
            notes.append(f"one stream, {r.get('mbytes', '?')} MB; receiver CPU only")
        if r.get("failed_rounds"):
            notes.append(f"{r['failed_rounds']} failed rounds")
        if r.get("error"):
            notes.append("error: " + r["error"][:100])
        ratio = r.get("mib_per_s") / stream if stream and r.get("mib_per_s") else None
        lines.append(f"| {name} | {_f(r.get('mib_per_s'), '{:.0f}')} | {_f(r.get('seconds'), '{:.2f}s')} | {_f(cpu, '{:.1f}')} | "
                     f"{_f(ratio, '{:.2f}x')} | {'; '.join(notes)} |")
    lines.append("")
    lines.append(f"swarm vs raw stream: {_f(report.get('swarm_vs_stream'), '{:.2f}x')} (goal >= 0.8x); "
                 f"swarm vs hivemind's averager: {_f(report.get('swarm_vs_hivemind'), '{:.2f}x')} (goal >= 2x)")
    return "\n".join(lines)


def overhead_table(report: dict[str, Any]) -> str:
    lines = ["| model | plain loop (AdamW each step) | bare fwd/bwd | swarm opt.step | overhead vs plain | overhead vs bare | blocks x steps |",
             "|---|---|---|---|---|---|---|"]
    lines.append(f"| {report['model']} | {report['plain_ms']:.1f} ms | {_f(report.get('bare_ms'), '{:.1f} ms')} | {report['swarm_ms']:.1f} ms | "
                 f"{report['overhead']:+.1%} | {_f(report.get('overhead_vs_bare'), '{:+.1%}')} | {report['blocks']} x {report['steps_per_block']} |")
    if "cpu_overhead" in report:
        lines.append(f"| same, in CPU seconds of the process (all threads) | | | | {report['cpu_overhead']:+.1%} | {report['cpu_overhead_vs_bare']:+.1%} | |")
    for key, label in (("block_ratios_vs_bare", "wall time vs bare"), ("cpu_block_ratios_vs_bare", "CPU time vs bare")):
        ratios = report.get(key) or []
        if ratios:
            lines.append("")
            lines.append(f"per-block ratios, {label}: {min(ratios) - 1:+.0%} to {max(ratios) - 1:+.0%} (goal: < 3%)")
    return "\n".join(lines)


def training_table(reports: list[dict[str, Any]]) -> str:
    lines = ["| scenario | peers | target batch | duration | system | samples/s | sum of solo samples/s | utilization | epochs | median round | notes |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for report in reports:
        w = report.get("workload", {})
        for name, r in report["results"].items():
            notes = []
            if r.get("nominal_solo_samples_per_second"):
                notes.append(f"nominal solo {r['nominal_solo_samples_per_second']:.1f}/s")
            if "consistent" in r:
                notes.append("parameters identical" if r["consistent"] else "parameters differ at the end")
            if r.get("error"):
                notes.append("error: " + r["error"][:100])
            lines.append(f"| {report['scenario']} | {report['peers']} | {w.get('target_batch_size', '?')} | {_f(w.get('duration'), '{:.0f}s')} | {name} | "
                         f"{_f(r.get('samples_per_second'))} | {_f(r.get('solo_samples_per_second'))} | {_pct(r.get('utilization'))} | "
                         f"{r.get('epochs', '-')} | {_f(r.get('median_round_seconds'), '{:.1f}s')} | {'; '.join(notes)} |")
    return "\n".join(lines)


def _goal_lines(summary: dict[str, Any]) -> list[str]:
    """The issue's goals of a modes summary (benchmarks.modes.summarize), met or missed, under a table."""
    goals = summary.get("goals", {})
    lines = [""] if goals else []
    for key, goal in goals.items():
        shown = {k: v for k, v in goal.items() if k != "met"}
        lines.append(f"- {key.replace('_', ' ')}: {'met' if goal.get('met') else 'missed'} ({json.dumps(shown)})")
    return lines


def training_modes_table(report: dict[str, Any]) -> str:
    """benchmarks.training with --configs: one row per configuration on one emulated scenario."""
    summary = report.get("summary", {})
    reduction = summary.get("bytes_per_sample_reduction_vs_sync_fp32", {})
    net_reduction = summary.get("net_bytes_per_sample_reduction_vs_sync_fp32", {})
    at_wall = summary.get("loss_at_equal_wall_time", {})
    at_samples = summary.get("loss_at_equal_samples", {})
    lines = [
        f"| config | H | utilization (fwd/bwd) | blocked on rounds | in opt.step | bytes / sample (rounds) | x less than sync fp32 | "
        f"bytes / sample (wire) | x less (wire) | global steps | failed peer-rounds | loss at {_f(at_wall.get('seconds'), '{:.0f}')} s | "
        f"loss at {at_samples.get('samples', '-')} samples | samples/s in global batches | load | notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in report["results"].items():
        if "error" in r:
            lines.append(f"| {name} | | | | | | | | | | | | | | {_f(r.get('load_before'), '{:.1f}')}-{_f(r.get('load_after'), '{:.1f}')} | "
                         f"error: {r['error'][:160]} |")
            continue
        notes = []
        if r.get("consistent") is False:
            notes.append("parameters differ at the end")
        if r.get("flags"):
            notes.append(" ".join(r["flags"]))
        if name in summary.get("loss_curve_incomplete", []) and r.get("loss_curve"):
            end = r["loss_curve"][-1]
            notes.append(f"loss curve holds {end[2]} of {r.get('samples', 0):.0f} samples, ends at {end[0]:.0f} s with {end[1]:.2f}"
                         + (f" ({r['nan_losses']} NaN losses)" if r.get("nan_losses") else "") + ": left out of the loss comparison")
        lines.append(
            f"| {name} | {r.get('inner_steps') or '-'} | {_pct(r.get('compute_utilization'))} | {_pct(r.get('round_wait_share'))} | "
            f"{_pct(r.get('optimizer_share'))} | {_f(r.get('bytes_sent_per_sample'), '{:,.0f}')} | {_f(reduction.get(name), '{:.0f}x')} | "
            f"{_f(r.get('net_bytes_sent_per_sample'), '{:,.0f}')} | {_f(net_reduction.get(name), '{:.0f}x')} | {r.get('epochs', '-')} | "
            f"{r.get('failed_rounds', '-') if r.get('system') == 'swarm' else '-'} | {_f(at_wall.get('loss', {}).get(name))} | "
            f"{_f(at_samples.get('loss', {}).get(name))} | {_f(r.get('samples_per_second'))} | "
            f"{_f(r.get('load_before'), '{:.1f}')}-{_f(r.get('load_after'), '{:.1f}')} | {'; '.join(notes)} |"
        )
    return "\n".join(lines + _goal_lines(summary))


def modes_table(report: dict[str, Any]) -> str:
    res = report["results"]
    summary = report.get("summary", {})
    reduction = summary.get("bytes_per_sample_reduction_vs_sync_fp32", {})
    at_wall = summary.get("loss_at_equal_wall_time", {})
    at_samples = summary.get("loss_at_equal_samples", {})
    lines = [
        f"| config | H | utilization (fwd/bwd) | blocked on rounds | opt.step work | next batch | bytes sent / sample | x less than sync fp32 | "
        f"epochs | loss first -> last | loss at {_f(at_wall.get('seconds'), '{:.0f}')} s | loss at {at_samples.get('samples', '-')} samples | codecs | notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in res.items():
        if "error" in r:
            lines.append(f"| {name} | | | | | | | | | | | | | {r['error'][:100]} |")
            continue
        notes = []
        if r.get("rounds_failed"):
            notes.append(f"{r['rounds_failed']} failed rounds")
        if r.get("max_staleness"):
            notes.append(f"staleness {r['max_staleness']}")
        if r.get("params_identical") is False:
            notes.append("parameters differ")
        codecs = ", ".join(f"{k} x{v}" for k, v in (r.get("codecs") or {}).items())
        lines.append(
            f"| {name} | {r.get('inner_steps') or '-'} | {_pct(r.get('compute_utilization'))} | {_pct(r.get('round_wait_share'))} | "
            f"{_pct(r.get('optimizer_share'))} | {_pct(r.get('data_share'))} | {_f(r.get('bytes_sent_per_sample'), '{:,.0f}')} | "
            f"{_f(reduction.get(name), '{:.0f}x')} | {r.get('epochs', '-')} | {_f(r.get('loss_first'))} -> {_f(r.get('loss_last'))} | "
            f"{_f(at_wall.get('loss', {}).get(name))} | {_f(at_samples.get('loss', {}).get(name))} | {codecs} | {'; '.join(notes)} |"
        )
    return "\n".join(lines + _goal_lines(summary))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    paths = sorted(args.results.glob("allreduce-*.json"))
    reports = [json.loads(p.read_text()) for p in paths]
    if reports:
        print("### All-reduce on emulated networks\n")
        for path, r in zip(paths, reports):
            probe = r.get("tcp_probe", {})
            print(f"- {path.name} ({r['scenario']}, {', '.join(r['results'])}): {r['date']}, {r['machine']}; raw TCP on {probe.get('peer', '?')}'s links: "
                  f"{_f(probe.get('upload_efficiency'), '{:.0%}')} up, {_f(probe.get('download_efficiency'), '{:.0%}')} down of nominal")
        print()
        print(allreduce_table(reports))
        print()
        print(" ".join(_png(args.results, p.stem) for p in paths))
    mve = args.results / "model-vs-emulate.json"
    if mve.exists():
        report = json.loads(mve.read_text())
        print(f"\n### Model vs emulator\n\n{report['date']}, {report['machine']}, model efficiency {report['efficiency']}\n")
        print(model_table(report))
        print(f"\n{_png(args.results, 'model-vs-emulate')}")
    path = args.results / "loopback.json"
    if path.exists():
        report = json.loads(path.read_text())
        print(f"\n### Loopback\n\n{_meta(report)}; {report['vector_bytes'] / 2**20:.0f} MiB fp32, 2 peers\n")
        print(loopback_table(report))
        print(f"\n{_png(args.results, 'loopback')}")
    every = [json.loads(p.read_text()) for p in sorted(args.results.glob("training-*.json"))]
    training = [r for r in every if "configs" not in r]
    for report in (r for r in every if "configs" in r):
        durations = sorted({r.get("duration_s") for r in report["results"].values() if r.get("duration_s")})
        print(f"\n### Modes on emulated {report['scenario']}\n\n{report['date']}, {report['machine']}, load {report.get('load_1min')}; "
              f"{report['peers']} peers, {', '.join(f'{d:.0f}' for d in durations)} s of training each\n")
        print(training_modes_table(report))
        print(f"\n{_png(args.results, 'training-' + report['scenario'])}")
    if training:
        print("\n### Training on emulated networks\n")
        for report in training:
            print(f"- {report['scenario']}: {_meta(report)}")
        print()
        print(training_table(training))
        print()
        print(" ".join(_png(args.results, f"training-{r['scenario']}") for r in training))
    path = args.results / "overhead.json"
    if path.exists():
        report = json.loads(path.read_text())
        print(f"\n### Per-step overhead\n\n{_meta(report)}\n")
        print(overhead_table(report))
        print(f"\n{_png(args.results, 'overhead')}")
    path = args.results / "modes.json"
    if path.exists():
        report = json.loads(path.read_text())
        print(f"\n### Modes: sync, overlap, DiLoCo, compression\n\n{_meta(report)}; {report['task']}, {report['peers']} peers on loopback, "
              f"{report['duration_s']:.0f} s of training each; sync target batch {report.get('sync_target_batch_size', '?')}\n")
        print(modes_table(report))
        print(f"\n{_png(args.results, 'modes')}")


if __name__ == "__main__":
    main()
