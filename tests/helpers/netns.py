"""Whether this machine lets a test build network namespaces (root, iproute2, iptables)."""
from __future__ import annotations

import os
import shutil
import subprocess


def netns_unusable() -> str | None:
    """Why network-namespace tests must skip here, or None when they can run."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, tc, iptables)"
    if shutil.which("ip") is None or shutil.which("tc") is None or shutil.which("iptables") is None:
        return "needs ip, tc (iproute2) and iptables"
    probe = f"swsim-{os.getpid()}-probe"
    if subprocess.run(["ip", "netns", "add", probe], capture_output=True).returncode != 0:
        return "ip netns add fails here (no CAP_SYS_ADMIN?)"
    subprocess.run(["ip", "netns", "delete", probe], capture_output=True)
    return None
