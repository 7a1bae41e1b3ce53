"""`task: hf-clm` in experiment.yaml: `swarm launch --config` and two `swarm join` peers train a small GPT-2-shaped
model built from a config, on text files the test writes, with no Python written for the task (in bf16 autocast),
and `swarm export` turns the coordinator's checkpoint into a folder transformers loads."""
from __future__ import annotations

import json
import subprocess

import pytest

from tests.helpers.running_swarm import RunningSwarm, swarm_cli

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]


def genesis_text() -> str:
    try:
        return subprocess.run(["bible", "Gen1:1-Gen3:24"], capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        pytest.skip("the bible-kjv package is not installed")


def test_launch_config_trains_a_gpt2_shaped_model(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "genesis.txt").write_text(genesis_text())
    config = tmp_path / "experiment.yaml"
    config.write_text(
        "task: hf-clm\n"
        f"data_path: {corpus}\n"
        "lr: 0.002\n"
        "warmup_epochs: 0\n"
        "precision: bf16\n"                 # the daemon's autocast, wired end to end (bf16 runs on CPU)
        "task_options:\n"
        "  architecture: gpt2\n"
        "  model: {n_embd: 64, n_layer: 2, n_head: 2, n_positions: 64}\n"
        "  vocab_size: 1000\n"
        "  seq_len: 32\n"
    )
    s = RunningSwarm(tmp_path / "swarm", run_id="hfclm", task_args=("--config", str(config)), target_batch_size=32)
    try:
        s.start_coordinator()
        assert "task: hf-clm" in s.config_path.read_text()
        for _ in range(2):
            s.add_peer(duration=300)
        status = s.wait_status(lambda st: st["epoch"] >= 12 and len(st["peers"]) == 2 and st["checkpoints"],
                               timeout=420, what="12 epochs of hf-clm and a checkpoint")
        assert status["task"] == "hf-clm"
    finally:
        s.close()
    out = subprocess.run(swarm_cli("export", "hfclm", "--runs-dir", str(s.runs_dir), "--out", str(tmp_path / "hf")),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert exported.config.model_type == "gpt2" and exported.config.n_embd == 64
    AutoTokenizer.from_pretrained(tmp_path / "hf")
    finals = [json.loads(line) for line in (s.root / "peer0.jsonl").read_text().splitlines() if '"final"' in line]
    assert finals and finals[-1]["precision"] == "bf16" and finals[-1]["amp_skipped_steps"] == 0
    steps = s.peer_steps(0)
    assert len(steps) >= 8, steps
    first = sum(r["loss"] for r in steps[:3]) / 3
    last = sum(r["loss"] for r in steps[-3:]) / 3
    assert last < first - 0.3, (first, last)     # the language-model loss falls
    hashes = {}
    for i in (0, 1):
        for row in s.peer_steps(i):
            hashes.setdefault(row["epoch"], set()).add(row["params_hash"])
    common = [e for e, hs in hashes.items() if len(hs) >= 1 and all(any(r["epoch"] == e for r in s.peer_steps(i)) for i in (0, 1))]
    assert common and all(len(hashes[e]) == 1 for e in common), hashes   # both peers hold the same parameters
