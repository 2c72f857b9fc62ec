"""Bad input from the network: each offender is dropped and logged, and the
messenger keeps serving its other peers."""

from __future__ import annotations

import itertools
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import uuid

import attrs
import cbor2
import pytest
import trio

from trio_p2p import (
    HandshakeError,
    Messenger,
    PeerConnected,
    PeerDisconnected,
    PeerDiscovered,
    PeerLost,
    open_messenger,
)
from trio_p2p._codec import FrameDecoder, encode_beacon, encode_data, encode_frame
from trio_p2p._connection import receive_hello
from trio_p2p._identity import Identity
from trio_p2p._messages import (
    PROTOCOL_VERSION,
    Beacon,
    BeaconKind,
    Goodbye,
    Hello,
    Message,
    Text,
)
from trio_p2p._messenger import HANDSHAKES_PER_ADDRESS
from trio_p2p._secure import SecureStream

from .conftest import ConfigFactory
from .helpers import (
    connect,
    drain,
    first_line,
    secure_dial_raw,
    signed_beacon,
    texts,
    wait_for,
)


def hello_from(node_id: uuid.UUID, nonce: bytes = b"n" * 16) -> Hello:
    return Hello(PROTOCOL_VERSION, node_id, nonce, "Mallory", 1234, 1 << 20)


async def raw_connection(messenger: Messenger) -> trio.SocketStream:
    return await trio.open_tcp_stream("127.0.0.1", messenger.tcp_port)


async def secure_connection(messenger: Messenger) -> tuple[SecureStream, Identity]:
    """Dial *messenger* and run the secure handshake as a new identity.

    Mallory then holds a channel in which she may send anything at all.
    """
    return await secure_dial_raw(messenger.tcp_port)


async def mallory_connection(
    messenger: Messenger,
) -> tuple[trio.abc.Stream, uuid.UUID]:
    """A connection to *messenger* ready for a hello, and the id Mallory may claim in it."""
    if messenger.config.insecure_plaintext:
        return await raw_connection(messenger), uuid.uuid4()
    secure, identity = await secure_connection(messenger)
    return secure, identity.peer_id


async def secure_mallory(messenger: Messenger) -> tuple[SecureStream, uuid.UUID]:
    """Mallory connected to *messenger* over the secure channel, past the hellos."""
    stream, identity = await secure_connection(messenger)
    await stream.send_all(encode_frame(hello_from(identity.peer_id)))
    await receive_hello(stream, FrameDecoder(1 << 20))
    return stream, identity.peer_id


async def closed_by_peer(stream: trio.abc.Stream) -> bytes:
    """Read until the messenger closes the connection; return what it sent."""
    data = b""
    async with stream:
        while True:
            try:
                chunk = await stream.receive_some(65536)
            except trio.BrokenResourceError:  # reset by peer
                return data
            if not chunk:
                return data
            data += chunk


async def still_serving(a: Messenger, b: Messenger, text: str) -> None:
    await a.send_text_message(b.peer_id, text)
    assert await texts(b, 1) == [text]
    await a.flush(b.peer_id)


@pytest.mark.parametrize(
    ("payload", "cause"),
    [
        pytest.param(b"\xff" * 64, "protocol", id="garbage"),
        pytest.param(struct.pack(">I", 4 * 1024**3 - 1), "protocol", id="4GB-prefix"),
        pytest.param(struct.pack(">I", 3) + cbor2.dumps([1, 2]), "protocol", id="not-a-map"),
        pytest.param(
            encode_data(1, Message(uuid.uuid4(), uuid.uuid4(), "M", 0.0, Text("x"))),
            "protocol",
            id="data-before-hello",
        ),
    ],
)
@pytest.mark.parametrize("plaintext", [False, True], ids=["in-secure-channel", "plaintext"])
async def test_bad_first_frames_are_dropped_and_logged(
    make_config: ConfigFactory,
    caplog: pytest.LogCaptureFixture,
    payload: bytes,
    cause: str,
    plaintext: bool,
) -> None:
    caplog.set_level(logging.WARNING, logger="trio_p2p")
    with trio.fail_after(10):
        async with (
            open_messenger("Alice", make_config(insecure_plaintext=plaintext)) as a,
            open_messenger("Bob", make_config(insecure_plaintext=plaintext)) as b,
        ):
            await connect(a, b)
            stream, _ = await mallory_connection(a)
            await stream.send_all(payload)
            await closed_by_peer(stream)
            assert a.statistics().connections_refused[cause] == 1
            assert any("127.0.0.1" in r.getMessage() for r in caplog.records)
            await still_serving(b, a, "still here")


