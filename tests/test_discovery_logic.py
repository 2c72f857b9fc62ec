"""Discovery logic without the network: the peer table, interface selection,
and beacon handling (datagrams are fed in directly)."""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Any

import attrs
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_p2p import Config, PeerDiscovered, PeerLost
from trio_p2p._codec import beacon_signature_valid, decode_beacon
from trio_p2p._discovery import VERIFY_PER_ADDRESS, Discovery, PeerTable
from trio_p2p._identity import Identity
from trio_p2p._messages import Beacon, BeaconKind
from trio_p2p._netif import broadcast_addresses

from .helpers import signed_beacon


def test_new_peer_is_news_and_a_refresh_is_not() -> None:
    table = PeerTable(capacity=10, per_address=4, timeout=5)
    node = uuid.uuid4()
    first = table.observe(node, "A", "10.0.0.1", 7000, now=0)
    assert first.news
    assert first.peer is not None
    again = table.observe(node, "A", "10.0.0.1", 7000, now=1)
    assert not again.news
    assert table.get(node) is not None
    assert table.get(node).last_seen == 1  # type: ignore[union-attr]


def test_changed_address_or_port_updates_the_entry_without_duplicating() -> None:
    table = PeerTable(capacity=10, per_address=4, timeout=5)
    node = uuid.uuid4()
    table.observe(node, "A", "10.0.0.1", 7000, now=0)
    moved = table.observe(node, "A", "10.0.0.2", 7001, now=1)
    assert moved.news
    assert len(table) == 1
    peer = table.get(node)
    assert peer is not None
    assert (peer.address, peer.port) == ("10.0.0.2", 7001)
    # the old address no longer counts toward its cap
    for _ in range(4):
        assert table.observe(uuid.uuid4(), "x", "10.0.0.1", 1, now=2).dropped is None


def test_per_address_cap_evicts_that_address_stalest_entry_only() -> None:
    table = PeerTable(capacity=100, per_address=3, timeout=50)
    other = uuid.uuid4()
    table.observe(other, "B", "10.0.0.9", 1, now=0)
    flood = [uuid.uuid4() for _ in range(3)]
    for i, node in enumerate(flood):
        table.observe(node, "F", "10.0.0.1", 1, now=i)
    seen = table.observe(uuid.uuid4(), "F", "10.0.0.1", 1, now=10)
    assert seen.evicted is not None
    assert seen.evicted.id == flood[0]
    assert table.get(other) is not None  # another address is untouched
    assert len([p for p in table.snapshot() if p.address == "10.0.0.1"]) == 3


def test_connected_peers_are_never_evicted() -> None:
    connected: set[uuid.UUID] = set()
    table = PeerTable(capacity=100, per_address=2, timeout=50, is_connected=connected.__contains__)
    a, b = uuid.uuid4(), uuid.uuid4()
    table.observe(a, "A", "10.0.0.1", 1, now=0)
    table.observe(b, "B", "10.0.0.1", 1, now=1)
    connected.update({a, b})
    seen = table.observe(uuid.uuid4(), "F", "10.0.0.1", 1, now=2)
    assert seen.dropped == "per_address_cap"
    assert {p.id for p in table.snapshot()} == {a, b}


def test_a_full_table_drops_newcomers() -> None:
    table = PeerTable(capacity=2, per_address=10, timeout=50)
    table.observe(uuid.uuid4(), "A", "10.0.0.1", 1, now=0)
    table.observe(uuid.uuid4(), "B", "10.0.0.2", 1, now=0)
    assert table.observe(uuid.uuid4(), "C", "10.0.0.3", 1, now=0).dropped == "table_full"


def test_expiry() -> None:
    table = PeerTable(capacity=10, per_address=4, timeout=5)
    a, b = uuid.uuid4(), uuid.uuid4()
    table.observe(a, "A", "10.0.0.1", 1, now=0)
    table.observe(b, "B", "10.0.0.2", 1, now=3)
    assert table.next_expiry() == 5
    assert table.expire(4.9) == []
    assert [p.id for p in table.expire(5)] == [a]
    assert table.next_expiry() == 8
    assert [p.id for p in table.expire(100)] == [b]
    assert table.next_expiry() is None


