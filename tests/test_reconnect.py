"""Sessions that outlive broken connections, end to end over loopback.

A link is broken by shutting the TCP socket down under one side's connection:
both sides see the connection break without a goodbye, as after a network
drop (the kernel of the other side sees the end of the stream).
"""

from __future__ import annotations

import errno
import os
import pathlib
import socket
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

import trio_p2p._filetransfer as filetransfer
from trio_p2p import (
    Config,
    DeliveryFailed,
    Event,
    FileTransferCompleted,
    FileTransferFailed,
    FileTransferProgress,
    FileTransferStarted,
    Message,
    MessageReceived,
    Messenger,
    PeerConnected,
    PeerDisconnected,
    PeerNotConnectedError,
    Text,
    open_messenger,
)
from trio_p2p._files import DownloadFolder

from .conftest import ConfigFactory
from .helpers import connect, texts, wait_for


def break_link(messenger: Messenger, peer_id: uuid.UUID) -> None:
    """Break *messenger*'s connection to *peer_id* without a goodbye."""
    stream = messenger._connections[peer_id].stream
    stream = getattr(stream, "transport", stream)  # under the secure channel
    assert isinstance(stream, trio.SocketStream)
    stream.socket.shutdown(socket.SHUT_RDWR)


async def record(messenger: Messenger, into: list[Event]) -> None:
    async for event in messenger.events:
        into.append(event)


def texts_of(events: list[Event]) -> list[str]:
    out = []
    for event in events:
        if isinstance(event, MessageReceived):
            assert isinstance(event.message.content, Text)
            out.append(event.message.content.text)
    return out


def kinds(events: list[Event], peer: uuid.UUID) -> list[str]:
    """The connection events about *peer*, as short strings."""
    out = []
    for event in events:
        if isinstance(event, PeerConnected) and event.peer.id == peer:
            out.append("connected, resumed" if event.resumed else "connected")
        elif isinstance(event, PeerDisconnected) and event.peer.id == peer:
            out.append("disconnected, resuming" if event.resuming else "disconnected")
        elif isinstance(event, DeliveryFailed) and event.peer.id == peer:
            out.append("delivery failed")
    return out


