"""`swarm simulate model`: a table per role (every role, not the first 16 peers), a PNG, and --target-batch-size."""
from __future__ import annotations

import json

import pytest

from swarm.cli import main

pytestmark = pytest.mark.timeout(240)


def rows_of(out: str) -> dict[str, list[str]]:
    table = out.split("per role", 1)[1].splitlines()[2:]
    return {line.split()[0]: line.split() for line in table if line.startswith("  ") and line.split()[0] in ("trainer", "client", "aux")}


def test_allreduce_prints_every_role_and_writes_a_png(tmp_path, capsys):
    png = tmp_path / "plot.png"
    assert main(["-q", "simulate", "model", "--scenario", "dedloc-albert", "--peers", "200", "--png", str(png)]) == 0
    out = capsys.readouterr().out
    rows = rows_of(out)
    assert set(rows) == {"trainer", "aux"}                     # the aux peers come after the first 16 trainers
    assert int(rows["trainer"][1]) + int(rows["aux"][1]) == 200
    assert " ok " not in out and "ok -" not in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"plot written to {png}" in out


def test_target_batch_size_changes_the_training_model(tmp_path, capsys):
    small, large = tmp_path / "small.json", tmp_path / "large.json"
    args = ["-q", "simulate", "model", "--scenario", "dedloc-albert", "--peers", "200", "--workload", "training", "--png", str(tmp_path / "p.png")]
    assert main([*args, "--json", str(small)]) == 0
    first = capsys.readouterr().out
    assert "hint: " in first and "--target-batch-size " in first        # 512 samples for 200 peers: averaging eats the run
    assert main([*args, "--json", str(large), "--target-batch-size", "20000"]) == 0
    second = capsys.readouterr().out
    assert "target batch 20000" in second and "hint: " not in second
    a, b = json.loads(small.read_text()), json.loads(large.read_text())
    assert a["target_batch_size"] == 512 and b["target_batch_size"] == 20000
    assert b["utilization"] > 2 * a["utilization"]
    assert set(rows_of(second)) == {"trainer", "aux"}


def test_bad_target_batch_size_is_one_line(capsys):
    assert main(["-q", "simulate", "model", "--scenario", "mini-hetero", "--workload", "training", "--target-batch-size", "0"]) == 2
    assert "--target-batch-size" in capsys.readouterr().err
