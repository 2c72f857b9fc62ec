"""End-to-end: messengers on real loopback sockets."""

from __future__ import annotations

import errno
import logging
import socket

import pytest
import trio

from trio_p2p import (
    Config,
    DeliveryError,
    DeliveryFailed,
    MessageReceived,
    Messenger,
    PeerConnected,
    PeerDisconnected,
    PeerDiscovered,
    PeerInfo,
    PeerNotConnectedError,
    Text,
    open_messenger,
)
from trio_p2p._messages import BeaconKind

from .conftest import ConfigFactory, free_udp_port
from .helpers import connect, discover, drain, signed_beacon, texts, wait_for


async def test_three_messengers_discover_connect_in_a_mesh_and_talk(
    make_config: ConfigFactory,
) -> None:
    config = make_config()
    with trio.fail_after(15):
        async with (
            open_messenger("Alice", config) as a,
            open_messenger("Bob", config) as b,
            open_messenger("Carol", config) as c,
        ):
            nodes = [a, b, c]
            start = trio.current_time()
            # everyone discovers everyone within two announce intervals
            for me in nodes:
                wanted = {n.peer_id for n in nodes if n is not me}
                seen: set[object] = set()
                while seen != wanted:
                    event = await me.events.receive()
                    if isinstance(event, PeerDiscovered):
                        seen.add(event.peer.id)
            assert trio.current_time() - start <= 2 * config.announce_interval
            for me in nodes:
                assert {p.id for p in me.discovered_peers()} == {
                    n.peer_id for n in nodes if n is not me
                }
            # full mesh, whoever dials
            for me, other in [(a, b), (a, c), (b, c)]:
                peer = next(p for p in me.discovered_peers() if p.id == other.peer_id)
                info = await me.connect_to_peer(peer)
                assert info.id == other.peer_id
                assert info.name == other.peer_name
                # idempotent
                assert (await me.connect_to_peer(peer)).id == other.peer_id
            for me in nodes:
                connected: set[object] = set()
                while len(connected) < 2:
                    event = await me.events.receive()
                    if isinstance(event, PeerConnected):
                        connected.add(event.peer.id)
                assert {p.id for p in me.connected_peers()} == connected
            # text in order on every link
            for me in nodes:
                for other in nodes:
                    if other is not me:
                        for i in range(5):
                            await me.send_text_message(other.peer_id, f"{me.peer_name}->{i}")
            for me in nodes:
                got = await texts(me, 10)
                for other in nodes:
                    if other is not me:
                        mine = [t for t in got if t.startswith(other.peer_name)]
                        assert mine == [f"{other.peer_name}->{i}" for i in range(5)]
            await a.flush()
            assert a.statistics().messages_acknowledged == 10


async def test_ten_thousand_nowait_messages_none_lost_or_reordered(
    make_config: ConfigFactory,
) -> None:
    config = make_config(send_window=256)
    with trio.fail_after(30):
        async with open_messenger("Alice", config) as a, open_messenger("Bob", config) as b:
            await connect(a, b)
            count = 10_000
            received: list[str] = []

            async def receive_all() -> None:
                received.extend(await texts(b, count))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(receive_all)
                for i in range(count):
                    try:
                        a.send_text_message_nowait(b.peer_id, str(i))
                    except trio.WouldBlock:
                        await a.send_text_message(b.peer_id, str(i))
                await a.flush(b.peer_id)
                stats = a.statistics()
                assert stats.messages_sent == count
                assert stats.messages_acknowledged == count
            assert received == [str(i) for i in range(count)]
            # acks are coalesced: far fewer frames back than messages
            assert b.statistics().frames_sent < count / 10


async def test_send_to_unknown_peer_raises(make_config: ConfigFactory) -> None:
    import uuid

    with trio.fail_after(5):
        async with open_messenger("Alice", make_config()) as a:
            with pytest.raises(PeerNotConnectedError):
                a.send_text_message_nowait(uuid.uuid4(), "x")
            with pytest.raises(PeerNotConnectedError):
                await a.send_text_message(uuid.uuid4(), "x")
            with pytest.raises(PeerNotConnectedError):
                await a.flush(uuid.uuid4())
            with pytest.raises(TypeError):
                a.send_text_message_nowait(uuid.uuid4(), b"bytes")  # type: ignore[arg-type]
            with pytest.raises(TypeError):
                await a.broadcast_text_message(b"bytes")  # type: ignore[arg-type]


