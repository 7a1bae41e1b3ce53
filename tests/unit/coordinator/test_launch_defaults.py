"""`swarm launch` and `swarm invite list`: what the organizer sees first."""
from __future__ import annotations

from coordinator.cli import launch_config
from coordinator.identity import load_or_create_rsa_key
from coordinator.invite_cli import cmd_list
from coordinator.invites import InviteStore
from coordinator.run_folder import RunFolder
from swarm.cli import build_parser


def _launch_args(*argv: str):
    return build_parser().parse_args(["launch", *argv])


def test_launch_names_the_run_after_its_task_not_demo():
    assert launch_config(_launch_args("--task", "albert")).run_id == "albert"
    assert launch_config(_launch_args("--task", "albert", "--run-id", "bert-1")).run_id == "bert-1"


def test_launch_run_id_help_is_not_the_join_one():
    help_text = build_parser()._subparsers._group_actions[0].choices["launch"].format_help()
    assert "the run to join" not in help_text
    assert "default: the task's name" in " ".join(help_text.split())


def test_invite_list_shows_no_use_count_in_an_open_run(tmp_path, capsys):
    import argparse

    folder = RunFolder.open(tmp_path, "r")
    key = load_or_create_rsa_key(folder.organizer_key_path)
    store = InviteStore(folder.invites_path)
    store.create(key, run_id="r", initial_peers=["/ip4/127.0.0.1/tcp/1/p2p/QmX"], expires_in=3600, invite_only=False)
    store.create(key, run_id="r", initial_peers=["/ip4/127.0.0.1/tcp/1/p2p/QmX"], expires_in=3600, invite_only=True, max_uses=5)
    store.close()
    cmd_list(argparse.Namespace(run_dir=folder.root, json=False))
    rows = capsys.readouterr().out.splitlines()
    uses = [line.split()[2] for line in rows[1:3]]
    assert sorted(uses) == ["-", "0/5"]
    assert any("open run" in line for line in rows)
