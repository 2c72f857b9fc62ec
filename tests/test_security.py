"""Encrypted, authenticated connections between messengers (loopback)."""

from __future__ import annotations

import errno
import json
import logging
import pathlib
import stat
import threading
import uuid

import pytest
import trio

from trio_p2p import (
    Config,
    HandshakeError,
    Identity,
    IdentityInUseError,
    Messenger,
    PeerConnected,
    PeerDisconnected,
    open_messenger,
)
from trio_p2p._trust import KNOWN_PEERS_KEPT, NAMES_KEPT, KnownPeer, KnownPeers, Snapshot

from .conftest import ConfigFactory
from .helpers import texts, wait_for


class Tamper:
    """Where the proxy changes a byte of what the dialler sends (None: nowhere)."""

    def __init__(self) -> None:
        self.passed = 0  # bytes forwarded from the dialler so far
        self.at: int | None = None


async def recording_proxy(
    target_port: int,
    seen: bytearray,
    tamper: Tamper | None = None,
    *,
    task_status: trio.TaskStatus[int],
) -> None:
    """Forward one connection to *target_port*, keeping every byte in *seen*.

    With *tamper*, one byte of the dialler's stream (at ``tamper.at``) is changed.
    """
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    try:
        task_status.started(listeners[0].socket.getsockname()[1])
        client = await listeners[0].accept()
        async with client, await trio.open_tcp_stream("127.0.0.1", target_port) as server:

            async def pump(
                source: trio.SocketStream, sink: trio.SocketStream, change: Tamper | None
            ) -> None:
                try:
                    while data := await source.receive_some(65536):
                        seen.extend(data)
                        if change is not None:
                            at = change.at
                            if at is not None and change.passed <= at < change.passed + len(data):
                                changed = bytearray(data)
                                changed[at - change.passed] ^= 0x40
                                data = bytes(changed)
                            change.passed += len(data)
                        await sink.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
                await trio.aclose_forcefully(sink)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(pump, client, server, tamper)
                nursery.start_soon(pump, server, client, None)
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


@pytest.mark.parametrize("into", [2, 9, 20])
async def test_a_changed_byte_on_the_wire_ends_the_connection_as_a_protocol_error(
    make_config: ConfigFactory, into: int
) -> None:
    """A byte changed in a record (past its length) fails its authentication."""
    with trio.fail_after(10):
        seen, tamper = bytearray(), Tamper()
        async with (
            open_messenger("Alice", make_config()) as alice,
            open_messenger("Bob", make_config()) as bob,
            trio.open_nursery() as nursery,
        ):
            port = await nursery.start(recording_proxy, bob.tcp_port, seen, tamper)
            await alice.connect_to_peer(("127.0.0.1", port))
            await alice.send_text_message(bob.peer_id, "before")
            assert await texts(bob, 1) == ["before"]
            await alice.flush(bob.peer_id)  # (all Alice sent so far is through)
            tamper.at = tamper.passed + into  # in the next record Alice sends
            await alice.send_text_message(bob.peer_id, "x" * 50)
            ended = await wait_for(bob, PeerDisconnected, peer=alice.peer_id)
            assert "protocol error" in ended.reason
            assert "failed authentication" in ended.reason
            assert bob.statistics().connections_failed["protocol"] == 1
            nursery.cancel_scope.cancel()


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


