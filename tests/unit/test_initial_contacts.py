"""A node remembers the peers it joined through, so that a bootstrap peer restarted at its address is dialled again."""
from swarm.net.node import initial_contacts

A = "QmaCpDMGvV2BGHeYERUEnRQAwe3N8SzbUtfsmvsqQLuvuJ"
B = "QmbLHAnMoJPWSCR5Zhtx6BHJX9KiKNN6tpvbUcqanj75Nb"


def test_initial_contacts_groups_addresses_by_peer_id():
    contacts = initial_contacts([f"/ip4/10.0.0.1/tcp/31337/p2p/{A}", f"/ip4/127.0.0.1/tcp/31337/p2p/{A}",
                                 f"/dns4/example.org/tcp/4001/p2p/{B}"])
    assert contacts == {A: [f"/ip4/10.0.0.1/tcp/31337/p2p/{A}", f"/ip4/127.0.0.1/tcp/31337/p2p/{A}"],
                        B: [f"/dns4/example.org/tcp/4001/p2p/{B}"]}


def test_initial_peers_without_an_id_are_not_contacts():
    assert initial_contacts(["/ip4/10.0.0.1/tcp/31337", ""]) == {}
