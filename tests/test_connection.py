"""PeerConnection on in-memory streams: handshake, order, acks, heartbeats, cuts."""

from __future__ import annotations

import contextlib
import logging
import re
import uuid
from unittest import mock

import pytest
import trio
import trio.testing
from hypothesis import example, given, settings
from hypothesis import strategies as st

import trio_p2p._connection as connection
from trio_p2p import (
    DeliveryError,
    HandshakeError,
    MessageReceived,
    PeerNotConnectedError,
    ProtocolError,
    Text,
    _connection,
)
from trio_p2p._codec import FrameDecoder, encode_data, encode_frame
from trio_p2p._connection import (
    CHUNK_SLOTS,
    QUEUE_LIMIT,
    STALLED_QUEUE,
    receive_hello,
    send_frame,
)
from trio_p2p._messages import Data, FileChunk, FileReject, Goodbye, GoodbyeCode, Message, Ping

from .conn_helpers import (
    LIMIT,
    Cut,
    Side,
    cut_stream_pair,
    direct_write_pair,
    make_side,
    node,
)


async def received_texts(side: Side, count: int) -> list[str]:
    texts = []
    for _ in range(count):
        event = await side.events.receive()
        assert isinstance(event, MessageReceived)
        assert isinstance(event.message.content, Text)
        texts.append(event.message.content.text)
    return texts


async def test_hello_exchange_on_memory_streams() -> None:
    with trio.fail_after(5):
        a, b = trio.testing.memory_stream_pair()
        alice = node("Alice")
        await send_frame(a, alice.hello())
        hello, rest = await receive_hello(b, FrameDecoder(LIMIT))
        assert hello == alice.hello()
        assert rest == []
        await send_frame(b, Goodbye(GoodbyeCode.DUPLICATE, "already connected"))
        with pytest.raises(HandshakeError, match="already connected"):
            await receive_hello(a, FrameDecoder(LIMIT))


async def test_first_frame_must_be_a_hello() -> None:
    with trio.fail_after(5):
        a, b = trio.testing.memory_stream_pair()
        await send_frame(a, Ping())
        with pytest.raises(ProtocolError, match="expected a hello"):
            await receive_hello(b, FrameDecoder(LIMIT))
        await a.aclose()
        with pytest.raises(HandshakeError, match="closed"):
            await receive_hello(b, FrameDecoder(LIMIT))


async def test_messages_arrive_in_order_and_are_acknowledged() -> None:
    with trio.fail_after(10):
        sa, sb = trio.testing.memory_stream_pair()
        alice, bob = node("Alice"), node("Bob")
        a = make_side(sa, alice, bob, dialer=True, window=16)
        b = make_side(sb, bob, alice, dialer=False)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.conn.run)
            nursery.start_soon(b.conn.run)
            sent = [await a.conn.send(Text(f"m{i}")) for i in range(100)]
            assert await received_texts(b, 100) == [f"m{i}" for i in range(100)]
            await a.conn.flush()
            assert a.conn.session.in_flight == 0
            assert a.conn.messages_acknowledged == 100
            assert all(m.sender_id == alice.node_id for m in sent)
            # acknowledgements are coalesced: far fewer ack frames than messages
            assert b.conn.frames_sent < 50
            await a.conn.close("test over")
            assert a.conn.reason == "closed by this node: test over"
        assert b.conn.reason is not None
        assert "test over" in b.conn.reason