@settings(max_examples=200)
@given(
    st.lists(
        st.tuples(st.integers(0, 30), st.integers(0, 5), st.booleans()),
        max_size=200,
    )
)
def test_table_bounds_hold_under_any_sequence(steps: list[tuple[int, int, bool]]) -> None:
    ids = [uuid.UUID(int=i + 1) for i in range(31)]
    connected: set[uuid.UUID] = set()
    table = PeerTable(capacity=12, per_address=3, timeout=1000, is_connected=connected.__contains__)
    for now, (node, address, connect) in enumerate(steps):
        before = {p.id for p in table.snapshot()}
        seen = table.observe(ids[node], "n", f"10.0.0.{address}", 1, now=now)
        if connect and seen.peer is not None:
            connected.add(ids[node])
        per_address = Counter(p.address for p in table.snapshot())
        assert len(table) <= 12
        assert all(count <= 3 for count in per_address.values())
        # a connected peer that was in the table is still there
        assert {i for i in before if i in connected} <= {p.id for p in table.snapshot()}


@attrs.frozen
class FakeIP:
    ip: Any
    network_prefix: int


@attrs.frozen
class FakeAdapter:
    name: str
    ips: list[FakeIP]


ADAPTERS = [
    FakeAdapter("lo", [FakeIP("127.0.0.1", 8), FakeIP(("::1", 0, 0), 128)]),
    FakeAdapter("eth0", [FakeIP("192.168.1.20", 24), FakeIP(("fe80::1", 0, 2), 64)]),
    FakeAdapter("eth1", [FakeIP("10.1.2.3", 16), FakeIP("10.9.9.9", 16)]),
    FakeAdapter("wg0", [FakeIP("10.200.0.1", 32)]),
    FakeAdapter("tun0", [FakeIP("10.201.0.0", 31)]),
    FakeAdapter("eth2", [FakeIP("172.16.5.5", 20)]),
]


def test_broadcast_addresses_of_up_interfaces() -> None:
    up = lambda name: name != "eth2"  # noqa: E731
    assert broadcast_addresses(ADAPTERS, is_up=up) == (
        "10.1.255.255",
        "10.9.255.255",
        "192.168.1.255",
    )
    assert broadcast_addresses(ADAPTERS, is_up=up, include_loopback=True) == (
        "10.1.255.255",
        "10.9.255.255",
        "127.255.255.255",
        "192.168.1.255",
    )
    assert "172.16.15.255" in broadcast_addresses(ADAPTERS, is_up=lambda _: True)


class FakeSocket:
    """Records datagrams; sending to a 'broken' address raises like a real socket."""

    def __init__(self, broken: str) -> None:
        self.broken = broken
        self.sent: list[tuple[bytes, tuple[str, int]]] = []

    async def recvfrom(self, size: int) -> tuple[bytes, tuple[str, int]]:
        await trio.sleep_forever()

    async def sendto(self, data: bytes, address: tuple[str, int]) -> int:
        await trio.lowlevel.checkpoint()
        if address[0] == self.broken:
            raise OSError(101, "Network is unreachable")
        self.sent.append((data, address))
        return len(data)


def make_discovery(**config: Any) -> tuple[Discovery, list[object], FakeSocket, Counter[str]]:
    notes: list[object] = []
    counters: Counter[str] = Counter()
    drops: Counter[str] = Counter()
    sock = FakeSocket(broken="10.0.0.255")
    settings: dict[str, Any] = {"broadcast_addresses": ("10.0.0.255", "10.1.255.255")}
    settings.update(config)
    identity = Identity.generate()
    discovery = Discovery(
        Config(**settings),
        sock,  # type: ignore[arg-type]
        Beacon(BeaconKind.ANNOUNCE, identity.peer_id, "me", 7000),
        PeerTable(10, 4, 5),
        notes.append,
        counters,
        drops,
        identity,
    )
    discovery.refresh_targets()
    return discovery, notes, sock, counters


async def test_a_send_error_on_one_address_is_counted_not_fatal() -> None:
    with trio.fail_after(5):
        discovery, _notes, sock, counters = make_discovery()
        await discovery.send(BeaconKind.ANNOUNCE)
        await discovery.send(BeaconKind.ANNOUNCE)
        assert counters["datagram_send_errors"] == 2
        assert counters["datagrams_sent"] == 2
        assert {address for _, address in sock.sent} == {("10.1.255.255", 6968)}


