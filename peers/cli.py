"""`swarm join`: run a volunteer peer (registered as a `swarm.commands` plug-in)."""
from __future__ import annotations

import argparse
from pathlib import Path

from swarm.config import load_run_config


def add_run_options(p: argparse.ArgumentParser, run_id_help: str = "the run to join") -> None:
    """Flags that map onto RunConfig / EngineConfig fields (the YAML file sets the same ones)."""
    p.add_argument("--config", help="experiment YAML (RunConfig fields)")
    p.add_argument("--run-id", help=run_id_help)
    p.add_argument("--task", help="task plug-in (albert, swav, hf-mlm, hf-clm)")
    p.add_argument("--data-path", help="text file or folder (default: the embedded KJV corpus)")
    p.add_argument("--target-batch-size", type=int, help="samples per global step")
    p.add_argument("--micro-batch-size", type=int, help="samples per local step")
    p.add_argument("--compression", help="none, fp16, uniform8bit, quantile8bit, uniform4bit, uniform2bit, powersgd (low rank), "
                   "topk (top-k with error feedback) or auto (per round)")
    p.add_argument("--outer-codec", help="diloco, streaming-diloco: compression of the outer round (default: --compression), e.g. uniform4bit or topk")
    p.add_argument("--mode", help="sync: large-batch steps together; diloco: local steps, then outer steps; "
                   "streaming-diloco: outer steps of one model fragment at a time, in the background")
    p.add_argument("--inner-steps", type=int, help="diloco: local steps per peer between outer steps (H)")
    p.add_argument("--fragments", type=int, help="streaming-diloco: fragments of the model synchronised in turn (F)")
    p.add_argument("--overlap", action="store_true", default=None, help="average in the background while computing (updates one step late)")
    p.add_argument("--averaging-timeout", type=float, help="deadline of one all-reduce, seconds")
    p.add_argument("--size", help="model size for the task (albert: tiny, small, base, large; swav: tiny, resnet18, resnet50)")


def run_config_from_args(args: argparse.Namespace):
    overrides = {
        "run_id": args.run_id, "task": args.task, "data_path": args.data_path,
        "target_batch_size": args.target_batch_size, "micro_batch_size": args.micro_batch_size,
        "compression": args.compression, "averaging_timeout": args.averaging_timeout,
        "mode": getattr(args, "mode", None), "inner_steps": getattr(args, "inner_steps", None), "overlap": getattr(args, "overlap", None),
        "outer_codec": getattr(args, "outer_codec", None), "fragments": getattr(args, "fragments", None),
    }
    config = load_run_config(args.config, overrides)
    if args.size:
        config.task_options["size"] = args.size
    return config


def run_config_from_invite(access, initial_peers: list[str], args: argparse.Namespace):
    """The run's own config (from the organizer-signed record in the DHT), with this peer's flags on top:
    a data path or micro-batch size is each peer's choice; anything else that differs is refused later."""
    from pydantic import BaseModel, ValidationError

    from swarm.config import RunConfig
    from swarm.errors import ConfigError
    from swarm.observer import fetch_run_config

    if args.config:
        config = run_config_from_args(args)
        return config.model_copy(update={"run_id": access.run_id})
    data = fetch_run_config(access, initial_peers).model_dump()
    overrides = {
        "task": args.task, "data_path": args.data_path, "target_batch_size": args.target_batch_size,
        "micro_batch_size": args.micro_batch_size, "compression": args.compression, "averaging_timeout": args.averaging_timeout,
    }
    for key, value in overrides.items():
        if value is None:
            continue
        if key in RunConfig.model_fields:
            data[key] = value
            continue
        for name, field in RunConfig.model_fields.items():   # a field of a nested section (engine, ...)
            kind = field.annotation
            if isinstance(kind, type) and issubclass(kind, BaseModel) and key in kind.model_fields:
                data[name][key] = value
                break
    if args.size:
        data["task_options"]["size"] = args.size
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        raise ConfigError(f"bad config: {'.'.join(str(x) for x in err['loc'])}: {err['msg']}") from None


def first_line(invite: str | None, run_id: str | None, initial_peers: list[str]) -> str:
    """What `swarm join` says first, from the arguments alone (no import of torch or hivemind)."""
    if invite is not None:
        body = invite.strip()[len("swarm://"):]
        if "@" in body:   # a link: swarm://RUN:ID:SECRET:KEY@ADDRESS
            return f"joining run {body.split(':', 1)[0]} through its coordinator at {body.split('@', 1)[1]}"
        return "joining the run of this invite"
    where = f" through {len(initial_peers)} initial peer{'s' if len(initial_peers) != 1 else ''}" if initial_peers else ""
    return f"joining run {run_id}{where}" if run_id else f"joining{where}"


def check_initial_peers(maddrs: list[str]) -> None:
    """Each initial peer is a full multiaddr with the peer's id (/p2p/...): ConfigError naming the first that is not."""
    from hivemind.utils.multiaddr import Multiaddr

    from swarm.errors import ConfigError

    for m in maddrs:
        try:
            Multiaddr(m).value_for_protocol("p2p")
        except Exception:
            raise ConfigError(f"initial peer {m!r} is not a multiaddr ending in /p2p/PEER_ID: copy the full address "
                              "the coordinator printed (bootstrap: ...)") from None