async def test_message_text_waiting_for_the_application_is_bounded(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The event channel is bounded by a number of events; the text of the
    messages in it is bounded too: the reader waits for the application."""
    monkeypatch.setattr(connection, "EVENT_TEXT_LIMIT", 10_000)
    with trio.fail_after(60):
        sa, sb = trio.testing.memory_stream_pair()
        alice, bob = node("Alice"), node("Bob")
        a = make_side(sa, alice, bob, dialer=True, window=100, interval=100, timeout=1000)
        b = make_side(sb, bob, alice, dialer=False, event_buffer=1000, interval=100, timeout=1000)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.conn.run)
            nursery.start_soon(b.conn.run)
            for i in range(50):
                await a.conn.send(Text(f"{i:04}" + "x" * 996))
            await trio.sleep(5)  # the application reads nothing meanwhile
            waiting = b.events.statistics().current_buffer_used
            assert 9 <= waiting <= 11  # (10,000 characters), not all 50
            texts = await received_texts(b, 50)
            assert [t[:4] for t in texts] == [f"{i:04}" for i in range(50)]
            await a.conn.flush()
            nursery.cancel_scope.cancel()


async def test_a_reader_waiting_for_an_application_that_is_gone_does_not_hang(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(connection, "EVENT_TEXT_LIMIT", 10_000)
    with trio.fail_after(60):
        sa, sb = trio.testing.memory_stream_pair()
        alice, bob = node("Alice"), node("Bob")
        a = make_side(sa, alice, bob, dialer=True, window=100, interval=100, timeout=1000)
        b = make_side(sb, bob, alice, dialer=False, event_buffer=1000, interval=100, timeout=1000)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.conn.run)
            nursery.start_soon(b.conn.run)
            for _ in range(11):  # over the limit: Bob's reader waits
                await a.conn.send(Text("x" * 1000))
            await trio.sleep(1)
            await b.events.aclose()  # the application goes away
            await a.conn.send(Text("one more"))
            with trio.move_on_after(10):
                await b.conn._done.wait()
            assert b.conn.reason is not None, "the reader hung"
            nursery.cancel_scope.cancel()


async def test_window_bounds_nowait_sends() -> None:
    with trio.fail_after(5):
        sa, _sb = trio.testing.memory_stream_pair()
        a = make_side(sa, node("Alice"), node("Bob"), dialer=True, window=3)
        for i in range(3):
            a.conn.send_nowait(Text(str(i)))
        with pytest.raises(trio.WouldBlock):
            a.conn.send_nowait(Text("too many"))
        assert a.conn.session.in_flight == 3


async def test_unwritten_bytes_bound_nowait_sends_and_send_waits_for_the_writer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        _, from_bob = trio.testing.memory_stream_one_way_pair()
        a = make_side(
            trio.StapledStream(StuckSend(), from_bob),
            node("Alice"),
            node("Bob"),
            dialer=True,
            window=10_000,
            interval=100,
            timeout=1000,
        )
        text = Text("x" * 1000)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.conn.run)
            await trio.testing.wait_all_tasks_blocked()

            def fill() -> int:
                """Send with _nowait until WouldBlock; return how many were queued."""
                sent = 0
                while True:
                    try:
                        a.conn.send_nowait(text)
                    except trio.WouldBlock:
                        return sent
                    sent += 1

            first = fill()  # nothing written yet: the queue limit, not the window
            assert 0 < first < QUEUE_LIMIT // 1000 + 2
            assert len(a.conn._outgoing) < QUEUE_LIMIT + 1100
            # send waits for the writer to take the queue (its write then sticks)
            await a.conn.send(text)
            second = fill()
            assert 0 < second < QUEUE_LIMIT // 1000 + 2
            # now the writer is stuck: send waits, and queues nothing meanwhile
            with trio.move_on_after(10) as scope:
                await a.conn.send(text)
            assert scope.cancelled_caught
            assert a.conn.session.in_flight == first + 1 + second
            assert len(a.conn._outgoing) < QUEUE_LIMIT + 1100
            nursery.cancel_scope.cancel()


async def test_a_peer_reading_none_of_the_answers_it_asks_for_is_disconnected(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """File-transfer answers are queued without waiting (a peer's offers are
    answered as they come): a queue that only grows ends the connection."""
    with trio.fail_after(60):
        _, from_bob = trio.testing.memory_stream_one_way_pair()
        a = make_side(
            trio.StapledStream(StuckSend(), from_bob),
            node("Alice"),
            node("Bob"),
            dialer=True,
            interval=100,
            timeout=1000,
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.conn.run)
            await trio.testing.wait_all_tasks_blocked()
            queued: list[FileReject] = []

            def refuse_many() -> None:
                for _ in range(100_000):  # (bounded: a regression fails, not hangs)
                    queued.append(FileReject(uuid.uuid4(), "x" * 500))
                    a.conn.send_frame_nowait(queued[-1])

            with pytest.raises(PeerNotConnectedError, match="reads nothing"):
                refuse_many()
            assert len(queued) > STALLED_QUEUE // 600
            assert len(a.conn._outgoing) < a.conn.max_body + STALLED_QUEUE + 600
            assert a.conn.failure == "stalled"
        # (the connection ended: its run returned)
        assert a.conn.reason is not None
        assert "reads nothing of what it is sent" in a.conn.reason


@settings(max_examples=60, deadline=None)
@given(
    plan=st.lists(st.none() | st.integers(-1, 300), max_size=40),
    kinds=st.lists(st.booleans(), min_size=1, max_size=60),
)
@example(plan=[0], kinds=[True])  # a direct write that takes nothing
@example(plan=[None, 5, 0, -1], kinds=[True, True, False, True, True])
async def test_direct_writes_keep_order_whatever_they_manage_to_write(
    plan: list[int | None], kinds: list[bool]
) -> None:
    with trio.fail_after(10), mock.patch.object(_connection, "DIRECT_WRITE_IDLE", 0.0):
        sa, sb, write_nowait, written = direct_write_pair(plan)
        alice, bob = node("Alice"), node("Bob")
        a = make_side(sa, alice, bob, dialer=True, window=1000, write_nowait=write_nowait)
        b = make_side(sb, bob, alice, dialer=False)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.conn.run)
            nursery.start_soon(b.conn.run)
            await trio.testing.wait_all_tasks_blocked()
            texts = [f"m{i}" for i in range(len(kinds))]
            for text, awaited in zip(texts, kinds, strict=True):
                if awaited:  # may write directly
                    await a.conn.send(Text(text))
                else:
                    a.conn.send_nowait(Text(text))
            assert await received_texts(b, len(texts)) == texts
            await a.conn.flush()
            if kinds[0]:  # the first send found the connection idle
                assert written
            nursery.cancel_scope.cancel()


async def test_only_a_send_on_an_idle_connection_writes_directly(
    mock_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(10):
        sa, sb, write_nowait, written = direct_write_pair([])
        alice, bob = node("Alice"), node("Bob")
        a = make_side(sa, alice, bob, dialer=True, write_nowait=write_nowait)
        b = make_side(sb, bob, alice, dialer=False)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.conn.run)
            nursery.start_soon(b.conn.run)
            mock_clock.jump(1)
            await a.conn.send(Text("after a pause"))
            assert len(written) == 1
            for i in range(5):  # a burst: the clock has not moved, the writer batches
                await a.conn.send(Text(f"burst {i}"))
            assert len(written) == 1
            await trio.testing.wait_all_tasks_blocked()
            mock_clock.jump(1)
            await a.conn.send(Text("after another pause"))
            assert len(written) == 2
            texts = await received_texts(b, 7)
            assert texts == [
                "after a pause",
                *(f"burst {i}" for i in range(5)),
                "after another pause",
            ]
            nursery.cancel_scope.cancel()


async def test_a_loop_of_sends_goes_out_in_a_few_writes(
    mock_clock: trio.testing.MockClock,
) -> None:
    """Each ``await send`` queues one message per scheduler turn: the writer,
    woken soon after its last write, lets the loop add more before it writes
    (it wrote 1.5 messages a write when it wrote whatever was queued)."""
    with trio.fail_after(10):
        sa, sb = trio.testing.memory_stream_pair()
        writes: list[int] = []

        async def counting_send_all(data: bytes | bytearray | memoryview) -> None:
            writes.append(len(data))
            await sa.send_all(data)

        alice, bob = node("Alice"), node("Bob")
        a = make_side(sa, alice, bob, dialer=True, send_all=counting_send_all)
        b = make_side(sb, bob, alice, dialer=False)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.conn.run)
            nursery.start_soon(b.conn.run)
            await trio.testing.wait_all_tasks_blocked()
            before = len(writes)
            for i in range(40):  # (the clock stands still: every send is "soon")
                await a.conn.send(Text(f"m{i}"))
            assert await received_texts(b, 40) == [f"m{i}" for i in range(40)]
            assert len(writes) - before <= 4
            nursery.cancel_scope.cancel()


async def test_a_busy_scheduler_does_not_hold_a_batch_back(
    mock_clock: trio.testing.MockClock,
) -> None:
    """A loop of sends while another task takes 0.2 ms per turn (the mock clock
    jumps): the writer batches, but no message waits much more than
    COALESCE_TIME before it is written."""
    with trio.fail_after(10):
        sa, sb = trio.testing.memory_stream_pair()
        written_at: dict[bytes, float] = {}
        writes = 0

        async def timed_send_all(data: bytes | bytearray | memoryview) -> None:
            nonlocal writes
            writes += 1
            for text in re.findall(rb"m\d{4}", bytes(data)):
                written_at[text] = trio.current_time()
            await sa.send_all(data)

        alice, bob = node("Alice"), node("Bob")
        a = make_side(sa, alice, bob, dialer=True, send_all=timed_send_all, window=4096)
        b = make_side(sb, bob, alice, dialer=False, window=4096)

        async def busy() -> None:
            while True:
                mock_clock.jump(0.0002)
                await trio.lowlevel.checkpoint()

        queued_at: dict[bytes, float] = {}
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.conn.run)
            nursery.start_soon(b.conn.run)
            await trio.testing.wait_all_tasks_blocked()
            writes = 0
            nursery.start_soon(busy)
            for i in range(1000):
                queued_at[b"m%04d" % i] = trio.current_time()
                await a.conn.send(Text(f"m{i:04d}"))
            assert await received_texts(b, 1000) == [f"m{i:04d}" for i in range(1000)]
            nursery.cancel_scope.cancel()
        waits = [written_at[text] - queued for text, queued in queued_at.items()]
        assert writes < 500  # batched...
        # ...but never for long: COALESCE_TIME (1 ms) and a few turns; without
        # that bound the first batch waited 147 ms here (it grew to 64 KiB)
        assert max(waits) < 0.005


async def test_an_answer_carries_the_ack_of_the_question_in_one_write() -> None:
    with trio.fail_after(10), mock.patch.object(_connection, "DIRECT_WRITE_IDLE", 0.0):
        sb, sa, write_nowait, written = direct_write_pair([])
        alice, bob = node("Alice"), node("Bob")
        b = make_side(sb, bob, alice, dialer=False, write_nowait=write_nowait)
        a = make_side(sa, alice, bob, dialer=True)

        async def answer() -> None:
            assert await received_texts(b, 1) == ["question"]
            await b.conn.send(Text("answer"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.conn.run)
            nursery.start_soon(b.conn.run)
            nursery.start_soon(answer)
            await trio.testing.wait_all_tasks_blocked()
            await a.conn.send(Text("question"))
            assert await received_texts(a, 1) == ["answer"]
            await a.conn.flush()  # the question is acknowledged...
            await trio.testing.wait_all_tasks_blocked()
            # ...by the write that carried the answer: Bob wrote once, nothing else
            assert len(written) == 1
            assert a.conn.bytes_received == written[0]
            assert b.conn.frames_sent == 2  # the answer and the ack
            nursery.cancel_scope.cancel()


class GatedWriter:
    """A send_all that records each write and returns only when let through."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.writes: list[bytes] = []
        self.gate = trio.Semaphore(0)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))
        await self.gate.acquire()
        await self.stream.send_all(data)