async def test_disconnect_reports_undelivered_messages(make_config: ConfigFactory) -> None:
    with trio.fail_after(15):
        async with (
            open_messenger("Alice", make_config()) as a,
            open_messenger("Bob", make_config(event_buffer=4)) as b,
        ):
            await connect(a, b)
            sent = [a.send_text_message_nowait(b.peer_id, f"m{i}") for i in range(50)]
            # Bob's application reads nothing: his reader stalls, acks stop
            await trio.sleep(0.5)
            await a.disconnect_peer(b.peer_id)
            disconnected = await wait_for(a, PeerDisconnected, peer=b.peer_id)
            assert "disconnected by the application" in disconnected.reason
            failed = await wait_for(a, DeliveryFailed, peer=b.peer_id)
            # what Bob's application gets, plus what Alice reports, is everything
            got = []
            async for event in b.events:
                if isinstance(event, MessageReceived):
                    got.append(event.message)
                if isinstance(event, PeerDisconnected):
                    break
            assert got == sent[: len(got)]
            assert list(failed.messages) == sent[len(sent) - len(failed.messages) :]
            assert len(got) + len(failed.messages) >= len(sent)
            assert len(failed.messages) > 0
            assert a.statistics().messages_undelivered == len(failed.messages)
            with pytest.raises(PeerNotConnectedError):
                a.send_text_message_nowait(b.peer_id, "late")


async def test_flush_raises_delivery_error_when_the_peer_goes(make_config: ConfigFactory) -> None:
    with trio.fail_after(15):
        async with open_messenger("Alice", make_config()) as a:
            async with open_messenger("Bob", make_config(event_buffer=1)) as b:
                await connect(a, b)
                for i in range(20):
                    a.send_text_message_nowait(b.peer_id, str(i))
                async with trio.open_nursery() as nursery:
                    result: list[DeliveryError] = []

                    async def flush() -> None:
                        try:
                            await a.flush()
                        except DeliveryError as exc:
                            result.append(exc)

                    nursery.start_soon(flush)
                    await trio.sleep(0.3)
                    await a.disconnect_peer(b.peer_id)
            assert len(result) == 1
            assert isinstance(result[0], DeliveryError)
            assert result[0].peer_id == b.peer_id
            assert len(result[0].messages) > 0


async def test_simultaneous_dial_ends_with_one_connection(make_config: ConfigFactory) -> None:
    config = make_config()
    with trio.fail_after(15):
        async with open_messenger("Alice", config) as a, open_messenger("Bob", config) as b:
            pa = (await discover(a, b)).peer
            pb = (await discover(b, a)).peer
            for _ in range(3):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(a.connect_to_peer, pa)
                    nursery.start_soon(b.connect_to_peer, pb)
                assert [p.id for p in a.connected_peers()] == [b.peer_id]
                assert [p.id for p in b.connected_peers()] == [a.peer_id]
                events_a = await drain(a, 0.5)
                events_b = await drain(b, 0.1)
                assert [type(e) for e in events_a if isinstance(e, PeerConnected)] == [
                    PeerConnected
                ]
                assert [type(e) for e in events_b if isinstance(e, PeerConnected)] == [
                    PeerConnected
                ]
                assert not any(isinstance(e, PeerDisconnected) for e in events_a + events_b)
                # the surviving connection works
                await a.send_text_message(b.peer_id, "hello")
                assert await texts(b, 1) == ["hello"]
                await a.disconnect_peer(b.peer_id)
                await wait_for(b, PeerDisconnected, peer=a.peer_id)
                await wait_for(a, PeerDisconnected, peer=b.peer_id)


async def test_two_messengers_with_default_tcp_port_on_one_host(
    make_config: ConfigFactory,
) -> None:
    config = make_config(tcp_port=Config().tcp_port)
    with trio.fail_after(10):
        async with open_messenger("Alice", config) as a, open_messenger("Bob", config) as b:
            assert a.tcp_port != b.tcp_port
            assert 6969 in (a.tcp_port, b.tcp_port) or not _port_free_for_test(6969)
            await connect(a, b)
            await a.send_text_message(b.peer_id, "same host")
            assert await texts(b, 1) == ["same host"]


