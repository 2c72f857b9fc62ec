"""Direct socket I/O (trio_p2p._socketio) on a real socket pair."""

from __future__ import annotations

import os
import socket

import pytest
import trio

from trio_p2p._socketio import SocketIO


async def test_send_all_writes_everything_through_a_small_send_buffer() -> None:
    """A send buffer far smaller than the data: send_all waits for room as
    often as needed and the peer gets every byte, in order."""
    with trio.fail_after(10):
        a, b = trio.socket.socketpair()
        with a, b:
            a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            data = os.urandom(4 * 1024 * 1024)
            received = bytearray()

            async def read_all() -> None:
                while len(received) < len(data):
                    chunk = await b.recv(65536)
                    assert chunk
                    received.extend(chunk)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(read_all)
                await SocketIO(a).send_all(memoryview(data))
            assert received == data


async def test_receives_without_waiting_say_when_nothing_has_arrived() -> None:
    with trio.fail_after(10):
        a, b = trio.socket.socketpair()
        with a, b:
            io = SocketIO(b)
            buffer = bytearray(100)
            with pytest.raises(BlockingIOError):
                io.receive_nowait(memoryview(buffer))
            assert SocketIO(a).write_nowait(b"hello") == 5
            assert io.receive_nowait(memoryview(buffer)) == 5
            assert buffer[:5] == b"hello"
            await a.send(b"again")
            assert await io.receive_into(memoryview(buffer)[5:]) == 5
            assert buffer[:10] == b"helloagain"
            a.shutdown(socket.SHUT_WR)
            assert io.receive_nowait(memoryview(buffer)) == 0  # the end of the stream