def gated_side() -> tuple[Side, GatedWriter]:
    """Alice's side of a memory stream pair, writing through a GatedWriter."""
    sa, _sb = trio.testing.memory_stream_pair()
    gated = GatedWriter(sa)
    return make_side(sa, node("Alice"), node("Bob"), dialer=True, send_all=gated.send_all), gated


def chunk_frame(index: int) -> memoryview:
    return memoryview(
        encode_frame(FileChunk(uuid.UUID(int=7), index * 1000, bytes([index]) * 1000))
    )


async def test_queued_chunks_are_written_whole_and_messages_go_between_them() -> None:
    """Chunk frames go out in order, each whole and uncopied; a message queued
    meanwhile waits only for the chunk being written, not for the others; each
    chunk's event is set once it is written."""
    with trio.fail_after(10):
        a, gated = gated_side()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.conn.run)
            frames = [chunk_frame(i) for i in range(3)]
            events = [await a.conn.send_chunk(frame) for frame in frames]
            await trio.testing.wait_all_tasks_blocked()
            assert gated.writes == [bytes(frames[0])]  # the writer is in the first chunk
            a.conn.send_nowait(Text("meanwhile"))
            for done in range(1, 4):
                gated.gate.release()
                await trio.testing.wait_all_tasks_blocked()
                assert [e.is_set() for e in events] == [True] * done + [False] * (3 - done)
                gated.gate.release()  # lets the next write (the message, a chunk) through
                await trio.testing.wait_all_tasks_blocked()
            decoded = FrameDecoder(LIMIT).feed(b"".join(gated.writes))
            kinds = [type(frame).__name__ for frame in decoded]
            assert kinds == ["FileChunk", "Data", "FileChunk", "FileChunk"]
            message = decoded[1]
            assert isinstance(message, Data)
            assert message.message.content == Text("meanwhile")
            assert [f for f in decoded if isinstance(f, FileChunk)] == [
                FileChunk(uuid.UUID(int=7), i * 1000, bytes([i]) * 1000) for i in range(3)
            ]
            assert a.conn.bytes_sent == sum(map(len, gated.writes))
            nursery.cancel_scope.cancel()


