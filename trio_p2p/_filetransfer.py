"""Running file transfers: the tasks that read, send, receive, write and hash.

The state of each transfer lives in :mod:`trio_p2p._transfer` (sans-I/O); the
disk work in :mod:`trio_p2p._files` (blocking, run in worker threads). This
module joins them to the connections and the event channel:

* ``send_file`` runs in the caller's task: offer, wait for the answer, then read
  a chunk (and hash it) in a worker thread while the connection's writer sends
  the previous one, within the receiver's confirmations, then the digest, then
  wait for the verdict.
* every accepted incoming transfer has a task of its own (in the messenger's
  nursery): the connection's reader hands it the chunks through a small
  channel (so a slow disk holds the reader back, and TCP holds the sender
  back), and it writes and hashes them in a worker thread, confirms, and
  answers the end with its verdict.
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
import os
import pathlib
import stat
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TypeVar

import attrs
import blake3
import trio

from ._codec import CHUNK_HEAD_ROOM, CHUNK_TAIL_ROOM, frame_chunk_in_place
from ._config import CHUNK_OVERHEAD, Config
from ._connection import PeerConnection
from ._errors import PeerNotConnectedError, ProtocolError, TransferError
from ._events import (
    Direction,
    Event,
    FileOffered,
    FileTransferCompleted,
    FileTransferFailed,
    FileTransferProgress,
    FileTransferStarted,
    Transfer,
)
from ._files import DownloadFolder, Partial, hash_range, resume_key
from ._log import RateLimitedWarnings, get_logger
from ._messages import FileChunk, FileEnd, FileFrame, FileOffer
from ._transfer import IncomingTransfer, OutgoingTransfer, Phase

__all__ = ["FileService"]

_T = TypeVar("_T")
_R = TypeVar("_R")

logger = get_logger("transfer")
#: refusals of offers, which a peer can make as often as it offers
refused = RateLimitedWarnings(logger)

#: Incoming transfers open at once from all peers together, at most this many
#: times ``Config.max_incoming_transfers`` (each holds an open file).
TOTAL_INCOMING_FACTOR = 4
#: Chunks queued between a connection's reader and an incoming transfer's
#: task; the task writes (and hashes) all that wait, up to this many, in one
#: call to a worker thread (a call costs about as much as moving a chunk).
#: Two, not more: the fewer chunk buffers a transfer cycles through, the more
#: of them the processor's cache still holds (4 were 5-11% slower here).
CHUNK_QUEUE = 2
#: Saved transfers remembered at most (see FileService._remember_completed).
COMPLETED_KEPT = 1024
#: Chunks a sender reads (and hashes) in one call to a worker thread (two
#: sets of them take turns: one is read while the other is sent).
SEND_BATCH = 2
#: Progress events of one transfer are at least this many seconds apart...
PROGRESS_INTERVAL = 0.1
#: ...and this many bytes (or 1% of the file, if less).
PROGRESS_STEP = 1024 * 1024
#: Unclaimed partial files are looked for this often (seconds).
SWEEP_INTERVAL = 3600.0


class _Interrupted(TransferError):
    """The connection broke (no goodbye): its session may carry on over a new one."""


def _connection_ended(conn: PeerConnection) -> TransferError:
    """The error of a transfer whose connection has ended (or is closing)."""
    reason = f"the connection ended: {conn.reason or 'closing'}"
    if conn.reason is not None and conn.resumable:
        return _Interrupted(reason)
    return TransferError(reason)


def _ended(transfer: IncomingTransfer) -> bool:
    """Whether *transfer* has ended (read anew after every await: the peer may cancel)."""
    return transfer.done


def _read_and_hash(
    fd: int, offset: int, buffers: list[bytearray], lengths: list[int], hasher: blake3.blake3
) -> None:
    """Read *lengths* bytes at *offset* into the data room of *buffers*, and hash them.

    One system call for them all, as a rule (each call into the kernel from a
    worker thread hands the GIL back and forth).
    """
    rooms = [
        memoryview(buffer)[CHUNK_HEAD_ROOM : CHUNK_HEAD_ROOM + length]
        for buffer, length in zip(buffers, lengths, strict=False)
    ]
    _transfer_all(os.preadv, fd, rooms, offset, "the file became shorter while it was sent")
    for room in rooms:
        hasher.update(room)


def _write_and_hash(
    fd: int,
    offset: int,
    chunks: list[bytes | memoryview],
    hasher: blake3.blake3,
    recycle: Callable[[bytes | memoryview], None],
) -> None:
    """Write *chunks* at *offset* (one system call, as a rule) and hash them."""
    _transfer_all(os.pwritev, fd, [memoryview(data) for data in chunks], offset, "")
    for data in chunks:
        hasher.update(data)
        recycle(data)  # (its receive buffer is free again)


def _transfer_all(
    call: Callable[[int, list[memoryview], int], int],
    fd: int,
    views: list[memoryview],
    offset: int,
    short: str,
) -> None:
    """``preadv`` or ``pwritev`` until every byte of *views* is done.

    Raises:
        TransferError: with *short*, if the file ended first (reading).
    """
    while views:
        count = call(fd, views, offset)
        if not count:
            raise TransferError(short or "the file cannot be written")
        offset += count
        while views and count >= len(views[0]):
            count -= len(views[0])
            views = views[1:]
        if count:
            views = [views[0][count:], *views[1:]]


def _describe(exc: OSError) -> str:
    what = exc.strerror or str(exc)
    return what if exc.filename is None else f"{what}: {exc.filename}"


def _open_regular(path: pathlib.Path) -> io.BufferedReader:
    if not stat.S_ISREG(path.stat().st_mode):  # also keeps a FIFO from blocking the open
        raise TransferError(f"{path} is not a regular file")
    return open(path, "rb")


class _Progress:
    """Throttled progress events of one transfer."""

    def __init__(self, emit: Callable[[Event], bool], transfer: Transfer) -> None:
        self._emit = emit
        self._transfer = transfer
        self._last_time = -math.inf
        self._last_bytes = -1
        #: the least advance worth an event: 1% of the file, at most PROGRESS_STEP
        self._step = max(1, min(PROGRESS_STEP, transfer.size // 100))

    def update(self, done: int) -> None:
        if done - self._last_bytes < self._step:
            return
        now = trio.current_time()
        if now - self._last_time < PROGRESS_INTERVAL:
            return
        event = FileTransferProgress(self._transfer, done, self._transfer.size)
        if self._emit(event):
            self._last_time, self._last_bytes = now, done

    def final(self) -> FileTransferProgress | None:
        """The 100% event, unless the last one sent was it."""
        size = self._transfer.size
        if self._last_bytes == size:
            return None
        self._last_bytes = size
        return FileTransferProgress(self._transfer, size, size)


@attrs.define(eq=False)
class _Outgoing:
    conn: PeerConnection
    transfer: OutgoingTransfer
    lot: trio.lowlevel.ParkingLot = attrs.field(factory=trio.lowlevel.ParkingLot)
    #: cancelled by cancel_transfer, to stop the sender wherever it waits
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    #: (phase, confirmed) when the receiver last made progress, and when
    seen: tuple[Phase, int] = (Phase.OFFERED, -1)
    since: float = 0.0


@attrs.define
class _Sending:
    """What an outgoing transfer keeps across the connections it goes over."""

    record: Transfer
    #: its progress events, once it started
    progress: _Progress | None = None


@attrs.define
class _Receiving:
    """What the task of an incoming transfer holds, for its cleanup."""

    key: str
    partial: Partial | None = None
    claimed: bool = False
    keep: bool = True
    #: bytes of free space promised to this transfer
    reserved: int = 0
    #: its progress events, once it is under way
    progress: _Progress | None = None
    #: the digest of the file, once it is saved
    digest: bytes | None = None


@attrs.define(eq=False)
class _Incoming:
    conn: PeerConnection
    transfer: IncomingTransfer
    record: Transfer
    chunks: trio.MemorySendChannel[FileChunk | FileEnd]
    arrivals: trio.MemoryReceiveChannel[FileChunk | FileEnd]
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    answered: trio.Event = attrs.field(factory=trio.Event)
    accepted: bool = False
    reason: str = ""
    #: when it goes on after a broken connection: its progress events so far
    continues: _Suspended | None = None
    #: the resume key of its partial (in use from the offer on; "" for none)
    key: str = ""
    #: set once its task has ended (and suspended it, if it was interrupted)
    done: trio.Event = attrs.field(factory=trio.Event)


@attrs.define(eq=False)
class _Suspended:
    """An incoming transfer whose connection broke, waiting to be offered again."""

    peer_id: uuid.UUID
    record: Transfer
    progress: _Progress | None
    failure: TransferError
    #: the offered file's modification time (with the record's name and size,
    #: what an offer to continue it must repeat)
    mtime_ns: int
    #: the resume key of its partial (kept for it)
    key: str


class _PartialsInUse:
    """The resume keys of partials in use: transfers offered, under way or suspended.

    An offer holds its partial from the moment it is taken in (before it is
    accepted, or received again after a broken connection). Looked up from a
    worker thread (see ``DownloadFolder.keep``) while the event loop changes
    the collections: lookups only, each atomic.
    """

    def __init__(
        self,
        receiving: set[str],
        suspended: dict[uuid.UUID, _Suspended],
        incoming: dict[uuid.UUID, _Incoming],
    ) -> None:
        self._receiving = receiving
        self._suspended = suspended
        self._incoming = incoming

    def __contains__(self, key: object) -> bool:
        # (A transfer moving from one collection to another is added to the new
        # one before it leaves the old: a lookup between the two finds it.)
        if key in self._receiving:
            return True
        if any(i.key == key for i in list(self._incoming.values())):
            return True
        return any(s.key == key for s in list(self._suspended.values()))


class FileService:
    """The file transfers of one messenger, over all its connections.

    Args:
        config: the messenger's settings.
        nursery: where incoming transfers' tasks run.
        send_event: places an event, waiting for room (returns whether placed).
        offer_event: places an event if there is room now (returns whether placed).
        counters: the messenger's counters (``transfers_*``, ``file_bytes_*``).
    """

    def __init__(
        self,
        config: Config,
        nursery: trio.Nursery,
        send_event: Callable[[Event], Awaitable[bool]],
        offer_event: Callable[[Event], bool],
        counters: Counter[str],
    ) -> None:
        self.config = config
        self.folder = DownloadFolder(config.download_dir, config.free_space_margin)
        self._nursery = nursery
        self._send_event = send_event
        self._offer_event = offer_event
        self._counters = counters
        self._outgoing: dict[uuid.UUID, _Outgoing] = {}
        #: given a connection that broke, waits for the connection that carries
        #: its session on, if any (set by the messenger)
        self.resumed: Callable[[PeerConnection], Awaitable[PeerConnection | None]] | None = None
        self._incoming: dict[uuid.UUID, _Incoming] = {}
        #: incoming transfers whose connection broke, by id, waiting to go on
        self._suspended: dict[uuid.UUID, _Suspended] = {}
        #: transfers received lately, by id: (sender, digest, until when), in
        #: case a sender that missed the verdict offers one again
        self._completed: dict[uuid.UUID, tuple[uuid.UUID, bytes, float]] = {}
        #: resume keys of the files being received, so one is never written twice
        self._receiving: set[str] = set()
        #: bytes still to come for the transfers under way (kept free for them)
        self._reserved = 0

    # ------------------------------------------------------------ application

    def answer(self, transfer_id: uuid.UUID, accept: bool, reason: str = "") -> None:
        """Accept or reject an offer that waits for the application.

        Raises:
            ValueError: no offer with that id waits for an answer.
        """
        incoming = self._incoming.get(transfer_id)
        if (
            incoming is None
            or incoming.answered.is_set()
            or incoming.transfer.phase is not Phase.OFFERED
        ):
            raise ValueError(f"no offer {transfer_id} waits for an answer")
        incoming.accepted, incoming.reason = accept, reason
        incoming.answered.set()

    def cancel(self, transfer_id: uuid.UUID, reason: str) -> None:
        """Cancel a transfer in progress, either way; the peer is told *reason*.

        Raises:
            ValueError: no transfer with that id is in progress here.
        """
        incoming = self._incoming.get(transfer_id)
        if incoming is not None and not incoming.transfer.done:
            if not incoming.answered.is_set():
                self.answer(transfer_id, False, reason)
                return
            self._cancel(incoming.conn, incoming.transfer, reason)
            incoming.scope.cancel()
            return
        entry = self._outgoing.get(transfer_id)
        if entry is None or entry.transfer.done:
            raise ValueError(f"no transfer {transfer_id} is in progress")
        self._cancel(entry.conn, entry.transfer, reason)
        entry.scope.cancel()

    async def send(self, conn: PeerConnection, path: pathlib.Path) -> Transfer:
        """Send the file at *path* over *conn*; return once the receiver verified it.

        Raises:
            TransferError: the file cannot be read, the receiver refused it or
                could not verify it, or the connection ended first.
        """
        try:
            file = await trio.to_thread.run_sync(_open_regular, path)
        except OSError as exc:
            raise TransferError(f"cannot read {path}: {_describe(exc)}") from None
        try:
            info = os.fstat(file.fileno())
            chunk_size = min(self.config.chunk_size, conn.max_body - CHUNK_OVERHEAD)
            transfer = OutgoingTransfer(
                uuid.uuid4(), path.name, info.st_size, chunk_size, info.st_mtime_ns
            )
            record = Transfer(
                transfer.id, conn.peer_id, path.name, info.st_size, Direction.SEND, path
            )
            return await self._send(conn, transfer, record, file)
        finally:
            file.close()

    async def _send(
        self,
        conn: PeerConnection,
        transfer: OutgoingTransfer,
        record: Transfer,
        file: io.BufferedReader,
    ) -> Transfer:
        entry = _Outgoing(conn, transfer)
        self._outgoing[transfer.id] = entry
        state = _Sending(record)
        try:
            with entry.scope:
                while True:
                    try:
                        return await self._send_steps(entry, state, file)
                    except _Interrupted as exc:
                        # Its session may carry on: the same transfer goes on over
                        # the new connection, from what the receiver holds.
                        conn.transfers.end(transfer.id)
                        new = None if self.resumed is None else await self.resumed(conn)
                        if new is None:
                            raise TransferError(exc.reason) from None
                        logger.info("sending %s to %s goes on", record.filename, new.peer.name)
                        conn = entry.conn = new
                        chunk_size = min(transfer.chunk_size, new.max_body - CHUNK_OVERHEAD)
                        transfer = entry.transfer = OutgoingTransfer(
                            transfer.id, transfer.name, transfer.size, chunk_size, transfer.mtime_ns
                        )
                        entry.seen = (Phase.OFFERED, -1)
            # cancel_transfer (the transfer has failed with its reason)
            raise TransferError(transfer.failure or "the transfer was cancelled")
        except TransferError as exc:
            self._cancel(conn, transfer, exc.reason)
            self._counters["transfers_failed"] += 1
            logger.info("sending %s to %s failed: %s", record.filename, conn.peer.name, exc)
            await self._send_event(FileTransferFailed(record, exc))
            raise
        except BaseException:  # cancelled: tell the peer, report without waiting
            self._cancel(conn, transfer, "the sender cancelled the transfer")
            self._counters["transfers_failed"] += 1
            self._offer_event(
                FileTransferFailed(record, TransferError("the transfer was cancelled"))
            )
            raise
        finally:
            del self._outgoing[transfer.id]
            conn.transfers.end(transfer.id)

    async def _send_steps(
        self, entry: _Outgoing, state: _Sending, file: io.BufferedReader
    ) -> Transfer:
        conn, transfer = entry.conn, entry.transfer
        await self._send_frame(conn, conn.transfers.add(transfer))
        while transfer.phase is Phase.OFFERED:
            await self._wait(entry)
        self._check(transfer)
        if state.progress is None:  # (not when it goes on over a new connection)
            state.record = attrs.evolve(state.record, offset=transfer.start)
            await self._send_event(FileTransferStarted(state.record))
            state.progress = _Progress(self._offer_event, state.record)
        record, progress = state.record, state.progress
        hasher = blake3.blake3()
        if transfer.start:
            await trio.to_thread.run_sync(hash_range, file, transfer.start, hasher)
        await self._send_chunks(entry, file, hasher, progress)
        if await trio.to_thread.run_sync(os.pread, file.fileno(), 1, transfer.size):
            raise TransferError("the file became longer while it was sent")
        self._check(transfer)  # (cancelled meanwhile?)
        await self._send_frame(conn, transfer.end(hasher.digest()))
        while transfer.phase is Phase.ENDING:
            await self._wait(entry)
            progress.update(transfer.confirmed)
        self._check(transfer)
        final = progress.final()
        if final is not None:
            await self._send_event(final)
        await self._send_event(FileTransferCompleted(record))
        self._counters["transfers_completed"] += 1
        logger.info("sent %s to %s (%d bytes)", record.filename, conn.peer.name, record.size)
        return record

    async def _send_chunks(
        self, entry: _Outgoing, file: io.BufferedReader, hasher: blake3.blake3, progress: _Progress
    ) -> None:
        """Read, hash and send every chunk; return once the last one is written.

        A worker thread reads (and hashes) a batch of chunks into one of two
        sets of buffers while the connection writes the other set: a call to a
        worker thread costs about as much as moving a chunk, and the chunks
        are framed where they were read, never copied.
        """
        conn, transfer = entry.conn, entry.transfer
        room = CHUNK_HEAD_ROOM + min(transfer.chunk_size, transfer.size) + CHUNK_TAIL_ROOM
        sets: tuple[list[bytearray], list[bytearray]] = ([], [])
        written: list[list[trio.Event]] = [[], []]
        turn = 0
        while not transfer.all_sent:
            self._check(transfer)
            steps = transfer.next_chunks(SEND_BATCH)
            if not steps:  # the receiver must confirm more first
                await self._wait(entry)
                progress.update(transfer.confirmed)
                continue
            buffers = sets[turn]
            await self._bounded(conn, self._all_written, written[turn])  # free to reuse
            buffers.extend(bytearray(room) for _ in range(len(steps) - len(buffers)))
            lengths = [length for _, length in steps]
            await trio.to_thread.run_sync(
                _read_and_hash, file.fileno(), steps[0][0], buffers, lengths, hasher
            )
            events = written[turn] = []
            for buffer, (offset, length) in zip(buffers, steps, strict=False):
                self._check(transfer)
                transfer.take(offset, length)
                frame = frame_chunk_in_place(buffer, transfer.id, offset, length)
                events.append(await self._bounded(conn, conn.send_chunk, frame))
                self._counters["file_bytes_sent"] += length
            progress.update(transfer.confirmed)
            turn ^= 1
        for events in written:  # the end must follow the last chunk
            await self._bounded(conn, self._all_written, events)

    @staticmethod
    async def _all_written(events: list[trio.Event]) -> None:
        for event in events:
            await event.wait()

    async def _send_frame(self, conn: PeerConnection, frame: FileFrame) -> None:
        """Queue *frame*, waiting (a bounded time) while the peer does not read."""
        await self._bounded(conn, conn.send_frame, frame)

    async def _bounded(
        self, conn: PeerConnection, wait: Callable[[_T], Awaitable[_R]], argument: _T
    ) -> _R:
        """``await wait(argument)``, a wait on the peer's reading, for a bounded time."""
        idle = self.config.transfer_idle_timeout
        try:
            with trio.move_on_after(idle):
                return await wait(argument)
        except PeerNotConnectedError:
            raise _connection_ended(conn) from None
        raise TransferError(f"the receiver read nothing for {idle:g} s")

    @staticmethod
    def _check(transfer: OutgoingTransfer) -> None:
        if transfer.phase is Phase.FAILED:
            raise TransferError(transfer.failure or "the transfer failed")

    async def _wait(self, entry: _Outgoing) -> None:
        """Wait for the receiver's next frame (or the end of the connection).

        Fails once the receiver has made no progress (no phase change, no higher
        confirmation) for ``transfer_idle_timeout``: frames that repeat what it
        said before do not keep a transfer alive.
        """
        conn, transfer = entry.conn, entry.transfer
        state = (transfer.phase, transfer.confirmed)
        if state != entry.seen:
            entry.seen, entry.since = state, trio.current_time()
        idle = self.config.transfer_idle_timeout
        if transfer.phase is Phase.OFFERED:
            idle += self.config.offer_timeout  # the receiver's user may be deciding
        if conn.reason is None:
            with trio.move_on_at(entry.since + idle) as scope:
                await entry.lot.park()
            if scope.cancelled_caught:
                raise TransferError(f"the receiver made no progress for {idle:g} s")
        if conn.reason is not None and not transfer.done:
            raise _connection_ended(conn)

    @staticmethod
    def _cancel(
        conn: PeerConnection, transfer: OutgoingTransfer | IncomingTransfer, reason: str
    ) -> None:
        frame = transfer.cancel(reason)
        if frame is not None and conn.is_open:
            with contextlib.suppress(PeerNotConnectedError):
                conn.send_frame_nowait(frame)

    # ------------------------------------------------------------ connections

    async def on_frame(
        self,
        conn: PeerConnection,
        transfer: OutgoingTransfer | IncomingTransfer,
        frame: FileFrame,
    ) -> None:
        """A file frame from the peer, already applied to *transfer*."""
        if isinstance(transfer, OutgoingTransfer):
            entry = self._outgoing.get(transfer.id)
            if entry is not None:
                entry.lot.unpark_all()
            return
        if isinstance(frame, FileOffer):
            await self._offered(conn, transfer)
            return
        incoming = self._incoming.get(transfer.id)
        if incoming is None or incoming.conn is not conn:
            return  # refused or ended here (its frames may still be on their way)
        if isinstance(frame, FileChunk | FileEnd):
            # (if its task has ended, it has said so: the frame is dropped)
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await incoming.chunks.send(frame)
        else:  # the peer cancelled
            incoming.scope.cancel()

    def connection_ended(self, conn: PeerConnection) -> None:
        """*conn* has ended: its transfers fail (incoming partials are kept to resume)."""
        for entry in list(self._outgoing.values()):
            if entry.conn is conn:
                entry.lot.unpark_all()
        for incoming in list(self._incoming.values()):
            if incoming.conn is conn:
                incoming.scope.cancel()

    async def _offered(self, conn: PeerConnection, transfer: IncomingTransfer) -> None:
        record = Transfer(
            transfer.id, conn.peer_id, transfer.name, transfer.size, Direction.RECEIVE
        )
        earlier = self._incoming.get(transfer.id)
        if earlier is not None and earlier.conn is not conn and earlier.conn.reason is not None:
            # (the same transfer, whose connection broke a moment ago: let its
            # task end, and suspend it, first)
            with trio.move_on_after(self.config.transfer_idle_timeout):
                await earlier.done.wait()
        completed = self._completed.get(transfer.id)
        if (
            completed is not None
            and completed[0] == conn.peer_id
            and completed[2] > trio.current_time()
        ):
            send, receive = trio.open_memory_channel[FileChunk | FileEnd](CHUNK_QUEUE)
            incoming = _Incoming(conn, transfer, record, send, receive)
            self._incoming[transfer.id] = incoming
            self._nursery.start_soon(self._confirm_again, incoming, completed[1])
            return
        suspended = self._suspended.get(transfer.id)
        continues = None
        if suspended is not None and suspended.peer_id == conn.peer_id:
            if (suspended.record.filename, suspended.record.size, suspended.mtime_ns) == (
                transfer.name,
                transfer.size,
                transfer.mtime_ns,
            ):
                continues = suspended  # (it leaves the suspended ones below)
                record = continues.record
            else:  # (accepted as that file: it may not become another one)
                raise ProtocolError(
                    f"offer of {transfer.name!r} continues transfer {transfer.id}, "
                    f"which was of {suspended.record.filename!r}"
                )
        refusal = self._refusal(conn, transfer)
        if refusal and continues is not None:
            del self._suspended[transfer.id]
        if refusal:
            refused.info("refused %s from %s: %s", transfer.name, conn.peer.name, refusal)
            # Awaited: a peer that offers without reading the answers is held back,
            # and one that reads nothing for long is a peer to drop.
            idle = self.config.transfer_idle_timeout
            with contextlib.suppress(PeerNotConnectedError), trio.move_on_after(idle) as scope:
                await conn.send_frame(transfer.reject(refusal))
            if scope.cancelled_caught:
                raise ProtocolError(f"the peer read none of its refusals for {idle:g} s")
            conn.transfers.end(transfer.id)
            self._counters["transfers_failed"] += 1
            await self._send_event(FileTransferFailed(record, TransferError(f"refused: {refusal}")))
            return
        send, receive = trio.open_memory_channel[FileChunk | FileEnd](CHUNK_QUEUE)
        key = resume_key(conn.peer_id, transfer.name, transfer.size, transfer.mtime_ns)
        incoming = _Incoming(conn, transfer, record, send, receive, continues=continues, key=key)
        self._incoming[transfer.id] = incoming
        if continues is not None:  # (in use all along: in the incoming ones now)
            del self._suspended[transfer.id]
        if self.config.auto_accept_files or continues is not None:  # (accepted before)
            incoming.accepted = True
            incoming.answered.set()
        self._nursery.start_soon(self._receive, incoming)
        if not incoming.answered.is_set():
            await self._send_event(FileOffered(record))

    def _refusal(self, conn: PeerConnection, transfer: IncomingTransfer) -> str:
        config = self.config
        if config.max_file_size is not None and transfer.size > config.max_file_size:
            return f"the file is larger than this node accepts ({config.max_file_size} bytes)"
        if transfer.id in self._incoming or transfer.id in self._outgoing:
            return "this transfer id is in use here"
        limit = config.max_incoming_transfers
        open_here = sum(1 for i in self._incoming.values() if i.conn is conn)
        if open_here >= limit:
            return f"too many transfers at once (at most {limit})"
        total = TOTAL_INCOMING_FACTOR * limit
        if len(self._incoming) >= total:
            return f"too many transfers from all peers at once (at most {total})"
        return ""

    def _finish_refused(
        self, conn: PeerConnection, transfer: IncomingTransfer, reason: str
    ) -> None:
        if transfer.phase is Phase.OFFERED:  # (not if the peer cancelled meanwhile)
            with contextlib.suppress(PeerNotConnectedError):
                conn.send_frame_nowait(transfer.reject(reason))
        conn.transfers.end(transfer.id)

    async def _expire(self, transfer_id: uuid.UUID, suspended: _Suspended) -> None:
        """Fail a suspended incoming transfer not offered again in time."""
        await trio.sleep(self.config.resume_timeout)
        if self._suspended.get(transfer_id) is suspended:
            del self._suspended[transfer_id]
            self._counters["transfers_failed"] += 1
            await self._send_event(FileTransferFailed(suspended.record, suspended.failure))

    def _remember_completed(
        self, transfer_id: uuid.UUID, peer_id: uuid.UUID, digest: bytes
    ) -> None:
        """Keep a saved transfer's digest for resume_timeout (at most COMPLETED_KEPT)."""
        now = trio.current_time()
        completed = self._completed
        while completed and (
            len(completed) >= COMPLETED_KEPT or next(iter(completed.values()))[2] <= now
        ):
            del completed[next(iter(completed))]  # (the oldest)
        completed[transfer_id] = (peer_id, digest, now + self.config.resume_timeout)

    async def _confirm_again(self, incoming: _Incoming, digest: bytes) -> None:
        """Answer again the offer of a file saved already.

        Its sender missed the verdict (the connection broke) and offers it
        again: this node holds every byte, so it accepts at the end and checks
        the digest against the one it saved.
        """
        conn, transfer = incoming.conn, incoming.transfer
        try:
            if transfer.phase is not Phase.OFFERED:
                return  # the peer cancelled it already (in the same read as the offer)
            with contextlib.suppress(PeerNotConnectedError):
                conn.send_frame_nowait(transfer.accept(transfer.size))
                with trio.move_on_after(self.config.transfer_idle_timeout):
                    frame = await incoming.arrivals.receive()
                    if isinstance(frame, FileEnd) and not _ended(transfer):
                        conn.send_frame_nowait(transfer.verdict(digest))
        finally:
            incoming.chunks.close()
            if self._incoming.get(transfer.id) is incoming:
                del self._incoming[transfer.id]
            conn.transfers.end(transfer.id)
            incoming.done.set()

    def abandon_suspended(self) -> None:
        """Fail every suspended incoming transfer now (the messenger is closing)."""
        for suspended in self._suspended.values():
            self._counters["transfers_failed"] += 1
            self._offer_event(FileTransferFailed(suspended.record, suspended.failure))
        self._suspended.clear()

    async def _receive(self, incoming: _Incoming) -> None:
        """The task of one incoming transfer, from the offer to the verdict."""
        try:
            await self._receive_steps(incoming)
        finally:
            incoming.done.set()

    async def _receive_steps(self, incoming: _Incoming) -> None:
        conn, transfer = incoming.conn, incoming.transfer
        work = _Receiving(incoming.key)
        failure: TransferError | None = None
        suspended = None
        try:
            failure = await self._run_receive(incoming, work)
            suspended = self._suspension(incoming, work, failure)
        except BaseException:  # cancelled with the messenger
            self._counters["transfers_failed"] += 1
            error = TransferError("the messenger was closed")
            self._offer_event(FileTransferFailed(incoming.record, error))
            raise
        finally:
            partial = work.partial
            if partial is not None:
                # an interrupted transfer keeps its partial, to resume (if it holds any)
                if work.keep and transfer.received > 0:
                    # (the live set: a transfer that claims a partial meanwhile
                    # keeps it; the check is made just before each removal)
                    in_use = _PartialsInUse(self._receiving, self._suspended, self._incoming)
                    close: Callable[[], int | None] = functools.partial(
                        self.folder.keep, partial, in_use
                    )
                else:
                    close = functools.partial(self.folder.discard, partial)
                with trio.CancelScope(shield=True):
                    removed = await trio.to_thread.run_sync(close)
                if removed:
                    logger.info("removed the %d oldest partial files (too many kept)", removed)
            if suspended is not None:  # (in use all along: suspended before it leaves)
                self._suspended[transfer.id] = suspended
            if work.claimed:
                self._receiving.discard(work.key)
            self._reserved -= work.reserved
            incoming.chunks.close()
            if self._incoming.get(transfer.id) is incoming:
                del self._incoming[transfer.id]
            conn.transfers.end(transfer.id)
        if suspended is not None:
            self._nursery.start_soon(self._expire, transfer.id, suspended)
            logger.info("receiving %s from %s waits: %s", transfer.name, conn.peer.name, failure)
            return
        if failure is not None:
            self._counters["transfers_failed"] += 1
            logger.info("receiving %s from %s failed: %s", transfer.name, conn.peer.name, failure)
            await self._send_event(FileTransferFailed(incoming.record, failure))
            return
        # Saved and verified (reported here, out of reach of a late cancel).
        if work.digest is not None and self.config.resume_timeout > 0:
            # (a sender that did not get the verdict offers it again, see _offered)
            self._remember_completed(transfer.id, conn.peer_id, work.digest)
        record = incoming.record
        self._counters["transfers_completed"] += 1
        logger.info("received %s from %s as %s", transfer.name, conn.peer.name, record.path)
        if work.progress is not None and (final := work.progress.final()) is not None:
            await self._send_event(final)
        await self._send_event(FileTransferCompleted(record))

    def _suspension(
        self, incoming: _Incoming, work: _Receiving, failure: TransferError | None
    ) -> _Suspended | None:
        """How a transfer that ended with *failure* waits to be offered again, if it may.

        (One whose connection broke, while fewer than the limit wait.)
        """
        limit = TOTAL_INCOMING_FACTOR * self.config.max_incoming_transfers
        if (
            not isinstance(failure, _Interrupted)
            or self.config.resume_timeout <= 0
            or len(self._suspended) >= limit
        ):
            return None
        transfer = incoming.transfer
        return _Suspended(
            incoming.conn.peer_id,
            incoming.record,
            work.progress,
            failure,
            transfer.mtime_ns,
            work.key,
        )

    async def _run_receive(self, incoming: _Incoming, work: _Receiving) -> TransferError | None:
        """Receive the file; return why it failed, or None once it is saved."""
        conn, transfer = incoming.conn, incoming.transfer
        with incoming.scope:
            try:
                return await self._accept_and_receive(incoming, work)
            except TransferError as exc:
                self._cancel(conn, transfer, exc.reason)
                return exc
            except PeerNotConnectedError:
                return _connection_ended(conn)
        # the scope was cancelled: the peer cancelled, or the connection ended
        if transfer.phase is Phase.VERIFIED or work.digest is not None:
            return None  # ...once the file was saved: it stands
        if transfer.failure is not None:
            return TransferError(transfer.failure)
        return _connection_ended(conn)

    async def _accept_and_receive(
        self, incoming: _Incoming, work: _Receiving
    ) -> TransferError | None:
        conn, transfer = incoming.conn, incoming.transfer
        with trio.move_on_after(self.config.offer_timeout):
            await incoming.answered.wait()
        if not incoming.accepted:
            reason = incoming.reason or (
                "rejected by the application"
                if incoming.answered.is_set()
                else "the offer was not answered in time"
            )
            self._finish_refused(conn, transfer, reason)
            return TransferError(f"rejected: {reason}")
        if work.key in self._receiving:
            self._finish_refused(conn, transfer, "this file is already being received")
            return TransferError("the same file is already being received")
        self._receiving.add(work.key)
        work.claimed = True
        describes: dict[str, object] = {
            "sender": str(conn.peer_id),
            "address": conn.peer.address,
            "name": transfer.name,
            "size": transfer.size,
            "mtime_ns": transfer.mtime_ns,
        }
        hasher = blake3.blake3()
        # Promise the space before looking (offers that come together must not
        # all count the same free space); what the partial already holds is
        # given back below.
        others = self._reserved
        work.reserved = transfer.size
        self._reserved += work.reserved
        try:
            work.partial = partial = await trio.to_thread.run_sync(
                self._prepare, work.key, describes, transfer.size, others, hasher
            )
        except OSError as exc:
            reason = f"cannot save the file: {_describe(exc)}"
            refused.warning("refused %s from %s: %s", transfer.name, conn.peer.name, reason)
            self._finish_refused(conn, transfer, reason)
            return TransferError(reason)
        if _ended(transfer):  # the peer cancelled while the partial was prepared
            return TransferError(transfer.failure or "cancelled by the peer")
        work.reserved -= partial.offset
        self._reserved -= partial.offset
        conn.send_frame_nowait(transfer.accept(partial.offset))
        continues = incoming.continues
        if continues is None:
            record = incoming.record = attrs.evolve(incoming.record, offset=partial.offset)
            await self._send_event(FileTransferStarted(record))
            progress = work.progress = _Progress(self._offer_event, record)
        else:  # it goes on after a broken connection: told once already
            record = incoming.record
            progress = work.progress = continues.progress or _Progress(self._offer_event, record)
        written = partial.offset
        fd = partial.file.fileno()  # (written at explicit offsets: its position is unused)
        idle = self.config.transfer_idle_timeout
        while True:
            first: FileChunk | FileEnd | None = None
            with trio.move_on_after(idle):
                first = await incoming.arrivals.receive()
            if first is None:
                raise TransferError(f"the sender sent nothing for {idle:g} s")
            # Write every chunk that is already waiting in one worker-thread call.
            batch = [first]
            while isinstance(batch[-1], FileChunk) and len(batch) < CHUNK_QUEUE:
                try:
                    batch.append(incoming.arrivals.receive_nowait())
                except trio.WouldBlock:
                    break
            frame = batch[-1]
            chunks = [f.data for f in batch if isinstance(f, FileChunk)]
            if chunks:
                try:
                    await trio.to_thread.run_sync(
                        _write_and_hash, fd, written, chunks, hasher, conn.recycle
                    )
                except OSError as exc:
                    raise TransferError(f"cannot write the file: {_describe(exc)}") from None
                size = sum(map(len, chunks))
                written += size
                self._counters["file_bytes_received"] += size
                if _ended(transfer):  # the peer cancelled meanwhile
                    return TransferError(transfer.failure or "cancelled by the peer")
                confirm = transfer.written(written)
                if confirm is not None:
                    conn.send_frame_nowait(confirm)
                progress.update(written)
            if isinstance(frame, FileChunk):
                continue
            # the end: every byte is in
            digest = hasher.digest()
            problem = ""
            saved = False
            if digest == transfer.digest:
                try:
                    path = await trio.to_thread.run_sync(self.folder.finish, partial, transfer.name)
                except OSError as exc:
                    problem = f"cannot save the file: {_describe(exc)}"
                else:
                    work.partial = None  # it is the saved file now
                    work.digest = digest
                    saved = True
                    record = incoming.record = attrs.evolve(record, path=path)
            if _ended(transfer) and not saved:  # the peer cancelled meanwhile
                return TransferError(transfer.failure or "cancelled by the peer")
            if _ended(transfer):
                # Cancelled after its end: the file is whole and verified all the
                # same; keep it, and say so here (the peer no longer listens).
                logger.info("%s was cancelled by its sender after it was complete", record.path)
            else:
                verdict = transfer.verdict(digest, problem)
                # (a connection that ended meanwhile changes nothing here: a
                # saved file stands, and its sender, if the session carries on,
                # offers it again and is answered from what was kept)
                with contextlib.suppress(PeerNotConnectedError):
                    conn.send_frame_nowait(verdict)
                if not verdict.verified:
                    work.keep = False  # corrupt or unsavable: start over next time
                    return TransferError(verdict.reason)
            return None  # saved: _receive reports it

    def _prepare(
        self,
        key: str,
        describes: dict[str, object],
        size: int,
        reserved: int,
        hasher: blake3.blake3,
    ) -> Partial:
        """Open the partial (resuming what it holds) and hash what it holds.

        *reserved* bytes are promised to the transfers already under way.
        """
        self.folder.check_room(size, self.folder.held(key, describes, size), reserved)
        partial = self.folder.open_partial(key, describes, size)
        try:
            hash_range(partial.file, partial.offset, hasher)
        except BaseException:
            partial.file.close()
            raise
        return partial

    async def sweep_loop(self) -> None:
        """Remove unclaimed partial files now and then."""
        while True:
            try:
                removed = await trio.to_thread.run_sync(self.folder.sweep, self.config.partial_ttl)
            except OSError as exc:  # an unusable folder is reported when a file comes
                logger.warning("cannot look for old partial files: %s", _describe(exc))
            else:
                if removed:
                    logger.info("removed %d unclaimed partial files", removed)
            await trio.sleep(SWEEP_INTERVAL)
