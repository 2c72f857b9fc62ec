"""Helpers for connection tests on in-memory streams."""

from __future__ import annotations

import os
import uuid

import attrs
import trio
import trio.testing

from trio_p2p._codec import FrameDecoder
from trio_p2p._connection import LocalNode, PeerConnection, SendAll, WriteNowait
from trio_p2p._events import Event

LIMIT = 1 << 20


def node(name: str) -> LocalNode:
    return LocalNode(uuid.uuid4(), name, os.urandom(16), 1000, LIMIT)


@attrs.define
class Side:
    conn: PeerConnection
    events: trio.MemoryReceiveChannel[Event]


def make_side(
    stream: trio.abc.Stream,
    local: LocalNode,
    remote: LocalNode,
    *,
    dialer: bool,
    event_buffer: int = 1000,
    window: int = 100,
    interval: float = 1.0,
    timeout: float = 5.0,
    write_nowait: WriteNowait | None = None,
    send_all: SendAll | None = None,
) -> Side:
    send, receive = trio.open_memory_channel[Event](event_buffer)
    conn = PeerConnection(
        stream,
        local=local,
        hello=remote.hello(),
        address="memory",
        dialer=dialer,
        decoder=FrameDecoder(LIMIT),
        pending=[],
        events=send,
        send_window=window,
        heartbeat_interval=interval,
        heartbeat_timeout=timeout,
        write_nowait=write_nowait,
        send_all=send_all,
    )
    return Side(conn, receive)


class Cut:
    """Shared state of a two-way in-memory link that breaks after N bytes A->B."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.passed = 0
        self.broken = False
        self.receivers: list[trio.testing.MemoryReceiveStream] = []

    def break_link(self) -> None:
        self.broken = True
        for receiver in self.receivers:
            receiver.put_eof()


def cut_stream_pair(cut: Cut) -> tuple[trio.abc.Stream, trio.abc.Stream]:
    """Two staples streams; bytes A->B count toward the cut, which breaks both ways."""

    def one_way(
        counted: bool,
    ) -> tuple[trio.testing.MemorySendStream, trio.testing.MemoryReceiveStream]:
        send = trio.testing.MemorySendStream()
        receive = trio.testing.MemoryReceiveStream()
        cut.receivers.append(receive)

        async def pump() -> None:
            data = send.get_data_nowait()
            if cut.broken:
                raise trio.BrokenResourceError("link cut")
            if counted:
                room = cut.limit - cut.passed
                if len(data) >= room:
                    receive.put_data(data[:room])
                    cut.passed += room
                    cut.break_link()
                    raise trio.BrokenResourceError("link cut")
                cut.passed += len(data)
            receive.put_data(data)

        send.send_all_hook = pump
        return send, receive

    a_send, b_receive = one_way(counted=True)
    b_send, a_receive = one_way(counted=False)
    return (
        trio.StapledStream(a_send, a_receive),
        trio.StapledStream(b_send, b_receive),
    )


def direct_write_pair(
    plan: list[int | None],
) -> tuple[trio.abc.Stream, trio.abc.Stream, WriteNowait, list[int]]:
    """A memory stream pair plus a ``write_nowait`` for the first side.

    Each direct write follows the next step of *plan*: ``None`` writes nothing
    (``BlockingIOError``), a number writes at most that many bytes, -1 (and every
    write after the plan runs out) writes everything. Returns the streams, the
    writer and the byte counts of its calls (0 for ``BlockingIOError``).
    """
    a_send, b_receive = trio.testing.memory_stream_one_way_pair()
    b_send, a_receive = trio.testing.memory_stream_one_way_pair()
    steps = iter(plan)
    written: list[int] = []

    def write_nowait(data: bytearray) -> int:
        step = next(steps, -1)
        if step is None:
            written.append(0)
            raise BlockingIOError
        count = len(data) if step < 0 else min(step, len(data))
        if count:  # (an empty put would wake the reader with nothing to read)
            b_receive.put_data(bytes(data[:count]))
        written.append(count)
        return count

    return (
        trio.StapledStream(a_send, a_receive),
        trio.StapledStream(b_send, b_receive),
        write_nowait,
        written,
    )
