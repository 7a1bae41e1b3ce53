"""swarm.averaging.linkmeter: interface counters as the measure of a round's upload and download."""
from __future__ import annotations

import asyncio

from swarm.averaging.linkmeter import LinkMeter, read_counters

DEV = """Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo: {lo} 10 0 0 0 0 0 0 {lo} 10 0 0 0 0 0 0
  ifb0: 999999 1 0 0 0 0 0 0 999999 1 0 0 0 0 0 0
  eth0: {rx} 10 0 0 0 0 0 0 {tx} 10 0 0 0 0 0 0
"""


def test_counters_leave_out_loopback_and_ifb(tmp_path):
    dev = tmp_path / "dev"
    dev.write_text(DEV.format(lo=10**9, rx=1000, tx=2000))
    assert read_counters(str(dev)) == (1000, 2000)
    dev.write_text("garbage\nmore\n  eth0: not numbers\n")
    assert read_counters(str(dev)) is None
    assert read_counters(str(tmp_path / "missing")) is None


def test_rates_from_samples_scaled_to_the_payload_and_none_when_the_link_did_not_carry_it(tmp_path):
    dev = tmp_path / "dev"

    async def main():
        meter = LinkMeter(period=0.01, path=str(dev))
        tx = 0
        dev.write_text(DEV.format(lo=0, rx=0, tx=tx))
        meter.start()
        for _ in range(40):   # the link carries 10 kB every 10 ms: 1 MB/s on the wire
            await asyncio.sleep(0.01)
            tx += 10_000
            dev.write_text(DEV.format(lo=0, rx=0, tx=tx))
        await asyncio.sleep(0.03)
        await meter.stop()
        return meter, tx

    meter, wire = asyncio.run(main())
    payload = int(wire * 0.95)  # headers are 5% of what the wire carried
    up, down = meter.rates(payload_sent=payload, payload_received=1000)
    assert up is not None and 0.5e6 < up < 2e6, up   # about 0.95 MB/s of payload (sleep jitter widens the band)
    assert down is None, "nothing came in: no download figure"
    assert meter.rates(payload_sent=wire * 3, payload_received=0)[0] is None, "most of the payload went elsewhere (loopback)"