async def test_chunks_wait_for_a_slot_and_are_released_when_the_connection_ends() -> None:
    with trio.fail_after(10):
        a, gated = gated_side()  # (its gate stays shut: nothing is ever written)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.conn.run)
            events = [await a.conn.send_chunk(chunk_frame(i)) for i in range(CHUNK_SLOTS)]
            with trio.move_on_after(0.2) as waited:  # every slot is taken
                await a.conn.send_chunk(chunk_frame(99))
            assert waited.cancelled_caught
            assert gated.writes == [bytes(chunk_frame(0))]
            a.conn._finish("test over")
        assert all(event.is_set() for event in events)  # the buffers are free again
        with pytest.raises(PeerNotConnectedError):
            await a.conn.send_chunk(chunk_frame(0))


async def test_oversized_message_is_refused_before_it_is_numbered() -> None:
    with trio.fail_after(5):
        sa, _sb = trio.testing.memory_stream_pair()
        a = make_side(sa, node("Alice"), node("Bob"), dialer=True)
        with pytest.raises(ValueError, match="frame limit"):
            a.conn.send_nowait(Text("x" * LIMIT))
        assert a.conn.session.last_sent == 0


async def test_flush_raises_when_the_connection_ends_first() -> None:
    with trio.fail_after(5):
        sa, sb = trio.testing.memory_stream_pair()
        a = make_side(sa, node("Alice"), node("Bob"), dialer=True)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.conn.run)
            a.conn.send_nowait(Text("lost"))
            await sb.aclose()
            with pytest.raises(DeliveryError) as info:
                await a.conn.flush()
        assert [m.content for m in info.value.messages] == [Text("lost")]
        assert a.conn.reason is not None


