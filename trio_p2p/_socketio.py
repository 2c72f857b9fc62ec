"""Direct socket I/O for the connections of a messenger.

Trio's socket methods yield to the scheduler on every call, even when the
kernel takes or gives the bytes at once. A file transfer makes many such calls
per chunk (a send buffer takes part of a 1 MiB chunk at a time; a receive gets
what has arrived so far), so the connections of a TCP messenger use these
functions instead, which wait (and so yield) only when the socket is not
ready. :class:`~trio_p2p._connection.PeerConnection` falls back on the
stream's own methods when it is not given them, so it runs on any stream.

Each function holds the socket's file descriptor: use them only while the
connection (which owns the socket) is open.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable

import trio

__all__ = ["SocketIO"]


class SocketIO:
    """The direct I/O functions of one connected, non-blocking socket.

    Attributes:
        write_nowait: writes what the socket takes now; returns how many bytes
            (raises :exc:`BlockingIOError` if none).
        send_all: writes all the given bytes, waiting for room as needed.
        receive_nowait: receives what has arrived into the given buffer; returns
            how many bytes, 0 at the end of the stream (raises
            :exc:`BlockingIOError` if nothing has arrived).
        receive_into: receives into the given buffer, waiting until something
            arrives (a checkpoint, as Trio's own receives are).
    """

    write_nowait: Callable[[bytes | bytearray | memoryview], int]
    send_all: Callable[[bytes | bytearray | memoryview], Awaitable[None]]
    receive_nowait: Callable[[memoryview], int]
    receive_into: Callable[[memoryview], Awaitable[int]]

    def __init__(self, sock: trio.socket.SocketType) -> None:
        fd = sock.fileno()

        def write_nowait(data: bytes | bytearray | memoryview) -> int:
            return os.write(fd, data)  # a send() without flags

        async def send_all(data: bytes | bytearray | memoryview) -> None:
            view = memoryview(data)
            while view:
                try:
                    sent = os.write(fd, view)
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(sock)
                else:
                    view = view[sent:]

        def receive_nowait(buffer: memoryview) -> int:
            return os.readv(fd, (buffer,))  # a recv() without flags

        self.write_nowait = write_nowait
        self.send_all = send_all
        self.receive_nowait = receive_nowait
        self.receive_into = sock.recv_into
