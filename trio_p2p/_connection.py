"""One peer connection on any :class:`trio.abc.Stream`: handshake, reader, writer, heartbeat.

Nothing here opens or accepts sockets (the messenger does), so the same code
runs on a TCP stream, an in-memory stream in the tests, or an encrypted stream
wrapping either.

Per connection there is one reader task (decodes frames, delivers messages to
the event channel, acknowledges them), one writer task (drains everything
queued and writes it in one call) and one heartbeat task (pings an idle
connection, closes a silent one).
"""

from __future__ import annotations

import collections
import logging
import time
import typing
import uuid
from collections.abc import Awaitable, Callable
from typing import Protocol

import attrs
import trio

from ._codec import FrameDecoder, MessageIds, chunk_frame_parts, encode_data, encode_frame
from ._errors import DeliveryError, HandshakeError, PeerNotConnectedError, ProtocolError
from ._events import Event, MessageReceived, PeerInfo
from ._log import RateLimitedWarnings, get_logger
from ._messages import (
    PROTOCOL_VERSION,
    Ack,
    Content,
    Data,
    FileChunk,
    FileFrame,
    Frame,
    Goodbye,
    GoodbyeCode,
    Hello,
    Message,
    Ping,
    Pong,
)
from ._session import Session
from ._transfer import IncomingTransfer, OutgoingTransfer, Transfers

__all__ = [
    "HELLO_LIMIT",
    "FileHandler",
    "LocalNode",
    "PeerConnection",
    "ReceiveInto",
    "ReceiveNowait",
    "SendAll",
    "WriteNowait",
    "number_message",
    "receive_hello",
    "send_frame",
]

logger = get_logger("connection")
bad_input = RateLimitedWarnings(logger)

#: Writes what it can of its argument now and returns how many bytes it wrote.
WriteNowait = Callable[[bytearray], int]
#: Receives into its argument and returns how many bytes it wrote there.
ReceiveInto = Callable[[memoryview], Awaitable[int]]
#: Receives into its argument what has arrived; raises BlockingIOError if nothing.
ReceiveNowait = Callable[[memoryview], int]
#: Writes all of its argument, waiting as needed.
SendAll = Callable[[bytes | bytearray | memoryview], Awaitable[None]]

#: The classes of FileFrame, for isinstance.
_FILE_FRAMES = typing.get_args(FileFrame)


class FileHandler(Protocol):
    """What runs the file transfers of a connection (the messenger's file service)."""

    async def on_frame(
        self,
        conn: PeerConnection,
        transfer: OutgoingTransfer | IncomingTransfer,
        frame: FileFrame,
    ) -> None:
        """*frame* from the peer has been applied to *transfer*; act on it.

        Called by the connection's reader: waiting here holds the reader back.
        """


#: Frame limit while waiting for a hello (an unauthenticated peer may not make
#: this node buffer more than this before the handshake).
HELLO_LIMIT = 4096
#: Bytes asked of the stream per receive. (Above 128 KiB each receive costs an
#: allocation large enough to be mapped and unmapped: 12 µs here, per receive.)
RECEIVE_SIZE = 64 * 1024
#: Bytes asked of the stream at most, to finish a large frame.
MAX_RECEIVE_SIZE = 1024 * 1024 + 4096
#: Seconds the reader may go on receiving without waiting (while the rest of a
#: large frame is there to take) before it lets the other tasks run: a peer
#: whose data keeps coming cannot hold the event loop (say, with a flood of
#: tiny encrypted records, each costing work to open).
NOWAIT_SPAN = 0.005
#: Unwritten bytes queued for a peer beyond which ``send_nowait`` raises
#: ``WouldBlock`` and ``send`` waits for the writer: memory stays bounded whatever
#: the messages' size, and a producer that sends without checkpoints lets the
#: writer (and so the peer) work in step with it instead of after a full window.
QUEUE_LIMIT = 64 * 1024
#: Unwritten bytes, beyond a largest frame, at which a peer is taken to read
#: nothing while it keeps asking for answers that are queued without waiting
#: (a file transfer's accepts, refusals, confirmations): the connection ends
#: instead of growing its queue.
STALLED_QUEUE = 1024 * 1024
#: A connection that has written nothing for this long is idle: ``send`` writes
#: directly (see ``write_nowait``), which saves request/response traffic a task
#: switch. On a connection that wrote more recently a producer is streaming: the
#: writer writes, and lets the producer add more first (a loop of ``await send``
#: wrote 1.5 messages per write without this, 65% more writes than messages).
DIRECT_WRITE_IDLE = 50e-6
#: The writer stops waiting for more to coalesce once this much is queued...
COALESCE_LIMIT = 256 * 1024
#: ...or once it has waited this long (seconds): the first message of a batch is
#: never held longer, however busy the other tasks keep the scheduler.
COALESCE_TIME = 1e-3
#: While the application holds the reader back, acknowledge every this many messages.
ACK_WHILE_BLOCKED = 64
#: Characters of message text placed in the event channel, by all of a
#: messenger's connections, beyond which a reader waits until the application
#: has taken every event: the channel's bound is a number of events, and 1024
#: messages of the largest frame would hold 2 GiB.
EVENT_TEXT_LIMIT = 32 * 1024 * 1024
#: How often a reader held back by that limit looks whether the channel emptied.
EVENT_TEXT_POLL = 0.002
#: A reader held back by a full event channel of at least this capacity, once
#: it could deliver again, waits for the application to take about half of the
#: channel (estimated at CATCH_UP_PER_EVENT seconds an event, at most
#: CATCH_UP_LIMIT) before delivering more, so it is not woken once per event.
CATCH_UP_MIN_BUFFER = 64
CATCH_UP_PER_EVENT = 0.5e-6
CATCH_UP_LIMIT = 0.001
#: How long a deliberate close waits for the goodbye to be written.
CLOSE_TIMEOUT = 1.0
#: File chunks queued for the writer at most (see ``send_chunk``): two batches
#: of a sender's reads.
CHUNK_SLOTS = 8