async def test_trust_known_admits_listed_and_remembered_peers_only(
    make_config: ConfigFactory, tmp_path: pathlib.Path
) -> None:
    bob_key = Identity.load_or_create(tmp_path / "bob.key")
    alice_id = Identity.generate()
    with trio.fail_after(15):
        # Bob meets Alice once, trusting anyone: she is remembered in his file
        async with (
            open_messenger("Alice", make_config(identity=alice_id)) as alice,
            open_messenger("Bob", make_config(identity=bob_key)) as bob,
        ):
            await alice.connect_to_peer(("127.0.0.1", bob.tcp_port))
        assert (tmp_path / "bob.key.known.json").exists()
        # Bob, now trusting known peers only: Alice is in, Carol is out (both ways)
        strict = make_config(identity=Identity.load_or_create(tmp_path / "bob.key"), trust="known")
        async with (
            open_messenger("Bob", strict) as bob,
            open_messenger("Alice", make_config(identity=alice_id)) as alice,
            open_messenger("Carol", make_config()) as carol,
        ):
            assert alice.peer_id in bob.known_peers
            peer = await alice.connect_to_peer(("127.0.0.1", bob.tcp_port))
            assert peer.id == bob.peer_id
            with pytest.raises(HandshakeError, match="known peers only"):
                await carol.connect_to_peer(("127.0.0.1", bob.tcp_port))
            with pytest.raises(HandshakeError, match="known peers only"):
                await bob.connect_to_peer(("127.0.0.1", carol.tcp_port))
            assert bob.statistics().connections_refused["unknown_peer"] == 2
            assert [p.id for p in bob.connected_peers()] == [alice.peer_id]
        # ... or listed
        frank = Identity.generate()
        listed = make_config(trust="known", known_peers=[frank.peer_id])
        async with (
            open_messenger("Dave", listed) as dave,
            open_messenger("Frank", make_config(identity=frank)) as frank_node,
            open_messenger("Eve", make_config()) as eve,
        ):
            peer = await frank_node.connect_to_peer(("127.0.0.1", dave.tcp_port))
            assert peer.id == dave.peer_id
            with pytest.raises(HandshakeError, match="known peers only"):
                await eve.connect_to_peer(("127.0.0.1", dave.tcp_port))


async def test_a_known_name_with_a_new_key_is_flagged(
    make_config: ConfigFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="trio_p2p")
    with trio.fail_after(15):
        async with open_messenger("Bob", make_config()) as bob:
            async with open_messenger("Alice", make_config()) as first:
                await first.connect_to_peer(("127.0.0.1", bob.tcp_port))
                met = await wait_for(bob, PeerConnected, peer=first.peer_id)
                assert not met.peer.new_key
            # "Alice" again, with another key (an ephemeral node restarted, or not Alice)
            async with open_messenger("Alice", make_config()) as second:
                await second.connect_to_peer(("127.0.0.1", bob.tcp_port))
                met = await wait_for(bob, PeerConnected, peer=second.peer_id)
                assert met.peer.new_key
                assert met.peer.fingerprint == second.identity.fingerprint
                assert [p.new_key for p in bob.connected_peers()] == [True]
            assert any("known with another key" in r.getMessage() for r in caplog.records)
            # the same id coming back is not flagged
            async with open_messenger("Alice", make_config(identity=second.identity)) as third:
                await third.connect_to_peer(("127.0.0.1", bob.tcp_port))
                met = await wait_for(bob, PeerConnected, peer=third.peer_id)
                assert not met.peer.new_key


async def test_known_peers_are_saved_as_they_come_and_a_failed_save_is_only_logged(
    make_config: ConfigFactory,
    tmp_path: pathlib.Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.WARNING, logger="trio_p2p")
    path = tmp_path / "bob.key.known.json"
    bob_config = make_config(identity=Identity.load_or_create(tmp_path / "bob.key"))
    with trio.fail_after(15):
        async with (
            open_messenger("Bob", bob_config) as bob,
            open_messenger("Alice", make_config()) as alice,
            open_messenger("Carol", make_config()) as carol,
        ):
            await alice.connect_to_peer(("127.0.0.1", bob.tcp_port))
            # saved while Bob runs, not only when he stops
            while not path.exists() or str(alice.peer_id) not in path.read_text():  # noqa: ASYNC110 (a file)
                await trio.sleep(0.01)

            # a save that fails (a full disk) is a warning: Bob runs on, and
            # keeps Carol in memory
            def full(self: KnownPeers, snapshot: Snapshot) -> None:
                raise OSError(errno.ENOSPC, "No space left on device")

            monkeypatch.setattr(KnownPeers, "write", full)
            await carol.connect_to_peer(("127.0.0.1", bob.tcp_port))
            saved = "cannot save the known peers"
            while not any(saved in r.getMessage() for r in caplog.records):  # noqa: ASYNC110 (a log)
                await trio.sleep(0.01)
            assert carol.peer_id in bob.known_peers
            assert str(carol.peer_id) not in path.read_text()
            assert {p.id for p in bob.connected_peers()} == {alice.peer_id, carol.peer_id}


