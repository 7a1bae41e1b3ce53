"""The `swarm` command. Subcommands are plug-ins (entry point group `swarm.commands`), so the engine
never imports the peer daemon or the coordinator: `peers` registers `join` and `demo`, and so on.

Every SwarmError ends as one line on stderr and its exit code; Ctrl-C exits with 130.
"""
from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

from .errors import SwarmError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="swarm", description="Train deep learning models together over the internet.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logs")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for ep in sorted(command_entry_points(), key=lambda e: e.name):
        ep.load()(sub)
    return parser


def command_entry_points() -> list[EntryPoint]:
    """The installed `swarm.commands` plug-ins; from a source checkout that was never pip-installed (PYTHONPATH only),
    the ones its pyproject.toml declares, so `python -m swarm.cli join` works there too."""
    found = list(entry_points(group="swarm.commands"))
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    if found or not pyproject.is_file():
        return found
    import tomllib

    declared = tomllib.loads(pyproject.read_text()).get("project", {}).get("entry-points", {}).get("swarm.commands", {})
    return [EntryPoint(name, value, "swarm.commands") for name, value in declared.items()]


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _innermost(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.ArgumentParser:
    """The deepest (sub)command parser that `argv` names: `swarm invite list ...` -> the `invite list` parser."""
    for token in argv:
        parser = _subcommands(parser).get(token, parser)
    return parser


def setup_logging(verbose: bool = False, quiet: bool = False) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname).1s %(name)s: %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    for noisy in ("hivemind", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.ERROR if not verbose else logging.INFO)
    # hivemind sets its own level from this variable when it is imported (after this): one log format, ours
    os.environ.setdefault("HIVEMIND_LOGLEVEL", "INFO" if verbose else "ERROR")


def prefer_huge_pages() -> None:
    """Put tensors of 2 MB and more on transparent huge pages, unless THP_MEM_ALLOC_ENABLE is already set (0 opts out).

    Each round allocates fresh buffers (the averaged vector, its chunks' sums), and on small VMs every first touch of a
    4 KB page is a costly fault: on loopback this cut the all-reduce's CPU per GiB by 23% (benchmarks/README.md).
    PyTorch reads the variable at its first allocation, so a process's entry point calls this before any tensor
    exists; a library user who wants it sets the variable before starting Python.
    """
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")


def main(argv: list[str] | None = None) -> int:
    prefer_huge_pages()  # before the subcommands' plug-ins load torch
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:   # said by the subcommand's parser, with its own usage line (not the top-level one)
        _innermost(parser, sys.argv[1:] if argv is None else argv).error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    setup_logging(args.verbose, args.quiet)
    try:
        return int(args.func(args) or 0)
    except SwarmError as e:
        print(f"swarm: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("swarm: interrupted", file=sys.stderr)
        return 130
    finally:
        # The command is done and the process is about to exit: keep the interpreter's final garbage collection
        # off the objects alive now (a peer's tokenized corpus and model: millions of them). Measured on a loaded
        # 2-core box, a peer's exit after Ctrl-C went from 8-15 s to about 3 s.
        gc.freeze()


if __name__ == "__main__":
    sys.exit(main())