@pytest.mark.parametrize(
    ("payload", "cause", "goodbye"),
    [
        pytest.param(b"\xff" * 64, "protocol", None, id="garbage"),
        pytest.param(b"GET / HTTP/1.1\r\n\r\n", "protocol", None, id="http"),
        pytest.param(
            encode_frame(hello_from(uuid.uuid4())),
            "plaintext",
            "accepts encrypted connections only",
            id="plaintext-hello",
        ),
        pytest.param(
            b"TP2P\x01\x01\x00\x00" + b"\x00\x20" + b"\x00" * 32, "protocol", None, id="bad-key"
        ),
        pytest.param(b"TP2P", "handshake_timeout", None, id="stalled-preamble"),
        pytest.param(b"TP2P\x01\x01\x00\x00\x00\x20", "handshake_timeout", None, id="stalled"),
    ],
)
async def test_bad_handshakes_are_dropped_and_counted(
    make_config: ConfigFactory, payload: bytes, cause: str, goodbye: str | None
) -> None:
    """Before the secure channel: no trio_p2p, plaintext, a broken or stalled handshake."""
    with trio.fail_after(10):
        async with (
            open_messenger("Alice", make_config(handshake_timeout=1.0)) as a,
            open_messenger("Bob", make_config()) as b,
        ):
            await connect(a, b)
            stream = await raw_connection(a)
            start = trio.current_time()
            await stream.send_all(payload)
            reply = await closed_by_peer(stream)
            assert trio.current_time() - start < 1.8
            assert a.statistics().connections_refused[cause] == 1
            if goodbye is None:
                assert reply == b""
            else:  # a plaintext node is told why, in plaintext
                frames = FrameDecoder(1 << 20).feed(reply)
                assert isinstance(frames[0], Goodbye)
                assert goodbye in frames[0].reason
            await still_serving(b, a, "still here")


async def test_silent_connection_is_dropped_after_the_handshake_timeout(
    make_config: ConfigFactory,
) -> None:
    config = make_config(handshake_timeout=0.5)
    with trio.fail_after(10):
        async with open_messenger("Alice", config) as a:
            stream = await raw_connection(a)
            start = trio.current_time()
            await closed_by_peer(stream)
            assert 0.5 <= trio.current_time() - start < 1.5
            assert a.statistics().connections_refused["handshake_timeout"] == 1


async def test_one_address_cannot_take_every_handshake_slot(make_config: ConfigFactory) -> None:
    config = make_config(max_pending_handshakes=64, handshake_timeout=2)
    with trio.fail_after(10):
        async with open_messenger("Alice", config) as a:
            silent = [await raw_connection(a) for _ in range(HANDSHAKES_PER_ADDRESS)]
            await trio.sleep(0.2)
            extra = await raw_connection(a)
            await closed_by_peer(extra)
            refused = a.statistics().connections_refused
            assert refused["too_many_handshakes_from_address"] == 1
            assert refused["handshake_timeout"] == 0  # (the others still wait)
            for stream in silent:
                await stream.aclose()


async def test_too_many_pending_handshakes_are_refused(make_config: ConfigFactory) -> None:
    config = make_config(max_pending_handshakes=3, handshake_timeout=2)
    with trio.fail_after(10):
        async with open_messenger("Alice", config) as a, open_messenger("Bob", make_config()) as b:
            silent = [await raw_connection(a) for _ in range(3)]
            await trio.sleep(0.2)
            extra = await raw_connection(a)
            await closed_by_peer(extra)
            assert a.statistics().connections_refused["too_many_handshakes"] >= 1
            for stream in silent:
                await stream.aclose()
            await trio.sleep(0.1)
            # once they are gone, real peers connect again
            await connect(b, a)


async def test_wrong_frame_type_after_the_handshake_ends_only_that_connection(
    make_config: ConfigFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="trio_p2p")
    with trio.fail_after(10):
        async with (
            open_messenger("Alice", make_config()) as a,
            open_messenger("Bob", make_config()) as b,
        ):
            await connect(a, b)
            stream, mallory = await mallory_connection(a)
            await stream.send_all(encode_frame(hello_from(mallory)))
            hello, _ = await receive_hello(stream, FrameDecoder(1 << 20))
            assert hello.node_id == a.peer_id
            await stream.send_all(encode_frame(hello_from(mallory)))  # a second hello
            await closed_by_peer(stream)
            event = await wait_for(a, PeerDisconnected, peer=mallory)
            assert "protocol error" in event.reason
            assert a.statistics().connections_failed["protocol"] == 1
            await still_serving(b, a, "unharmed")


