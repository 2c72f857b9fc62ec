"""Hostile peers and file transfers: a raw protocol peer on loopback tries to break a node.

Each test is a problem a review found (the node crashed, hung or grew without
bound); each now ends with the node still serving.
"""

from __future__ import annotations

import logging
import os
import pathlib
import shutil
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import Any

import attrs
import blake3
import pytest
import trio
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

import trio_p2p._files as files
import trio_p2p._filetransfer as filetransfer
from trio_p2p import (
    FileOffered,
    FileTransferFailed,
    Messenger,
    PeerDisconnected,
    TransferError,
    open_messenger,
)
from trio_p2p._codec import FrameDecoder, encode_frame
from trio_p2p._connection import QUEUE_LIMIT
from trio_p2p._identity import Identity
from trio_p2p._log import RateLimitedWarnings
from trio_p2p._messages import (
    PROTOCOL_VERSION,
    FileAccept,
    FileCancel,
    FileChunk,
    FileConfirm,
    FileEnd,
    FileOffer,
    FileReject,
    FileVerdict,
    Frame,
    Goodbye,
    GoodbyeCode,
    Hello,
    Ping,
    Pong,
)
from trio_p2p._secure import StreamIO, secure_accept

from .conftest import ConfigFactory
from .helpers import secure_dial_raw, wait_for

EMPTY_DIGEST = blake3.blake3(b"").digest()
MiB = 1024 * 1024


@attrs.define
class RawPeer:
    """A peer that speaks the protocol by hand, frame by frame."""

    stream: trio.abc.Stream
    node_id: uuid.UUID
    decoder: FrameDecoder = attrs.field(factory=lambda: FrameDecoder(1 << 24))
    backlog: list[Frame] = attrs.field(factory=list)

    async def send(self, *frames: Frame) -> None:
        await self.stream.send_all(b"".join(encode_frame(f) for f in frames))

    async def receive(self, *kinds: type[Frame]) -> Frame:
        """The next frame of one of *kinds* (others are skipped)."""
        while True:
            while not self.backlog:
                data = await self.stream.receive_some(65536)
                assert data, "the node closed the connection"
                self.backlog = self.decoder.feed(data)
            frame = self.backlog.pop(0)
            if isinstance(frame, kinds):
                return frame


@asynccontextmanager
async def raw_peer(
    node: Messenger, name: str = "Mallory", identity: Identity | None = None
) -> AsyncIterator[RawPeer]:
    stream, identity = await secure_dial_raw(node.tcp_port, identity)
    async with stream:
        hello = Hello(PROTOCOL_VERSION, identity.peer_id, os.urandom(16), name, 1234, 1 << 24)
        await stream.send_all(encode_frame(hello))
        peer = RawPeer(stream, hello.node_id)
        await peer.receive(Hello)
        yield peer


async def still_serving(node: Messenger, peer: RawPeer) -> None:
    """The node answers a ping: its reader runs and it has not crashed."""
    assert node.connected_peers()
    await peer.send(Ping())
    await peer.receive(Pong)


def names(folder: pathlib.Path) -> list[str]:
    return sorted(os.listdir(folder))


def offer(name: str = "f.bin", size: int = 0, transfer: uuid.UUID | None = None) -> FileOffer:
    return FileOffer(transfer or uuid.uuid4(), name, size, MiB, 1)


async def test_a_cancel_while_the_partial_is_prepared_is_harmless(
    make_config: ConfigFactory, tmp_path: pathlib.Path
) -> None:
    with trio.fail_after(20):
        async with (
            open_messenger("Bob", make_config(download_dir=tmp_path)) as bob,
            raw_peer(bob) as peer,
        ):
            for i in range(50):
                tid = uuid.uuid4()
                await peer.send(offer(f"f{i}", 10, tid), FileCancel(tid, "never mind"))
                await trio.sleep(0.005 * (i % 3))
            await still_serving(bob, peer)
        assert names(tmp_path) == []  # nothing kept of transfers that held nothing


