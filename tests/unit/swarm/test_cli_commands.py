"""`swarm`'s subcommands are found installed (entry points) and from a checkout that was never installed."""
from __future__ import annotations

import pytest

from swarm import cli


def test_an_uninstalled_checkout_finds_its_subcommands_in_pyproject(monkeypatch):
    installed = {ep.name for ep in cli.command_entry_points()}
    monkeypatch.setattr(cli, "entry_points", lambda group: [])
    from_checkout = {ep.name for ep in cli.command_entry_points()}
    assert {"join", "launch", "demo", "invite"} <= from_checkout
    assert from_checkout == installed
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["join", "--help"])