async def test_hello_with_this_nodes_own_id_is_refused(make_config: ConfigFactory) -> None:
    with trio.fail_after(10):
        async with open_messenger("Alice", make_config(insecure_plaintext=True)) as a:
            stream = await raw_connection(a)
            await stream.send_all(encode_frame(hello_from(a.peer_id)))
            reply = FrameDecoder(1 << 20).feed(await closed_by_peer(stream))
            assert isinstance(reply[0], Goodbye)
            assert reply[0].code == "refused"
            assert a.statistics().connections_refused["own_id"] == 1
            assert a.connected_peers() == []


@pytest.mark.parametrize("plaintext", [False, True], ids=["secure", "plaintext"])
async def test_no_one_can_take_over_a_connected_peers_slot(
    make_config: ConfigFactory, plaintext: bool
) -> None:
    with trio.fail_after(10):
        async with (
            open_messenger("Alice", make_config(insecure_plaintext=plaintext)) as a,
            open_messenger("Bob", make_config(insecure_plaintext=plaintext)) as b,
        ):
            await connect(a, b)
            stream, _ = await mallory_connection(a)
            # claims Bob's id, from another "process" (another nonce)
            await stream.send_all(encode_frame(hello_from(b.peer_id, nonce=os.urandom(16))))
            reply = FrameDecoder(1 << 20).feed(await closed_by_peer(stream))
            assert isinstance(reply[0], Goodbye)
            if plaintext:
                assert a.statistics().connections_refused["id_taken"] == 1
            else:  # Mallory cannot prove Bob's key
                assert reply[0].code == "protocol"
                assert "proved the key" in reply[0].reason
                assert a.statistics().connections_refused["protocol"] == 1
            assert [p.id for p in a.connected_peers()] == [b.peer_id]
            await still_serving(b, a, "the real Bob")


async def test_forged_sender_id_ends_the_connection(make_config: ConfigFactory) -> None:
    with trio.fail_after(10):
        async with open_messenger("Alice", make_config()) as a:
            stream, mallory = await mallory_connection(a)
            await stream.send_all(encode_frame(hello_from(mallory)))
            await receive_hello(stream, FrameDecoder(1 << 20))
            forged = Message(uuid.uuid4(), uuid.uuid4(), "Bob", 0.0, Text("trust me"))
            await stream.send_all(encode_data(1, forged))
            event = await wait_for(a, PeerDisconnected, peer=mallory)
            assert "claims sender" in event.reason
            await closed_by_peer(stream)


async def test_malformed_and_spoofed_beacons(
    make_config: ConfigFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="trio_p2p.discovery")
    config = make_config(max_peers_per_address=4)
    with trio.fail_after(10):
        async with open_messenger("Alice", config) as a, open_messenger("Bob", config) as b:
            await connect(a, b)
            # broadcast, as beacons are: every node on the port hears it (a unicast
            # datagram would reach only one of the sockets sharing the port)
            target = ("127.255.255.255", config.discovery_port)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                udp.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
                for junk in (b"\x00\x01\x02\x03", b"", os.urandom(600), b"\xa1\x61m\x44TP2P"):
                    udp.sendto(junk, target)
                # a beacon pretending to be Alice herself, unsigned: malformed
                udp.sendto(
                    encode_beacon(Beacon(BeaconKind.ANNOUNCE, a.peer_id, "Alice", 1)), target
                )
                # Mallory's key, Alice's id
                udp.sendto(signed_beacon(node_id=a.peer_id, name="Alice"), target)
                # a flood of genuinely signed ids from one address
                for _ in range(200):
                    udp.sendto(signed_beacon(name="F", port=9), target)
                # a forged goodbye for Bob (Mallory's key): dropped, Bob stays found
                udp.sendto(signed_beacon(BeaconKind.GOODBYE, node_id=b.peer_id, name="Bob"), target)
            await trio.sleep(0.3)
            stats = a.statistics()
            assert stats.datagrams_dropped["malformed"] >= 5
            assert stats.datagrams_dropped["own"] >= 1  # (its own, and the forgery)
            assert stats.datagrams_dropped["key_mismatch"] >= 1
            flood = [p for p in a.discovered_peers() if p.name == "F"]
            assert len(flood) <= 4  # the per-address cap held
            assert a.peer_id not in {p.id for p in a.discovered_peers()}
            assert b.peer_id in {p.id for p in a.discovered_peers()}
            assert [p.id for p in a.connected_peers()] == [b.peer_id]
            assert any("malformed beacon" in r.getMessage() for r in caplog.records)
            # the log is rate-limited: far fewer warnings than bad datagrams
            assert len(caplog.records) <= 12
            await still_serving(b, a, "after the flood")