async def test_silent_peer_times_out(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(60):
        sa, _silent = trio.testing.memory_stream_pair()
        a = make_side(sa, node("Alice"), node("Bob"), dialer=True, interval=1, timeout=5)
        start = trio.current_time()
        reason = await a.conn.run()
        elapsed = trio.current_time() - start
        assert "heartbeat timeout" in reason
        assert 5 <= elapsed <= 5.1


async def test_idle_healthy_peers_do_not_time_out(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(120):
        sa, sb = trio.testing.memory_stream_pair()
        alice, bob = node("Alice"), node("Bob")
        a = make_side(sa, alice, bob, dialer=True, interval=1, timeout=5)
        b = make_side(sb, bob, alice, dialer=False, interval=1, timeout=5)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.conn.run)
            nursery.start_soon(b.conn.run)
            await trio.sleep(60)
            assert a.conn.is_open
            assert b.conn.is_open
            assert a.conn.frames_received >= 50  # pings and pongs kept it alive
            nursery.cancel_scope.cancel()


async def test_slow_application_does_not_make_a_healthy_peer_look_dead(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(120):
        sa, sb = trio.testing.memory_stream_pair()
        alice, bob = node("Alice"), node("Bob")
        a = make_side(sa, alice, bob, dialer=True, window=50, interval=1, timeout=5)
        b = make_side(sb, bob, alice, dialer=False, event_buffer=1, interval=1, timeout=5)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.conn.run)
            nursery.start_soon(b.conn.run)
            for i in range(20):
                a.conn.send_nowait(Text(str(i)))
            await trio.sleep(30)  # Bob's application reads nothing for 6 timeouts
            assert a.conn.is_open
            assert b.conn.is_open
            assert await received_texts(b, 20) == [str(i) for i in range(20)]
            await a.conn.flush()
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("sender", "name", "seq", "reason_part"),
    [
        pytest.param("other", "Alice", 1, "claims sender", id="forged-sender-id"),
        pytest.param("alice", "Admin", 1, "sender name", id="forged-sender-name"),
        pytest.param("alice", "Alice", 2, "out of order", id="sequence-gap"),
    ],
)
async def test_a_message_that_breaks_the_session_is_a_protocol_error(
    sender: str, name: str, seq: int, reason_part: str
) -> None:
    with trio.fail_after(5):
        sa, sb = trio.testing.memory_stream_pair()
        alice, bob = node("Alice"), node("Bob")
        b = make_side(sb, bob, alice, dialer=False)
        sender_id = alice.node_id if sender == "alice" else uuid.uuid4()
        message = Message(uuid.uuid4(), sender_id, name, 0.0, Text("hi"))
        await sa.send_all(encode_data(seq, message))
        reason = await b.conn.run()
        assert reason.startswith("protocol error")
        assert reason_part in reason
        assert b.conn.failure == "protocol"