async def test_a_slow_disk_does_not_hold_up_the_node_while_it_saves_known_peers(
    make_config: ConfigFactory, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writing = threading.Event()
    release = threading.Event()
    write = KnownPeers.write
    text = Snapshot.text
    made_in: list[threading.Thread] = []

    def slow_write(self: KnownPeers, snapshot: Snapshot) -> None:
        writing.set()
        release.wait(10)  # (bounded: were it on the event loop, the test still ends)
        write(self, snapshot)

    def recorded_text(snapshot: Snapshot) -> str:
        made_in.append(threading.current_thread())
        return text.fget(snapshot)  # type: ignore[attr-defined, no-any-return]

    monkeypatch.setattr(KnownPeers, "write", slow_write)
    monkeypatch.setattr(Snapshot, "text", property(recorded_text))
    path = tmp_path / "bob.key.known.json"
    bob_config = make_config(identity=Identity.load_or_create(tmp_path / "bob.key"))
    with trio.fail_after(20):
        async with (
            open_messenger("Bob", bob_config) as bob,
            open_messenger("Alice", make_config()) as alice,
        ):
            with trio.fail_after(5):
                peer = await alice.connect_to_peer(("127.0.0.1", bob.tcp_port))
                await trio.to_thread.run_sync(writing.wait, 5)
            # the save of Alice is stuck on the disk: Bob answers all the same
            with trio.fail_after(2):
                await alice.send_text_message(peer.id, "still there?")
                assert await texts(bob, 1) == ["still there?"]
            assert not path.exists()
            release.set()
            with trio.fail_after(5):
                while not path.exists():  # noqa: ASYNC110 (a file)
                    await trio.sleep(0.01)
    assert str(alice.peer_id) in path.read_text()
    # the file's text was made in the worker threads too, not on the event loop
    assert made_in
    assert threading.main_thread() not in made_in


def test_an_older_known_peers_write_never_replaces_a_newer_one(tmp_path: pathlib.Path) -> None:
    """Writes abandoned on a slow disk may finish after later ones: the file
    keeps the latest snapshot, whole, and no temporary file is left."""
    path = tmp_path / "id.key.known.json"
    known = KnownPeers(path)
    ids = [uuid.uuid4() for _ in range(3)]
    known.remember(ids[0], "A", "1")
    old = known.snapshot()
    known.remember(ids[1], "B", "2")
    new = known.snapshot()
    known.write(new)
    known.write(old)  # (the slow one finishes last)
    assert {p.peer_id for p in KnownPeers.load(path)._peers.values()} == set(ids[:2])
    # many at once, finishing in any order: the newest wins
    known.remember(ids[2], "C", "3")
    snapshots = [known.snapshot() for _ in range(8)]
    threads = [threading.Thread(target=known.write, args=(s,)) for s in reversed(snapshots)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert json.loads(path.read_text()) == json.loads(snapshots[-1].text)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    # a temporary file left by a process that died mid-write is removed at load
    (tmp_path / f".{path.name}.999-7.tmp").write_text("{half")
    assert len(KnownPeers.load(path)) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_known_peers_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "id.key.known.json"
    known = KnownPeers.load(path)
    ids = [uuid.uuid4() for _ in range(3)]
    assert known.remember(ids[0], "A", "1", now=10.0)
    assert not known.remember(ids[0], "A", "1", now=11.0)  # only last_seen changed
    assert known.remember(ids[0], "A2", "1", now=12.0)  # a new name is worth saving
    known.remember(ids[1], "B", "2", now=13.0)
    known.save()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = KnownPeers.load(path)
    assert again.get(ids[0]) == KnownPeer(
        ids[0], "A2", "1", 10.0, 12.0, (("A", 10.0), ("A2", 12.0))
    )
    # a name taken again keeps the time it was first taken; the history is bounded
    assert again.remember(ids[0], "A", "1", now=14.0)
    assert again.get(ids[0]).names == (("A2", 12.0), ("A", 10.0))  # type: ignore[union-attr]
    for n in range(NAMES_KEPT + 1):
        again.remember(ids[0], f"N{n}", "1", now=20.0 + n)
    renamed = again.get(ids[0])
    assert renamed is not None
    assert len(renamed.names) == NAMES_KEPT
    assert renamed.names[-1] == (f"N{NAMES_KEPT}", 20.0 + NAMES_KEPT)
    assert renamed.named_since("A") is None  # (the oldest went)
    # a file written before the name history was kept still loads
    old = {"id": str(ids[2]), "name": "C", "fingerprint": "3", "first_seen": 1.0}
    path.write_text(
        json.dumps({"version": 1, "peers": [{**old, "last_seen": 5.0, "named_since": 4.0}]})
    )
    assert KnownPeers.load(path).get(ids[2]) == KnownPeer(ids[2], "C", "3", 1.0, 5.0, (("C", 4.0),))
    again.save()
    assert [p.peer_id for p in again.others_named("B", ids[2])] == [ids[1]]
    assert again.others_named("B", ids[1]) == []
    # bounded: the least recently seen goes, if not seen lately
    week = KNOWN_PEERS_KEPT
    small = KnownPeers(None, limit=2)
    for peer_id, seen in zip(ids, [0, 2 * week, 2.5 * week], strict=True):
        assert small.remember(peer_id, "x", "f", now=seen)
    assert ids[0] not in small
    assert len(small) == 2
    # a full table of peers seen lately takes no new one (a flood of new keys
    # cannot push out the peers it knows)
    assert not small.remember(uuid.uuid4(), "y", "f", now=2.6 * week)
    assert set(small._peers) == set(ids[1:])
    # a damaged file is set aside, not trusted
    path.write_text("{not json")
    assert len(KnownPeers.load(path)) == 0
    assert path.with_name(path.name + ".bad").exists()


async def test_a_second_key_under_a_name_in_use_is_flagged_every_time(
    make_config: ConfigFactory,
) -> None:
    """While the first Alice is still about, a second key calling itself Alice
    is flagged at each connection, even if it first came under another name."""
    with trio.fail_after(15):
        async with (
            open_messenger("Bob", make_config()) as bob,
            open_messenger("Alice", make_config()) as alice,
        ):
            await alice.connect_to_peer(("127.0.0.1", bob.tcp_port))
            await wait_for(bob, PeerConnected, peer=alice.peer_id)
            mallory = Identity.generate()
            for name in ("Eve", "Alice", "Alice"):
                async with open_messenger(name, make_config(identity=mallory)) as node:
                    await node.connect_to_peer(("127.0.0.1", bob.tcp_port))
                    met = await wait_for(bob, PeerConnected, peer=mallory.peer_id)
                    assert met.peer.new_key == (name == "Alice")
                await bob.send_text_message(alice.peer_id, "still here")  # (Alice is seen)
                await bob.flush(alice.peer_id)
                await wait_for(bob, PeerDisconnected, peer=mallory.peer_id)


async def meet(hub: Messenger, name: str, config: Config) -> bool:
    """A node called *name* connects to *hub* and leaves; return whether *hub* flagged it."""
    async with open_messenger(name, config) as node:
        await node.connect_to_peer(("127.0.0.1", hub.tcp_port))
        met = await wait_for(hub, PeerConnected, peer=node.peer_id)
    await wait_for(hub, PeerDisconnected, peer=node.peer_id)
    return met.peer.new_key


async def test_a_node_that_renames_and_comes_back_keeps_its_claim_on_the_name(
    make_config: ConfigFactory,
) -> None:
    """Alice goes by 'Al' for a while, and Mallory takes 'Alice' meanwhile:
    when Alice comes back to her name, Mallory is still the one flagged."""
    with trio.fail_after(20):
        async with open_messenger("Bob", make_config()) as bob:
            alice = Identity.generate()
            mallory = Identity.generate()
            meetings = [("Alice", alice), ("Al", alice), ("Alice", mallory), ("Alice", alice)]
            meetings += [("Alice", mallory)]
            flags = [await meet(bob, name, make_config(identity=i)) for name, i in meetings]
            assert flags == [False, False, True, False, True]


async def test_a_name_taken_while_its_holder_was_connected_stays_flagged_after_it_left(
    make_config: ConfigFactory,
) -> None:
    """Alice is connected when Mallory takes her name, and leaves: Mallory's
    next connections are still flagged (Alice was seen after Mallory took it)."""
    with trio.fail_after(15):
        async with open_messenger("Bob", make_config()) as bob:
            mallory = Identity.generate()
            flags = []
            async with open_messenger("Alice", make_config()) as alice:
                await alice.connect_to_peer(("127.0.0.1", bob.tcp_port))
                await wait_for(bob, PeerConnected, peer=alice.peer_id)
                flags.append(await meet(bob, "Alice", make_config(identity=mallory)))
                await alice.disconnect_peer(bob.peer_id)  # (Alice leaves)
                await wait_for(bob, PeerDisconnected, peer=alice.peer_id)
            flags.append(await meet(bob, "Alice", make_config(identity=mallory)))
            assert flags == [True, True]


async def test_a_name_given_up_is_flagged_once_for_the_next_key_that_takes_it(
    make_config: ConfigFactory,
) -> None:
    """Bob went by 'pi' once, and is 'bob' now (and connected): Carol calling
    herself 'pi' is flagged when she takes the name, not at every connection
    after."""
    with trio.fail_after(15):
        async with open_messenger("Dave", make_config()) as dave:
            bob = Identity.generate()
            carol = Identity.generate()
            assert not await meet(dave, "pi", make_config(identity=bob))
            async with open_messenger("bob", make_config(identity=bob)) as node:
                await node.connect_to_peer(("127.0.0.1", dave.tcp_port))
                await wait_for(dave, PeerConnected, peer=bob.peer_id)
                flags = [await meet(dave, "pi", make_config(identity=carol)) for _ in range(2)]
            assert flags == [True, False]


async def test_the_key_that_had_a_name_first_is_not_the_one_flagged(
    make_config: ConfigFactory,
) -> None:
    """Mallory meets Bob as 'Eve' before Alice does, then calls herself Alice:
    she is flagged, each time Alice is about; Alice is not."""
    with trio.fail_after(15):
        async with open_messenger("Bob", make_config()) as bob:
            mallory = Identity.generate()
            async with open_messenger("Eve", make_config(identity=mallory)) as eve:
                await eve.connect_to_peer(("127.0.0.1", bob.tcp_port))
                await wait_for(bob, PeerConnected, peer=mallory.peer_id)
            await wait_for(bob, PeerDisconnected, peer=mallory.peer_id)
            async with open_messenger("Alice", make_config()) as alice:
                await alice.connect_to_peer(("127.0.0.1", bob.tcp_port))
                met = await wait_for(bob, PeerConnected, peer=alice.peer_id)
                assert not met.peer.new_key
                for _ in range(2):
                    async with open_messenger("Alice", make_config(identity=mallory)) as fake:
                        await fake.connect_to_peer(("127.0.0.1", bob.tcp_port))
                        met = await wait_for(bob, PeerConnected, peer=mallory.peer_id)
                        assert met.peer.new_key
                    await wait_for(bob, PeerDisconnected, peer=mallory.peer_id)
            await wait_for(bob, PeerDisconnected, peer=alice.peer_id)
            async with open_messenger("Alice", make_config(identity=alice.identity)) as again:
                await again.connect_to_peer(("127.0.0.1", bob.tcp_port))
                met = await wait_for(bob, PeerConnected, peer=alice.peer_id)
                assert not met.peer.new_key


@pytest.mark.parametrize(
    "change",
    [
        {"last_seen": float("nan")},
        {"first_seen": float("-inf")},
        {"first_seen": "10"},
        {"names": {"x1": 0}},
        {"names": [["x", 1.0, 2.0]]},
        {"names": [[1, 1.0]]},
        {"names": [["x", True]]},
        {"name": ["x"]},
    ],
)
def test_a_known_peers_file_with_bad_values_is_set_aside(
    tmp_path: pathlib.Path, change: dict[str, object]
) -> None:
    path = tmp_path / "id.key.known.json"
    good = {"id": str(uuid.uuid4()), "name": "C", "fingerprint": "3"}
    entry = {**good, "first_seen": 1.0, "last_seen": 2.0, **change}
    path.write_text(json.dumps({"version": 1, "peers": [entry]}))
    assert len(KnownPeers.load(path)) == 0
    assert path.with_name(path.name + ".bad").exists()


def test_a_deeply_nested_known_peers_file_is_set_aside(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "id.key.known.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    assert len(KnownPeers.load(path)) == 0
    assert path.with_name(path.name + ".bad").exists()