def _port_free_for_test(port: int) -> bool:
    """Whether *port* could have been bound (something else may hold it)."""
    with socket.socket() as sock:
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
        return True


async def test_connect_by_address(make_config: ConfigFactory) -> None:
    with trio.fail_after(10):
        async with (
            open_messenger("Alice", make_config()) as a,
            open_messenger("Bob", make_config(discovery_port=free_udp_port())) as b,
        ):
            info = await a.connect_to_peer(("127.0.0.1", b.tcp_port))
            assert info.id == b.peer_id
            # idempotent by address too
            assert (await a.connect_to_peer(("127.0.0.1", b.tcp_port))).id == b.peer_id
            assert len(a.connected_peers()) == 1
            await wait_for(b, PeerConnected, peer=a.peer_id)


async def test_connect_to_a_closed_port_is_a_plain_oserror(make_config: ConfigFactory) -> None:
    with trio.fail_after(10):
        async with open_messenger("Alice", make_config()) as a:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            with pytest.raises(OSError, match="failed"):
                await a.connect_to_peer(("127.0.0.1", port))


async def test_bind_error_is_a_plain_exception(make_config: ConfigFactory) -> None:
    with trio.fail_after(5), pytest.raises(OSError, match="assign") as info:
        # a TEST-NET-3 address no interface here has: binding it fails
        async with open_messenger("Alice", make_config(bind_address="203.0.113.77")):
            pass
    assert info.value.errno == errno.EADDRNOTAVAIL


async def test_body_exception_comes_out_unwrapped(make_config: ConfigFactory) -> None:
    with trio.fail_after(5), pytest.raises(KeyError):
        async with open_messenger("Alice", make_config()):
            raise KeyError("mine")


async def test_invalid_name_is_refused() -> None:
    with trio.fail_after(5), pytest.raises(ValueError, match="name"):
        async with open_messenger("bad\nname"):
            pass


async def test_exit_is_fast_with_peers_connected(make_config: ConfigFactory) -> None:
    with trio.fail_after(15):
        async with open_messenger("Bob", make_config()) as b:
            async with open_messenger("Alice", make_config()) as a:
                await connect(a, b)
                a.send_text_message_nowait(b.peer_id, "bye soon")
                start = trio.current_time()
            assert trio.current_time() - start < 1.0
            event = await wait_for(b, PeerDisconnected, peer=a.peer_id)
            assert "shutting down" in event.reason


async def test_events_channel_ends_after_exit(make_config: ConfigFactory) -> None:
    with trio.fail_after(5):
        async with open_messenger("Alice", make_config()) as a:
            pass
        seen = [event async for event in a.events]
        assert all(not isinstance(e, MessageReceived) for e in seen)


async def test_discovery_events_coalesce_while_the_application_is_slow(
    make_config: ConfigFactory,
) -> None:
    from trio_p2p._identity import Identity
    from trio_p2p._messages import BeaconKind

    config = make_config(
        event_buffer=2, max_peers_per_address=1000, max_discovered_peers=1000, peer_timeout=10
    )
    with trio.fail_after(15):
        async with open_messenger("Alice", config) as a:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
                sender.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
                identities = [Identity.generate() for _ in range(50)]
                ids = [identity.peer_id for identity in identities]
                for round_ in range(3):
                    for identity in identities:
                        port = 1000 + round_  # each round changes the port: news each time
                        data = signed_beacon(BeaconKind.ANNOUNCE, identity, "x", port)
                        sender.sendto(data, ("127.255.255.255", config.discovery_port))
                    # (a node checks at most 64 signatures a second from one address)
                    await trio.sleep(1.05)
            # discovery kept going while nobody read: the table is complete
            assert len(a.discovered_peers()) == 50, a.statistics()
            stats = a.statistics()
            assert stats.events_coalesced > 0
            # one event per peer is pending, newest wins
            events = await drain(a, 0.3)
            found = [e for e in events if isinstance(e, PeerDiscovered)]
            latest = {e.peer.id: e.peer.port for e in found}
            assert set(latest) == set(ids)
            assert all(port == 1002 for port in latest.values())
            # at most: what the channel held, one pending per peer, one in flight
            assert len(found) <= 2 + 50 + 1


def test_text_content_is_a_frozen_record() -> None:
    assert Text("a") == Text("a")


