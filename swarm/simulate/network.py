"""An emulated network: one Linux network namespace per peer, joined through veth pairs to a router.

Topology. A router namespace `swsim-<pid>-r` holds a bridge `br0` (10.77.0.1/16, where the
bootstrap peer listens). Peer i lives in namespace `swsim-<pid>-<i>` with `eth0` at its own
10.77.x.y/16; the other end of its veth pair, `p<i>`, is a port of the bridge. The pairs are created
directly inside the namespaces, so nothing is ever added to the host's own network namespace, and
deleting the namespaces deletes everything.

Shaping. tc tbf on the egress of the peer's `eth0` is its upload; tbf on the egress of the router's
`p<i>` is its download. tbf counts whole Ethernet frames, so TCP's payload gets about 95% of a rate.
netem is not available on these machines: links add no latency (the bridge adds microseconds).

NAT. A `nat` peer's namespace drops inbound TCP SYNs and new UDP flows (iptables INPUT): it can dial
out but accept nothing, like a peer behind a home router. `set_nat(i, False)` lifts the filter (the
gloo baseline needs every peer reachable).

Ownership. Needs root. `close()` (also on exceptions, via `with`) deletes every namespace of this
process's prefix; `cleanup_stale()` deletes those left by processes that died (SIGKILL) and that no
process is running in. Kill the processes you started inside a namespace before closing it.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import Sequence

from swarm.process.lifecycle import pids_alive

from ..errors import ConfigError, NetworkError

logger = logging.getLogger(__name__)

PREFIX = "swsim"
SUBNET = "10.77"
ROUTER_ADDRESS = f"{SUBNET}.0.1"


def require_root(what: str = "swarm simulate emulate") -> None:
    """One clear line unless we are root and have ip and tc."""
    if os.geteuid() != 0:
        raise ConfigError(f"{what} needs root (network namespaces, tc and iptables): run it with sudo")
    missing = [tool for tool in ("ip", "tc", "iptables") if shutil.which(tool) is None]
    if missing:
        raise ConfigError(f"{what} needs {' and '.join(missing)} (apt-get install iproute2 iptables)")


@dataclass(frozen=True)
class LinkSpec:
    """One peer's link: rates in bytes per second, and whether it sits behind NAT."""

    upload_bps: float
    download_bps: float
    nat: bool = False