async def test_beacons_drive_discovered_and_lost() -> None:
    with trio.fail_after(5):
        discovery, notes, _sock, _ = make_discovery()
        bob = Identity.generate()
        at = ("10.1.0.7",)
        discovery.handle_datagram(signed_beacon(identity=bob, name="B", sources=at), "10.1.0.7")
        discovery.handle_datagram(signed_beacon(identity=bob, name="B", sources=at), "10.1.0.7")
        assert [type(n) for n in notes] == [PeerDiscovered]
        goodbye = signed_beacon(BeaconKind.GOODBYE, bob, "B", sources=at)
        discovery.handle_datagram(goodbye, "10.1.0.7")
        assert [type(n) for n in notes] == [PeerDiscovered, PeerLost]
        # a goodbye for an unknown peer says nothing
        discovery.handle_datagram(
            signed_beacon(BeaconKind.GOODBYE, name="C", sources=("10.1.0.8",)), "10.1.0.8"
        )
        assert len(notes) == 2


async def test_own_beacons_are_ignored() -> None:
    with trio.fail_after(5):
        discovery, notes, _sock, _ = make_discovery()
        own = signed_beacon(identity=discovery.identity, sources=("10.1.0.1",))
        discovery.handle_datagram(own, "10.1.0.1")
        assert notes == []
        assert discovery._drops["own"] == 1


async def test_sent_beacons_are_signed_for_each_target() -> None:
    with trio.fail_after(5):
        discovery, _notes, sock, _ = make_discovery(broadcast_addresses=("127.255.255.255",))
        await discovery.send(BeaconKind.ANNOUNCE)
        await discovery.send(BeaconKind.ANNOUNCE)
        first, second = (decode_beacon(data) for data, _ in sock.sent)
        for beacon in (first, second):
            assert beacon.key == discovery.identity.public_key
            assert beacon.addresses == (b"\x7f\x00\x00\x01",)
            assert beacon_signature_valid(beacon)
        assert second.counter > first.counter > 1_700_000_000_000


async def test_forged_moved_and_replayed_beacons_are_dropped() -> None:
    """Only the holder of a node's key can announce it, from its own addresses, once."""
    with trio.fail_after(5):
        discovery, notes, _sock, _ = make_discovery()
        bob, mallory = Identity.generate(), Identity.generate()
        at = ("10.1.0.7",)
        genuine = signed_beacon(identity=bob, name="Bob", port=7001, sources=at)
        discovery.handle_datagram(genuine, "10.1.0.7")
        assert len(notes) == 1
        drops = discovery._drops
        cases = [
            # Mallory claims Bob's id (her key does not derive it)
            (
                signed_beacon(identity=mallory, node_id=bob.peer_id, sources=("10.1.0.66",)),
                "10.1.0.66",
                "key_mismatch",
            ),
            # Bob's genuine beacon replayed from Mallory's address
            (genuine, "10.1.0.66", "address_not_signed"),
            # ... and from Bob's own address (a spoofed source): not newer
            (genuine, "10.1.0.7", "stale"),
            # a goodbye "from Bob" that Mallory signed
            (
                signed_beacon(BeaconKind.GOODBYE, mallory, node_id=bob.peer_id, sources=at),
                "10.1.0.7",
                "key_mismatch",
            ),
        ]
        for data, source, cause in cases:
            before = drops[cause]
            discovery.handle_datagram(data, source)
            assert drops[cause] == before + 1, cause
        # a changed byte breaks the signature (here: the port, 7001 -> 7002)
        tampered = bytearray(signed_beacon(identity=bob, name="Bob", port=7001, sources=at))
        position = tampered.index(b"\x19\x1b\x59")  # CBOR for 7001
        tampered[position + 2] = 0x5A
        discovery.handle_datagram(bytes(tampered), "10.1.0.7")
        assert drops["bad_signature"] == 1
        assert len(notes) == 1  # nothing changed: Bob is where he was
        assert notes[0].peer.fingerprint == bob.fingerprint  # type: ignore[attr-defined]
        peer = discovery.table.get(bob.peer_id)
        assert peer is not None
        assert (peer.address, peer.port) == ("10.1.0.7", 7001)


