"""Raw TCP through the emulated links: what the links carry before any protocol (a reference for the bound).

    python -m benchmarks.workers.tcp_probe --serve HOST --bytes N         # echoes N bytes to each client, drains its input
    python -m benchmarks.workers.tcp_probe --connect H1,H2,... --bytes N  # sends N to each and receives N from each

The client uploads and downloads at once (as a peer does in an all-reduce). Goodput is measured where bytes
arrive (the sender's own timing would count what its socket buffers swallowed): the client prints its
download, each server what it received.
"""
from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time

PORT = 5701
BLOCK = bytes(2**16)


def _drain(conn: socket.socket, counter: list[int]) -> None:
    while True:
        data = conn.recv(2**20)
        if not data:
            return
        counter[0] += len(data)


def _send(conn: socket.socket, nbytes: int) -> None:
    sent = 0
    while sent < nbytes:
        conn.sendall(BLOCK[: min(len(BLOCK), nbytes - sent)])
        sent += min(len(BLOCK), nbytes - sent)
    conn.shutdown(socket.SHUT_WR)


def serve(host: str, nbytes: int) -> None:
    listener = socket.create_server((host, PORT), reuse_port=True)
    print(json.dumps({"event": "ready"}), flush=True)

    def handle(conn: socket.socket) -> None:
        counter = [0]
        started = time.monotonic()
        reader = threading.Thread(target=_drain, args=(conn, counter), daemon=True)
        reader.start()
        _send(conn, nbytes)
        reader.join()
        print(json.dumps({"event": "received", "bytes": counter[0], "seconds": time.monotonic() - started}), flush=True)
        conn.close()

    while True:
        conn, _ = listener.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


def connect(hosts: list[str], nbytes: int) -> None:
    conns = [socket.create_connection((h, PORT), timeout=120) for h in hosts]
    counters = [[0] for _ in conns]
    started = time.monotonic()
    readers = [threading.Thread(target=_drain, args=(c, k)) for c, k in zip(conns, counters)]
    writers = [threading.Thread(target=_send, args=(c, nbytes)) for c in conns]
    for t in readers + writers:
        t.start()
    for t in writers:
        t.join()
    up_seconds = time.monotonic() - started
    for t in readers:
        t.join()
    down_seconds = time.monotonic() - started
    received = sum(k[0] for k in counters)
    print(json.dumps({"event": "result", "upload_bps": nbytes * len(conns) / up_seconds, "download_bps": received / down_seconds}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--serve")
    parser.add_argument("--connect")
    parser.add_argument("--bytes", type=int, required=True)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.bytes)
    else:
        connect(args.connect.split(","), args.bytes)


if __name__ == "__main__":
    sys.exit(main())