PEER_SCRIPT = textwrap.dedent(
    """
    import sys, trio, trio_p2p

    async def main():
        config = trio_p2p.Config(
            discovery_port=int(sys.argv[1]), tcp_port=0,
            broadcast_addresses=("127.255.255.255",), announce_interval=0.2,
            peer_timeout=1.0, heartbeat_interval=0.2, heartbeat_timeout=1.0)
        async with trio_p2p.open_messenger("Victim", config) as m:
            print(m.peer_id, flush=True)
            await trio.sleep_forever()

    trio.run(main)
    """
)


async def test_peer_killed_without_goodbye_is_disconnected_then_lost(
    make_config: ConfigFactory,
) -> None:
    config = make_config()
    with trio.fail_after(20):
        async with open_messenger("Alice", config) as a:
            proc = await trio.lowlevel.open_process(
                [sys.executable, "-c", PEER_SCRIPT, str(config.discovery_port)],
                stdout=subprocess.PIPE,
            )
            try:
                victim = uuid.UUID(await first_line(proc))
                found = await wait_for(a, PeerDiscovered, peer=victim)
                await a.connect_to_peer(found.peer)
                proc.send_signal(signal.SIGKILL)
                killed_at = trio.current_time()
                gone = await wait_for(a, PeerDisconnected, peer=victim)
                assert trio.current_time() - killed_at <= config.heartbeat_timeout + 0.5
                assert gone.reason
                await wait_for(a, PeerLost, peer=victim)
                lost_after = trio.current_time() - killed_at
                assert lost_after <= config.peer_timeout + config.announce_interval + 0.5
                assert victim not in {p.id for p in a.connected_peers()}
            finally:
                proc.kill()
                await proc.wait()
                if proc.stdout is not None:
                    await proc.stdout.aclose()


async def test_version_mismatch_is_refused_with_a_reason(make_config: ConfigFactory) -> None:
    with trio.fail_after(10):
        async with open_messenger("Alice", make_config()) as a:
            stream, _ = await mallory_connection(a)
            payload = {
                "t": "h",
                "v": 99,
                "id": uuid.uuid4().bytes,
                "s": b"s" * 16,
                "n": "Z",
                "p": 1,
                "x": 65536,
                "c": [],
            }
            body = cbor2.dumps(payload)
            await stream.send_all(struct.pack(">I", len(body)) + body)
            reply = FrameDecoder(1 << 20).feed(await closed_by_peer(stream))
            assert isinstance(reply[0], Goodbye)
            assert reply[0].code == "protocol"
            assert "version 99" in reply[0].reason


async def learn_hello(messenger: Messenger) -> Hello:
    """Dial *messenger* as a stranger and read its hello (nonce included)."""
    stream = await raw_connection(messenger)
    await stream.send_all(encode_frame(hello_from(uuid.uuid4())))
    hello, _ = await receive_hello(stream, FrameDecoder(1 << 20))
    await stream.aclose()
    return hello


async def test_a_replayed_nonce_cannot_take_over_a_live_connection(
    make_config: ConfigFactory,
) -> None:
    with trio.fail_after(15):
        async with (
            open_messenger("Alice", make_config(insecure_plaintext=True)) as a,
            open_messenger("Victor", make_config(insecure_plaintext=True)) as v,
        ):
            await a.connect_to_peer(("127.0.0.1", v.tcp_port))
            await wait_for(v, PeerConnected, peer=a.peer_id)
            alices = await learn_hello(a)  # anyone can learn Alice's id and nonce
            stream = await raw_connection(v)
            forged = Hello(PROTOCOL_VERSION, a.peer_id, alices.session, "Alice", 1234, 1 << 20)
            await stream.send_all(encode_frame(forged))
            reply = FrameDecoder(1 << 20).feed(await closed_by_peer(stream))
            assert isinstance(reply[0], Goodbye)
            assert reply[0].code == "duplicate"
            assert "alive" in reply[0].reason
            # Victor's link to the real Alice is untouched
            assert not any(isinstance(e, PeerDisconnected) for e in await drain(v, 0.3))
            await still_serving(a, v, "still the real Alice")


