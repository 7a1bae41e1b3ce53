"""A live swarm started from the shipped compose command lines, on loopback, shared by tests/deploy's live tests.

The coordinator runs `swarm launch` with the flags of compose.yaml's `coordinator` service; the auxiliary peer and the
trainer run the very shell scripts of its `aux-1` and `volunteer` services (they read the coordinator's peer id from its
/api/status and join through /dns4/...), with only the container's names and ports swapped for loopback ones:

    coordinator:8080 -> 127.0.0.1:FREE    /dns4/coordinator/tcp/31337 -> /dns4/localhost/tcp/FREE
    /ip4/0.0.0.0/tcp/31337 -> /ip4/127.0.0.1/tcp/0     --metrics-port 9100 -> FREE    /etc/swarm, /var/lib/swarm -> tmp

and a small global batch so that epochs come every few seconds. Everything is torn down with the package.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from swarm.process.lifecycle import pids_alive
from tests.deploy.deploy_files import EXPERIMENT, HEALTHCHECK, compose, unescape_compose
from tests.helpers.running_swarm import Proc

RUN_ID = "deploy-e2e"
TEST_FLAGS = ["--run-id", RUN_ID, "--target-batch-size", "32"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def replace_flag(argv: list[str], flag: str, value: str) -> list[str]:
    assert flag in argv, f"compose's command has no {flag}: {argv}"
    out = list(argv)
    out[out.index(flag) + 1] = value
    return out


def localize(script: str, swaps: dict[str, str]) -> str:
    script = unescape_compose(script)
    for old, new in swaps.items():
        assert old in script, f"{old!r} is not in compose's script:\n{script}"
        script = script.replace(old, new)
    return script


class LiveSwarm:
    def __init__(self, root: Path):
        self.root = root
        self.http_port, self.p2p_port = free_port(), free_port()
        self.aux_metrics, self.trainer_metrics = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.bin = root / "bin"
        self.bin.mkdir()
        # the image's `swarm` and `python`, here: this interpreter
        (self.bin / "swarm").write_text(f'#!/bin/sh\nexec {sys.executable} -m swarm.cli "$@"\n')
        (self.bin / "swarm").chmod(0o755)
        (self.bin / "python").symlink_to(sys.executable)
        self.env = {"PATH": f"{self.bin}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
        self.coordinator: Proc | None = None
        self.aux: Proc | None = None
        self.trainer: Proc | None = None

    @property
    def procs(self) -> list[Proc]:
        return [p for p in (self.trainer, self.aux, self.coordinator) if p is not None]

    def healthy(self, url: str) -> bool:
        return subprocess.run([sys.executable, str(HEALTHCHECK), url], capture_output=True, timeout=30).returncode == 0

    def start(self) -> None:
        services = compose()["services"]
        argv = [str(a) for a in services["coordinator"]["command"]]
        for flag, value in {"--config": str(EXPERIMENT), "--runs-dir": str(self.root / "runs"), "--host": "127.0.0.1",
                            "--port": str(self.http_port), "--p2p-host": "127.0.0.1", "--p2p-port": str(self.p2p_port)}.items():
            argv = replace_flag(argv, flag, value)
        self.coordinator = Proc([str(self.bin / "swarm"), *argv, *TEST_FLAGS, "--checkpoint-every", "0"],
                                self.root / "coordinator.log", env=self.env)
        # compose: the peers wait for `depends_on: coordinator: condition: service_healthy`, i.e. this health check
        deadline = time.monotonic() + 180
        while not self.healthy(f"{self.url}/healthz"):
            assert self.coordinator.proc.poll() is None, f"the coordinator exited:\n{self.coordinator.text()[-3000:]}"
            assert time.monotonic() < deadline, f"the coordinator never got healthy:\n{self.coordinator.text()[-3000:]}"
            time.sleep(1)
        self.coordinator.remember()
        common = {
            "http://coordinator:8080": self.url,
            "/dns4/coordinator/tcp/31337/": f"/dns4/localhost/tcp/{self.p2p_port}/",
            "/etc/swarm/experiment.yaml": str(EXPERIMENT),
            "/ip4/0.0.0.0/tcp/31337": "/ip4/127.0.0.1/tcp/0",
            "--metrics-host 0.0.0.0": "--metrics-host 127.0.0.1",
        }
        aux = localize(services["aux-1"]["command"][0], {
            **common, "/var/lib/swarm/identity.key": str(self.root / "aux-identity.key"),
            "--metrics-port 9100": f"--metrics-port {self.aux_metrics}"})
        trainer = localize(services["volunteer"]["command"][0], {**common, "--metrics-port 9100": f"--metrics-port {self.trainer_metrics}"})
        flags = " ".join(TEST_FLAGS)
        self.aux = Proc(["/bin/sh", "-ec", f"{aux.rstrip()} {flags}"], self.root / "aux.log", env=self.env)
        self.trainer = Proc(["/bin/sh", "-ec", f"{trainer.rstrip()} {flags}"], self.root / "trainer.log", env=self.env)

    def remember(self) -> None:
        for p in self.procs:
            p.remember()

    def logs(self) -> str:
        return "\n".join(f"--- {p.log.name}\n" + "\n".join(p.text().splitlines()[-12:]) for p in self.procs)

    def close(self) -> None:
        self.remember()
        for p in self.procs:
            p.stop()
        leftover = [pid for p in self.procs for pid in pids_alive(p.known)]
        assert not leftover, f"processes outlived the live swarm: {leftover}"


@pytest.fixture(scope="package")
def live_swarm(tmp_path_factory):
    swarm = LiveSwarm(tmp_path_factory.mktemp("live"))
    try:
        swarm.start()
        yield swarm
    finally:
        swarm.close()