async def test_an_end_followed_at_once_by_a_cancel_is_harmless(
    make_config: ConfigFactory, tmp_path: pathlib.Path
) -> None:
    with trio.fail_after(20):
        async with (
            open_messenger("Bob", make_config(download_dir=tmp_path)) as bob,
            raw_peer(bob) as peer,
        ):
            for i in range(30):
                tid = uuid.uuid4()
                await peer.send(offer(f"g{i}.bin", 0, tid))
                await peer.receive(FileAccept)
                digest = EMPTY_DIGEST if i % 2 else b"\0" * 32
                await peer.send(FileEnd(tid, digest), FileCancel(tid, "bye"))
            await still_serving(bob, peer)


async def test_one_transfer_id_on_two_connections_is_refused_the_second_time(
    make_config: ConfigFactory, tmp_path: pathlib.Path
) -> None:
    with trio.fail_after(20):
        async with (
            open_messenger("Bob", make_config(download_dir=tmp_path)) as bob,
            raw_peer(bob, "M1") as first,
            raw_peer(bob, "M2") as second,
        ):
            tid = uuid.uuid4()
            await first.send(offer("one", 0, tid))
            await first.receive(FileAccept)
            await second.send(offer("two", 0, tid))
            refusal = await second.receive(FileReject)
            assert isinstance(refusal, FileReject)
            assert refusal.reason == "this transfer id is in use here"
            await second.send(FileEnd(tid, EMPTY_DIGEST))  # ignored: not its transfer
            await first.send(FileEnd(tid, EMPTY_DIGEST))
            verdict = await first.receive(FileVerdict)
            assert verdict == FileVerdict(tid, True, "")
            await still_serving(bob, second)
        assert names(tmp_path) == ["one"]


async def test_a_receiver_repeating_itself_does_not_keep_send_file_waiting(
    make_config: ConfigFactory, tmp_path: pathlib.Path
) -> None:
    source = tmp_path / "a.bin"
    source.write_bytes(b"abc")
    with trio.fail_after(20):
        async with open_messenger("Alice", make_config(transfer_idle_timeout=0.5)) as alice:
            listener = await trio.open_tcp_listeners(0, host="127.0.0.1")
            port = listener[0].socket.getsockname()[1]
            async with trio.open_nursery() as nursery:

                async def receiver() -> None:
                    async with await listener[0].accept() as raw:
                        identity = Identity.generate()
                        stream, _ = await secure_accept(
                            raw,
                            StreamIO(raw),
                            identity,
                            X25519PrivateKey.generate().private_bytes_raw(),
                        )
                        peer = RawPeer(stream, identity.peer_id)
                        hello = Hello(
                            PROTOCOL_VERSION, peer.node_id, os.urandom(16), "R", port, 1 << 24
                        )
                        await peer.send(hello)
                        offered = await peer.receive(FileOffer)
                        assert isinstance(offered, FileOffer)
                        await peer.send(FileAccept(offered.transfer, 0))
                        await peer.receive(FileEnd)
                        while True:  # the same confirmation, again and again; no verdict
                            await peer.send(FileConfirm(offered.transfer, 3), Ping())
                            await trio.sleep(0.1)

                nursery.start_soon(receiver)
                peer_info = await alice.connect_to_peer(("127.0.0.1", port))
                with pytest.raises(TransferError, match="made no progress"):
                    await alice.send_file(peer_info.id, source)
                nursery.cancel_scope.cancel()
            await listener[0].aclose()


async def test_offers_from_a_peer_that_reads_nothing_cannot_grow_the_queue(
    make_config: ConfigFactory, tmp_path: pathlib.Path
) -> None:
    with trio.fail_after(30):
        config = make_config(
            download_dir=tmp_path, max_incoming_transfers=1, transfer_idle_timeout=2
        )
        async with open_messenger("Bob", config) as bob, raw_peer(bob) as peer:
            await peer.send(offer("holds-the-only-place", 10))
            flood = b"".join(encode_frame(offer("x", 1)) for _ in range(2000))
            with trio.move_on_after(1):  # Bob stops reading once his answers pile up
                for _ in range(100):
                    await peer.stream.send_all(flood)
            conn = bob._connections[peer.node_id]
            assert len(conn._outgoing) < QUEUE_LIMIT + 1024
            # and the peer is dropped: after transfer_idle_timeout if Bob's answers
            # fill his queue, else by the heartbeat once it has gone silent
            gone = await wait_for(bob, PeerDisconnected)
            assert (
                "the peer read none of its refusals for 2 s" in gone.reason
                or "heartbeat timeout" in gone.reason
            )