async def test_broadcast_reaches_every_connected_peer(make_config: ConfigFactory) -> None:
    config = make_config()
    with trio.fail_after(10):
        async with (
            open_messenger("Alice", config) as a,
            open_messenger("Bob", config) as b,
            open_messenger("Carol", config) as c,
        ):
            await a.connect_to_peer(("127.0.0.1", b.tcp_port))
            await a.connect_to_peer(("127.0.0.1", c.tcp_port))
            sent = await a.broadcast_text_message("to all")
            assert len(sent) == 2
            assert await texts(b, 1) == ["to all"]
            assert await texts(c, 1) == ["to all"]
            await a.flush()


async def test_leaving_with_unacknowledged_messages_warns_and_counts(
    make_config: ConfigFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="trio_p2p")
    with trio.fail_after(10):
        async with open_messenger("Bob", make_config(event_buffer=2)) as b:
            async with open_messenger("Alice", make_config()) as a:
                await connect(a, b)
                for i in range(40):
                    a.send_text_message_nowait(b.peer_id, str(i))
                # Bob's application reads nothing; Alice leaves without flush()
                await trio.sleep(0.2)
                start = trio.current_time()
            assert trio.current_time() - start < 1.0
            assert a.statistics().messages_undelivered > 0
            assert any("unacknowledged" in r.getMessage() for r in caplog.records)


async def test_leaving_while_a_peer_reads_nothing_still_reports_every_message(
    make_config: ConfigFactory,
) -> None:
    big = "x" * 65536
    with trio.fail_after(20):
        async with open_messenger("Bob", make_config(event_buffer=1)) as b:
            async with open_messenger("Alice", make_config(send_window=256)) as a:
                await connect(a, b)
                sent = 0
                with trio.move_on_after(1):  # 16 MiB: far more than the socket buffers hold
                    while sent < 256:
                        await a.send_text_message(b.peer_id, big)
                        sent += 1
                assert sent < 256  # the stuck writer held the sender back
                start = trio.current_time()
            # grace + close phase, even though Alice's writer is stuck
            assert trio.current_time() - start < a.config.shutdown_grace + 0.5 + 0.3
            stats = a.statistics()
            assert stats.messages_undelivered > 0
            assert stats.messages_undelivered + stats.messages_acknowledged == sent
            left = [e async for e in a.events]
            assert any(isinstance(e, PeerDisconnected) for e in left)
            failed = [e for e in left if isinstance(e, DeliveryFailed)]
            assert len(failed) == 1
            assert len(failed[0].messages) == stats.messages_undelivered


async def test_incoming_connection_completes_while_the_event_channel_is_full(
    make_config: ConfigFactory,
) -> None:
    with trio.fail_after(15):
        async with (
            open_messenger("Bob", make_config(event_buffer=1, handshake_timeout=1)) as b,
            open_messenger("Carol", make_config()) as c,
            open_messenger("Alice", make_config(handshake_timeout=1)) as a,
        ):
            await c.connect_to_peer(("127.0.0.1", b.tcp_port))
            await trio.sleep(0.3)  # Bob's application reads nothing: his channel is full
            info = await a.connect_to_peer(("127.0.0.1", b.tcp_port))
            assert info.id == b.peer_id
            await a.send_text_message(b.peer_id, "queued behind the backlog")
            # Bob's events come in order once he reads: connected before the message
            seen = []
            async for event in b.events:
                seen.append(event)
                if isinstance(event, MessageReceived):
                    break
            alice_connected = next(
                i
                for i, e in enumerate(seen)
                if isinstance(e, PeerConnected) and e.peer.id == a.peer_id
            )
            assert alice_connected < len(seen) - 1


async def test_disconnect_from_the_event_reader_does_not_deadlock(
    make_config: ConfigFactory,
) -> None:
    with trio.fail_after(10):
        async with (
            open_messenger("Alice", make_config(event_buffer=1)) as a,
            open_messenger("Bob", make_config()) as b,
        ):
            await a.connect_to_peer(("127.0.0.1", b.tcp_port))
            for i in range(10):
                await b.send_text_message(a.peer_id, str(i))
            await trio.sleep(0.2)  # Alice's channel is full
            await a.disconnect_peer(b.peer_id)  # from the task that reads events
            assert a.connected_peers() == []
            # the end is reported on the channel once the application reads again
            events = await drain(a, 0.5)
            gone = [e for e in events if isinstance(e, PeerDisconnected)]
            assert [e.peer.id for e in gone] == [b.peer_id]
            assert "disconnected by the application" in gone[0].reason