async def test_a_big_frame_before_the_hello_is_refused_at_once(
    make_config: ConfigFactory,
) -> None:
    with trio.fail_after(10):
        async with open_messenger("Alice", make_config()) as a:
            stream, _ = await mallory_connection(a)
            await stream.send_all(struct.pack(">I", 1 << 20) + b"\xa0" * 1000)
            await closed_by_peer(stream)
            assert a.statistics().connections_refused["protocol"] == 1


async def test_established_connections_are_capped(make_config: ConfigFactory) -> None:
    with trio.fail_after(10):
        async with open_messenger("Alice", make_config(max_connections=2)) as a:
            streams: list[trio.abc.Stream] = []
            for source in ("127.0.0.1", "127.0.0.2"):  # (one address may take half)
                stream, mallory = await secure_dial_raw(a.tcp_port, source=source)
                await stream.send_all(encode_frame(hello_from(mallory.peer_id)))
                await receive_hello(stream, FrameDecoder(1 << 20))
                streams.append(stream)
            extra = await raw_connection(a)  # closed before its handshake
            assert await closed_by_peer(extra) == b""
            assert a.statistics().connections_refused["too_many_connections"] == 1
            assert len(a.connected_peers()) == 2
            for each in streams:
                await each.aclose()


@pytest.mark.parametrize("behaviour", ["close", "garbage", "close-after-hello"])
async def test_a_broken_handshake_from_the_dialled_side_is_a_handshake_error(
    make_config: ConfigFactory, behaviour: str
) -> None:
    with trio.fail_after(10):
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]

        async def serve_one() -> None:
            stream = await listeners[0].accept()
            async with stream:
                await stream.receive_some(4096)
                if behaviour == "garbage":
                    await stream.send_all(b"\xff" * 64)
                elif behaviour == "close-after-hello":
                    await stream.send_all(encode_frame(hello_from(uuid.uuid4()))[:10])

        async with open_messenger("Alice", make_config()) as a, trio.open_nursery() as nursery:
            nursery.start_soon(serve_one)
            with pytest.raises(HandshakeError):
                await a.connect_to_peer(("127.0.0.1", port))
            assert a.connected_peers() == []
        for listener in listeners:
            await listener.aclose()


async def test_a_stream_of_tiny_records_cannot_hold_the_event_loop(
    make_config: ConfigFactory,
) -> None:
    """A large frame sent one byte per encrypted record keeps the reader busy,
    opening records, for as long as they come: it must let other tasks run."""
    records = 800_000  # (about 1 s of work for the node: 0.9 s without a pause before the fix)
    # (Mallory is silent while she seals them: more than the 1 s heartbeat timeout)
    config = make_config(heartbeat_interval=1.0, heartbeat_timeout=20.0)
    with trio.fail_after(30):
        async with open_messenger("Alice", config) as a:
            stream, mallory = await secure_mallory(a)
            # the head of a 1 MiB frame, then its body one byte per record
            await stream.send_all(struct.pack(">I", 1 << 20) + b"\xa1")
            sealer = stream._sealer
            flood = b"".join([bytes(sealer.seal(b"\x00")) for _ in range(records)])
            raw = socket.socket(fileno=os.dup(stream.transport.socket.fileno()))  # type: ignore[attr-defined]
            raw.setblocking(True)
            longest = 0.0

            async def ticker() -> None:
                nonlocal longest
                while True:
                    before = trio.current_time()
                    await trio.sleep(0.001)
                    longest = max(longest, trio.current_time() - before)

            with raw:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(ticker)
                    await trio.to_thread.run_sync(raw.sendall, flood)
                    await trio.sleep(0.3)  # (the rest is opened meanwhile)
                    nursery.cancel_scope.cancel()
            # (12 ms here; the margin is for a loaded machine and garbage collection)
            assert longest < 0.3, f"the event loop stood still for {longest:.3f} s"
            assert a.connected_peers()[0].id == mallory  # (a slow peer, not a broken one)
            await stream.aclose()