async def test_signature_checks_are_budgeted_per_address() -> None:
    with trio.fail_after(10):
        discovery, _notes, _sock, _ = make_discovery()
        flood = [signed_beacon(sources=("10.1.0.9",)) for _ in range(VERIFY_PER_ADDRESS + 5)]
        for data in flood:
            discovery.handle_datagram(data, "10.1.0.9")
        assert discovery._drops["verify_rate"] == 5
        # another address still has its budget
        discovery.handle_datagram(signed_beacon(sources=("10.1.0.10",)), "10.1.0.10")
        assert discovery._drops["verify_rate"] == 5


@pytest.mark.parametrize("kind", [BeaconKind.REQUEST])
async def test_a_request_makes_the_node_announce_early(
    kind: BeaconKind, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(30):
        discovery, _notes, sock, _ = make_discovery(announce_interval=10, peer_timeout=30)
        async with trio.open_nursery() as nursery:
            await nursery.start(discovery.run)
            await trio.sleep(1)
            before = len(sock.sent)
            discovery.handle_datagram(
                signed_beacon(kind, name="asker", port=7002, sources=("10.1.0.9",)), "10.1.0.9"
            )
            await trio.sleep(3)  # well before the next interval
            assert len(sock.sent) == before + 1
            nursery.cancel_scope.cancel()


async def test_interfaces_are_re_read_every_few_intervals(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    from trio_p2p import _discovery

    current = ["10.1.255.255"]
    monkeypatch.setattr(_discovery, "broadcast_addresses", lambda: tuple(current))
    with trio.fail_after(60):
        discovery, _notes, sock, _ = make_discovery(
            broadcast_addresses=None,
            announce_interval=1,
            peer_timeout=3,
            interface_refresh_intervals=3,
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(discovery.run)
            await trio.sleep(2.5)
            assert {a for _, (a, _port) in sock.sent} == {"10.1.255.255"}
            current[:] = ["10.2.255.255", "10.3.255.255"]  # an interface came and went
            sock.sent.clear()
            await trio.sleep(4)
            assert discovery.targets == ("10.2.255.255", "10.3.255.255")
            assert {a for _, (a, _port) in sock.sent[-2:]} == {"10.2.255.255", "10.3.255.255"}
            nursery.cancel_scope.cancel()


def test_a_fresh_entry_does_not_move_to_another_address() -> None:
    table = PeerTable(capacity=10, per_address=4, timeout=10, move_after=5)
    node = uuid.uuid4()
    table.observe(node, "B", "10.0.0.2", 7000, now=0)
    spoofed = table.observe(node, "B", "10.0.0.66", 4444, now=1)
    assert spoofed.dropped == "address_conflict"
    assert table.get(node).address == "10.0.0.2"  # type: ignore[union-attr]
    # silent at the old address long enough: a real move
    moved = table.observe(node, "B", "10.0.0.3", 7000, now=6)
    assert moved.news
    assert table.get(node).address == "10.0.0.3"  # type: ignore[union-attr]


def test_a_full_table_evicts_from_the_most_crowded_address() -> None:
    table = PeerTable(capacity=4, per_address=3, timeout=50)
    honest = uuid.uuid4()
    table.observe(honest, "H", "10.0.0.1", 1, now=0)
    flood = [uuid.uuid4() for _ in range(3)]
    for i, node in enumerate(flood):
        table.observe(node, "F", "10.0.0.9", 1, now=1 + i)
    newcomer = table.observe(uuid.uuid4(), "N", "10.0.0.2", 1, now=10)
    assert newcomer.peer is not None
    assert newcomer.evicted is not None
    assert newcomer.evicted.id == flood[0]
    assert table.get(honest) is not None


async def test_a_goodbye_counts_only_from_the_peers_own_address() -> None:
    with trio.fail_after(5):
        discovery, notes, _sock, _ = make_discovery()
        bob = Identity.generate()
        both = ("10.1.0.7", "10.1.0.66")  # a peer on two networks
        discovery.handle_datagram(signed_beacon(identity=bob, sources=both), "10.1.0.7")
        goodbye = signed_beacon(BeaconKind.GOODBYE, bob, sources=both)
        discovery.handle_datagram(goodbye, "10.1.0.66")
        assert [type(n) for n in notes] == [PeerDiscovered]
        assert discovery._drops["goodbye_from_elsewhere"] == 1
        goodbye = signed_beacon(BeaconKind.GOODBYE, bob, sources=both)
        discovery.handle_datagram(goodbye, "10.1.0.7")
        assert [type(n) for n in notes] == [PeerDiscovered, PeerLost]