def _run(args: Sequence[str], check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise NetworkError(f"{' '.join(args)}: {proc.stderr.strip() or proc.returncode}")
    return proc


def _tbf(namespace: str, device: str, rate_bps: float) -> list[str]:
    bits = max(int(rate_bps * 8), 8000)
    burst = max(32 * 1024, int(rate_bps / 50))  # 20 ms of traffic, at least 32 KiB (more than a GSO segment train)
    return ["tc", "-n", namespace, "qdisc", "replace", "dev", device, "root", "tbf",
            "rate", f"{bits}bit", "burst", str(burst), "latency", "100ms"]


def namespaces() -> list[str]:
    """All network namespace names on this machine."""
    proc = _run(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_stale() -> list[str]:
    """Delete namespaces of this module's prefix whose creator is dead and that hold no process; returns them."""
    removed = []
    pattern = re.compile(rf"^{PREFIX}-(\d+)-")
    for name in namespaces():
        match = pattern.match(name)
        if not match or _pid_alive(int(match.group(1))):
            continue
        pids = _run(["ip", "netns", "pids", name], check=False).stdout.split()
        if pids:
            logger.warning("stale namespace %s still runs processes %s; leaving it", name, " ".join(pids))
            continue
        _run(["ip", "netns", "delete", name], check=False)
        removed.append(name)
    if removed:
        logger.info("removed stale namespaces: %s", ", ".join(removed))
    return removed


def _pids_in(names: Sequence[str]) -> set[int]:
    return {int(pid) for name in names for pid in _run(["ip", "netns", "pids", name], check=False).stdout.split()}


def _end_processes_in(names: Sequence[str], grace: float = 3.0, kill_wait: float = 5.0) -> None:
    """SIGTERM, then SIGKILL, whatever still runs in these namespaces. Everything in them was started by
    this emulator (workers and their p2pd or watchdog); a worker's own cleanup may lag its exit under load,
    and deleting a namespace does not end the processes inside it."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, kill_wait)):
        pids = _pids_in(names)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        end = time.monotonic() + wait
        while time.monotonic() < end and pids_alive(pids):
            time.sleep(0.05)
    left = pids_alive(_pids_in(names))
    if left:
        logger.warning("processes %s survived SIGKILL in namespaces %s", left, ", ".join(names))


class EmulatedNetwork:
    """`with EmulatedNetwork(links) as net:` ... `net.exec_prefix(i) + [cmd...]` runs a command as peer i."""

    def __init__(self, links: Sequence[LinkSpec], prefix: str | None = None):
        if len(links) > 200 * 250:
            raise ConfigError("at most 50000 emulated peers")
        self.links = list(links)
        self.prefix = prefix or f"{PREFIX}-{os.getpid()}"
        self.router = f"{self.prefix}-r"
        self._created: list[str] = []

    # -- naming ---------------------------------------------------------------------------------------------

    def namespace(self, i: int) -> str:
        return f"{self.prefix}-{i}"

    def address(self, i: int) -> str:
        return f"{SUBNET}.{1 + i // 250}.{1 + i % 250}"

    def exec_prefix(self, i: int | None) -> list[str]:
        """Command prefix that runs as peer i (None: in the router namespace, where the bootstrap lives)."""
        return ["ip", "netns", "exec", self.router if i is None else self.namespace(i)]

    # -- lifecycle ------------------------------------------------------------------------------------------

    def __enter__(self) -> "EmulatedNetwork":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> "EmulatedNetwork":
        require_root()
        cleanup_stale()
        try:
            self._add_namespace(self.router)
            r = self.router
            _run(["ip", "-n", r, "link", "add", "br0", "type", "bridge"])
            _run(["ip", "-n", r, "addr", "add", f"{ROUTER_ADDRESS}/16", "dev", "br0"])
            _run(["ip", "-n", r, "link", "set", "br0", "up"])
            for i, link in enumerate(self.links):
                ns = self.namespace(i)
                self._add_namespace(ns)
                _run(["ip", "link", "add", "name", "eth0", "netns", ns, "type", "veth", "peer", "name", f"p{i}", "netns", r])
                _run(["ip", "-n", r, "link", "set", f"p{i}", "master", "br0", "up"])
                _run(["ip", "-n", ns, "addr", "add", f"{self.address(i)}/16", "dev", "eth0"])
                _run(["ip", "-n", ns, "link", "set", "eth0", "up"])
                _run(_tbf(ns, "eth0", link.upload_bps))
                _run(_tbf(r, f"p{i}", link.download_bps))
                if link.nat:
                    self.set_nat(i, True)
        except BaseException:
            self.close()
            raise
        logger.info("emulated network %s: %d peers behind router %s", self.prefix, len(self.links), ROUTER_ADDRESS)
        return self

    def _add_namespace(self, name: str) -> None:
        _run(["ip", "netns", "add", name])
        self._created.append(name)
        _run(["ip", "-n", name, "link", "set", "lo", "up"])

    def set_nat(self, i: int, enabled: bool) -> None:
        """Drop (enabled) or accept inbound connections to peer i."""
        ns = self.namespace(i)
        _run(["ip", "netns", "exec", ns, "iptables", "-F", "INPUT"])
        if enabled:
            _run(["ip", "netns", "exec", ns, "iptables", "-A", "INPUT", "-p", "tcp", "--syn", "-j", "DROP"])
            _run(["ip", "netns", "exec", ns, "iptables", "-A", "INPUT", "-p", "udp", "-m", "conntrack", "--ctstate", "NEW", "-j", "DROP"])

    def set_link(self, i: int, up: bool) -> None:
        """Cut (up=False) or restore peer i's link, as a home connection that drops: its eth0 goes down, so
        packets vanish without a reset; connections resume when it comes back, if both ends still hold them."""
        _run(["ip", "-n", self.namespace(i), "link", "set", "eth0", "up" if up else "down"])

    def close(self) -> None:
        """End what still runs inside, then delete every namespace of this prefix (the veths and qdiscs go
        with them). Idempotent."""
        mine = set(self._created) | {n for n in namespaces() if n.startswith(self.prefix + "-")}
        _end_processes_in(sorted(mine))
        for name in sorted(mine, key=lambda n: n == self.router):  # peers first, then the router
            proc = _run(["ip", "netns", "delete", name], check=False)
            if proc.returncode != 0 and "No such file" not in proc.stderr:
                logger.warning("could not delete namespace %s: %s", name, proc.stderr.strip())
        self._created.clear()
