"""`swarm status`: the dashboard's figures in the terminal (rich), read from a coordinator's /api/status."""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from swarm.errors import NetworkError

from .run_progress import format_eta

DEFAULT_URL = "http://127.0.0.1:8080"
WIDE = 110   # columns from which the peer table shows every column


def local_dashboards(runs_dir: Path) -> list[str]:
    """Dashboard URLs of the coordinators launched from `runs_dir` (newest first), from each run folder's state."""
    found = []
    for state in Path(runs_dir).glob("*/coordinator.json"):
        try:
            url = json.loads(state.read_text()).get("dashboard")
            found.append((state.stat().st_mtime, url))
        except (OSError, ValueError, AttributeError):
            continue
    return [url for _, url in sorted(found, reverse=True) if isinstance(url, str) and url.startswith("http")]


def find_status(url: str | None, runs_dir: Path, timeout: float = 5.0) -> tuple[str, dict[str, Any]]:
    """The status of the coordinator at `url`, else of the newest run launched from `runs_dir` that answers,
    else of the default address; NetworkError that says how to point at one otherwise."""
    if url:
        return url, fetch_status(url, timeout)
    candidates = [*local_dashboards(runs_dir), DEFAULT_URL]
    for candidate in dict.fromkeys(candidates):
        try:
            return candidate, fetch_status(candidate, timeout)
        except NetworkError:
            continue
    tried = ", ".join(dict.fromkeys(candidates))
    raise NetworkError(f"no coordinator answers at {tried}: pass --url with the dashboard URL that `swarm launch` printed")


