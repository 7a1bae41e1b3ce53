"""Invite-only runs on loopback: a `swarm launch --invite-only` coordinator, invited toy peers, and intruders.

One coordinator (ALBERT tiny, which only sets the run's config: the trainers are toy peers) and two
invited toy peers serve the module. Invited peers join and step together; an invite that is expired,
revoked, forged or used up is refused with one line and exit code 5; a peer without an invite is refused
at the DHT, and requests without a token, replayed, or signed for a revoked invite are refused by the
peers' own handlers (matchmaking, state download, all-reduce streams).
"""
from __future__ import annotations

import asyncio
import json
import sys
import time

import pytest
from hivemind.p2p import P2P, PeerID
from hivemind.utils.crypto import RSAPrivateKey
from hivemind.utils.multiaddr import Multiaddr

from swarm.errors import AuthError
from swarm.net.auth import InviteAccess, SwarmAuthorizer, request_token
from swarm.net.invite import Invite
from swarm.net.invite_link import is_link, parse_link, resolve_invite
from swarm.proto import swarm_pb2
from tests.helpers.procs import read_jsonl, wait_until
from tests.helpers.running_swarm import Proc, RunningSwarm, swarm_cli

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]   # a loaded 2-core box: every `swarm` command imports torch

RUN = "inv"
TARGET = 48   # the run's global batch (the toy peer's own default is 64)


@pytest.fixture(scope="module")
def swarm(tmp_path_factory):
    s = RunningSwarm(tmp_path_factory.mktemp("invites"), run_id=RUN, target_batch_size=TARGET)
    try:
        coordinator = s.start_coordinator("--invite-only")
        s.link = coordinator.wait_line("join with: swarm join", 10)
        assert len(s.link) < 300 and is_link(s.link), s.link
        s.invite = resolve_invite(s.link).encode()   # the full invite the link names, from the coordinator
        for i in range(2):   # toy1 takes its engine settings from the run's config record, as swarm.join(INVITE) does
            s.peers.append(toy(s, f"toy{i}", "--seed", str(i), "--invite", s.invite, "--wait-peers", "2", "--steps", "100000",
                               "--duration", "900", "--step-sleep", "0.2", "--lr", "0.005", "--target", str(TARGET), *(["--run-config"] if i else [])))
        yield s
    finally:
        s.close()


def toy(s: RunningSwarm, name: str, *args: str) -> Proc:
    return Proc([sys.executable, "-m", "tests.helpers.toy_peer", "--out", str(s.root / f"{name}.jsonl"), *args], s.root / f"{name}.log")


def cli(s: RunningSwarm, name: str, *args: str, timeout: float = 150) -> tuple[int, list[str]]:
    """Run a `swarm ...` command to its end (in a session of its own, reaped after); exit code and output lines."""
    proc = Proc(swarm_cli(*args), s.root / f"{name}.log")
    try:
        proc.proc.wait(timeout)
    finally:
        proc.stop()
    return proc.proc.returncode, proc.text().splitlines()


def create_invite(s: RunningSwarm, name: str, *args: str) -> str:
    rc, lines = cli(s, name, "invite", "create", "--run-dir", str(s.run_dir), *args, timeout=180)
    assert rc == 0, lines
    return next(line.split()[-1] for line in lines if line.startswith("swarm join swarm://"))


def steps(s: RunningSwarm, name: str) -> dict[int, dict]:
    return {r["epoch"]: r for r in read_jsonl(s.root / f"{name}.jsonl") if "final" not in r}


def peer_id(proc: Proc) -> tuple[str, PeerID]:
    maddr = proc.wait_line("MADDR", 120)
    return maddr, PeerID.from_base58(maddr.split("/p2p/")[1])


async def client(*initial: str, attempts: int = 4) -> P2P:
    """A bare P2P node connected to `initial` (retried: a busy box can miss p2pd's bootstrap deadline)."""
    for attempt in range(1, attempts + 1):
        try:
            return await P2P.create(initial_peers=[Multiaddr(m) for m in initial], host_maddrs=["/ip4/127.0.0.1/tcp/0"])
        except Exception as e:
            if "bootstrap" not in str(e) or attempt == attempts:
                raise
            await asyncio.sleep(attempt)
    raise AssertionError("unreachable")


