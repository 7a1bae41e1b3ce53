"""A peer's network presence: its p2pd (hivemind P2P), its Kademlia DHT node, and signed records.

Both live on the engine loop of the trainer process (no DHT child process, no pipes):
the only child is p2pd, which the Reaper (swarm.process.lifecycle) ends when this process dies.
In an invite-only run the node holds an authorizer (swarm.net.auth): it gets its access token
before joining the DHT, and every DHT request and response is signed and checked.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Sequence

from hivemind.dht.crypto import RSASignatureValidator
from hivemind.dht.node import DHTNode
from hivemind.p2p import P2P, PeerID
from hivemind.utils.crypto import RSAPrivateKey
from hivemind.utils.multiaddr import Multiaddr

from swarm.errors import AuthError, ConfigError, NetworkError, describe
from swarm.net import clock, records, unary_channel, wire
from swarm.net.auth import ISSUE_HANDLER, SwarmAuthorizer, coordinator_ids, keep_access
from swarm.net.direct_store import store_blind, store_near
from swarm.net.identity import identity_bytes, identity_file, read_identity, same_key
from swarm.net.replicas import KeyReplicas
from swarm.net.validation import CachedValidator
from swarm.proto import swarm_pb2

logger = logging.getLogger(__name__)

# seconds a read of the replicas as last found may take (the search for them included) before a full read: below the
# progress refresh's own 5 s, so that the full read still has time
READ_TIMEOUT = 3.0


@dataclass
class NodeOptions:
    initial_peers: Sequence[str] = ()
    host_maddrs: Sequence[str] = ("/ip4/127.0.0.1/tcp/0",)
    announce_maddrs: Sequence[str] | None = None
    client_mode: bool = False
    identity_path: str | None = None
    startup_timeout: float = 20.0


def initial_contacts(initial_peers: Sequence[str]) -> dict[str, list[str]]:
    """peer id -> its multiaddrs, for the initial peers that name their id (`.../p2p/<id>`)."""
    contacts: dict[str, list[str]] = {}
    for m in initial_peers:
        if "/p2p/" in m:
            contacts.setdefault(m.rsplit("/p2p/", 1)[1], []).append(m)
    return contacts


class Node:
    """P2P + DHT for one run. Create with `await Node.create(run_id, options)` on the engine loop."""

    def __init__(self, run_id: str, p2p: P2P, dht: DHTNode, signer: RSASignatureValidator, client_mode: bool,
                 authorizer: SwarmAuthorizer | None = None):
        self.run_id = run_id
        self.p2p = p2p
        self.dht = dht
        self.signer = signer
        self.client_mode = client_mode
        self.authorizer = authorizer
        self._access: asyncio.Task | None = None
        self._traversed: dict[str, float] = {}   # key -> when a store of ours last traversed the DHT to its replicas
        self._replicas: dict[str, KeyReplicas] = {}   # key -> its replicas as last found (reads and stores with `replicas`)
        # peer id -> the multiaddrs we joined through: kept in touch for the node's lifetime, so that a bootstrap peer
        # restarted at the same address (a coordinator after a crash) is dialled again; nobody else would dial it
        self.initial_contacts: dict[str, list[str]] = {}

    @classmethod
    async def create(cls, run_id: str, options: NodeOptions, private_key: RSAPrivateKey | None = None,
                     authorizer: SwarmAuthorizer | None = None) -> "Node":
        """`authorizer`: an invite-only run's (swarm.net.auth); None for an open run. With one, the node gets its
        access token before it joins the DHT (AuthError when the coordinator refuses the invite), every DHT
        RPC is signed and checked, and the node keeps its token fresh and follows revocations."""
        # A peer's own key (an invite's, its identity file's, or a fresh one) is also its p2p identity; a key passed in
        # (the coordinator's organizer key) signs records only, and the p2p identity stays the identity file's.
        bind = private_key is None
        stored = read_identity(options.identity_path) if options.identity_path is not None else None
        if authorizer is not None:
            private_key = private_key or authorizer.private_key
            if bind and stored is not None and not same_key(stored, private_key):
                # p2pd would take the file's key as the peer id while the token, records and statements carry the
                # invite access's key: every signed statement would then name the wrong peer
                raise ConfigError(f"the identity file {options.identity_path} holds another key than the one this run's "
                                  "access token was issued for: join with that identity's key (swarm join --identity does) "
                                  "or give another identity path")
        private_key = private_key or stored   # a stable peer id keeps its record key too
        private_key = private_key or RSAPrivateKey()
        signer = RSASignatureValidator(private_key)
        validator = CachedValidator([signer, records.SchemaValidator(run_id)])   # each record checked once, not per copy
        initial = [Multiaddr(m) for m in options.initial_peers]
        wire.cap_message_sizes()   # before any stream opens: no message is read in full before its size is checked
        unary_channel.install()    # a call cancelled as its response arrives must not end the DHT's channel
        p2p = await cls._start_p2p(options, initial, private_key if bind else None)
        await clock.serve(p2p)
        if initial:  # before the DHT: hivemind's bootstrap refuses a peer more than 3 s off (see swarm.net.clock)
            await clock.synchronize(p2p, cls._peer_ids(initial))
        if authorizer is not None:
            authorizer.attach(p2p)
            try:
                await asyncio.wait_for(authorizer.refresh_token_if_needed(), options.startup_timeout)
            except BaseException as e:
                await p2p.shutdown()
                if isinstance(e, asyncio.TimeoutError):
                    raise NetworkError("the run's coordinator did not answer the access token request in time") from None
                raise
        try:
            dht = await asyncio.wait_for(
                DHTNode.create(
                    p2p=p2p,
                    initial_peers=initial,
                    client_mode=options.client_mode,
                    record_validator=validator,
                    authorizer=authorizer,
                    # hivemind's defaults (3 s RPC timeout, 5 s blacklist doubling each time) split a busy
                    # swarm into islands when CPUs are saturated; be patient and forgive quickly instead.
                    wait_timeout=5,
                    blacklist_time=1.0,
                    backoff_rate=1.5,
                    ensure_bootstrap_success=bool(initial),
                    cache_locally=False,
                    cache_nearest=0,
                    reuse_get_requests=False,
                ),
                options.startup_timeout,
            )
        except Exception as e:
            refusal = await cls._invite_only_refusal(p2p, options.initial_peers) if authorizer is None and initial else None
            await p2p.shutdown()
            if refusal:
                raise AuthError(f"this run refused this peer: {refusal}") from None
            where = ", ".join(options.initial_peers) or "(none)"
            raise NetworkError(f"could not join the swarm through initial peers {where}: {describe(e)}") from e
        node = cls(run_id, p2p, dht, signer, options.client_mode, authorizer)
        node.initial_contacts = initial_contacts(options.initial_peers)
        if authorizer is not None:
            node._access = asyncio.create_task(keep_access(authorizer, node._fetch_revoked), name="swarm-access")
        return node

    @staticmethod
    def _peer_ids(maddrs: Sequence[Multiaddr]) -> list[PeerID]:
        ids = set()
        for m in maddrs:
            try:
                ids.add(m.value_for_protocol("p2p"))
            except Exception:  # no /p2p/ part: hivemind's bootstrap says so in its own words
                pass
        return [PeerID.from_base58(i) for i in sorted(ids)]

    @staticmethod
    async def _invite_only_refusal(p2p: P2P, initial_peers: Sequence[str]) -> str | None:
        """A peer without an invite could not bootstrap: ask the initial peers' token issuer (only the coordinator
        of an invite-only run has one) whether that is why; its refusal of an empty invite says so."""
        for coordinator in coordinator_ids(initial_peers):
            try:
                reply = await asyncio.wait_for(
                    p2p.call_protobuf_handler(coordinator, ISSUE_HANDLER, swarm_pb2.TokenRequest(), swarm_pb2.TokenResponse), 5.0
                )
            except Exception:
                continue
            if reply.error:
                return reply.error
        return None

    async def _fetch_revoked(self) -> frozenset[str] | None:
        assert self.authorizer is not None
        found = await self.fetch_records(
            records.revocations_key(self.run_id), records.RevocationRecord, owner=self.authorizer.organizer_key
        )
        return frozenset(found[0].invite_ids) if found else None  # type: ignore[attr-defined]

    @staticmethod
    async def _start_p2p(options: NodeOptions, initial: list[Multiaddr], key: RSAPrivateKey | None, attempts: int = 4) -> P2P:
        """Start p2pd with `key` as its identity (swarm.net.identity: the peer id then names the records' signer), or
        the given identity file's (None: hivemind's own, generated if missing); retry when it cannot reach the initial
        peers (an overloaded or restarting bootstrap)."""
        if key is not None and options.identity_path is not None and not os.path.exists(options.identity_path):
            fd = os.open(options.identity_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
            with os.fdopen(fd, "wb") as f:
                f.write(identity_bytes(key))
        for attempt in range(1, attempts + 1):
            try:
                with contextlib.ExitStack() as stack:
                    path = options.identity_path or (stack.enter_context(identity_file(key)) if key is not None else None)
                    return await P2P.create(
                        initial_peers=initial,
                        host_maddrs=list(options.host_maddrs),
                        announce_maddrs=options.announce_maddrs,
                        identity_path=path,
                        # a fresh key is nobody's; a given file is checked as before
                        check_if_identity_free=options.identity_path is not None or key is None,
                        startup_timeout=options.startup_timeout,
                        dht_mode="client" if options.client_mode else "server",
                        force_reachability="private" if options.client_mode else None,
                    )
            except Exception as e:
                text = describe(e)
                if "bootstrap" in text and attempt < attempts:
                    logger.warning("no initial peer answered (%s); retrying in %.0fs (%d more attempts)",
                                   ", ".join(options.initial_peers), 1.0 * attempt, attempts - attempt)
                    await asyncio.sleep(1.0 * attempt)
                    continue
                if "bootstrap" in text:
                    where = ", ".join(options.initial_peers)
                    raise NetworkError(f"could not reach any initial peer ({where}) after {attempts} attempts") from e
                raise NetworkError(f"could not start the p2p daemon: {text}") from e
        raise AssertionError("unreachable")

    @property
    def peer_id(self) -> PeerID:
        return self.p2p.peer_id

    @property
    def private_key(self) -> RSAPrivateKey:
        """The key that signs this node's records and, unless an invite's key differs, is its p2p identity."""
        return self.signer._private_key

    async def visible_maddrs(self) -> list[str]:
        return [str(m) for m in await self.p2p.get_visible_maddrs()]

    def dht_peers(self) -> int:
        """How many other DHT nodes our routing table holds (0 before the DHT runs)."""
        try:
            return len(self.dht.protocol.routing_table.uid_to_peer_id)
        except AttributeError:
            return 0

    # --- signed records -------------------------------------------------------------------------------

    def replicas(self, key: str) -> KeyReplicas:
        """The replicas of `key` as this node last found them (swarm.net.replicas)."""
        if key not in self._replicas:
            self._replicas[key] = KeyReplicas(self.dht, key)
        return self._replicas[key]

    async def store_record(self, key: str, record: records._Record, ttl: float, *, direct: bool = False,
                           blind: bool = False, replicas: bool = False, timeout: float | None = None) -> bool:
        """Store our record under `key` for `ttl` seconds. `direct`: the caller has just read `key`, so the nodes
        nearest to it are in the routing table: store on them without a traversal (swarm.net.direct_store), except
        once per half `ttl`, when the store traverses as usual so that a replica the table lacks still gets it.
        `blind`: traverse as usual, but without reading the key's records on the way (swarm.net.direct_store).
        `replicas`: one STORE on each of the key's replicas as last found (swarm.net.replicas), found anew by a blind
        traversal now and then; a store no replica took falls back to a blind store.
        `timeout`: for a blind, direct or replicas store's traversal and calls (default half `ttl`)."""
        expiration = clock.now() + ttl
        timeout = ttl / 2 if timeout is None else timeout
        now = time.monotonic()
        if replicas:
            try:
                if await self.replicas(key).store(self.signer.local_public_key, records.encode(record), expiration, timeout=timeout):
                    return True
            except Exception as e:   # the search for them timed out or failed: the blind store below traverses on its own
                logger.debug("a store on the replicas of %s failed: %s", key, describe(e))
            self.replicas(key).forget()
            logger.debug("no replica of %s took our record: a blind store", key)
            blind = True
        if blind:
            try:
                if await store_blind(self.dht, key, self.signer.local_public_key, records.encode(record), expiration, timeout=timeout):
                    return True
            except asyncio.TimeoutError:
                # a node on the way did not answer within the RPC timeout (a cut link, a peer dead but still in the
                # tables): store on the nearest nodes our routing table knows, at once. Failing the publish instead let
                # every survivor's record expire while one peer was cut off (tests/chaos/test_network_cut.py)
                logger.debug("a blind store's traversal of %s timed out: storing on the nearest known nodes", key)
                return await store_near(self.dht, key, self.signer.local_public_key, records.encode(record), expiration, timeout=timeout) > 0
            # no replica took it (1 blind store in about 20 in tests/integration/test_blind_store.py, cause not found):
            # hivemind's store, which tries further nodes until one takes it
            logger.debug("a blind store of %s reached no replica: storing through the DHT's own traversal", key)
        if direct and now - self._traversed.get(key, -math.inf) < ttl / 2:
            return await store_near(self.dht, key, self.signer.local_public_key, records.encode(record), expiration, timeout=timeout) > 0
        # hivemind's default beam: a beam of the replicas alone (every FIND answers with all records) left a restarted
        # coordinator unable to see the peers in CI (tests/integration/test_coordinator.py's kill -9 test)
        stored = await self.dht.store(key, records.encode(record), expiration, subkey=self.signer.local_public_key)
        if stored:
            self._traversed[key] = now
        return stored

    async def fetch_records(self, key: str, model: type[records._Record], *, owner: bytes | None = None,
                            latest: bool = True, replicas: bool = False, expected: int = 0) -> list[records._Record]:
        """All valid, unexpired records under a key (one per owner); malformed ones are dropped.
        `owner`: only the record of this RSA public key (OpenSSH bytes), e.g. the organizer's.
        `latest=False`: the records of the first node that holds the key (asked one at a time), not of every node of
        a bucket: a fraction of the bytes, for a key whose few records every replica should hold.
        `replicas`: the merge of the nearest replicas' records as last found (swarm.net.replicas), a few FINDs instead of a
        traversal's; when none of them holds the key (a swarm forming), or they hold fewer than half the `expected`
        records (the caller's last count), a full read, and the replicas are looked for again."""
        return [record for _, record in await self.fetch_owned_records(key, model, owner=owner, latest=latest, replicas=replicas,
                                                                       expected=expected)]

    async def fetch_owned_records(self, key: str, model: type[records._Record], *, owner: bytes | None = None,
                                  latest: bool = True, replicas: bool = False, expected: int = 0) -> list[tuple[bytes, records._Record]]:
        """fetch_records, each record with its owner's subkey (records.owner_subkey: who signed it)."""
        found = await self._read_replicas(key, expected) if replicas else None
        if found is None and latest:
            # every node of a bucket, not only the key's nearest: a peer's direct stores (swarm.net.direct_store) reach
            # the replicas its routing table knows, and a node that just joined holds nothing yet
            found = await self.dht.get(key, latest=True)
        elif found is None:
            found = await self.dht.get(key, latest=False, num_workers=1)
        if found is None or not isinstance(found.value, dict):
            return []
        out = []
        for subkey, item in found.value.items():
            if owner is not None and subkey != records.owner_subkey(owner):
                continue
            record = records.decode(model, item.value)
            if record is not None:
                out.append((subkey, record))
        return out

    async def _read_replicas(self, key: str, expected: int = 0):
        """The key's value from its replicas as last found, or None (none holds it, or they could not be found in
        READ_TIMEOUT, or the search failed, or they hold fewer than half the `expected` records): then they are looked
        for again at the next call, and the caller reads the full way."""
        try:
            found = await self.replicas(key).read(timeout=READ_TIMEOUT)
        except Exception as e:   # the search for them timed out or failed
            logger.debug("a read of the replicas of %s failed: %s", key, describe(e))
            found = None
        if found is not None and isinstance(found.value, dict) and len(found.value) < expected / 2:
            # Nodes that are not the key's replicas (a search cut short at load, say) that we also stored to would
            # answer with little more than our own record, again and again: at 64 peers on 2 cores, views of 1 peer
            logger.debug("the replicas of %s hold %d records where %d were seen: a full read", key, len(found.value), expected)
            found = None
        if found is None:
            self.replicas(key).forget()
        return found

    async def shutdown(self) -> None:
        for kept in self._replicas.values():
            kept.close()
        if self._access is not None:
            self._access.cancel()
            await asyncio.gather(self._access, return_exceptions=True)
            self._access = None
        try:
            await asyncio.wait_for(self.dht.shutdown(), 5)
        except Exception as e:  # shutting down: log and go on, p2pd must still stop
            logger.debug("dht shutdown: %s", e)
        await self.p2p.shutdown()
