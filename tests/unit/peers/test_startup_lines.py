"""peers.startup and `swarm join`'s first line: what a volunteer sees while the peer starts."""
from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time

import pytest

from peers.cli import first_line
from peers.startup import DownloadBar, StageLog, download_line

UNREACHABLE = "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWHCcrL5hiVJhv5DH7JXyZgckXNry3ab2yXbQfnFe9nGZ3"


def test_first_line_names_the_run_and_where_it_is_joined():
    link = f"swarm://albert:EprAaFfL:Uu4Auc0DaHwIVdkw:8kW6SUDfJ52yrlVVBU4UzZ@{UNREACHABLE}"
    assert first_line(link, None, []) == f"joining run albert through its coordinator at {UNREACHABLE}"
    assert first_line(None, "bert", [UNREACHABLE]) == "joining run bert through 1 initial peer"


def test_stage_lines_carry_the_time_since_start():
    out = io.StringIO()
    say = StageLog(out, started=time.monotonic() - 3.25)
    say("reading the run's config")
    assert out.getvalue().startswith("[  3.") and out.getvalue().endswith("s] reading the run's config\n")


def test_download_line_has_megabytes_rate_and_eta():
    line = download_line(25_000_000, 100_000_000, 5.0)
    assert "25.0 / 100.0 MB" in line and "5.0 MB/s" in line and "ETA 15s" in line
    assert "[######" in line


def test_download_bar_prints_a_line_every_two_seconds_off_a_terminal():
    out = io.StringIO()
    now = [0.0]
    bar = DownloadBar(StageLog(out, started=0.0), tty=False, clock=lambda: now[0])
    for step in range(0, 101):   # 100 chunks of 1 MB over 5 s
        now[0] = step * 0.05
        bar(step * 1_000_000, 100_000_000)
    lines = out.getvalue().splitlines()
    assert 3 <= len(lines) <= 5, lines          # at 0 s, every 2 s, and the last one
    assert "100.0 / 100.0 MB" in lines[-1] and "20.0 MB/s" in lines[-1]


def test_download_bar_redraws_one_line_on_a_terminal():
    out = io.StringIO()
    now = [0.0]
    bar = DownloadBar(StageLog(out, started=0.0), tty=True, clock=lambda: now[0])
    for step in range(0, 11):
        now[0] = step * 0.5
        bar(step * 1_000_000, 10_000_000)
    text = out.getvalue()
    assert text.count("\r") == 11 and text.count("\n") == 1 and text.endswith("10.0 / 10.0 MB, 2.0 MB/s, ETA 0s\n")


@pytest.mark.integration  # starts a process
@pytest.mark.timeout(120)
def test_join_prints_its_first_line_before_loading_torch():
    """The first line comes before the heavy imports (torch, hivemind: seconds on a loaded box). Measured, not asserted:
    the seconds to that line are printed for the report."""
    probe = (
        "import sys, peers.startup as s\n"
        "orig = s.StageLog.__call__\n"
        "def call(self, message, **kw):\n"
        "    if not hasattr(s, 'seen'):\n"
        "        s.seen = True\n"
        "        sys.stderr.write(f'TORCH_LOADED={\"torch\" in sys.modules}\\n'); sys.stderr.flush()\n"
        "    orig(self, message, **kw)\n"
        "s.StageLog.__call__ = call\n"
        "from swarm.cli import main\n"
        f"sys.exit(main(['join', '--run-id', 'x', '--initial-peers', '{UNREACHABLE}', '--host-maddrs', '/ip4/127.0.0.1/tcp/0']))\n"
    )
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-c", probe], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        first = proc.stdout.readline()
        seconds = time.monotonic() - started
        flag = proc.stderr.readline()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    print(f"first line of swarm join after {seconds:.2f}s: {first.strip()}")
    assert "joining run x through 1 initial peer" in first
    assert flag.strip() == "TORCH_LOADED=False"


def test_epoch_line_is_one_line_with_the_group_not_peers_plural():
    from types import SimpleNamespace

    from peers.daemon import epoch_line

    line = epoch_line(SimpleNamespace(epoch=12, group_size=1, round_seconds=0.25, codec="fp16", bytes_sent=2_500_000), 4.1234, 88.0)
    assert line == "epoch 12 | loss 4.1234 | swarm 88.0 samples/s | averaged in a group of 1 in 0.25s | fp16, 2.50 MB sent"
    assert "1 peers" not in line and "\n" not in line


def test_demo_prints_a_summary_not_the_report_it_wrote():
    from peers.demo import summary_line

    line = summary_line({"epochs": 9, "samples_per_second": 51.25, "loss_first": 9.5, "loss_last": 6.25, "rounds_completed": 9,
                         "rounds_failed": 1, "params_identical": True, "peers_detail": [{"x": 1}]})
    assert line == "9 epochs, 51.2 samples/s, loss 9.500 -> 6.250, 9 rounds (1 failed), every peer's parameters identical"


def test_demo_without_a_common_epoch_does_not_claim_the_parameters_differ():
    from peers.demo import summary_line

    line = summary_line({"epochs": 0, "samples_per_second": 0.0, "rounds_completed": 0, "rounds_failed": 0, "params_identical": None})
    assert line == "0 epochs, 0.0 samples/s, 0 rounds (0 failed), no epoch common to every peer"