@attrs.frozen
class LocalNode:
    """This node's identity, as its hellos state it.

    Attributes:
        node_id: this node's id.
        name: this node's display name.
        nonce: the session nonce, random for each messenger run.
        port: the TCP port this node listens on.
        max_frame_size: largest frame this node accepts.
    """

    node_id: uuid.UUID
    name: str
    nonce: bytes
    port: int
    max_frame_size: int

    def hello(self, resume: Session | None = None) -> Hello:
        """The hello this node sends; with *resume*, offering to carry that session on."""
        return Hello(
            version=PROTOCOL_VERSION,
            node_id=self.node_id,
            session=self.nonce,
            name=self.name,
            port=self.port,
            max_frame_size=self.max_frame_size,
            resumes=None if resume is None else resume.peer_nonce,
            received=0 if resume is None else resume.last_received,
        )


def number_message(
    session: Session, ids: MessageIds, local: LocalNode, content: Content, max_body: int
) -> tuple[Message, bytes]:
    """A new message from *local*, numbered in *session*, and its Data frame.

    Raises:
        ValueError: its frame is larger than *max_body* (nothing is numbered).
    """
    message = Message(ids.new(), local.node_id, local.name, time.time(), content)
    frame = encode_data(session.last_sent + 1, message)
    if len(frame) - 4 > max_body:
        raise ValueError(f"message of {len(frame) - 4} bytes exceeds the frame limit of {max_body}")
    session.number(message)
    return message, frame


class _Ended(Exception):
    """Internal: the connection ends, for the reason given.

    *resumable* if it broke (no goodbye, no decision of either side): its
    session may carry on over a new connection.
    """

    def __init__(self, reason: str, *, resumable: bool = False) -> None:
        super().__init__(reason)
        self.resumable = resumable