async def test_simultaneous_dial_by_address_ends_with_one_connection(
    make_config: ConfigFactory,
) -> None:
    with trio.fail_after(30):
        async with (
            open_messenger("Alice", make_config()) as a,
            open_messenger("Bob", make_config()) as b,
        ):
            results: dict[str, PeerInfo] = {}

            async def dial(me: Messenger, other: Messenger) -> None:
                results[me.peer_name] = await me.connect_to_peer(("127.0.0.1", other.tcp_port))

            # Many rounds: the race (each accepting the other's dial, the smaller
            # id ending the connection it accepted) goes each way by timing.
            for _ in range(80):
                results.clear()

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(dial, a, b)
                    nursery.start_soon(dial, b, a)
                assert results["Alice"].id == b.peer_id
                assert results["Bob"].id == a.peer_id
                assert [p.id for p in a.connected_peers()] == [b.peer_id]
                assert [p.id for p in b.connected_peers()] == [a.peer_id]
                await a.send_text_message(b.peer_id, "one link")
                assert await texts(b, 1) == ["one link"]
                await a.disconnect_peer(b.peer_id)
                await wait_for(b, PeerDisconnected, peer=a.peer_id)
                await drain(a, 0.02)
                await drain(b, 0.02)


async def test_redial_by_another_name_for_the_address_is_idempotent(
    make_config: ConfigFactory,
) -> None:
    with trio.fail_after(10):
        async with (
            open_messenger("Alice", make_config()) as a,
            open_messenger("Bob", make_config()) as b,
        ):
            first = await a.connect_to_peer(("127.0.0.1", b.tcp_port))
            again = await a.connect_to_peer(("localhost", b.tcp_port))
            assert again.id == first.id == b.peer_id
            events = await drain(b, 0.5)
            assert [type(e) for e in events if isinstance(e, PeerConnected | PeerDisconnected)] == [
                PeerConnected
            ]


async def test_a_beacon_flood_keeps_the_event_backlog_bounded(
    make_config: ConfigFactory,
) -> None:
    config = make_config(event_buffer=2, max_peers_per_address=8)
    with trio.fail_after(15):
        async with open_messenger("Alice", config) as a:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
                sender.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
                # fresh ids: each evicts another from the table (as many as the
                # node checks: 64 signatures a second from one address)
                for second in range(3):
                    for _ in range(64):
                        data = signed_beacon(name="F", port=9)
                        sender.sendto(data, ("127.255.255.255", config.discovery_port))
                    if second < 2:
                        await trio.sleep(1.05)
            await trio.sleep(0.3)
            assert len(a.discovered_peers()) <= 8
            events = await drain(a, 0.3)
            # the channel, one event per table entry, one in flight, and lost
            # events for the few peers the application was told of
            assert len(events) <= 2 + 8 + 1 + 2


async def test_events_abandoned_at_shutdown_are_counted(make_config: ConfigFactory) -> None:
    with trio.fail_after(15):
        async with open_messenger("Bob", make_config()) as b:
            async with open_messenger("Alice", make_config(event_buffer=1)) as a:
                await b.connect_to_peer(("127.0.0.1", a.tcp_port))
                for i in range(5):
                    await b.send_text_message(a.peer_id, str(i))
                await trio.sleep(0.3)  # Alice reads nothing: her reader waits for room
            stats = a.statistics()
            placed = len([e async for e in a.events])
            # everything the connection produced was either placed or counted
            assert placed == 1
            assert stats.events_dropped >= 1


async def test_a_leaving_node_announces_nothing_after_its_goodbye(
    make_config: ConfigFactory,
) -> None:
    with trio.fail_after(10):
        async with open_messenger("Alice", make_config()) as alice:
            await alice._discovery.send(BeaconKind.GOODBYE)  # as leaving does, first
            sent = alice.statistics().datagrams_sent
            await alice.discover_peers()  # a request and an announcement: not any more
            await trio.sleep(0.5)  # and no announcement from the loop either
            assert alice.statistics().datagrams_sent == sent
