"""The secure channel over a connection: the Noise handshake's I/O, and the encrypted stream.

:func:`secure_dial` and :func:`secure_accept` run the preamble and the Noise XX
handshake (see :mod:`trio_p2p._noise`) over a connection and return a
:class:`SecureStream`, which seals everything sent into records and opens
everything received. It offers the same direct I/O functions as
:class:`~trio_p2p._socketio.SocketIO` (``write_nowait``, ``send_all``,
``receive_into``, ``receive_nowait``), so a
:class:`~trio_p2p._connection.PeerConnection` runs on it as fast as on a bare
socket: records are sealed into and opened from reused buffers, and many go out
in one write.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Protocol

import trio

from ._errors import HandshakeError, ProtocolError
from ._identity import Identity
from ._noise import (
    MAX_RECORD,
    MAX_RECORD_PLAINTEXT,
    MODE_XX_PSK,
    PREAMBLE_SIZE,
    RECORD_HEADER,
    TAG_SIZE,
    Handshake,
    Opener,
    PeerProof,
    Sealer,
    parse_preamble,
    preamble,
)

__all__ = ["RawIO", "SecureStream", "StreamIO", "secure_accept", "secure_dial"]

#: Largest handshake message accepted (ours are under 200 bytes).
MAX_HANDSHAKE_MESSAGE = 1024
#: Plaintext sealed per write of a large send: 4 full records (256 KiB), so
#: that the sealed bytes are still in the cache when the kernel copies them,
#: and the sealing buffer stays small.
SEND_SEGMENT = 4 * MAX_RECORD_PLAINTEXT
#: The receive buffer of ciphertext: small at first (an idle or chatty
#: connection needs no more), grown to a large read plus one record's room once
#: a read fills it (bulk data) or a record does not fit.
INITIAL_RECEIVE_BUFFER = 16 * 1024
RECEIVE_BUFFER = 1024 * 1024 + MAX_RECORD
#: Ciphertext read at most at once: opened while it is still in the cache (a
#: reader that asks for a whole file chunk gets it in a few calls).
RAW_READ = 256 * 1024
#: Records opened at most per receive: bulk data comes in 16 to the MiB, but a
#: peer may send a byte a record, and one receive must not take long.
OPEN_AT_ONCE = 256


class RawIO(Protocol):
    """The direct I/O functions of a connection (see :class:`~trio_p2p._socketio.SocketIO`).

    ``write_nowait`` writes what can be written now (raising
    :exc:`BlockingIOError` if nothing); ``send_all`` writes everything, waiting
    for room; ``receive_nowait`` receives what has arrived (0 at the end;
    :exc:`BlockingIOError` if nothing); ``receive_into`` waits until something
    arrives (0 at the end).
    """

    @property
    def write_nowait(self) -> Callable[[bytes | bytearray | memoryview], int]:
        """See the class."""

    @property
    def send_all(self) -> Callable[[bytes | bytearray | memoryview], Awaitable[None]]:
        """See the class."""

    @property
    def receive_nowait(self) -> Callable[[memoryview], int]:
        """See the class."""

    @property
    def receive_into(self) -> Callable[[memoryview], Awaitable[int]]:
        """See the class."""


class StreamIO:
    """:class:`RawIO` over any :class:`trio.abc.Stream`.

    It never writes or receives without waiting.
    """

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream

    def write_nowait(self, data: bytes | bytearray | memoryview) -> int:
        """Never writes without waiting: raises :exc:`BlockingIOError`."""
        raise BlockingIOError

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """The stream's ``send_all``."""
        await self._stream.send_all(data)

    def receive_nowait(self, buffer: memoryview) -> int:
        """Never receives without waiting: raises :exc:`BlockingIOError`."""
        raise BlockingIOError

    async def receive_into(self, buffer: memoryview) -> int:
        """The stream's ``receive_some``, copied into *buffer*."""
        data = await self._stream.receive_some(len(buffer))
        buffer[: len(data)] = data
        return len(data)


class _Reader:
    """Reads the preamble and the handshake messages, keeping what arrives after them."""

    def __init__(self, io: RawIO) -> None:
        self._io = io
        self._buffer = bytearray()

    async def exactly(self, size: int) -> bytes:
        chunk = bytearray(max(4096, size))
        while len(self._buffer) < size:
            count = await self._io.receive_into(memoryview(chunk))
            if not count:
                raise HandshakeError("the peer closed the connection during the handshake")
            self._buffer += chunk[:count]
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    async def message(self) -> bytes:
        header = await self.exactly(2)
        size = int.from_bytes(header, "big")
        if size > MAX_HANDSHAKE_MESSAGE:
            raise ProtocolError(f"a handshake message of {size} bytes is too large")
        return await self.exactly(size)

    def rest(self) -> bytes:
        return bytes(self._buffer)


def _framed(message: bytes) -> bytes:
    return len(message).to_bytes(2, "big") + message


def _check_mode(theirs: int, network_key: bytes | None) -> None:
    if (theirs == MODE_XX_PSK) != (network_key is not None):
        if network_key is None:
            raise HandshakeError("the peer's network needs a network key, and this node has none")
        raise HandshakeError("the peer has no network key, and this node's network needs one")