async def member(p2p: P2P, invite: str) -> SwarmAuthorizer:
    """An authorizer holding a token the coordinator issued for this invite (what a joining peer holds)."""
    access = InviteAccess(invite)
    authorizer = access.authorizer()
    assert authorizer is not None
    authorizer.attach(p2p)
    await authorizer.refresh_token_if_needed()
    return authorizer


async def join(p2p: P2P, target: PeerID, authorizer: SwarmAuthorizer | None = None, request=None) -> swarm_pb2.GroupInfo:
    if request is None:
        request = swarm_pb2.JoinRequest(run_id=RUN, epoch=0, peer_id=str(p2p.peer_id), role="trainer", weight=8.0)
        if authorizer is not None:
            authorizer.sign_message(request, p2p.peer_id)
    return await asyncio.wait_for(p2p.call_protobuf_handler(target, "swarm.join", request, swarm_pb2.GroupInfo), 20)


# -- the invited ----------------------------------------------------------------------------------------------


def test_invited_peers_join_and_step_together(swarm):
    assert wait_until(lambda: len(set(steps(swarm, "toy0")) & set(steps(swarm, "toy1"))) >= 3, 200, 1.0), \
        "\n".join(p.text()[-1500:] for p in swarm.peers)
    assert swarm.peers[1].wait_line("CONFIG", 5) == f"target_batch_size={TARGET} from_run=True"   # the run's, not the toy's default
    a, b = steps(swarm, "toy0"), steps(swarm, "toy1")
    common = sorted(set(a) & set(b))
    assert max(a[e]["group"] for e in common) == 2
    assert a[common[-1]]["hash"] == b[common[-1]]["hash"]
    rc, lines = cli(swarm, "list", "invite", "list", "--run-dir", str(swarm.run_dir), timeout=180)
    launch = next(line for line in lines if line.endswith("launch"))
    assert launch.split()[1] == "active" and int(launch.split()[2]) >= 2   # both toy peers used the launch invite


# -- the uninvited ---------------------------------------------------------------------------------------------


def test_uninvited_peer_is_refused_at_the_dht(swarm):
    intruder = toy(swarm, "intruder", "--run-id", RUN, "--initial-peers", swarm.bootstrap, "--duration", "20")
    swarm.peers.append(intruder)
    assert intruder.proc.wait(120) == 5
    line = intruder.wait_line("ERROR", 5)
    assert line.startswith("this run refused this peer: this run is invite-only"), line


def test_peer_handlers_refuse_missing_replayed_and_foreign_requests(swarm):
    maddr, target = peer_id(swarm.peers[0])

    async def main():
        p2p, other = await client(maddr), await client(maddr)
        try:
            # no token: matchmaking, state download and the aggregate stream all refuse, saying why
            reply = await join(p2p, target)
            assert (reply.status, reply.reason) == (swarm_pb2.GroupInfo.REJECTED, "unauthorized: no token")
            state = await p2p.iterate_protobuf_handler(target, "swarm.state", swarm_pb2.StateRequest(run_id=RUN), swarm_pb2.StateChunk)
            assert (await asyncio.wait_for(anext(state), 20)).error == "unauthorized: no token"

            async def one_chunk():
                yield swarm_pb2.PartChunk(round_id=b"r" * 16, part=0, chunk=0, data=b"\0" * 8)
            stream = await p2p.iterate_protobuf_handler(target, "swarm.aggregate", one_chunk(), swarm_pb2.PartChunk)
            assert (await asyncio.wait_for(anext(stream), 20)).error == "unauthorized: no token"

            # with a token: accepted by auth (refused later for having no model: a different reason) ...
            authorizer = await member(p2p, swarm.invite)
            captured = swarm_pb2.JoinRequest(run_id=RUN, epoch=0, peer_id=str(p2p.peer_id), role="trainer", weight=8.0)
            authorizer.sign_message(captured, p2p.peer_id)
            reply = await join(p2p, target, request=captured)
            assert not reply.reason.startswith("unauthorized"), reply
            # ... but the same request replayed, by us or by another peer, is refused
            reply = await join(p2p, target, request=captured)
            assert reply.reason == "unauthorized: replayed request"
            reply = await join(other, target, request=captured)
            assert reply.reason == "unauthorized: bad request signature"
            # an authorized state request goes through the auth check too
            signed = swarm_pb2.StateRequest(run_id=RUN, min_epoch=10**9)
            authorizer.sign_message(signed, p2p.peer_id)
            state = await p2p.iterate_protobuf_handler(target, "swarm.state", signed, swarm_pb2.StateChunk)
            assert (await asyncio.wait_for(anext(state), 20)).error == "no state at that epoch here"
        finally:
            await other.shutdown()
            await p2p.shutdown()

    asyncio.run(main())


