"""`swarm status`: the dashboard's figures in the terminal (rich), read from a coordinator's /api/status."""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from datetime import datetime
from typing import Any

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table

from swarm.errors import NetworkError


def fetch_status(url: str, timeout: float = 5.0) -> dict[str, Any]:
    endpoint = url.rstrip("/") + "/api/status"
    try:
        with urllib.request.urlopen(endpoint, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as e:
        raise NetworkError(f"the coordinator at {url} answered HTTP {e.code}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise NetworkError(f"no coordinator at {url}: {reason}") from None
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


def render(status: dict[str, Any], now: float | None = None) -> Group:
    now = time.time() if now is None else now
    loss = status.get("loss")
    roles = ", ".join(f"{n} {r}" for r, n in sorted((status.get("peers_by_role") or {}).items())) or "none"
    head = Table.grid(padding=(0, 2))
    head.add_row("run", f"[bold]{status['run_id']}[/] ({status['task']})", "state", status.get("state", "?"))
    head.add_row("epoch", f"[bold]{status['epoch']}[/]", "samples/s", f"[bold]{status['samples_per_second']:.1f}[/]")
    head.add_row("loss", "-" if loss is None else f"[bold]{loss:.4f}[/]", "peers", roles)
    join = (status.get("coordinator") or {}).get("join_command")
    if join:
        head.add_row("join", join, "", "")

    peers = Table(title="peers", expand=True)
    for col in ("id", "role", "device", "samples/s", "bandwidth up/down", "contributed", "online since", "last seen", "client"):
        peers.add_column(col, justify="right" if col in ("samples/s", "contributed") else "left")
    for p in status.get("peers", []):
        peers.add_row(
            p["id"][-12:], p["role"], p.get("device") or "-", f"{p['samples_per_second']:.1f}",
            f"{_rate(p.get('upload_bps'))} / {_rate(p.get('download_bps'))}", f"{p.get('samples_contributed', 0):,}",
            _clock(p.get("online_since")), _ago(p.get("last_seen"), now), "yes" if p.get("client_mode") else "no",
        )

    rounds = Table(title="recent rounds", expand=True)
    for col in ("epoch", "members", "seconds", "bytes sent", "at"):
        rounds.add_column(col)
    for r in status.get("rounds", [])[:10]:
        rounds.add_row(str(r["epoch"]), str(r["members"]), f"{r['seconds']:.2f}", _bytes(r["bytes_sent"]), _clock(r["time"]))

    side = Table.grid(padding=(0, 4))
    board = Table(title="contributors", expand=True)
    board.add_column("peer")
    board.add_column("samples", justify="right")
    for row in status.get("leaderboard", [])[:10]:
        board.add_row(row["id"][-12:], f"{row['samples']:,}")
    ckpts = Table(title="checkpoints", expand=True)
    for col in ("epoch", "size", "at"):
        ckpts.add_column(col)
    for c in status.get("checkpoints", []):
        ckpts.add_row(str(c["epoch"]), _bytes(c["bytes"]), _clock(c["time"]))
    side.add_row(board, ckpts)
    return Group(Panel(head, title="swarm", expand=True), peers, rounds, side)


def show_status(url: str, *, as_json: bool = False, watch: float | None = None) -> int:
    console = Console()
    if as_json:
        console.print_json(json.dumps(fetch_status(url)))
        return 0
    if not watch:
        console.print(render(fetch_status(url)))
        return 0
    from rich.live import Live

    with Live(render(fetch_status(url)), console=console, refresh_per_second=1, screen=False) as live:
        while True:
            time.sleep(max(watch, 0.5))
            live.update(render(fetch_status(url)))
