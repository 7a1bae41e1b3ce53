"""The p2pd connection that carries every unary call (the DHT's RPCs, in and out) must outlive a cancelled call.

hivemind 1.1.12's ControlClient multiplexes unary calls over one persistent connection to its p2pd: a reader task
hands each response to the future of its call. A call cancelled by its caller's timeout (every DHT request has one)
cancels that future, then awaits the cancel message's turn in the write queue; a response that arrives in that window
meets a cancelled future still in the table, `set_result` raises InvalidStateError, and the reader task dies. From then
on no response reaches any call (each times out) and no request from another peer is answered (the reader also
dispatches those), so the node drops out of every routing table, its own included, for the rest of its life.
Found at 64 peers on 2 cores, where timeouts are common: 1-6 peers a run held a view of 0-1 peers for the whole
minute (swarm.net.contacts logged "read_task ended: InvalidStateError").

`install()` replaces the reader with one that drops a response whose call is already settled. `describe(p2p)` says
whether the channel's tasks still run (for the warnings of an isolated node).
"""
from __future__ import annotations

import asyncio
import logging
from uuid import UUID

from hivemind.p2p.p2p_daemon_bindings import control as _control
from hivemind.p2p.p2p_daemon_bindings.control import ControlClient, P2PDaemonError, P2PHandlerError
from hivemind.p2p.p2p_daemon_bindings.utils import read_pbmsg_safe
from hivemind.proto import p2pd_pb2 as p2pd_pb

logger = logging.getLogger(__name__)

_original_reader = ControlClient._read_from_persistent_conn


def _settle(future: asyncio.Future | None, *, result=None, error: BaseException | None = None) -> None:
    """Resolve a call's future unless its caller already gave up on it (cancelled: the response is dropped)."""
    if future is None or future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


async def _read_from_persistent_conn(self: ControlClient, reader: asyncio.StreamReader) -> None:
    """hivemind's reader, each future settled only while its call still waits for it."""
    while True:
        resp = p2pd_pb.PersistentConnectionResponse()
        try:
            await read_pbmsg_safe(reader, resp)
        except asyncio.IncompleteReadError:
            break
        call_id = UUID(bytes=resp.callId)
        pending = self._pending_calls.get(call_id)
        if resp.HasField("callUnaryResponse"):
            if resp.callUnaryResponse.HasField("response"):
                _settle(pending, result=resp.callUnaryResponse.response)
            elif resp.callUnaryResponse.HasField("error"):
                _settle(pending, error=P2PHandlerError(resp.callUnaryResponse.error.decode(errors="ignore")))
        elif resp.HasField("requestHandling"):
            self._handler_tasks[call_id] = asyncio.create_task(self._handle_persistent_request(call_id, resp.requestHandling))
        elif call_id in self._handler_tasks and resp.HasField("cancel"):
            _control.cancel_task_if_running(self._handler_tasks[call_id])
        elif resp.HasField("daemonError"):
            _settle(pending, error=P2PDaemonError(resp.daemonError.message))
        else:
            _settle(pending)
    logger.debug("p2pd closed the unary channel")


def install() -> None:
    """Use the safe reader in every ControlClient of this process (idempotent; Node.create calls it)."""
    ControlClient._read_from_persistent_conn = _read_from_persistent_conn  # type: ignore[method-assign]


def uninstall() -> None:
    """hivemind's own reader again (tests)."""
    ControlClient._read_from_persistent_conn = _original_reader  # type: ignore[method-assign]


def describe(p2p) -> str:
    """The state of `p2p`'s unary channel: whether its reader and writer tasks run, and the calls waiting."""
    client = getattr(getattr(p2p, "_client", None), "control", None)
    if client is None:
        return "no p2pd client"
    ended = []
    for name in ("_read_task", "_write_task"):
        task = getattr(client, name, None)
        if task is not None and task.done():
            ended.append(f"{name.strip('_')} ended: " + ("cancelled" if task.cancelled() else repr(task.exception())))
    pending = len(getattr(client, "_pending_calls", ()))
    return f"unary channel: {', '.join(ended) or 'reader and writer running'}, {pending} calls pending"