async def secure_dial(
    stream: trio.abc.Stream,
    io: RawIO,
    identity: Identity,
    static_key: bytes,
    *,
    network_key: bytes | None = None,
    expected: uuid.UUID | None = None,
) -> tuple[SecureStream, PeerProof]:
    """Run the dialler's side of the handshake on *stream* (written and read through *io*).

    Args:
        stream: the connection (closed by the returned stream's ``aclose``).
        io: its direct I/O functions.
        identity: this node's identity.
        static_key: this node's X25519 static private key.
        network_key: the network's shared key, if it has one.
        expected: the peer id the dialler expects (from its beacon); a peer that
            proves another id is refused before this node reveals its own.

    Returns:
        The secure stream, and the identity the peer proved.

    Raises:
        HandshakeError: the peer closed the connection, proved another id, or
            uses another network key setting.
        ProtocolError: the peer broke the handshake (not a trio_p2p node, a
            failed authentication: with a network key, the wrong key).
    """
    ours = preamble(network_key is not None)
    handshake = Handshake(
        identity, static_key, initiator=True, prologue=ours, network_key=network_key
    )
    await io.send_all(ours + _framed(handshake.write()))
    reader = _Reader(io)
    _check_mode(parse_preamble(await reader.exactly(PREAMBLE_SIZE)), network_key)
    handshake.read(await reader.message())
    proof = handshake.peer
    assert proof is not None
    if expected is not None and proof.peer_id != expected:
        raise HandshakeError(f"the peer proved the key of node {proof.peer_id}, not {expected}")
    await io.send_all(_framed(handshake.write()))
    sealer, opener = handshake.ciphers()
    return SecureStream(stream, io, sealer, opener, reader.rest()), proof


async def secure_accept(
    stream: trio.abc.Stream,
    io: RawIO,
    identity: Identity,
    static_key: bytes,
    *,
    network_key: bytes | None = None,
) -> tuple[SecureStream, PeerProof]:
    """Run the accepting side of the handshake (see :func:`secure_dial`)."""
    reader = _Reader(io)
    theirs = await reader.exactly(PREAMBLE_SIZE)
    mode = parse_preamble(theirs)
    ours = preamble(network_key is not None)
    try:
        _check_mode(mode, network_key)
    except HandshakeError:
        # Tell the dialler which setting this node has, so that it can say why.
        await io.send_all(ours)
        raise
    handshake = Handshake(
        identity, static_key, initiator=False, prologue=theirs, network_key=network_key
    )
    handshake.read(await reader.message())
    await io.send_all(ours + _framed(handshake.write()))
    handshake.read(await reader.message())
    proof = handshake.peer
    assert proof is not None
    sealer, opener = handshake.ciphers()
    return SecureStream(stream, io, sealer, opener, reader.rest()), proof


