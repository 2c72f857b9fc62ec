"""Helpers for end-to-end tests."""

from __future__ import annotations

import ipaddress
import itertools
import time
import uuid
from typing import TypeVar

import trio
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from trio_p2p import Event, MessageReceived, Messenger, PeerConnected, PeerDiscovered, Text
from trio_p2p._codec import encode_beacon, sign_beacon
from trio_p2p._identity import Identity
from trio_p2p._messages import Beacon, BeaconKind
from trio_p2p._secure import SecureStream, StreamIO, secure_dial

E = TypeVar("E")

_counters = itertools.count(time.time_ns() // 1_000_000)


def signed_beacon(
    kind: BeaconKind = BeaconKind.ANNOUNCE,
    identity: Identity | None = None,
    name: str = "x",
    port: int = 1,
    *,
    sources: tuple[str, ...] = ("127.0.0.1",),
    counter: int | None = None,
    node_id: uuid.UUID | None = None,
) -> bytes:
    """A beacon datagram signed by *identity* (a new one by default).

    *node_id* claims another id than the identity's (a forgery); *counter*
    defaults to a fresh, growing one.
    """
    identity = identity or Identity.generate()
    beacon = Beacon(
        kind,
        node_id or identity.peer_id,
        name,
        port,
        counter=next(_counters) if counter is None else counter,
        addresses=tuple(ipaddress.IPv4Address(a).packed for a in sources),
    )
    return encode_beacon(sign_beacon(beacon, identity))


async def secure_dial_raw(
    port: int, identity: Identity | None = None, *, source: str | None = None
) -> tuple[SecureStream, Identity]:
    """Dial the node at *port* on loopback and run the secure handshake as *identity*.

    *source* is the loopback address to dial from (the kernel's choice by
    default). What is sent afterwards is up to the caller (a hostile peer may
    send anything).
    """
    identity = identity or Identity.generate()
    stream = await trio.open_tcp_stream("127.0.0.1", port, local_address=source)
    try:
        secure, _ = await secure_dial(
            stream, StreamIO(stream), identity, X25519PrivateKey.generate().private_bytes_raw()
        )
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return secure, identity


async def wait_for(messenger: Messenger, kind: type[E], *, peer: uuid.UUID | None = None) -> E:
    """Read events until one of *kind* (about *peer*, if given) arrives."""
    async for event in messenger.events:
        if isinstance(event, kind) and (
            peer is None or getattr(getattr(event, "peer", None), "id", None) == peer
        ):
            return event
    raise AssertionError(f"event channel closed before a {kind.__name__}")


async def discover(messenger: Messenger, other: Messenger) -> PeerDiscovered:
    return await wait_for(messenger, PeerDiscovered, peer=other.peer_id)


async def connect(a: Messenger, b: Messenger) -> None:
    """Connect a to b (found by discovery) and wait for both PeerConnected events."""
    found = await discover(a, b)
    await a.connect_to_peer(found.peer)
    await wait_for(a, PeerConnected, peer=b.peer_id)
    await wait_for(b, PeerConnected, peer=a.peer_id)


async def texts(messenger: Messenger, count: int) -> list[str]:
    """The next *count* text messages received, skipping other events."""
    out: list[str] = []
    while len(out) < count:
        event: Event = await messenger.events.receive()
        if isinstance(event, MessageReceived):
            assert isinstance(event.message.content, Text)
            out.append(event.message.content.text)
    return out


async def first_line(proc: trio.Process) -> str:
    """The first line a child process writes on its stdout (a pipe)."""
    assert proc.stdout is not None
    line = b""
    while not line.endswith(b"\n"):
        chunk = await proc.stdout.receive_some(100)
        assert chunk, "the child process exited before writing a line"
        line += chunk
    return line.decode().strip()


async def drain(messenger: Messenger, seconds: float) -> list[Event]:
    out: list[Event] = []
    with trio.move_on_after(seconds):
        async for event in messenger.events:
            out.append(event)
    return out
