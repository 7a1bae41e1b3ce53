"""What one member's all-reduce phase moved and how fast its links went: the figures the bandwidth estimates and
the load-balancing LP learn from (bytes, busy seconds, rates at which the transport took the member's messages)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from swarm.averaging.balancing import delivered_rate, sustained_rate

# The transport takes about a megabyte per stream (socket, p2pd and TCP buffers) before it pushes back; measured
# on the emulator: 2-3 MB at once across a peer's first three streams. Only a stream that carries more than that
# tells, by when the transport takes its chunks, how fast the link goes.
TRANSPORT_BUFFER_BYTES = 2**20


@dataclass
class PhaseStats:
    """What one member moved in one all-reduce phase, and how fast its links went.

    `send_seconds` is bytes_sent at the best rate its upload was seen to sustain, `receive_seconds` likewise
    for the download (both fall back to `seconds` when a round is too short to tell): the time its links
    were busy, not the time it waited for others. Logs hold (seconds since the start, bytes) per message.

    - download: `balancing.sustained_rate` over `receive_log`, when chunks arrived.
    - upload: `sustained_rate` over when the transport took its messages (`send_log`: its chunks,
      `output_log`: averaged chunks of its part), counting on each stream only the messages past its first
      TRANSPORT_BUFFER_BYTES. The transport swallows that much per stream at once, so those times say
      nothing about the link (a 5 Mbit/s uplink would look as fast as the machine), and a reducer that
      answers 16 senders has 16 such buffers: counted, they made an auxiliary peer of the emulated
      dedloc-albert look 10x faster than its link, and the next round's LP gave it a part it needed 20 s
      to serve. When its own streams carried less than that each, the bound from `ack_log`
      (`balancing.delivered_rate`), when the average of each of its chunks came back, which proves the
      chunk had arrived (a reducer averages a chunk once every sender's copy is in).
    """

    bytes_sent: int = 0
    bytes_received: int = 0
    seconds: float = 0.0
    t0: float = field(default_factory=time.monotonic)                  # the round's start (log times are since)
    send_seconds: float = 0.0
    receive_seconds: float = 0.0
    excluded: list[str] = field(default_factory=list)
    part_hashes: dict[str, str] = field(default_factory=dict)          # reducer -> sha256 of its averaged part as received
    clipped_share: dict[str, float] = field(default_factory=dict)       # sender -> mean share of its pull a robust reduction of my part cut
    missing_parts: list[int] = field(default_factory=list)
    streams: int = 0                                                    # streams this member opened to reducers
    own_bytes: int = 0                                                  # bytes of its chunks it sent on them
    refetches: int = 0                                                  # broken reply streams asked again
    recovered_parts: list[int] = field(default_factory=list)            # parts a backup finished after their reducer was lost
    bad_data: list[str] = field(default_factory=list)                   # senders whose chunks to my part broke the protocol
    proofs: list[tuple[bytes, bytes]] = field(default_factory=list)    # packed statement pairs proving a reducer equivocated
    overclaims: list[bytes] = field(default_factory=list)               # packed commitments of senders over the claim ceiling
    resent_chunks: int = 0                                              # its chunks a reducer lacked and got again
    send_log: list[tuple[float, int]] = field(default_factory=list)     # its chunks, taken by the transport*
    output_log: list[tuple[float, int]] = field(default_factory=list)   # averaged chunks of its part, taken*
    ack_log: list[tuple[float, int]] = field(default_factory=list)      # its chunks, known to have arrived
    receive_log: list[tuple[float, int]] = field(default_factory=list)  # chunks arrived
    # *: only messages past the first TRANSPORT_BUFFER_BYTES of their stream (see `taken`)

    def taken(self, log: list[tuple[float, int]], carried: int, nbytes: int, at: float | None = None) -> None:
        """Log a message of `nbytes` the transport took (now, or `at` seconds into the round) on a stream that had
        carried `carried` bytes before it."""
        if carried >= TRANSPORT_BUFFER_BYTES:
            log.append((time.monotonic() - self.t0 if at is None else at, nbytes))

    def finish(self, seconds: float, link: tuple[float | None, float | None] = (None, None)) -> None:
        """`link`: the rates the interface counters saw (swarm.averaging.linkmeter), which win where there are any."""
        self.seconds = seconds
        taken = sustained_rate(sorted(self.send_log + self.output_log))
        if self.streams and self.own_bytes / self.streams < TRANSPORT_BUFFER_BYTES:
            up = delivered_rate(self.ack_log) or taken
        else:
            up = taken
        down = sustained_rate(self.receive_log)
        up, down = link[0] or up, link[1] or down
        self.send_seconds = self.bytes_sent / up if up else seconds
        self.receive_seconds = self.bytes_received / down if down else seconds