class EventText:
    """Characters of message text placed in an event channel since it was last empty."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0


async def send_frame(stream: trio.abc.Stream, frame: Frame) -> None:
    """Write one frame directly (only before the writer task runs)."""
    await stream.send_all(encode_frame(frame))


async def receive_hello(
    stream: trio.abc.Stream, decoder: FrameDecoder
) -> tuple[Hello, list[Frame]]:
    """Read until the first frame arrives; it must be a hello.

    Returns:
        The hello, and any frames that arrived right behind it.

    Raises:
        HandshakeError: the peer refused (sent a goodbye) or closed the stream.
        ProtocolError: the first frame is not a hello, or is malformed.
    """
    while True:
        data = await stream.receive_some(RECEIVE_SIZE)
        if not data:
            raise HandshakeError("the peer closed the connection during the handshake")
        frames = decoder.feed(data)
        if frames:
            break
    first, rest = frames[0], frames[1:]
    if isinstance(first, Goodbye):
        raise HandshakeError(f"refused by the peer: {first.reason}", code=first.code)
    if not isinstance(first, Hello):
        raise ProtocolError(f"expected a hello, got {type(first).__name__}")
    return first, rest


class PeerConnection:
    """An established connection to one peer and its session.

    Created once the hellos have been exchanged; :meth:`run` serves it until it
    ends and returns why.

    Args:
        stream: the byte stream to the peer.
        local: this node.
        hello: the peer's hello.
        address: the peer's address (for :class:`PeerInfo` and logs).
        dialer: whether this node dialled the connection.
        decoder: the decoder the handshake used (it may hold more bytes).
        pending: frames that arrived behind the peer's hello.
        events: where messages are delivered.
        send_window: unacknowledged messages allowed.
        heartbeat_interval: an idle connection pings this often.
        heartbeat_timeout: silence after which the connection is closed.
        write_nowait: writes what it can of the given bytes to the same stream
            at once, without waiting, and returns how many it wrote (raises
            :exc:`BlockingIOError` if none). When given, :meth:`send` writes
            directly while the writer task is idle: one task switch less per
            message on an idle connection.
        receive_into: receives from the same stream into the given buffer and
            returns how many bytes it wrote there (0 at the end of the stream).
            When given, the reader receives straight into the frame decoder's
            buffer, which is reused, instead of into a new bytes object each time.
        receive_nowait: like *receive_into*, but raises :exc:`BlockingIOError`
            instead of waiting. When given with *receive_into*, the reader uses
            it for the rest of a large frame it has begun (a file chunk comes in
            several receives), without a task switch for each.
        send_all: writes all the given bytes to the same stream (by default the
            stream's ``send_all``); one that switches tasks only when it must
            wait saves many switches per file chunk.
        session: a session with this peer process to carry on (by default a new
            one); it must belong to the hello's node id and nonce. See
            :meth:`resume`.
        output_pending: tells whether *write_nowait* left bytes of its own
            behind (an encrypting stream writes whole records: what the socket
            did not take waits there, and *send_all*, even of nothing, writes it
            first). The writer task then writes them.
        event_text: the count of message text placed in *events*, shared by
            the connections that place events there (a new one by default).

    Raises:
        ValueError: *session* belongs to another peer or process.
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        local: LocalNode,
        hello: Hello,
        address: str,
        dialer: bool,
        decoder: FrameDecoder,
        pending: list[Frame],
        events: trio.MemorySendChannel[Event],
        send_window: int,
        heartbeat_interval: float,
        heartbeat_timeout: float,
        write_nowait: WriteNowait | None = None,
        receive_into: ReceiveInto | None = None,
        receive_nowait: ReceiveNowait | None = None,
        send_all: SendAll | None = None,
        session: Session | None = None,
        output_pending: Callable[[], bool] | None = None,
        event_text: EventText | None = None,
    ) -> None:
        self.stream = stream
        self._event_text = event_text if event_text is not None else EventText()
        self._output_pending = output_pending
        self._write_nowait = write_nowait
        self._receive_into = receive_into
        self._receive_nowait = receive_nowait if receive_into is not None else None
        self._send_all: SendAll = send_all if send_all is not None else stream.send_all
        #: True while the writer task is inside ``send_all``
        self._writer_busy = False
        self.local = local
        self.hello = hello
        self.dialer = dialer
        self.peer = PeerInfo(
            id=hello.node_id,
            name=hello.name,
            address=address,
            port=hello.port,
            last_seen=trio.current_time(),
        )
        if session is None:
            session = Session(hello.node_id, hello.session, send_window)
        elif session.peer_id != hello.node_id or session.peer_nonce != hello.session:
            raise ValueError("the session belongs to another peer or process")
        self.session = session
        self._decoder = decoder
        decoder.max_frame_size = local.max_frame_size  # the handshake used a small limit
        decoder.expect_sender(hello.node_id)
        self._pending = pending
        self._events = events
        self._heartbeat_interval = heartbeat_interval
        self._heartbeat_timeout = heartbeat_timeout
        self._max_body = min(hello.max_frame_size, local.max_frame_size)
        self._ids = MessageIds()
        #: the file transfers on this connection, both ways
        self.transfers = Transfers()
        #: runs them; without one, a file frame is a protocol error
        self.files: FileHandler | None = None
        #: per-frame DEBUG logging, decided once per connection (the per-message
        #: path then pays one attribute check)
        self._debug = logger.isEnabledFor(logging.DEBUG)
        self._outgoing = bytearray()
        #: file chunks to write (after what is in _outgoing when each is taken),
        #: each with the event set once it is written or dropped
        self._chunks: collections.deque[tuple[memoryview, trio.Event]] = collections.deque()
        self._writer_lot = trio.lowlevel.ParkingLot()
        #: woken when the writer takes the queued bytes
        self._drained_lot = trio.lowlevel.ParkingLot()
        #: woken on every acknowledgement and when the connection ends
        self._ack_lot = trio.lowlevel.ParkingLot()
        #: woken when bytes arrive, for probe()
        self._arrival_lot = trio.lowlevel.ParkingLot()
        #: when the connection was established (Trio clock)
        self.established_at = trio.current_time()
        self._scope = trio.CancelScope()
        self._done = trio.Event()
        #: set by the owner once the end of the connection has been reported
        self.finished = trio.Event()
        #: whether the application was told of this connection (see run's announce)
        self.announced = False
        self._announce: Callable[[], Awaitable[bool]] | None = None
        self._closing = False
        self._close_reason = ""
        self._ack_wanted = False
        self._pong_wanted = False
        self._reader_blocked = False
        self._last_received = trio.current_time()
        self._last_sent = trio.current_time()
        #: why the connection ended (None while it runs)
        self.reason: str | None = None
        #: whether it broke (rather than being closed by either side): its
        #: session may carry on over a new connection
        self.resumable = False
        #: whether it carries on a session of an earlier connection (see resume)
        self.resumed = False
        #: the goodbye code of a protocol failure, for statistics
        self.failure: str | None = None
        # counters (names as in Statistics)
        self.frames_sent = 0
        self.frames_received = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        self.messages_sent = 0
        self.messages_received = 0
        self.messages_acknowledged = 0

    def resume(self, peer_received: int) -> None:
        """Carry the session on: the peer's hello says it delivered up to *peer_received*.

        Queues the unacknowledged messages after it, in order, behind what is
        queued already (this side's hello, for an acceptor) and before anything
        sent from now on. Call before :meth:`run`.

        Raises:
            ProtocolError: *peer_received* does not fit the session (see
                :meth:`Session.resume`).
        """
        session = self.session
        in_flight = session.in_flight
        again = session.resume(peer_received)
        self.messages_acknowledged += in_flight - len(again)
        for seq, message in again:
            self._outgoing += encode_data(seq, message)
            self.frames_sent += 1
        self.resumed = True

    # ------------------------------------------------------------ sending

    @property
    def peer_id(self) -> uuid.UUID:
        """The peer's node id."""
        return self.hello.node_id

    @property
    def is_open(self) -> bool:
        """True until the connection starts closing or ends."""
        return self.reason is None and not self._closing

    def send_nowait(self, content: Content) -> Message:
        """Queue a message; never waits.

        Raises:
            trio.WouldBlock: the send window is full, or ``QUEUE_LIMIT`` bytes are
                already waiting to be written.
            PeerNotConnectedError: the connection is closing or closed.
            ValueError: the message is larger than the peer accepts.
        """
        return self._enqueue(content, eager=False)

    def _enqueue(self, content: Content, *, eager: bool) -> Message:
        if not self.is_open:
            raise PeerNotConnectedError(self.peer_id, self.reason or "the connection is closing")
        session = self.session
        if session.window_full or len(self._outgoing) >= QUEUE_LIMIT:
            raise trio.WouldBlock
        message, frame = number_message(session, self._ids, self.local, content, self._max_body)
        if self._debug:
            logger.debug("-> %s: message %d %s", self.peer.name, session.last_sent, message.id)
        outgoing = self._outgoing
        idle = not outgoing and not self._writer_busy and not self._chunks
        outgoing += frame
        self.messages_sent += 1
        self.frames_sent += 1
        if (
            eager
            and idle
            and self._write_nowait is not None
            and trio.current_time() - self._last_sent >= DIRECT_WRITE_IDLE
        ):
            self._write_now(self._write_nowait)
        elif self._writer_lot:
            self._writer_lot.unpark()
        return message

    def _take_output(self) -> bytearray:
        """Everything queued, with the ack and the pong that are due, for one write."""
        if self._ack_wanted:
            self._ack_wanted = False
            ack = self.session.ack_due()
            if ack is not None:
                self._append(Ack(ack))
        if self._pong_wanted:
            self._pong_wanted = False
            self._append(Pong())
        data = self._outgoing
        self._outgoing = bytearray()
        if self._drained_lot:
            self._drained_lot.unpark_all()
        self._last_sent = trio.current_time()
        return data

    def _write_now(self, write_nowait: WriteNowait) -> None:
        # The writer task is idle and nothing else is queued: write from here.
        data = self._take_output()
        try:
            written = write_nowait(data)
        except OSError:  # full (BlockingIOError) or broken: the writer takes over
            written = 0
        self.bytes_sent += written
        if written < len(data):
            del data[:written]
            self._outgoing = data
            self._writer_lot.unpark()
        elif self._output_pending is not None and self._output_pending():
            self._writer_lot.unpark()

    async def send(self, content: Content) -> Message:
        """Queue a message, waiting while the send window or the write queue is full.

        A full window is waited on until half of it is acknowledged, so that a
        producer then sends a batch again rather than one message per
        acknowledgement (which would make every write, and every ack, tiny). A
        full write queue is waited on until the writer takes it. On an idle
        connection the message is written at once, by this task.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        session = self.session
        while self.is_open:
            if session.window_full:
                low_water = session.window // 2
                while session.in_flight > low_water and self.is_open:
                    await self._ack_lot.park()
            elif len(self._outgoing) >= QUEUE_LIMIT:
                await self._drained_lot.park()
            else:
                break
        message = self._enqueue(content, eager=True)
        await trio.lowlevel.cancel_shielded_checkpoint()
        return message

    async def flush(self) -> None:
        """Return once every message sent so far is acknowledged.

        Raises:
            DeliveryError: the connection ended first.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        target = self.session.last_sent
        while self.session.last_acked < target:
            if self.reason is not None:
                raise DeliveryError(self.peer_id, self.session.unacknowledged(), self.reason)
            await self._ack_lot.park()
        await trio.lowlevel.cancel_shielded_checkpoint()

    @property
    def max_body(self) -> int:
        """Largest frame body that may be sent on this connection."""
        return self._max_body

    def send_frame_nowait(self, frame: FileFrame) -> None:
        """Queue a (small) file-transfer frame.

        Raises:
            PeerNotConnectedError: the connection is closing or closed.
        """
        if not self.is_open:
            raise PeerNotConnectedError(self.peer_id, self.reason or "the connection is closing")
        if len(self._outgoing) > self._max_body + STALLED_QUEUE:
            waiting = len(self._outgoing)
            bad_input.warning(
                "%s (%s) reads nothing of what it is sent (%d bytes wait): disconnected",
                self.peer.name,
                self.peer.address,
                waiting,
            )
            self.failure = "stalled"
            self._finish(f"the peer reads nothing of what it is sent ({waiting} bytes wait)")
            raise PeerNotConnectedError(self.peer_id, self.reason or "the connection is closing")
        self._queue(frame)

    async def send_frame(self, frame: FileFrame) -> None:
        """Queue a file-transfer frame, waiting while the write queue is full.

        Raises:
            PeerNotConnectedError: the connection is closing or closed.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        while self.is_open and len(self._outgoing) >= QUEUE_LIMIT:
            await self._drained_lot.park()
        self.send_frame_nowait(frame)
        await trio.lowlevel.cancel_shielded_checkpoint()

    def recycle(self, data: bytes | memoryview) -> None:
        """Give back the receive buffer of a chunk's *data*, once nothing reads it.

        See :meth:`FrameDecoder.recycle`; safe to call from any thread.
        """
        self._decoder.recycle(data)

    async def send_chunk(self, frame: memoryview) -> trio.Event:
        """Queue the bytes of a whole file-chunk frame, without copying them.

        Waits while ``CHUNK_SLOTS`` chunks are queued. The writer writes a chunk
        after the frames queued before it, and may write frames queued later
        before it: queue what must follow the chunk (the transfer's end) only
        once the chunk is written.

        Returns:
            An event set once the chunk is written, or will never be (the
            connection ended): until then *frame* must not change.

        Raises:
            PeerNotConnectedError: the connection is closing or closed.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        while self.is_open and len(self._chunks) >= CHUNK_SLOTS:
            await self._drained_lot.park()
        if not self.is_open:
            raise PeerNotConnectedError(self.peer_id, self.reason or "the connection is closing")
        if self._debug:
            logger.debug("-> %s: a chunk frame of %d bytes", self.peer.name, len(frame))
        written = trio.Event()
        self._chunks.append((frame, written))
        self.frames_sent += 1
        if self._writer_lot:
            self._writer_lot.unpark()
        await trio.lowlevel.cancel_shielded_checkpoint()
        return written

    def _append(self, frame: Frame) -> None:
        if self._debug:
            logger.debug("-> %s: %r", self.peer.name, frame)
        self.frames_sent += 1
        if type(frame) is FileChunk:  # its data is copied once, into the queue
            for part in chunk_frame_parts(frame):
                self._outgoing += part
        else:
            self._outgoing += encode_frame(frame)

    def _queue(self, frame: Frame) -> None:
        self._append(frame)
        if self._writer_lot:
            self._writer_lot.unpark()

    # ------------------------------------------------------------ lifecycle

    async def run(self, announce: Callable[[], Awaitable[bool]] | None = None) -> str:
        """Serve the connection until it ends; return the reason it ended.

        Args:
            announce: awaited before the first frame is read, so that whatever
                it emits (``PeerConnected``) comes before this connection's
                messages; it returns whether the application was told. The
                writer and the heartbeat run meanwhile.
        """
        self._announce = announce
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._guard, self._read_loop)
                    nursery.start_soon(self._guard, self._write_loop)
                    nursery.start_soon(self._guard, self._heartbeat_loop)
        finally:
            if self.reason is None:
                self.reason = "the connection was cancelled"
            self._ack_lot.unpark_all()
            self._writer_lot.unpark_all()
            self._drained_lot.unpark_all()
            self._arrival_lot.unpark_all()
            for _, written in self._chunks:  # never to be written
                written.set()
            self._chunks.clear()
            await trio.aclose_forcefully(self.stream)
            self._done.set()
        return self.reason

    def _finish(self, reason: str, *, resumable: bool = False) -> None:
        if self.reason is None:
            self.reason = reason
            self.resumable = resumable
        self._scope.cancel()

    async def probe(self) -> bool:
        """Ping the peer and wait until anything arrives (bound it with a cancel scope).

        Returns:
            True once something arrived, or at once if the reader is held back by
            the application (what the peer sent may be waiting unread); False if
            the connection ended first.
        """
        if not self.is_open:
            return False
        if self._reader_blocked:
            return True
        self._queue(Ping())
        await self._arrival_lot.park()
        return self.is_open

    def close_soon(self, reason: str, code: GoodbyeCode = GoodbyeCode.CLOSING) -> None:
        """Queue a goodbye with *code* and *reason*; do not wait.

        The connection ends once what was queued before the goodbye, and the
        goodbye, are written.
        """
        if self.reason is None and not self._closing:
            self._closing = True
            self._queue(Goodbye(code, reason))
            self._close_reason = reason

    async def close(self, reason: str, code: GoodbyeCode = GoodbyeCode.CLOSING) -> None:
        """Say goodbye with *reason* (and *code*), then close.

        What was queued before is written first; after ``CLOSE_TIMEOUT`` the
        connection is cut.
        """
        self.close_soon(reason, code)
        with trio.move_on_after(CLOSE_TIMEOUT) as scope:
            await self._done.wait()
        if scope.cancelled_caught:
            self._finish(reason)
            await self._done.wait()

    async def _guard(self, loop: Callable[[], Awaitable[None]]) -> None:
        try:
            await loop()
        except _Ended as exc:
            self._finish(str(exc), resumable=exc.resumable)
        except ProtocolError as exc:
            bad_input.warning(
                "protocol error from %s (%s): %s", self.peer.name, self.peer.address, exc
            )
            self.failure = "protocol"
            self._finish(f"protocol error: {exc}")
        except trio.BrokenResourceError as exc:
            self._finish(f"connection lost: {exc or type(exc).__name__}", resumable=True)
        except trio.ClosedResourceError as exc:
            self._finish(f"connection lost: {exc or type(exc).__name__}")
        except OSError as exc:
            self._finish(f"connection lost: {exc.strerror or exc}", resumable=True)

    # ------------------------------------------------------------ tasks

    def _want_ack(self) -> None:
        # The writer adds the ack when it next writes, so that an answer the
        # application queues meanwhile travels in the same write.
        self._ack_wanted = True
        if self._writer_lot:
            self._writer_lot.unpark()

    async def _write_loop(self) -> None:
        chunks = self._chunks
        streaming = False
        while True:
            if not self._outgoing and not self._ack_wanted and not self._pong_wanted:
                if self._closing:  # (chunks still queued are dropped)
                    raise _Ended(f"closed by this node: {self._close_reason}")
                if chunks:
                    await self._write_chunk()
                elif self._output_pending is not None and self._output_pending():
                    await self._write(b"")
                else:
                    await self._writer_lot.park()
                continue
            if not self._outgoing:
                # Only an ack or a pong is due: give the application one turn to
                # answer, so the answer and the ack travel in one write.
                await trio.lowlevel.checkpoint()
            elif streaming or trio.current_time() - self._last_sent < DIRECT_WRITE_IDLE:
                # More was queued while the last write was in flight, or soon
                # after it: a producer is streaming. Let it add more while the
                # queue still grows. (Two turns without growth end it: Trio runs
                # the tasks of one turn in either order, so in one turn out of
                # two this task runs before the producer.)
                size = len(self._outgoing)
                idle_turns = 0
                until = trio.current_time() + COALESCE_TIME
                while size < COALESCE_LIMIT and idle_turns < 2:
                    await trio.lowlevel.checkpoint()
                    grown = len(self._outgoing)
                    idle_turns = idle_turns + 1 if grown == size else 0
                    size = grown
                    if trio.current_time() >= until:
                        break
            if not self._outgoing and not self._ack_wanted and not self._pong_wanted:
                continue  # written directly by a sender meanwhile
            await self._write(self._take_output())
            streaming = bool(self._outgoing)
            if chunks and not self._closing:
                # One chunk, then whatever was queued meanwhile (messages do not
                # wait behind a whole file).
                await self._write_chunk()

    async def _write(self, data: bytes | bytearray | memoryview) -> None:
        self._writer_busy = True
        try:
            await self._send_all(data)
        finally:
            self._writer_busy = False
        self.bytes_sent += len(data)

    async def _write_chunk(self) -> None:
        frame, written = self._chunks[0]
        self._last_sent = trio.current_time()
        await self._write(frame)
        self._chunks.popleft()
        written.set()
        self._drained_lot.unpark_all()

    async def _read_loop(self) -> None:
        if self._announce is not None:
            self._reader_blocked = True  # held back by the application, not the peer
            try:
                self.announced = await self._announce()
            finally:
                self._reader_blocked = False
                self._last_received = trio.current_time()
        else:
            self.announced = True
        for frame in self._pending:
            await self._handle(frame)
        self._pending = []
        stream = self.stream
        decoder = self._decoder
        session = self.session
        receive_into = self._receive_into
        receive_nowait = self._receive_nowait
        current_time = trio.current_time
        waited = current_time()
        while True:
            # Ask for the rest of a large frame in one receive (a file chunk).
            missing = decoder.missing
            size = min(max(RECEIVE_SIZE, missing), MAX_RECEIVE_SIZE)
            if receive_into is not None:
                with decoder.receive_buffer(size) as room:
                    size = len(room)  # (less where the rest of a frame fits)
                    if (
                        missing > RECEIVE_SIZE
                        and receive_nowait is not None
                        and current_time() - waited < NOWAIT_SPAN
                    ):
                        # The rest of a large frame under way (a file chunk): no
                        # task switch unless it must wait. (Not for small frames:
                        # a stream of messages gains from the switch, which lets
                        # the application take them: 147k vs 182k msg/s here.)
                        try:
                            count = receive_nowait(room)
                        except BlockingIOError:
                            count = await receive_into(room)
                            waited = current_time()
                    else:
                        count = await receive_into(room)
                        waited = current_time()
            else:
                data = await stream.receive_some(size)
                count = len(data)
            if not count:
                detail = " in the middle of a frame" if decoder.buffered else ""
                raise _Ended(f"the peer closed the connection{detail}", resumable=True)
            self._last_received = trio.current_time()
            self.bytes_received += count
            if self._arrival_lot:
                self._arrival_lot.unpark_all()
            frames = decoder.commit(count) if receive_into is not None else decoder.feed(data)
            delivered = self.messages_received
            for frame in frames:
                await self._handle(frame)
            if session.last_received > session.last_ack_sent:
                if count < size and self.messages_received != delivered:
                    await self._let_the_application_answer()
                else:
                    self._want_ack()

    async def _let_the_application_answer(self) -> None:
        # The socket is drained and messages were handed to the application: let
        # it run before this reader waits on the socket again (two turns, since
        # Trio runs the tasks of one turn in either order). What it sends then
        # is written at once and carries the ack; the writer is woken for the
        # ack only if nothing did. Keeps a request/answer exchange to one
        # scheduler turn per side, off the receive path.
        self._ack_wanted = True
        await trio.lowlevel.cancel_shielded_checkpoint()
        await trio.lowlevel.cancel_shielded_checkpoint()
        if self._ack_wanted and self._writer_lot:
            self._writer_lot.unpark()

    async def _handle(self, frame: Frame) -> None:
        self.frames_received += 1
        if self._debug:
            logger.debug("<- %s: %r", self.peer.name, frame)
        if type(frame) is Data:
            message = frame.message
            hello = self.hello
            sender = message.sender_id
            if sender is not hello.node_id and sender != hello.node_id:
                raise ProtocolError(
                    f"message claims sender {sender}, the handshake said {hello.node_id}"
                )
            if message.sender_name != hello.name:
                raise ProtocolError(
                    f"message claims sender name {message.sender_name!r}, the handshake said "
                    f"{hello.name!r}"
                )
            session = self.session
            session.check_incoming(frame.seq)
            event = MessageReceived(message)
            placed = self._event_text
            placed.count += len(message.content.text)
            if placed.count > EVENT_TEXT_LIMIT:
                await self._wait_for_the_application(len(message.content.text))
            try:
                self._events.send_nowait(event)
            except trio.WouldBlock:
                # The application is behind: wait for it. Acknowledge what it has now
                # and then, not on every event it takes (that would be an ack per
                # message); the end of the read batch acknowledges the rest. Liveness
                # is not judged while this reader is held back.
                if session.last_received - session.last_ack_sent >= ACK_WHILE_BLOCKED:
                    self._want_ack()
                self._reader_blocked = True
                try:
                    await self._events.send(event)
                    # Delivered: recorded at once (a cancel during the catch-up
                    # below must not let a resumed session deliver it again).
                    session.received(frame.seq)
                    self.messages_received += 1
                    # Let the application catch up before delivering more: waking this
                    # reader for every event it takes nearly doubles the cost of each.
                    capacity = self._events.statistics().max_buffer_size
                    if capacity >= CATCH_UP_MIN_BUFFER:
                        await trio.sleep(min(CATCH_UP_LIMIT, capacity * CATCH_UP_PER_EVENT))
                finally:
                    self._reader_blocked = False
                    self._last_received = trio.current_time()
            else:
                session.received(frame.seq)
                self.messages_received += 1
        elif type(frame) is Ack:
            settled = self.session.acknowledge(frame.seq)
            if settled:
                self.messages_acknowledged += settled
                self._ack_lot.unpark_all()
        elif type(frame) is Ping:
            # One pong per write however many pings came: a ping flood cannot
            # grow the outgoing buffer.
            self._pong_wanted = True
            if self._writer_lot:
                self._writer_lot.unpark()
        elif type(frame) is Pong:
            pass
        elif type(frame) is Goodbye:
            raise _Ended(f"the peer closed the connection ({frame.code}): {frame.reason}")
        elif isinstance(frame, _FILE_FRAMES) and self.files is not None:
            transfer = self.transfers.receive(frame)
            if transfer is not None:
                # Waiting for the disk is like waiting for the application: the
                # peer is not silent because this reader does not read.
                self._reader_blocked = True
                try:
                    await self.files.on_frame(self, transfer, frame)
                finally:
                    self._reader_blocked = False
                    self._last_received = trio.current_time()
        else:
            raise ProtocolError(f"unexpected {type(frame).__name__} after the handshake")

    async def _wait_for_the_application(self, size: int) -> None:
        """Wait until the application has taken every event (see EVENT_TEXT_LIMIT)."""
        session = self.session
        if session.last_received > session.last_ack_sent:
            self._want_ack()  # (what it has taken is acknowledged meanwhile)
        self._reader_blocked = True
        try:
            # (polled: a memory channel tells no one when it is read; one whose
            # reader is gone fails the delivery that follows, as before)
            statistics = self._events.statistics
            while (s := statistics()).current_buffer_used and s.open_receive_channels:  # noqa: ASYNC110
                await trio.sleep(EVENT_TEXT_POLL)
        finally:
            self._reader_blocked = False
            self._last_received = trio.current_time()
        self._event_text.count = size  # (all but this one's text has been taken)

    async def _heartbeat_loop(self) -> None:
        interval = self._heartbeat_interval
        timeout = self._heartbeat_timeout
        while True:
            now = trio.current_time()
            if self._reader_blocked:
                self._last_received = now
            if now - self._last_received >= timeout:
                raise _Ended(
                    f"nothing received for {timeout:g} s (heartbeat timeout)", resumable=True
                )
            if now - self._last_sent >= interval and not self._outgoing:
                self._queue(Ping())
                self._last_sent = now
            wake = min(self._last_received + timeout, self._last_sent + interval)
            await trio.sleep_until(max(wake, now + interval / 100))

    def counters(self) -> dict[str, int]:
        """This connection's counters, by :class:`Statistics` field name."""
        return {
            "frames_sent": self.frames_sent,
            "frames_received": self.frames_received,
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
            "messages_sent": self.messages_sent,
            "messages_received": self.messages_received,
            "messages_acknowledged": self.messages_acknowledged,
        }