@pytest.mark.parametrize("broken_at", ["sender", "receiver"])
async def test_a_broken_connection_carries_its_session_on(
    make_config: ConfigFactory, broken_at: str
) -> None:
    """Messages sent before, during and after a break all arrive, once, in order;
    both sides see the break and the resumed session, and nothing fails."""
    count = 3000
    with trio.fail_after(30):
        async with (
            open_messenger("Alice", make_config(resume_timeout=10)) as a,
            open_messenger("Bob", make_config(resume_timeout=10)) as b,
        ):
            await connect(a, b)
            seen_a: list[Event] = []
            seen_b: list[Event] = []
            async with trio.open_nursery() as nursery:
                nursery.start_soon(record, a, seen_a)
                nursery.start_soon(record, b, seen_b)
                for i in range(count):
                    await a.send_text_message(b.peer_id, f"m{i}")
                    if i in (count // 3, 2 * count // 3):
                        if broken_at == "sender":
                            break_link(a, b.peer_id)
                        else:
                            break_link(b, a.peer_id)
                await a.flush(b.peer_id)  # every message is in Bob's channel...
                await trio.testing.wait_all_tasks_blocked()  # ...and recorded
                nursery.cancel_scope.cancel()
            assert texts_of(seen_b) == [f"m{i}" for i in range(count)]
            expected = ["disconnected, resuming", "connected, resumed"] * 2
            assert kinds(seen_a, b.peer_id) == expected
            assert kinds(seen_b, a.peer_id) == expected
            assert a.statistics().messages_undelivered == 0


async def test_messages_sent_while_the_link_is_down_wait_in_the_session(
    make_config: ConfigFactory,
) -> None:
    with trio.fail_after(20):
        async with (
            open_messenger("Alice", make_config(resume_timeout=10)) as a,
            open_messenger("Bob", make_config(resume_timeout=10)) as b,
        ):
            await connect(a, b)
            await a.send_text_message(b.peer_id, "before")
            break_link(a, b.peer_id)
            down = await wait_for(a, PeerDisconnected, peer=b.peer_id)
            assert down.resuming
            # (the node with the smaller id dials again at once: either way, these
            # go into the waiting session or onto the new connection)
            during = [a.send_text_message_nowait(b.peer_id, f"during {i}") for i in range(5)]
            await a.flush(b.peer_id)
            got = await texts(b, 6)
            assert got == ["before"] + [f"during {i}" for i in range(5)]
            assert [m.content for m in during] == [Text(f"during {i}") for i in range(5)]


async def bob_leaves_while_the_link_is_down(
    a: Messenger, make_config: ConfigFactory, count: int
) -> tuple[list[Message], uuid.UUID]:
    """Bob connects to Alice and reads nothing (his event buffer holds 4), Alice
    sends *count* texts, Bob's link breaks and he leaves. Returns what Alice
    sent, and Bob's id."""
    async with open_messenger("Bob", make_config(event_buffer=4)) as b:
        await connect(a, b)
        sent = [a.send_text_message_nowait(b.peer_id, f"m{i}") for i in range(count)]
        await trio.sleep(0.3)
        break_link(b, a.peer_id)
        assert (await wait_for(a, PeerDisconnected, peer=b.peer_id)).resuming
    return sent, b.peer_id


async def test_a_peer_that_does_not_come_back_fails_what_it_did_not_acknowledge(
    make_config: ConfigFactory,
) -> None:
    """Bob's application reads nothing (so he acknowledges nothing past his
    event buffer), the link breaks, Bob leaves: Alice reports every message Bob
    never acknowledged, once. If Alice is the one to dial again (the smaller
    id), she finds nothing listening where Bob was and ends the session at
    once; else she waits resume_timeout for Bob to dial her."""
    with trio.fail_after(20):
        async with open_messenger("Alice", make_config(resume_timeout=1.0)) as a:
            sent, bob = await bob_leaves_while_the_link_is_down(a, make_config, 50)
            start = trio.current_time()
            failed = await wait_for(a, DeliveryFailed, peer=bob)
            waited = trio.current_time() - start
            if a.peer_id < bob:
                assert waited < 0.5
                assert "the peer's process ended (nothing listens at 127.0.0.1:" in failed.reason
            else:
                assert 0.5 <= waited <= 3.0
                assert "did not come back within 1 s" in failed.reason
            assert list(failed.messages) == sent[len(sent) - len(failed.messages) :]
            assert len(failed.messages) >= 50 - 4 - 1  # at most his buffer was taken
            with pytest.raises(PeerNotConnectedError):
                a.send_text_message_nowait(bob, "too late")


async def test_disconnecting_a_peer_whose_link_is_down_ends_its_session(
    make_config: ConfigFactory,
) -> None:
    with trio.fail_after(20):
        async with open_messenger("Alice", make_config(resume_timeout=30)) as a:
            sent, bob = await bob_leaves_while_the_link_is_down(a, make_config, 20)
            await a.disconnect_peer(bob)  # (long before 30 s)
            failed = await wait_for(a, DeliveryFailed, peer=bob)
            assert failed.reason == "disconnected by the application"
            assert list(failed.messages) == sent[len(sent) - len(failed.messages) :]
            with pytest.raises(PeerNotConnectedError):
                await a.disconnect_peer(bob)


@asynccontextmanager
async def alice_and_bob(
    make_config: ConfigFactory, tmp_path: pathlib.Path
) -> AsyncIterator[tuple[Messenger, Messenger]]:
    """Alice and Bob connected, sessions kept 10 s; Bob saves files in tmp_path/bob."""
    async with (
        open_messenger("Alice", make_config(resume_timeout=10)) as a,
        open_messenger("Bob", make_config(resume_timeout=10, download_dir=tmp_path / "bob")) as b,
    ):
        await connect(a, b)
        yield a, b


async def test_a_file_transfer_goes_on_after_the_link_breaks(
    make_config: ConfigFactory, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The link breaks in the middle of a file: the same send_file goes on over
    the new connection from what the receiver holds; both sides see one start
    and one completion (no failure), and the file arrives whole."""
    write = filetransfer._write_and_hash

    def slow_write(*args: Any) -> None:  # (so the link breaks well before the end)
        time.sleep(0.01)
        write(*args)

    monkeypatch.setattr(filetransfer, "_write_and_hash", slow_write)
    size = 48 * 1024 * 1024
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(size))
    with trio.fail_after(60):
        async with alice_and_bob(make_config, tmp_path) as (a, b):
            seen_a: list[Event] = []
            seen_b: list[Event] = []
            async with trio.open_nursery() as nursery:
                nursery.start_soon(record, a, seen_a)

                async def bob_records_and_breaks_the_link_a_third_in() -> None:
                    broken = False
                    async for event in b.events:
                        seen_b.append(event)
                        if (
                            not broken
                            and isinstance(event, FileTransferProgress)
                            and event.bytes_transferred >= size // 3
                        ):
                            break_link(a, b.peer_id)
                            broken = True

                nursery.start_soon(bob_records_and_breaks_the_link_a_third_in)
                sent = await a.send_file(b.peer_id, source)
                await trio.testing.wait_all_tasks_blocked()
                nursery.cancel_scope.cancel()
            for seen, peer in ((seen_a, b.peer_id), (seen_b, a.peer_id)):
                files = [
                    type(e).__name__
                    for e in seen
                    if isinstance(
                        e, FileTransferStarted | FileTransferCompleted | FileTransferFailed
                    )
                ]
                assert files == ["FileTransferStarted", "FileTransferCompleted"]
                assert "disconnected, resuming" in kinds(seen, peer)
            done = next(e for e in seen_b if isinstance(e, FileTransferCompleted))
            assert done.transfer.id == sent.id
            assert done.transfer.path is not None
            assert done.transfer.path.read_bytes() == source.read_bytes()
            bytes_sent = a.statistics().file_bytes_sent
            assert size <= bytes_sent < size + size // 2  # the rest only, after the break


async def test_a_verdict_lost_with_the_link_is_given_again_from_the_saved_file(
    make_config: ConfigFactory, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The link breaks right after Bob saved the file, before his verdict goes
    out: Alice offers the transfer again over the new connection, Bob accepts it
    at its end and confirms the digest he kept. One file, one completion each,
    and not a byte sent twice."""
    size = 3 * 1024 * 1024 + 5
    source = tmp_path / "a.bin"
    source.write_bytes(os.urandom(size))
    finish = DownloadFolder.finish
    breaks: list[Messenger] = []

    def finish_then_break(folder: DownloadFolder, *args: Any) -> pathlib.Path:
        saved = finish(folder, *args)
        bob, alice = breaks
        break_link(bob, alice.peer_id)  # (from the worker thread: a system call)
        return saved

    monkeypatch.setattr(DownloadFolder, "finish", finish_then_break)
    with trio.fail_after(30):
        async with alice_and_bob(make_config, tmp_path) as (a, b):
            breaks.extend([b, a])
            seen_a: list[Event] = []
            seen_b: list[Event] = []
            async with trio.open_nursery() as nursery:
                nursery.start_soon(record, a, seen_a)
                nursery.start_soon(record, b, seen_b)
                await a.send_file(b.peer_id, source)
                await trio.testing.wait_all_tasks_blocked()
                nursery.cancel_scope.cancel()
            for seen, peer in ((seen_a, b.peer_id), (seen_b, a.peer_id)):
                ended = [
                    e for e in seen if isinstance(e, FileTransferCompleted | FileTransferFailed)
                ]
                assert [type(e) for e in ended] == [FileTransferCompleted]
                assert kinds(seen, peer) == ["disconnected, resuming", "connected, resumed"]
            assert sorted(p.name for p in (tmp_path / "bob").iterdir()) == ["a.bin"]
            assert (tmp_path / "bob" / "a.bin").read_bytes() == source.read_bytes()
            assert a.statistics().file_bytes_sent == size


async def test_saved_transfers_are_remembered_for_a_while_and_a_bounded_number(
    mock_clock: trio.testing.MockClock, tmp_path: pathlib.Path
) -> None:
    """What answers a lost verdict cannot grow without bound: at most
    COMPLETED_KEPT entries, each for resume_timeout."""
    config = Config(resume_timeout=30, download_dir=tmp_path)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:

            async def ignore(event: Event) -> bool:
                return True

            files = filetransfer.FileService(config, nursery, ignore, lambda e: True, Counter())
            peer = uuid.uuid4()
            ids = [uuid.uuid4() for _ in range(filetransfer.COMPLETED_KEPT + 10)]
            for transfer_id in ids:
                files._remember_completed(transfer_id, peer, b"d" * 32)
            assert len(files._completed) == filetransfer.COMPLETED_KEPT
            assert ids[0] not in files._completed  # the oldest went first
            assert ids[-1] in files._completed
            mock_clock.jump(31)
            files._remember_completed(uuid.uuid4(), peer, b"d" * 32)
            assert len(files._completed) == 1  # the expired ones went
            nursery.cancel_scope.cancel()


async def test_a_failed_attempt_to_reach_a_peer_is_tried_again_a_refusal_is_not(
    make_config: ConfigFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lossy link can fail a connection attempt (EHOSTUNREACH): connect_to_peer
    tries again within the handshake timeout; a refused one fails at once."""
    from trio_p2p import _messenger

    real = trio.open_tcp_stream
    failures = [OSError(errno.EHOSTUNREACH, "No route to host")] * 2

    async def flaky(host: str, port: int) -> trio.SocketStream:
        if failures:
            raise failures.pop()
        return await real(host, port)

    monkeypatch.setattr(trio, "open_tcp_stream", flaky)
    with trio.fail_after(10):
        async with (
            open_messenger("Alice", make_config()) as alice,
            open_messenger("Bob", make_config()) as bob,
        ):
            start = trio.current_time()
            peer = await alice.connect_to_peer(("127.0.0.1", bob.tcp_port))
            assert peer.id == bob.peer_id
            assert trio.current_time() - start >= 2 * _messenger.RECONNECT_PAUSE
            with socket.socket() as unused:
                unused.bind(("127.0.0.1", 0))
                closed = unused.getsockname()[1]
            start = trio.current_time()
            with pytest.raises(OSError, match="all attempts"):
                await alice.connect_to_peer(("127.0.0.1", closed))
            assert trio.current_time() - start < 0.5
            # nor is a name that does not resolve (faked: no query leaves the machine)
            asked: list[str] = []

            async def unresolvable(host: str, *args: object, **kwargs: object) -> list[object]:
                asked.append(host)
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

            monkeypatch.setattr(trio.socket, "getaddrinfo", unresolvable)
            monkeypatch.setattr(trio, "open_tcp_stream", flaky)  # (would count attempts)
            failures.append(OSError(errno.EHOSTUNREACH, "never raised"))
            start = trio.current_time()
            with pytest.raises(OSError, match="not known"):
                await alice.connect_to_peer(("nowhere.invalid", bob.tcp_port))
            assert asked == ["nowhere.invalid"]
            assert failures  # no TCP attempt was made
            assert trio.current_time() - start < 0.5
