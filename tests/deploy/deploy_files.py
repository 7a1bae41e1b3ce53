"""What tests/deploy reads out of deploy/: the shipped files, the `swarm` command lines they run, and the tools.

Every command line a deployment runs (compose, Kubernetes, systemd, Slurm) is checked against the real `swarm`
argument parser, so deploy/ can never drift from the CLI: it has no configuration of its own.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "swarm-dashboard.json"
EXPERIMENT = DEPLOY / "experiment.yaml"
HEALTHCHECK = DEPLOY / "docker" / "swarm-healthcheck"

# A real peer id (base58 multihash), where a deployment has the coordinator's own.
SAMPLE_PEER_ID = "12D3KooWErd55E7dKEAFmZ5cfxQzPsoDHZxVfN3mkAFratGndNzV"


def tool(name: str, install: str) -> str:
    """The path of a command-line tool; skipped where it is not installed, a failure on CI (which installs it)."""
    path = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if path:
        return path
    reason = f"{name} is not installed ({install})"
    if os.environ.get("CI"):
        pytest.fail(f"{reason}: .ci/run should have installed it")
    pytest.skip(reason)


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE)


def unescape_compose(text: str) -> str:
    """Compose's `$$` is a literal `$` for the container's shell."""
    return text.replace("$$", "$")


def exec_line(script: str) -> str:
    """The `exec swarm ...` command of a compose shell script, continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", unescape_compose(script))
    lines = [line.strip() for line in joined.splitlines() if line.strip().startswith("exec swarm ")]
    assert len(lines) == 1, f"expected one `exec swarm ...` line in:\n{script}"
    return lines[0]


def script_swarm_argv(script: str, values: dict[str, str] | None = None) -> list[str]:
    """The argv after `swarm` of a compose shell script's exec line, with its shell variables set to `values`."""
    line = exec_line(script)
    for name, value in (values or {}).items():
        line = line.replace(f"${{{name}}}", value).replace(f"${name}", value)
    assert "$" not in line, f"unexpanded shell variable in {line!r}"
    argv = shlex.split(line)
    assert argv[:2] == ["exec", "swarm"], line
    return argv[2:]


def parse_swarm(argv: list[str]):
    """`swarm ARGV` through the real parser; a failure names the command line."""
    from swarm.cli import build_parser

    try:
        return build_parser().parse_args(argv)
    except SystemExit as e:
        raise AssertionError(f"`swarm {shlex.join(argv)}` does not parse (exit {e.code})") from None


def flag_value(argv: list[str], flag: str) -> str:
    assert flag in argv, f"{flag} missing from swarm {shlex.join(argv)}"
    return argv[argv.index(flag) + 1]