def fetch_status(url: str, timeout: float = 5.0) -> dict[str, Any]:
    endpoint = url.rstrip("/") + "/api/status"
    try:
        with urllib.request.urlopen(endpoint, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as e:
        raise NetworkError(f"the coordinator at {url} answered HTTP {e.code}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise NetworkError(f"no coordinator at {url}: {reason} (pass --url with the dashboard URL that `swarm launch` printed)") from None
    except ValueError:
        raise NetworkError(f"{endpoint} did not return JSON: is {url} a swarm coordinator?") from None


def _rate(bps: float | None) -> str:
    if not bps:
        return "-"
    mbit = bps * 8 / 1e6
    return f"{mbit:.0f} Mbit/s" if mbit >= 10 else f"{mbit:.1f} Mbit/s"


def _bytes(n: float | None) -> str:
    if not n:
        return "0 B"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"


def _ago(t: float | None, now: float) -> str:
    if not t:
        return "-"
    s = max(0.0, now - t)
    if s < 60:
        return f"{s:.0f}s ago"
    if s < 3600:
        return f"{s / 60:.0f}m ago"
    return f"{s / 3600:.1f}h ago"


def _clock(t: float | None) -> str:
    return datetime.fromtimestamp(t).strftime("%H:%M:%S") if t else "-"


def progress_line(status: dict[str, Any]) -> str:
    """`epoch 120 / 1000 (12.0%), ETA 3h 05m`: where the run stands against its total_epochs."""
    p = status.get("progress") or {}
    total = p.get("total_epochs")
    if not total:
        return f"epoch {status.get('epoch', 0)}"
    return f"epoch {p['epoch']} / {total} ({100 * p['fraction']:.1f}%), ETA {format_eta(p.get('eta_s'))}"


def join_command(status: dict[str, Any]) -> str:
    return (status.get("coordinator") or {}).get("join_command") or ""


def render(status: dict[str, Any], now: float | None = None, width: int = WIDE, join_row: bool = True) -> Group:
    """The status as rich renderables; below WIDE columns the peer table keeps the columns that fit whole."""
    now = time.time() if now is None else now
    loss = status.get("loss")
    roles = ", ".join(f"{n} {r}" for r, n in sorted((status.get("peers_by_role") or {}).items())) or "none"
    head = Table.grid(padding=(0, 2))
    head.add_row("run", f"[bold]{status['run_id']}[/] ({status['task']})", "state", status.get("state", "?"))
    head.add_row("progress", f"[bold]{progress_line(status)}[/]", "samples/s", f"[bold]{status['samples_per_second']:.1f}[/]")
    head.add_row("loss", "-" if loss is None else f"[bold]{loss:.4f}[/]", "peers", roles)
    join = join_command(status)
    if join and join_row:   # folded, not cut: a join command is copied whole (show_status prints it unwrapped instead)
        head.add_row("join", Text(join, overflow="fold"), "", "")

    wide = width >= WIDE
    peers = Table(title="peers", expand=True)
    columns = ["id", "role", "device", "samples/s", "up / down", "contributed", "online since", "last seen"] if wide \
        else ["id", "role", "samples/s", "up / down Mbit/s", "samples", "seen"]
    for col in columns:
        peers.add_column(col, justify="right" if col in ("samples/s", "contributed", "samples") else "left", no_wrap=not wide)
    for p in status.get("peers", []):
        role = p["role"]   # client: behind NAT (client mode)
        if wide:
            peers.add_row(
                p["id"][-12:], role, p.get("device") or "-", f"{p['samples_per_second']:.1f}",
                f"{_rate(p.get('upload_bps'))} / {_rate(p.get('download_bps'))}", f"{p.get('samples_contributed', 0):,}",
                _clock(p.get("online_since")), _ago(p.get("last_seen"), now),
            )
        else:
            peers.add_row(
                p["id"][-8:], role, f"{p['samples_per_second']:.1f}",
                f"{_mbit(p.get('upload_bps'))} / {_mbit(p.get('download_bps'))}", _count(p.get("samples_contributed", 0)),
                _ago(p.get("last_seen"), now),
            )

    rounds = Table(title="recent rounds", expand=True)
    for col in ("epoch", "members", "seconds", "bytes sent", "at"):
        rounds.add_column(col, no_wrap=True)
    for r in status.get("rounds", [])[:10]:
        rounds.add_row(str(r["epoch"]), str(r["members"]), f"{r['seconds']:.2f}", _bytes(r["bytes_sent"]), _clock(r["time"]))

    side = Table.grid(padding=(0, 4))
    board = Table(title="contributors", expand=True)
    board.add_column("peer", no_wrap=True)
    board.add_column("samples", justify="right", no_wrap=True)
    for row in status.get("leaderboard", [])[:10]:
        board.add_row(row["id"][-8:], f"{row['samples']:,}")
    ckpts = Table(title="checkpoints", expand=True)
    for col in ("epoch", "size", "at"):
        ckpts.add_column(col, no_wrap=True)
    for c in status.get("checkpoints", []):
        ckpts.add_row(str(c["epoch"]), _bytes(c["bytes"]), _clock(c["time"]))
    side.add_row(board, ckpts)
    return Group(Panel(head, title="swarm", expand=True), peers, rounds, side)


def _mbit(bps: float | None) -> str:
    return "-" if not bps else f"{bps * 8 / 1e6:.0f}" if bps * 8 >= 10e6 else f"{bps * 8 / 1e6:.1f}"


def _count(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1_000_000 else f"{n / 1e3:.1f}k" if n >= 10_000 else str(n)


def show_status(url: str | None, *, runs_dir: Path = Path("runs"), as_json: bool = False, watch: float | None = None) -> int:
    """`url` None: the newest run launched from `runs_dir` whose coordinator answers, else the default address."""
    console = Console()
    url, status = find_status(url, runs_dir)
    if as_json:
        console.print_json(json.dumps(status))
        return 0
    if not watch:
        console.print(render(status, width=console.width, join_row=False))
        if join_command(status):   # one line the terminal wraps, so that a copy of it is the whole command
            console.print(f"join: {join_command(status)}", soft_wrap=True, highlight=False, markup=False)
        return 0
    from rich.live import Live

    with Live(render(status, width=console.width), console=console, refresh_per_second=1, screen=False) as live:
        while True:
            time.sleep(max(watch, 0.5))
            live.update(render(fetch_status(url), width=console.width))