def test_revocation_reaches_the_peers(swarm):
    maddr, target = peer_id(swarm.peers[0])
    invite = create_invite(swarm, "create-later-revoked", "--label", "revoked while in use")

    async def before_and_after():
        p2p = await client(maddr)
        try:
            authorizer = await member(p2p, invite)
            reply = await join(p2p, target, authorizer)
            assert not reply.reason.startswith("unauthorized"), reply
            rc, lines = await asyncio.to_thread(cli, swarm, "revoke-in-use", "invite", "revoke", parse_link(invite).invite_id,
                                                "--run-dir", str(swarm.run_dir), timeout=180)
            assert rc == 0, lines
            revoked_at = time.monotonic()
            while time.monotonic() - revoked_at < 60:
                reply = await join(p2p, target, authorizer)
                if reply.reason == "unauthorized: invite revoked":
                    return time.monotonic() - revoked_at
                await asyncio.sleep(1.0)
            raise AssertionError(f"the peer still accepts a revoked invite's token: {reply}")
        finally:
            await p2p.shutdown()

    seconds = asyncio.run(before_and_after())
    print(f"revocation reached a peer in {seconds:.1f}s")


# -- refused invites: one line, exit code 5 --------------------------------------------------------------------


def test_expired_revoked_forged_and_used_up_invites_are_refused(swarm):
    """Four `swarm join INVITE` at once (each takes a while to start on a busy box); each ends with its one line."""
    expired = create_invite(swarm, "create-expired", "--expires", "1s")
    revoked = create_invite(swarm, "create-revoked", "--label", "to revoke")
    rc, lines = cli(swarm, "revoke", "invite", "revoke", parse_link(revoked).invite_id, "--run-dir", str(swarm.run_dir), timeout=180)
    assert rc == 0 and "revoked invite" in lines[-1], lines
    genuine = Invite.parse(swarm.invite)
    forged = Invite.create(RSAPrivateKey(), run_id=RUN, initial_peers=genuine.initial_peers, expires_at=time.time() + 3600).encode()
    once = create_invite(swarm, "create-once", "--max-uses", "1")

    async def first_use():
        p2p = await client(swarm.bootstrap)
        try:
            token = await request_token(p2p, resolve_invite(once), RSAPrivateKey())
            assert token.username == f"{RUN}/{parse_link(once).invite_id}"
        finally:
            await p2p.shutdown()

    asyncio.run(first_use())
    expected = {
        "expired": (expired, "swarm: error: this run refused the invite: expired"),
        "revoked": (revoked, "swarm: error: this run refused the invite: revoked"),
        "forged": (forged, "swarm: error: this run refused the invite: forged (not signed by this run's organizer)"),
        "used-up": (once, "swarm: error: this run refused the invite: used up (1 of 1 uses)"),
    }
    procs = {name: Proc(swarm_cli("join", invite, "--host-maddrs", "/ip4/127.0.0.1/tcp/0", "--duration", "5"), swarm.root / f"join-{name}.log")
             for name, (invite, _) in expected.items()}
    try:
        for name, proc in procs.items():
            proc.proc.wait(240)
    finally:
        for proc in procs.values():
            proc.stop()
    for name, (_, line) in expected.items():
        lines = procs[name].text().splitlines()
        errors = [x for x in lines if x.startswith("swarm: error:")]
        assert procs[name].proc.returncode == 5 and errors == [line], (name, lines[-8:])
        assert not any("Traceback" in x for x in lines), (name, lines[-8:])