async def run_cut(limit: int, count: int) -> tuple[list[Message], list[Message], list[Message]]:
    """Send *count* messages over a link cut after *limit* bytes; return
    (sent, received, unacknowledged)."""
    cut = Cut(limit)
    sa, sb = cut_stream_pair(cut)
    alice, bob = node("Alice"), node("Bob")
    a = make_side(sa, alice, bob, dialer=True, window=count)
    b = make_side(sb, bob, alice, dialer=False)
    received: list[Message] = []

    async def collect() -> None:
        async for event in b.events:
            assert isinstance(event, MessageReceived)
            received.append(event.message)

    sent: list[Message] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(collect)

        async def run_both() -> None:
            async with trio.open_nursery() as inner:
                inner.start_soon(a.conn.run)
                inner.start_soon(b.conn.run)
                for i in range(count):
                    try:
                        sent.append(a.conn.send_nowait(Text(f"m{i}")))
                    except PeerNotConnectedError:
                        assert cut.broken
                        break
                    if i % 3 == 0:
                        await trio.lowlevel.checkpoint()
                with trio.move_on_after(1), contextlib.suppress(DeliveryError):
                    await a.conn.flush()
                # if no cut happened, close deliberately
                await a.conn.close("done")
            await b.conn._events.aclose()

        nursery.start_soon(run_both)
    return sent, received, list(a.conn.session.unacknowledged())


