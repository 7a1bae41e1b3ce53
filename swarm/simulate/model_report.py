"""What `swarm simulate model` shows: a table per role (trainer, client, aux) and a PNG of who reduces what.

    rows = role_rows(peers, result)          # from one modelled round (swarm.simulate.model.RoundResult)
    print(format_role_table(rows))
    write_png(path, peers, result, title="dedloc-albert, 1000 peers", rounds=[...], bound=lp_bound_s)

Each row sums or averages every peer of a role, so a 1000-peer scenario fits in three lines: how
many, their mean link rates, the share of the vector they reduce (all of them together, and one
on average), and the bytes one of them sends and receives per round.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

ROLES = ("trainer", "client", "aux")
COLORS = {"trainer": "#2f7fd1", "client": "#e89a2c", "aux": "#3aa55d"}
MBIT = 1e6 / 8


def role_rows(peers: Sequence[Any], result: Any) -> list[dict[str, Any]]:
    """One dict per role present: peers, mean up/down Mbit/s, total and mean share, mean MB sent/received per round."""
    rows = []
    for role in ROLES:
        idx = [k for k, p in enumerate(peers) if p.role == role]
        if not idx:
            continue
        n = len(idx)
        rows.append({
            "role": role, "peers": n,
            "upload_mbps": sum(peers[k].upload_bps for k in idx) / n / MBIT,
            "download_mbps": sum(peers[k].download_bps for k in idx) / n / MBIT,
            "share_total": sum(result.shares[k] for k in idx),
            "share_mean": sum(result.shares[k] for k in idx) / n,
            "sent_mb": sum(result.sent[k] for k in idx) / n / 1e6,
            "received_mb": sum(result.received[k] for k in idx) / n / 1e6,
        })
    return rows


def format_role_table(rows: Sequence[dict[str, Any]]) -> str:
    head = f"  {'role':<8} {'peers':>6} {'up Mbit/s':>10} {'down Mbit/s':>12} {'reduces (all)':>14} {'(one)':>8} {'MB sent':>9} {'MB recv':>9}"
    lines = [head]
    for r in rows:
        lines.append(f"  {r['role']:<8} {r['peers']:>6} {r['upload_mbps']:>10.1f} {r['download_mbps']:>12.1f} "
                     f"{r['share_total']:>13.1%} {r['share_mean']:>8.2%} {r['sent_mb']:>9.1f} {r['received_mb']:>9.1f}")
    return "\n".join(lines)


def write_png(path: Path, peers: Sequence[Any], result: Any, *, title: str, rounds: Sequence[float], bound: float | None) -> Path:
    """Left: each peer's share of the vector against its upload rate, coloured by role. Right: each round's seconds
    (and the LP bound, where known)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for role in ROLES:
        idx = [k for k, p in enumerate(peers) if p.role == role]
        if idx:
            left.scatter([peers[k].upload_bps / MBIT for k in idx], [100 * result.shares[k] for k in idx], s=14,
                         color=COLORS[role], label=f"{role} ({len(idx)})", alpha=0.8)
    left.set_xscale("log")
    left.set_xlabel("upload (Mbit/s)")
    left.set_ylabel("share of the vector reduced (%)")
    left.set_title("load balancing: who reduces what")
    left.legend()
    right.plot(range(1, len(rounds) + 1), list(rounds), marker="o", color="#2f7fd1", label="modelled round")
    if bound:
        right.axhline(bound, color="#888", linestyle="--", label=f"LP bound {bound:.2f}s")
    right.set_xlabel("round")
    right.set_ylabel("seconds")
    right.set_ylim(bottom=0)
    right.set_title("all-reduce time per round")
    right.legend()
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