async def test_concurrent_offers_share_the_free_space(
    make_config: ConfigFactory, tmp_path: pathlib.Path
) -> None:
    free = shutil.disk_usage(tmp_path).free
    config = make_config(download_dir=tmp_path, free_space_margin=free - 20 * MiB)
    with trio.fail_after(20):
        async with open_messenger("Bob", config) as bob, raw_peer(bob) as peer:
            offers = [offer(f"big{i}", 15 * MiB) for i in range(4)]
            await peer.send(*offers)
            answers = [await peer.receive(FileAccept, FileReject) for _ in offers]
            kinds = sorted(type(a).__name__ for a in answers)
            assert kinds == ["FileAccept", "FileReject", "FileReject", "FileReject"]
            refused = [a for a in answers if isinstance(a, FileReject)]
            assert all("not enough free space" in r.reason for r in refused)


async def test_refusals_cannot_flood_the_log(
    make_config: ConfigFactory,
    tmp_path: pathlib.Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.INFO, logger="trio_p2p.transfer")
    # a limiter of its own: other tests may have used this one's allowance
    monkeypatch.setattr(filetransfer, "refused", RateLimitedWarnings(filetransfer.logger))
    config = make_config(download_dir=tmp_path, max_file_size=10)
    with trio.fail_after(20):
        async with open_messenger("Bob", config) as bob, raw_peer(bob) as peer:
            await peer.send(*[offer(f"f{i}", 100) for i in range(300)])
            for _ in range(300):
                await peer.receive(FileReject)
            failed = await wait_for(bob, FileTransferFailed)
            assert "larger than this node accepts" in failed.error.reason
    refusals = [r for r in caplog.records if "refused" in r.getMessage()]
    assert 0 < len(refusals) <= 11


async def test_a_completed_transfer_offered_again_and_cancelled_at_once_is_harmless(
    make_config: ConfigFactory, tmp_path: pathlib.Path
) -> None:
    """The node answers a re-offer of a file it saved from what it kept; a
    cancel in the same read as that offer used to crash the whole node."""
    with trio.fail_after(20):
        async with open_messenger("Bob", make_config(download_dir=tmp_path)) as bob:
            mallory = Identity.generate()
            tid = uuid.uuid4()
            async with raw_peer(bob, identity=mallory) as peer:
                await peer.send(offer("ok.txt", 0, tid))
                await peer.receive(FileAccept)
                await peer.send(FileEnd(tid, EMPTY_DIGEST))
                verdict = await peer.receive(FileVerdict)
                assert isinstance(verdict, FileVerdict)
                assert verdict.verified
                await peer.send(Goodbye(GoodbyeCode.CLOSING, "bye"))
            async with raw_peer(bob, identity=mallory) as peer:
                await peer.send(offer("ok.txt", 0, tid), FileCancel(tid, "never mind"))
                await still_serving(bob, peer)
            assert names(tmp_path) == ["ok.txt"]


