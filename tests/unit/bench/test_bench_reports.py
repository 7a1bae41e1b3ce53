"""benchmarks: the reports' plots and helpers work without a network, and the CLIs refuse bad input in one line."""
from __future__ import annotations

import cProfile
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import allreduce, loopback, model_vs_emulate, overhead, training

pytestmark = pytest.mark.timeout(120)
REPO = Path(__file__).resolve().parents[3]


def _allreduce_report() -> dict:
    section = {"vector_bytes": 20_000_000, "lp_bound_s": 6.4,
               "results": {"swarm": {"seconds": 8.0}, "hivemind_uniform": {"seconds": 14.1}, "gloo": {"seconds": float("nan")}}}
    return {"scenario": "mini-hetero", **section, "fp16": section}


def test_plots_are_written(tmp_path):
    allreduce.plot(_allreduce_report(), tmp_path / "a.png")
    loopback._plot({"vector_bytes": 2**26, "results": {"p2p_stream": {"mib_per_s": 300}, "swarm": {"mib_per_s": 250}}}, tmp_path / "l.png")
    overhead._plot({"model": "mlp", "block_ratios": [1.01, 1.02, 0.99], "overhead": 0.01}, tmp_path / "o.png")
    training._plot({"scenario": "mini-hetero", "peers": 4, "load_1min": {"min": 1.0, "max": 3.0}, "results": {
        "sync-fp32": {"compute_utilization": 0.6, "round_wait_share": 0.3, "bytes_sent_per_sample": 5e4, "duration_s": 60,
                      "loss_curve": [[15, 9.0, 100], [30, 8.0, 200]]},
        "hivemind": {"compute_utilization": 0.4, "net_bytes_sent_per_sample": 9e4, "loss_curve": [[15, 9.5, 90]]},
        "diloco-h10": {"error": "NetworkError: gone"}}}, tmp_path / "t.png")
    model_vs_emulate._plot({"results": [{"scenario": "x", "emulated_s": 8, "model_s": 7, "lp_bound_s": 6.4, "error": -0.1}]}, tmp_path / "m.png")
    for name in "alotm":
        assert (tmp_path / f"{name}.png").stat().st_size > 1000


def test_profile_summary_names_hot_functions(tmp_path):
    profile = cProfile.Profile()
    profile.enable()
    sum(i * i for i in range(200_000))
    profile.disable()
    profile.dump_stats(tmp_path / "swarm-peer0.prof")
    lines = loopback.top_functions(tmp_path)
    assert lines and "self" in lines[0] and "calls" in lines[0]


@pytest.mark.integration  # starts a process or opens a socket
def test_cpu_accounting_counts_children(tmp_path):
    import os
    import signal

    from swarm.process.lifecycle import descendants
    from swarm.simulate.emulate import PeerProcess

    script = (
        "import subprocess, sys\n"
        "child = subprocess.Popen([sys.executable, '-c', 'sum(range(20_000_000)); print(1, flush=True); import time; time.sleep(60)'],"
        " stdout=subprocess.PIPE)\n"
        "child.stdout.readline()\n"
        "print('{\"event\": \"done\"}', flush=True)\n"
        "child.wait()\n"
    )
    burner = PeerProcess("burner", [sys.executable, "-c", script], tmp_path / "b.log")
    children: list[int] = []
    try:
        burner.expect("done", 60)
        children = descendants(burner.proc.pid)
        assert children, "the burner's child should be running"
        by_program = loopback.cpu_by_program([burner])
        # the child's burn is counted (its name is the interpreter's: python, python3, python3.11)
        assert sum(v for name, v in by_program.items() if name.startswith("python")) >= 0.1, by_program
    finally:
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        burner.stop()