async def test_an_empty_record_ends_the_connection(make_config: ConfigFactory) -> None:
    with trio.fail_after(10):
        async with open_messenger("Alice", make_config()) as a:
            stream, mallory = await secure_mallory(a)
            sealer = stream._sealer
            tag = bytearray(16)  # what sealing nothing gives: the tag alone
            sealer._encrypt_into(bytes(4) + sealer.counter.to_bytes(8, "big"), b"", None, tag)
            await stream.transport.send_all(struct.pack(">H", len(tag)) + tag)
            await closed_by_peer(stream)
            event = await wait_for(a, PeerDisconnected, peer=mallory)
            assert "holds no plaintext" in event.reason
            assert a.statistics().connections_failed["protocol"] == 1


async def test_a_stranger_cannot_make_a_node_dial_another_address_again_and_again(
    make_config: ConfigFactory,
) -> None:
    """A peer with a key of its own connects, announces (signed, from a forged
    source) that it is at someone else's address, and breaks the connection:
    the node dials that address at most UNPROVEN_DIALS times, not until the
    session's resume timeout, though the session lives on (something still
    listens where the peer was connected: the node dials there instead)."""
    with trio.fail_after(20):
        async with open_messenger("Alice", make_config(resume_timeout=30)) as a:
            mallory = Identity.generate()
            while mallory.peer_id < a.peer_id:  # (the smaller id dials again)
                mallory = Identity.generate()
            listeners = []
            for _ in range(4):  # (Mallory names one port after another)
                listeners += await trio.open_tcp_listeners(0, host="127.0.0.9")
            ports = [listener.socket.getsockname()[1] for listener in listeners]
            home = await trio.open_tcp_listeners(0, host="127.0.0.1")
            home_port = home[0].socket.getsockname()[1]  # (the port of Mallory's hello)
            dials: list[float] = []
            home_dials: list[float] = []

            async def someone_else(stream: trio.SocketStream) -> None:
                dials.append(trio.current_time())
                await trio.aclose_forcefully(stream)

            async def at_home(stream: trio.SocketStream) -> None:
                home_dials.append(trio.current_time())
                await trio.aclose_forcefully(stream)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.serve_listeners, someone_else, listeners)
                nursery.start_soon(trio.serve_listeners, at_home, home)
                stream, _ = await secure_dial_raw(a.tcp_port, mallory)
                hello = Hello(
                    PROTOCOL_VERSION, mallory.peer_id, b"n" * 16, "Mallory", home_port, 1 << 20
                )
                await stream.send_all(encode_frame(hello))
                await receive_hello(stream, FrameDecoder(1 << 20))

                async def announce() -> None:
                    target = ("127.255.255.255", a.config.discovery_port)
                    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                        udp.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
                        udp.bind(("127.0.0.9", 0))
                        for turn in itertools.count():
                            beacon = signed_beacon(
                                identity=mallory,
                                name="Mallory",
                                port=ports[turn // 5 % len(ports)],
                                sources=("127.0.0.9",),
                            )
                            udp.sendto(beacon, target)
                            await trio.sleep(0.2)

                nursery.start_soon(announce)
                while not any(p.address == "127.0.0.9" for p in a.discovered_peers()):  # noqa: ASYNC110
                    await trio.sleep(0.05)
                await trio.aclose_forcefully(stream)  # "broken": Alice keeps the session
                event = await wait_for(a, PeerDisconnected, peer=mallory.peer_id)
                assert event.resuming
                await trio.sleep(5)  # (without the bound: a dial every 2 s at most)
                nursery.cancel_scope.cancel()
            for listener in listeners + home:
                await listener.aclose()
            assert 1 <= len(dials) <= 2, dials
            assert home_dials  # (the session was not given up)
            assert mallory.peer_id in a._parked


async def test_sessions_kept_for_broken_connections_are_bounded(
    make_config: ConfigFactory,
) -> None:
    """Each broken connection's session waits (and dials) for its peer: at
    most max_connections of them at once, and half of that many of one
    address, however many connections break."""
    with trio.fail_after(20):
        async with open_messenger("Alice", make_config(max_connections=2)) as a:
            sources = ("127.0.0.1", "127.0.0.1", "127.0.0.2", "127.0.0.3")
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            port = listeners[0].socket.getsockname()[1]
            for host in sources[2:]:
                listeners += await trio.open_tcp_listeners(port, host=host)
            async with trio.open_nursery() as nursery:
                # (something listens where the peers say they do: they seem alive)
                nursery.start_soon(trio.serve_listeners, trio.aclose_forcefully, listeners)
                resuming = []
                for source in sources:
                    stream, mallory = await secure_dial_raw(a.tcp_port, source=source)
                    hello = attrs.evolve(hello_from(mallory.peer_id), port=port)
                    await stream.send_all(encode_frame(hello))
                    await receive_hello(stream, FrameDecoder(1 << 20))
                    await trio.aclose_forcefully(stream)
                    event = await wait_for(a, PeerDisconnected, peer=mallory.peer_id)
                    resuming.append(event.resuming)
                assert resuming == [True, False, True, False]
                assert len(a._parked) == 2
                nursery.cancel_scope.cancel()
            for listener in listeners:
                await listener.aclose()


async def test_a_dial_by_address_is_not_answered_by_a_peer_claiming_that_port(
    make_config: ConfigFactory,
) -> None:
    """Mallory, on Bob's address, dials Alice and claims Bob's port: Alice's
    connect_to_peer((Bob's address, Bob's port)) still reaches Bob."""
    with trio.fail_after(10):
        async with (
            open_messenger("Alice", make_config()) as a,
            open_messenger("Bob", make_config()) as b,
        ):
            stream, mallory = await secure_dial_raw(a.tcp_port)
            hello = attrs.evolve(hello_from(mallory.peer_id), name="Bob", port=b.tcp_port)
            await stream.send_all(encode_frame(hello))
            await receive_hello(stream, FrameDecoder(1 << 20))
            await wait_for(a, PeerConnected, peer=mallory.peer_id)
            peer = await a.connect_to_peer(("127.0.0.1", b.tcp_port))
            assert peer.id == b.peer_id
            # and asked again, the connection it dialled is the one returned
            assert (await a.connect_to_peer(("127.0.0.1", b.tcp_port))).id == b.peer_id
            await stream.aclose()


async def test_one_address_cannot_take_every_connection(make_config: ConfigFactory) -> None:
    with trio.fail_after(20):
        async with open_messenger("Alice", make_config(max_connections=4)) as a:
            streams = []
            for _ in range(2):  # half the places, from 127.0.0.1
                stream, mallory = await secure_dial_raw(a.tcp_port)
                streams.append(stream)
                await stream.send_all(encode_frame(hello_from(mallory.peer_id)))
                await receive_hello(stream, FrameDecoder(1 << 20))
            stream, mallory = await secure_dial_raw(a.tcp_port)
            await stream.send_all(encode_frame(hello_from(mallory.peer_id)))
            reply = FrameDecoder(1 << 20).feed(await closed_by_peer(stream))
            assert isinstance(reply[0], Goodbye)
            assert "from that address" in reply[0].reason
            assert a.statistics().connections_refused["too_many_connections_from_address"] == 1
            # another address still gets in
            stream, carol = await secure_dial_raw(a.tcp_port, source="127.0.0.2")
            streams.append(stream)
            await stream.send_all(encode_frame(hello_from(carol.peer_id)))
            hello, _ = await receive_hello(stream, FrameDecoder(1 << 20))
            assert hello.node_id == a.peer_id
            assert {p.address for p in a.connected_peers()} == {"127.0.0.1", "127.0.0.2"}
            for stream in streams:
                await stream.aclose()


async def test_a_dial_by_address_of_a_peer_that_dialled_in_returns_that_peer(
    make_config: ConfigFactory,
) -> None:
    """connect_to_peer((host, port)) is idempotent for a peer that dialled this
    node: the peer refuses the second connection, and its proven id names the
    connection to return."""
    alice, bob = sorted((Identity.generate(), Identity.generate()), key=lambda i: i.peer_id)
    alice, bob = bob, alice  # (Alice's id the larger: Bob keeps his connection, see
    # the simultaneous-dial rule, and refuses hers)
    with trio.fail_after(10):
        async with (
            open_messenger("Alice", make_config(identity=alice)) as a,
            open_messenger("Bob", make_config(identity=bob)) as b,
        ):
            await b.connect_to_peer(("127.0.0.1", a.tcp_port))
            await wait_for(a, PeerConnected, peer=b.peer_id)
            started = trio.current_time()
            peer = await a.connect_to_peer(("127.0.0.1", b.tcp_port))
            assert peer.id == b.peer_id
            assert trio.current_time() - started < a.config.handshake_timeout / 2
            assert [p.id for p in a.connected_peers()] == [b.peer_id]