def check_no_silent_loss(
    sent: list[Message], received: list[Message], unacked: list[Message]
) -> None:
    assert received == sent[: len(received)], "received must be an in-order prefix of sent"
    assert unacked == sent[len(sent) - len(unacked) :], "unacked must be a suffix of sent"
    assert len(received) + len(unacked) >= len(sent), "a message was lost in silence"
    # nothing received twice
    assert len({m.id for m in received}) == len(received)


async def test_stream_cut_at_every_byte_offset_loses_nothing_in_silence() -> None:
    with trio.fail_after(120):
        count = 6
        full = sum(
            len(
                encode_data(i + 1, Message(uuid.uuid4(), uuid.uuid4(), "Alice", 0.0, Text(f"m{i}")))
            )
            for i in range(count)
        )
        for limit in range(full + 60):
            sent, received, unacked = await run_cut(limit, count)
            check_no_silent_loss(sent, received, unacked)
            if limit == 0:
                assert received == []


@settings(max_examples=40, deadline=None)
@given(limit=st.integers(0, 20000), count=st.integers(1, 120))
async def test_stream_cut_anywhere_in_long_runs(limit: int, count: int) -> None:
    with trio.fail_after(30):
        sent, received, unacked = await run_cut(limit, count)
        check_no_silent_loss(sent, received, unacked)


class StuckSend(trio.abc.SendStream):
    """A send side whose writes never complete (a peer that reads nothing)."""

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.sleep_forever()

    async def wait_send_all_might_not_block(self) -> None:
        await trio.sleep_forever()

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


async def test_a_ping_flood_does_not_grow_the_outgoing_buffer() -> None:
    with trio.fail_after(10):
        to_bob, from_alice = trio.testing.memory_stream_one_way_pair()
        alice, bob = node("Alice"), node("Bob")
        b = make_side(trio.StapledStream(StuckSend(), from_alice), bob, alice, dialer=False)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(b.conn.run)
            ping = encode_frame(Ping())
            for _ in range(200):
                await to_bob.send_all(ping * 500)
                await trio.testing.wait_all_tasks_blocked()
            assert b.conn.frames_received == 100_000
            assert len(b.conn._outgoing) < 64
            nursery.cancel_scope.cancel()


async def test_frames_are_logged_at_debug_only(caplog: pytest.LogCaptureFixture) -> None:
    with trio.fail_after(5):
        for level, expect in ((logging.INFO, False), (logging.DEBUG, True)):
            caplog.clear()
            caplog.set_level(level, logger="trio_p2p")
            sa, sb = trio.testing.memory_stream_pair()
            alice, bob = node("Alice"), node("Bob")
            a = make_side(sa, alice, bob, dialer=True)
            b = make_side(sb, bob, alice, dialer=False)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(a.conn.run)
                nursery.start_soon(b.conn.run)
                await a.conn.send(Text("logged"))
                await received_texts(b, 1)
                await a.conn.flush()
                nursery.cancel_scope.cancel()
            frames = [r for r in caplog.records if r.levelno == logging.DEBUG]
            assert bool(frames) is expect
            if expect:
                text = "\n".join(r.getMessage() for r in frames)
                assert "-> Bob: message 1" in text
                assert "<- Alice: Data(seq=1" in text
                assert "-> Alice: Ack(seq=1)" in text