def test_invites_survive_a_coordinator_kill_9(swarm):
    """The restarted coordinator prints the same invite, still refuses what it refused, and the swarm trained on."""
    listed = cli(swarm, "list-json", "invite", "list", "--run-dir", str(swarm.run_dir), "--json", timeout=180)[1]
    revoked = next(r for r in (json.loads(x) for x in listed if x.startswith("{")) if r["status"] == "revoked")
    epoch_before = max(steps(swarm, "toy0"))
    swarm.coordinator.kill9()
    trained_on = wait_until(lambda: max(steps(swarm, "toy0")) >= epoch_before + 2, 120, 1.0)
    restarted = swarm.start_coordinator("--invite-only")
    assert trained_on, "training stopped with the coordinator"
    assert restarted.wait_line("join with: swarm join", 10) == swarm.link

    async def tokens():
        p2p = await client(swarm.bootstrap)
        try:
            token = await request_token(p2p, Invite.parse(swarm.invite), RSAPrivateKey())
            assert token.username.endswith(Invite.parse(swarm.invite).invite_id)
            with pytest.raises(AuthError, match="refused the invite: revoked"):
                await request_token(p2p, Invite.parse(revoked["invite"]), RSAPrivateKey())
        finally:
            await p2p.shutdown()

    asyncio.run(tokens())


def test_join_with_invite_fetches_the_run_config(swarm):
    """`swarm join INVITE`, no config file: the config comes from the organizer's record and the ALBERT peer joins.
    With `--identity` naming an existing key, the peer asks for its token with that key and keeps its peer id (with
    another key the token, records and statements would name another peer than p2pd's)."""
    from swarm.net.identity import identity_bytes

    key = RSAPrivateKey()
    identity = swarm.root / "albert-identity.key"
    identity.write_bytes(identity_bytes(key))
    async def expected_id() -> str:   # the peer id of that key, as p2pd derives it
        p2p = await P2P.create(identity_path=str(identity), check_if_identity_free=False, host_maddrs=["/ip4/127.0.0.1/tcp/0"])
        try:
            return str(p2p.peer_id)
        finally:
            await p2p.shutdown()
    wanted = asyncio.run(expected_id())
    peer = Proc(swarm_cli("join", swarm.link, "--host-maddrs", "/ip4/127.0.0.1/tcp/0", "--duration", "30", "--identity", str(identity)),
                swarm.root / "albert.log")
    swarm.peers.append(peer)
    try:
        assert wait_until(lambda: f"joined run {RUN} as trainer" in peer.text() or peer.proc.poll() is not None, 240, 1.0)
        assert f"joined run {RUN} as trainer" in peer.text(), peer.text()[-2000:]
        assert f"as trainer, peer {wanted}" in peer.text(), "the identity file's key is the peer's"
        stages = [line.split("] ", 1)[1] for line in peer.text().splitlines() if line.startswith("[") and "s] " in line]
        expected = [f"joining run {RUN} through its coordinator at", "asking the run's coordinator for the full invite",
                    f"reading run {RUN}'s config", f"run {RUN}: task albert", "preparing task albert", "model ready",
                    f"joined run {RUN} as trainer"]
        assert [next((s for s in stages if s.startswith(e)), None) for e in expected] == [
            next(s for s in stages if s.startswith(e)) for e in expected], stages
        assert [i for e in expected for i, s in enumerate(stages) if s.startswith(e)] == sorted(
            i for e in expected for i, s in enumerate(stages) if s.startswith(e)), stages   # in this order
    finally:
        peer.stop()
