"""`swarm launch`, `swarm status` and `swarm export`: the organizer's commands (`swarm.commands` plug-ins)."""
from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path

from pydantic import ValidationError

from swarm.errors import ConfigError


def register_launch(sub: argparse._SubParsersAction) -> None:
    from peers.cli import add_run_options

    p = sub.add_parser(
        "launch", help="start the coordinator of a run (bootstrap peer, dashboard, checkpoints)",
        description="Start a run's coordinator: the bootstrap peer, the tracker, checkpoints and the dashboard. "
                    "Restarting it on the same run folder keeps its identity, history and checkpoints.",
    )
    add_run_options(p, run_id_help="the run's id, and its folder's name under --runs-dir (default: the task's name)")
    p.add_argument("--host", help="address of the dashboard/API server (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port of the dashboard/API server (default 8080; 0: any free port)")
    p.add_argument("--p2p-host", help="address the bootstrap peer listens on (default 0.0.0.0)")
    p.add_argument("--p2p-port", type=int, help="port of the bootstrap peer (default: the run folder's, else a free one)")
    p.add_argument("--announce-maddrs", nargs="+", help="public multiaddrs of the bootstrap peer")
    p.add_argument("--runs-dir", type=Path, help="the run's folder is RUNS_DIR/RUN_ID (default runs)")
    p.add_argument("--checkpoint-every", type=int, help="checkpoint every N epochs (default 5; 0: never)")
    p.add_argument("--keep-checkpoints", type=int, help="how many checkpoints to keep (default 3)")
    p.add_argument("--from-checkpoint", type=Path, metavar="PATH", help="start the run from this checkpoint: the coordinator serves it to the first peers")
    p.add_argument("--fresh", action="store_true", help="discard the run folder's history and checkpoints first (keeps its keys and invites)")
    p.add_argument("--invite-only", action="store_true", help="peers need an invite: swarm invite create (stays invite-only for this run folder)")
    p.set_defaults(func=cmd_launch)


def settings_from_args(args: argparse.Namespace):
    from .settings import CoordinatorSettings

    fields = {
        "host": args.host, "port": args.port, "p2p_host": args.p2p_host, "p2p_port": args.p2p_port,
        "announce_maddrs": args.announce_maddrs, "runs_dir": args.runs_dir, "checkpoint_every": args.checkpoint_every,
        "keep_checkpoints": args.keep_checkpoints, "fresh": args.fresh or None, "invite_only": getattr(args, "invite_only", False) or None,
    }
    try:
        return CoordinatorSettings(**{k: v for k, v in fields.items() if v is not None})
    except ValidationError as e:
        err = e.errors()[0]
        flag = "--" + str(err["loc"][0]).replace("_", "-") if err["loc"] else "settings"
        raise ConfigError(f"bad {flag}: {err['msg']}") from None


def launch_config(args: argparse.Namespace):
    """The run's config from the flags and YAML; with no run id in either, the run is named after its task
    (RunConfig's default, `demo`, is the folder of `swarm demo`)."""
    from peers.cli import run_config_from_args
    from peers.tasks import TASKS

    config = run_config_from_args(args)
    if "run_id" not in config.model_fields_set:
        config = config.model_copy(update={"run_id": config.task})
    if config.task not in TASKS:
        raise ConfigError(f"unknown task {config.task!r}: choose one of {', '.join(TASKS)}")
    return config


def cmd_launch(args: argparse.Namespace) -> int:
    from .service import Coordinator

    config = launch_config(args)
    settings = settings_from_args(args)
    if args.from_checkpoint is not None and not args.from_checkpoint.exists():
        raise ConfigError(f"checkpoint {args.from_checkpoint} does not exist")
    coordinator = Coordinator(config, settings, from_checkpoint=args.from_checkpoint, announce=lambda line: print(line, flush=True))
    return asyncio.run(_serve_until_signal(coordinator))


async def _serve_until_signal(coordinator) -> int:
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(coordinator.run(), name="coordinator")
    stopping = []

    def stop() -> None:
        if not stopping:
            stopping.append(True)
            print("stopping the coordinator (the swarm keeps training)", flush=True)
            task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    try:
        await task
    except asyncio.CancelledError:
        if not stopping:
            raise
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return 0


# -- swarm status ------------------------------------------------------------------------------------------

def register_status(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="show a run's progress from its coordinator", description="The dashboard's figures in the terminal.")
    p.add_argument("--url", help="the coordinator's dashboard URL (default: the run launched from this folder, ./runs/*, "
                                 "else http://127.0.0.1:8080)")
    p.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where `swarm launch` put its run folders (default runs)")
    p.add_argument("--json", action="store_true", help="print the raw /api/status JSON")
    p.add_argument("--watch", type=float, metavar="SECONDS", help="refresh every SECONDS until Ctrl-C")
    p.set_defaults(func=cmd_status)


def cmd_status(args: argparse.Namespace) -> int:
    from .status_view import show_status

    return show_status(args.url, runs_dir=args.runs_dir, as_json=args.json, watch=args.watch)


# -- swarm export ------------------------------------------------------------------------------------------

def formats_help() -> str:
    """One line per task: which formats `swarm export` writes for it (the first is the default). No torch import:
    this runs for every `swarm` command's parser."""
    from peers.task_names import EXPORT_FORMATS

    return "; ".join(f"{task}: {', '.join(formats)}" for task, formats in EXPORT_FORMATS.items())


def register_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a checkpoint as a model folder",
                       description="Export a run's checkpoint in one of its task's formats (hf: a Hugging Face folder; "
                                   f"safetensors: weights + config.json). Formats by task, first is the default: {formats_help()}.")
    p.add_argument("run", metavar="RUN", help="a run id (under --runs-dir), a run folder, or a checkpoint folder")
    p.add_argument("--format", help=f"the task's default unless given ({formats_help()})")
    p.add_argument("--out", type=Path, help="output folder (default RUNS_DIR/RUN/export/epoch-N-FORMAT)")
    p.add_argument("--epoch", type=int, help="export the checkpoint of this epoch (default: the newest)")
    p.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where run folders are (default runs)")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from .checkpoints import read_meta, resolve_checkpoint
    from .export import FORMATS, export_checkpoint, task_formats

    if args.format is not None and args.format not in FORMATS:
        raise ConfigError(f"unknown export format {args.format!r}: one of {', '.join(FORMATS)}")
    path = resolve_checkpoint(args.run, args.runs_dir, args.epoch)
    meta = read_meta(path)
    fmt = args.format or (task_formats(str(meta["task"])) or ("hf",))[0]
    out = args.out or path.parent.parent / "export" / f"epoch-{meta['epoch']}-{fmt}"
    export_checkpoint(path, out, fmt)
    print(f"exported {path} (epoch {meta['epoch']}, task {meta['task']}) as {fmt} to {out}")
    return 0