def register_join(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("join", help="join a run as a volunteer peer", description="Join a run and train with the swarm until Ctrl-C.")
    p.add_argument("invite", nargs="?", metavar="INVITE",
                   help="the run's invite (swarm://...): run id, peers and config come from it; open runs also take --run-id and --initial-peers")
    add_run_options(p)
    p.add_argument("--initial-peers", nargs="+", default=[], metavar="MULTIADDR", help="any peer of the run")
    role = p.add_mutually_exclusive_group()
    role.add_argument("--client-mode", action="store_true", help="behind NAT: dial out only, reduce no share")
    role.add_argument("--aux", action="store_true", help="auxiliary peer: reduce shares, bring no gradients")
    p.add_argument("--host-maddrs", nargs="+", default=["/ip4/0.0.0.0/tcp/0"], help="where to listen")
    p.add_argument("--announce-maddrs", nargs="+", default=None, help="public addresses to announce")
    p.add_argument("--identity", help="private key file for a persistent peer id")
    p.add_argument("--metrics-file", type=Path, help="append one JSON line per global step")
    p.add_argument("--metrics-port", type=int, help="serve this peer's Prometheus /metrics on this port (0: any free port)")
    p.add_argument("--metrics-host", default="127.0.0.1", help="address of the peer's /metrics server")
    p.add_argument("--duration", type=float, help="leave after this many seconds")
    p.add_argument("--stop-at", type=float, help="leave at this UNIX time")
    p.add_argument("--max-epochs", type=int, help="leave after this global epoch")
    p.add_argument("--worker-seed", type=int, default=0, help="data order of this peer")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--save-final", type=Path, metavar="PATH", help="write the final model here when leaving (swarm eval reads it)")
    p.set_defaults(func=cmd_join)


def cmd_join(args: argparse.Namespace, on_collaboration=None) -> int:
    """`on_collaboration(collab)`: called once the peer's Collaboration exists (peers.chaos injects faults there)."""
    from .startup import StageLog, process_started

    say = StageLog(started=process_started())
    invite = args.invite or next((p for p in args.initial_peers if p.startswith("swarm://")), None)
    initial_peers = [p for p in args.initial_peers if p != invite]
    say(first_line(invite, args.run_id, initial_peers))   # before torch and hivemind load (seconds on a slow box)
    from .daemon import PeerOptions, StopFlag, run_peer

    access = None
    if invite is not None:
        from swarm.errors import ConfigError
        from swarm.net.auth import InviteAccess
        from swarm.net.invite_link import is_link, resolve_invite

        if is_link(invite):
            say("asking the run's coordinator for the full invite")
        from swarm.net.identity import read_identity

        # a persistent peer id (--identity) asks for its token with its own key: the peer id names the token's key
        access = InviteAccess(resolve_invite(invite, reap=True), private_key=read_identity(args.identity) if args.identity else None)
        if args.run_id and args.run_id != access.run_id:
            raise ConfigError(f"--run-id {args.run_id} differs from the invite's run {access.run_id}")
        initial_peers = [*access.invite.initial_peers, *initial_peers]
        say(f"reading run {access.run_id}'s config from the swarm" + (" (and an access token)" if access.invite.invite_only else ""))
        config = run_config_from_invite(access, initial_peers, args)
        say(f"run {config.run_id}: task {config.task}, {config.mode} mode, {config.engine.target_batch_size} samples per "
            f"global step, {config.total_epochs} epochs")
    else:
        config = run_config_from_args(args)
        if not initial_peers and "run_id" not in config.model_fields_set:
            from swarm.errors import ConfigError

            raise ConfigError("which run? pass its invite (swarm join swarm://...), or --run-id RUN with --initial-peers "
                              "MULTIADDR (--run-id alone starts a new swarm)")
    check_initial_peers(initial_peers)
    if not initial_peers:
        say(f"no --initial-peers: starting a new swarm for run {config.run_id} (others join with --initial-peers and "
            "this peer's address, logged below)")
    duration = args.duration
    if args.stop_at is not None:
        import time

        duration = min(duration or float("inf"), max(1.0, args.stop_at - time.time()))
    role = "client" if args.client_mode else "aux" if args.aux else "trainer"
    stop = StopFlag()
    stop.install()
    options = PeerOptions(
        initial_peers=initial_peers, role=role, host_maddrs=args.host_maddrs, announce_maddrs=args.announce_maddrs,
        identity_path=args.identity, metrics_path=args.metrics_file, duration=duration, max_epochs=args.max_epochs,
        worker_seed=args.worker_seed, threads=args.threads, metrics_port=args.metrics_port, metrics_host=args.metrics_host,
        final_state_path=args.save_final, access=access, on_collaboration=on_collaboration, say=say,
    )
    summary = run_peer(config, options, stop)
    print(f"left run {config.run_id} at epoch {summary.epochs} after {summary.rounds_completed} rounds ({summary.rounds_failed} failed)")
    # Everything the peer owned has ended (run_peer reaped its children): exit now rather than spend seconds of a
    # loaded machine tearing the corpus and the model down object by object. Ctrl-C must leave within 5 s; measured
    # on a loaded 2-core box by swarm chaos, the interpreter's teardown alone took 2-13 s.
    import logging
    import os
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(0)