class SecureStream(trio.abc.Stream):
    """An encrypted stream over a connection, after the handshake.

    It is a :class:`trio.abc.Stream`, and it also offers the direct I/O
    functions of :class:`RawIO` (used by the connection's reader and writer).
    One task at a time may send, and one receive.

    Args:
        transport: the underlying stream (closed by :meth:`aclose`).
        io: the direct I/O functions of *transport*.
        sealer: seals what this side sends.
        opener: opens what the peer sends.
        received: ciphertext that already arrived behind the handshake.
    """

    def __init__(
        self,
        transport: trio.abc.Stream,
        io: RawIO,
        sealer: Sealer,
        opener: Opener,
        received: bytes = b"",
    ) -> None:
        self.transport = transport
        self._io = io
        self._sealer = sealer
        self._opener = opener
        self._sending = False
        #: the rest of the records of a write that the socket took only in part
        self._backlog = b""
        self._in = bytearray(max(INITIAL_RECEIVE_BUFFER, len(received)))
        #: the size the receive buffer may grow to: a record's at first (a peer
        #: not yet past its hello cannot make this node hold a bulk buffer)
        self._buffer_limit = MAX_RECORD
        self._in[: len(received)] = received
        self._in_view = memoryview(self._in)
        self._start = 0
        self._end = len(received)
        #: a record's plaintext that did not fit where it was to go (made when needed)
        self._left: bytes | bytearray = b""
        self._left_start = 0
        self._left_end = 0

    # ------------------------------------------------------------ sending

    def allow_bulk(self) -> None:
        """Let the receive buffer grow to take bulk data (once the peer is known)."""
        self._buffer_limit = RECEIVE_BUFFER

    def output_pending(self) -> bool:
        """Whether records of an earlier :meth:`write_nowait` still wait to be written.

        ``send_all`` (even of nothing) writes them first.
        """
        return bool(self._backlog)

    def write_nowait(self, data: bytes | bytearray | memoryview) -> int:
        """Seal all of *data* and write what the socket takes now.

        Returns:
            ``len(data)``: all of it is sealed; what the socket did not take
            waits (see :meth:`output_pending`).

        Raises:
            BlockingIOError: nothing was written (and nothing sealed), or
                another write is under way or waits.
        """
        if self._sending or self._backlog:
            raise BlockingIOError
        counter = self._sealer.counter
        sealed = self._sealer.seal(data)
        try:
            written = self._io.write_nowait(sealed)
        except BlockingIOError:
            self._sealer.counter = counter  # nothing of these records left this process
            raise
        if written < len(sealed):
            self._backlog = bytes(sealed[written:])
        return len(data)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Seal *data* into records and write them all (after what :meth:`write_nowait` left)."""
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this stream")
        self._sending = True
        try:
            if self._backlog:
                backlog, self._backlog = self._backlog, b""
                await self._io.send_all(backlog)
            view = memoryview(data)
            if not view:
                await trio.lowlevel.checkpoint()
            for start in range(0, len(view), SEND_SEGMENT):
                await self._io.send_all(self._sealer.seal(view[start : start + SEND_SEGMENT]))
        finally:
            self._sending = False

    async def wait_send_all_might_not_block(self) -> None:
        """As the underlying stream's."""
        await self.transport.wait_send_all_might_not_block()

    # ------------------------------------------------------------ receiving

    def _open_buffered(self, room: memoryview) -> int:
        """Open what is buffered into *room*, as far as it fits; return the bytes placed."""
        placed = 0
        if self._left_start < self._left_end:
            placed = min(len(room), self._left_end - self._left_start)
            room[:placed] = self._left[self._left_start : self._left_start + placed]
            self._left_start += placed
            if placed == len(room):
                return placed
        data = self._in
        view = self._in_view
        opener = self._opener
        start, end = self._start, self._end
        room_size = len(room)
        next_record = opener.next_record
        opened = 0
        while size := next_record(data, start, end):
            if opened == OPEN_AT_ONCE:
                break  # enough work for one call (a peer may send tiny records)
            opened += 1
            plain = size - RECORD_HEADER - TAG_SIZE
            if plain <= room_size - placed:
                placed += opener.open_into(view[start : start + size], room[placed:])
                start += size
            elif placed:
                break  # the next call takes it
            else:  # a record larger than the room: keep the rest of its plaintext
                if not self._left:
                    self._left = bytearray(MAX_RECORD_PLAINTEXT)
                opener.open_into(view[start : start + size], memoryview(self._left))
                placed = len(room)
                room[:] = self._left[:placed]
                self._left_start, self._left_end = placed, plain
                start += size
                break
        if start == end:
            start = end = 0
        self._start, self._end = start, end
        return placed

    def _room_to_receive(self) -> memoryview:
        size = len(self._in)
        if self._end == size or (self._start and size - self._end < MAX_RECORD):
            # Move the incomplete record at the start of the buffer to its front.
            kept = self._end - self._start
            self._in[:kept] = self._in[self._start : self._end]
            self._start, self._end = 0, kept
            if kept == size:  # a record larger than the buffer
                self._grow()
        return self._in_view[self._end : self._end + RAW_READ]

    def _received(self, count: int, room: int) -> None:
        self._end += count
        if count == room:  # a read filled all the room: bulk data, read more at a time
            self._grow()

    def _grow(self) -> None:
        if len(self._in) >= self._buffer_limit:
            return
        grown = bytearray(self._buffer_limit)
        kept = self._end - self._start
        grown[:kept] = self._in_view[self._start : self._end]
        self._in, self._in_view = grown, memoryview(grown)
        self._start, self._end = 0, kept

    def _buffered(self) -> bool:
        return self._start != self._end or self._left_start != self._left_end

    def _open_read(self, count: int, room: memoryview, buffer: memoryview) -> int:
        """Take *count* bytes just read into *room*; open what is whole into *buffer*."""
        self._received(count, len(room))
        return self._open_buffered(buffer)

    def receive_nowait(self, buffer: memoryview) -> int:
        """Receive plaintext into *buffer* without waiting.

        Returns:
            The bytes placed; 0 at the end of the stream.

        Raises:
            BlockingIOError: no whole record is there yet.
            ProtocolError: a record failed authentication or is malformed.
        """
        placed = self._open_buffered(buffer) if self._buffered() else 0
        while not placed:
            room = self._room_to_receive()
            count = self._io.receive_nowait(room)
            if not count:
                return 0
            placed = self._open_read(count, room, buffer)
        return placed

    async def receive_into(self, buffer: memoryview) -> int:
        """Receive plaintext into *buffer*, waiting for a whole record (0 at the end).

        Raises:
            ProtocolError: a record failed authentication or is malformed.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        placed = self._open_buffered(buffer) if self._buffered() else 0
        if placed:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return placed
        while not placed:
            room = self._room_to_receive()
            count = await self._io.receive_into(room)
            if not count:
                return 0
            placed = self._open_read(count, room, buffer)
        return placed

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Receive plaintext (at most *max_bytes*); ``b""`` at the end of the stream."""
        buffer = bytearray(max_bytes or MAX_RECORD_PLAINTEXT)
        count = await self.receive_into(memoryview(buffer))
        return bytes(buffer[:count])

    async def aclose(self) -> None:
        """Close the underlying stream."""
        await self.transport.aclose()
