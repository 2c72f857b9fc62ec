"""Encrypted, authenticated connections between messengers (loopback)."""

from __future__ import annotations

import pathlib

import pytest
import trio

from trio_p2p import (
    HandshakeError,
    Identity,
    IdentityInUseError,
    PeerConnected,
    open_messenger,
)

from .conftest import ConfigFactory
from .helpers import texts, wait_for


async def recording_proxy(
    target_port: int, seen: bytearray, *, task_status: trio.TaskStatus[int]
) -> None:
    """Forward one connection to *target_port*, keeping every byte in *seen*."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    try:
        task_status.started(listeners[0].socket.getsockname()[1])
        client = await listeners[0].accept()
        async with client, await trio.open_tcp_stream("127.0.0.1", target_port) as server:

            async def pump(source: trio.SocketStream, sink: trio.SocketStream) -> None:
                try:
                    while data := await source.receive_some(65536):
                        seen.extend(data)
                        await sink.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
                await trio.aclose_forcefully(sink)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(pump, client, server)
                nursery.start_soon(pump, server, client)
    finally:
        for listener in listeners:
            await trio.aclose_forcefully(listener)


@pytest.mark.parametrize("plaintext", [False, True], ids=["encrypted", "plaintext"])
async def test_what_travels_is_encrypted(make_config: ConfigFactory, plaintext: bool) -> None:
    """The words of a message are not on the wire (and are, in plaintext mode)."""
    secret = "attack at dawn, gate 7"
    with trio.fail_after(10):
        seen = bytearray()
        config = make_config(insecure_plaintext=plaintext)
        async with (
            open_messenger("Alice", config) as alice,
            open_messenger("Bob", config) as bob,
            trio.open_nursery() as nursery,
        ):
            port = await nursery.start(recording_proxy, bob.tcp_port, seen)
            peer = await alice.connect_to_peer(("127.0.0.1", port))
            assert peer.id == bob.peer_id
            await alice.send_text_message(bob.peer_id, secret)
            assert await texts(bob, 1) == [secret]
            await alice.flush(bob.peer_id)
            nursery.cancel_scope.cancel()
        assert (secret.encode() in seen) is plaintext
        assert (b"Alice" in seen) is plaintext  # the hello travels encrypted too


async def test_connected_peers_carry_their_proven_fingerprint(make_config: ConfigFactory) -> None:
    with trio.fail_after(10):
        async with (
            open_messenger("Alice", make_config()) as alice,
            open_messenger("Bob", make_config()) as bob,
        ):
            peer = await alice.connect_to_peer(("127.0.0.1", bob.tcp_port))
            assert peer.id == bob.peer_id == bob.identity.peer_id
            assert peer.fingerprint == bob.identity.fingerprint
            seen = await wait_for(bob, PeerConnected, peer=alice.peer_id)
            assert seen.peer.fingerprint == alice.identity.fingerprint


async def test_a_kept_identity_keeps_its_id_and_is_locked_while_in_use(
    make_config: ConfigFactory, tmp_path: pathlib.Path
) -> None:
    path = tmp_path / "alice.key"
    with trio.fail_after(10):
        config = make_config(identity=Identity.load_or_create(path))
        async with open_messenger("Alice", config) as first:
            first_id = first.peer_id
            with pytest.raises(IdentityInUseError, match="in use by another running node"):
                async with open_messenger("Alice", config):
                    pass  # pragma: no cover
        async with open_messenger(
            "Alice", make_config(identity=Identity.load_or_create(path))
        ) as again:
            assert again.peer_id == first_id
        async with open_messenger("Alice", make_config()) as ephemeral:
            assert ephemeral.peer_id != first_id


@pytest.mark.parametrize(
    ("dialler", "listener", "reason"),
    [
        ({"network_key": "our secret"}, {"network_key": "our secret"}, None),
        ({"network_key": "our secret"}, {"network_key": "another"}, "same network key"),
        ({}, {"network_key": "our secret"}, "needs a network key"),
        ({"network_key": "our secret"}, {}, "has no network key"),
        ({"insecure_plaintext": True}, {}, "encrypted connections only"),
        ({}, {"insecure_plaintext": True}, "plaintext"),
    ],
    ids=[
        "same-key",
        "other-key",
        "no-key",
        "key-to-keyless",
        "plaintext-dialler",
        "plaintext-node",
    ],
)
async def test_who_may_connect(
    make_config: ConfigFactory,
    dialler: dict[str, object],
    listener: dict[str, object],
    reason: str | None,
) -> None:
    with trio.fail_after(10):
        async with (
            open_messenger("Alice", make_config(**dialler)) as alice,
            open_messenger("Bob", make_config(**listener)) as bob,
        ):
            if reason is None:
                peer = await alice.connect_to_peer(("127.0.0.1", bob.tcp_port))
                assert peer.id == bob.peer_id
                return
            with pytest.raises(HandshakeError, match=reason):
                await alice.connect_to_peer(("127.0.0.1", bob.tcp_port))
            assert alice.connected_peers() == []
            with trio.fail_after(2):
                while not bob.statistics().connections_refused:  # noqa: ASYNC110 (a counter)
                    await trio.sleep(0.01)
            assert bob.connected_peers() == []
