"""swarm.simulate.network without root: the one-line refusal, addressing, and tc arguments."""
from __future__ import annotations

import pytest

from swarm.errors import ConfigError
from swarm.simulate import network
from swarm.simulate.network import EmulatedNetwork, LinkSpec

pytestmark = pytest.mark.timeout(30)


def test_not_root_is_one_clear_line(monkeypatch):
    monkeypatch.setattr(network.os, "geteuid", lambda: 1000)
    with pytest.raises(ConfigError) as info:
        network.require_root()
    assert "needs root" in str(info.value) and "\n" not in str(info.value)


def test_names_and_addresses_are_unique_and_prefixed():
    net = EmulatedNetwork([LinkSpec(1e6, 1e6)] * 600, prefix="swsim-1-")
    addresses = {net.address(i) for i in range(600)}
    assert len(addresses) == 600 and all(a.startswith("10.77.") for a in addresses)
    assert network.ROUTER_ADDRESS not in addresses
    assert net.namespace(3).startswith("swsim-1-") and net.exec_prefix(None)[-1] == net.router


def test_tbf_rates_are_the_links():
    args = network._tbf("ns", "eth0", 25e6 / 8)
    assert args[args.index("rate") + 1] == "25000000bit"
    assert int(args[args.index("burst") + 1]) >= 32 * 1024