async def test_an_accepted_offer_cannot_become_another_file_when_it_carries_on(
    make_config: ConfigFactory, tmp_path: pathlib.Path
) -> None:
    """A transfer cut off is carried on when its sender offers it again, without
    asking the application a second time: only if it is the same file."""
    config = make_config(download_dir=tmp_path, auto_accept_files=False)
    with trio.fail_after(20):
        async with open_messenger("Bob", config) as bob:
            mallory = Identity.generate()
            tid = uuid.uuid4()
            async with raw_peer(bob, identity=mallory) as peer:
                await peer.send(FileOffer(tid, "notes.txt", 3, MiB, 1))
                offered = await wait_for(bob, FileOffered)
                assert offered.transfer.filename == "notes.txt"
                bob.accept_file(tid)
                await peer.receive(FileAccept)
                await peer.send(FileChunk(tid, 0, b"n"))
                await still_serving(bob, peer)
            # (the connection broke: the transfer waits to be offered again)
            await wait_for(bob, PeerDisconnected, peer=mallory.peer_id)
            async with raw_peer(bob, identity=mallory) as peer:
                await peer.send(FileOffer(tid, "payload.exe", 5 * MiB, MiB, 2))
                with pytest.raises(AssertionError, match="closed the connection"):
                    await peer.receive(FileAccept, FileReject)
            gone = await wait_for(bob, PeerDisconnected, peer=mallory.peer_id)
            assert "which was of 'notes.txt'" in gone.reason
            # (and nothing was said of the transfer the user accepted: it waits)
            assert bob.statistics().transfers_failed == 0
            async with raw_peer(bob, identity=mallory) as peer:
                # the same file is carried on from where it was
                await peer.send(FileOffer(tid, "notes.txt", 3, MiB, 1))
                answer = await peer.receive(FileAccept, FileReject)
                assert answer == FileAccept(tid, 1)
                await peer.send(
                    FileChunk(tid, 1, b"ot"), FileEnd(tid, blake3.blake3(b"not").digest())
                )
                verdict = await peer.receive(FileVerdict)
                assert isinstance(verdict, FileVerdict)
                assert verdict.verified
            assert names(tmp_path) == ["notes.txt"]


async def test_a_peer_taking_another_ones_name_does_not_reach_its_partials(
    make_config: ConfigFactory, tmp_path: pathlib.Path
) -> None:
    """Partials belong to the sender's id: a name proves nothing."""
    with trio.fail_after(20):
        async with open_messenger("Bob", make_config(download_dir=tmp_path)) as bob:
            alice = Identity.generate()
            async with raw_peer(bob, "Alice", alice) as peer:
                tid = uuid.uuid4()
                await peer.send(FileOffer(tid, "f.bin", 4, MiB, 1))
                assert await peer.receive(FileAccept) == FileAccept(tid, 0)
                await peer.send(FileChunk(tid, 0, b"ab"))
                await still_serving(bob, peer)
            await wait_for(bob, PeerDisconnected, peer=alice.peer_id)
            async with raw_peer(bob, "Alice") as mallory:  # another key
                tid = uuid.uuid4()
                await mallory.send(FileOffer(tid, "f.bin", 4, MiB, 1))
                assert await mallory.receive(FileAccept) == FileAccept(tid, 0)
                await mallory.send(FileCancel(tid, "never mind"))
                await still_serving(bob, mallory)
            await wait_for(bob, PeerDisconnected)
            async with raw_peer(bob, "Alice", alice) as peer:  # Alice again: she resumes
                tid = uuid.uuid4()
                await peer.send(FileOffer(tid, "f.bin", 4, MiB, 1))
                assert await peer.receive(FileAccept) == FileAccept(tid, 2)