@pytest.mark.integration  # starts a process or opens a socket
def test_allreduce_cli_refuses_too_few_rounds():
    proc = subprocess.run([sys.executable, "-m", "benchmarks.allreduce", "--scenario", "mini-hetero", "--rounds", "2",
                           "--json", "/dev/null"], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_hivemind_timeouts_follow_the_scenario():
    from swarm.simulate.scenario import load_scenario

    slow = load_scenario("mini-hetero").model_copy(update={"bandwidth_divisor": 10.0})
    assert allreduce._timeout(slow) > allreduce._timeout(load_scenario("mini-hetero")) >= 60


@pytest.mark.integration  # starts a process or opens a socket
def test_training_configs_and_cli():
    """The emulated configurations are the loopback ones (same mode, overlap, H, codec) plus the two hivemind ones;
    the CLI refuses an unknown configuration in one line; wire bytes compare with sync-fp32's."""
    from benchmarks.modes import CONFIGS as MODES

    assert set(MODES) < set(training.CONFIGS) and {"hivemind", "hivemind-local"} <= set(training.CONFIGS)
    system, changes = training.CONFIGS["diloco-h50-powersgd"]
    assert system == "swarm" and changes["mode"] == "diloco" and changes["diloco"]["inner_steps"] == 50 and changes["compression"] == "powersgd"
    assert training.CONFIGS["hivemind-local"] == ("hivemind", ["--use-local-updates"])
    from swarm.simulate.scenario import load_scenario

    for name, (system, changes) in training.CONFIGS.items():   # every swarm configuration is a valid workload
        if system == "swarm":
            assert load_scenario("hybrid").with_workload("training", **changes).workload.compression == changes["compression"]
    results = {"sync-fp32": {"net_bytes_sent_per_sample": 1000.0}, "diloco-h50": {"net_bytes_sent_per_sample": 8.0}, "x": {}}
    assert training.net_reduction(results) == {"sync-fp32": 1.0, "diloco-h50": 125.0}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.training", "--scenario", "hybrid", "--configs", "sync-fp64",
                           "--json", "/dev/null"], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "sync-fp64" in proc.stderr, proc.stderr


def test_issue_19_configurations_are_valid_runs_on_loopback_and_emulated():
    """streaming-diloco(-4bit) and sparseloco: valid RunConfigs (loopback) and training workloads (emulated) whose
    rounds average a fragment's share of H = 50 local steps, or top-k 2% with 2-bit values and no outer momentum."""
    from benchmarks.modes import BASE
    from benchmarks.modes import CONFIGS as MODES
    from swarm.config import RunConfig
    from swarm.simulate.scenario import load_scenario

    for name in ("streaming-diloco", "streaming-diloco-4bit", "sparseloco"):
        config = RunConfig.model_validate({**BASE, **MODES[name]})
        system, changes = training.CONFIGS[name]
        workload = load_scenario("dedloc-albert").with_workload("training", **changes).workload
        assert system == "swarm" and workload.mode == config.mode and workload.diloco == config.diloco
    streaming = RunConfig.model_validate({**BASE, **MODES["streaming-diloco-4bit"]})
    assert streaming.codec() == "uniform4bit" and streaming.outer_target_batch_size(3 * 8) == 50 * 3 * 8 // 4
    sparse = RunConfig.model_validate({**BASE, **MODES["sparseloco"]})
    assert sparse.codec() == "topk" and sparse.diloco.outer_momentum == 0 and sparse.engine.topk_value_bits == 2
    assert 0.02 <= sparse.engine.topk_fraction <= 0.03


def test_outer_codecs_runs_streaming_diloco_through_the_real_mode_with_smaller_rounds():
    """benchmarks.outer_codecs drives StreamingDiLoCo and FragmentedRoundCodec: fragments=1 is DiLoCo; with F = 3 each
    round carries one module's tensors (the run asserts identical outer parameters on every peer) and the loss stays finite."""
    from benchmarks.outer_codecs import train

    plain = train("none", peers=2, outer_steps=2, inner_steps=3, batch=8)
    streaming = train("none", peers=2, outer_steps=2, inner_steps=3, batch=8, fragments=3, delayed=True)
    assert plain["samples"] == streaming["samples"] and len(streaming["losses"]) == 2
    assert streaming["max_round_bytes"] < 0.8 * plain["max_round_bytes"]   # the largest fragment: the 256x256 layer
    assert abs(streaming["sent_bytes_per_value"] - plain["sent_bytes_per_value"]) < 0.01   # the same bytes per sample
    assert streaming["loss"] == streaming["loss"] and streaming["loss"] < 10 * plain["loss"]