async def test_broken_off_transfers_cannot_push_out_a_partial_that_waits_to_resume(
    make_config: ConfigFactory, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kept partials are bounded, but one whose transfer waits to be offered
    again is never removed, even the oldest of the sender that keeps the most."""
    monkeypatch.setattr(files, "PARTIALS_KEPT", 3)
    with trio.fail_after(20):
        async with open_messenger("Bob", make_config(download_dir=tmp_path)) as bob:
            alice = Identity.generate()
            tid = uuid.uuid4()
            async with raw_peer(bob, "Alice", alice) as peer:
                await peer.send(FileOffer(tid, "f.bin", 4, MiB, 1))
                await peer.receive(FileAccept)
                await peer.send(FileChunk(tid, 0, b"ab"))
                for i in range(4):  # broken off by Alice herself: kept, not waiting
                    other = uuid.uuid4()
                    await peer.send(FileOffer(other, f"junk{i}", 4, MiB, 1))
                    await peer.receive(FileAccept)
                    await peer.send(FileChunk(other, 0, b"j"), FileCancel(other, "bye"))
                    await still_serving(bob, peer)
            await wait_for(bob, PeerDisconnected, peer=alice.peer_id)  # f.bin waits
            async with raw_peer(bob) as mallory:
                other = uuid.uuid4()
                await mallory.send(FileOffer(other, "junk", 4, MiB, 1))
                await mallory.receive(FileAccept)
                await mallory.send(FileChunk(other, 0, b"j"), FileCancel(other, "bye"))
                await still_serving(bob, mallory)
            # (each cancelled transfer keeps its byte, trims, then says it failed)
            while bob.statistics().transfers_failed < 5:  # noqa: ASYNC110 (a counter)
                await trio.sleep(0.01)
            partials = [n for n in names(tmp_path) if n.endswith(files.PART_SUFFIX)]
            assert len(partials) == 3 + 1  # (the bound, and the one that waits besides)
            async with raw_peer(bob, "Alice", alice) as peer:
                await peer.send(FileOffer(tid, "f.bin", 4, MiB, 1))
                assert await peer.receive(FileAccept) == FileAccept(tid, 2)


def test_an_offer_holds_its_partial_in_use_from_the_moment_it_is_taken_in() -> None:
    """Offered (waiting for the application, or continuing a broken-off
    transfer) and not yet received: its partial is in use (a trim meanwhile
    must spare it), as are those of transfers under way or suspended."""
    suspended = SimpleNamespace(key="suspended")  # (a _Suspended, as far as it matters)
    incoming: dict[uuid.UUID, Any] = {uuid.uuid4(): SimpleNamespace(key="")}
    in_use = filetransfer._PartialsInUse({"under way"}, {uuid.uuid4(): suspended}, incoming)  # type: ignore[dict-item]
    assert "under way" in in_use
    assert "suspended" in in_use
    assert "offered" not in in_use
    incoming[uuid.uuid4()] = SimpleNamespace(key="offered")
    assert "offered" in in_use
    assert "another" not in in_use


async def test_a_fresh_offer_waiting_for_the_application_keeps_the_partial_it_resumes(
    make_config: ConfigFactory, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Alice offers again a file whose transfer broke (no session to carry on):
    while the application has not answered, strangers' broken-off transfers
    cannot push out the partial the offer will resume."""
    monkeypatch.setattr(files, "PARTIALS_KEPT", 3)
    config = make_config(download_dir=tmp_path, auto_accept_files=False, resume_timeout=0)
    with trio.fail_after(20):
        async with open_messenger("Bob", config) as bob:
            alice = Identity.generate()
            async with raw_peer(bob, "Alice", alice) as peer:
                tid = uuid.uuid4()
                await peer.send(FileOffer(tid, "f.bin", 4, MiB, 1))
                bob.accept_file((await wait_for(bob, FileOffered)).transfer.id)
                await peer.receive(FileAccept)
                await peer.send(FileChunk(tid, 0, b"ab"))
                await still_serving(bob, peer)
            await wait_for(bob, FileTransferFailed)  # (its partial is kept)
            async with raw_peer(bob, "Alice", alice) as peer:
                again = uuid.uuid4()
                await peer.send(FileOffer(again, "f.bin", 4, MiB, 1))
                await wait_for(bob, FileOffered)  # (not answered yet)
                async with raw_peer(bob) as mallory:
                    for i in range(4):
                        other = uuid.uuid4()
                        await mallory.send(FileOffer(other, f"junk{i}", 4, MiB, 1))
                        bob.accept_file((await wait_for(bob, FileOffered)).transfer.id)
                        await mallory.receive(FileAccept)
                        await mallory.send(FileChunk(other, 0, b"j"), FileCancel(other, "bye"))
                        await wait_for(bob, FileTransferFailed)
                partials = [n for n in names(tmp_path) if n.endswith(files.PART_SUFFIX)]
                assert len(partials) == 3 + 1  # (the bound, and the one offered besides)
                bob.accept_file(again)
                assert await peer.receive(FileAccept) == FileAccept(again, 2)
