"""A session carried over cut connections: exactly once, in order, nothing lost.

Sans-I/O below the messenger: each connection is a pair of in-memory streams
that breaks after a chosen number of bytes; the two sessions outlive it, and
the next connection resumes them as the hellos would (each side learns what
the other has delivered).
"""

from __future__ import annotations

import contextlib
import uuid

import pytest
import trio
from hypothesis import event as note_event
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_p2p import DeliveryError, Message, MessageReceived, PeerNotConnectedError, Text
from trio_p2p._codec import FrameDecoder
from trio_p2p._connection import LocalNode, PeerConnection
from trio_p2p._errors import ProtocolError
from trio_p2p._events import Event
from trio_p2p._session import Session

from .conn_helpers import LIMIT, Cut, cut_stream_pair, make_side, node


def connect(
    stream: trio.abc.Stream,
    local: LocalNode,
    remote: LocalNode,
    session: Session,
    resume_from: int,
    events: trio.MemorySendChannel[Event],
) -> PeerConnection:
    conn = PeerConnection(
        stream,
        local=local,
        hello=remote.hello(),
        address="memory",
        dialer=local.name == "Alice",
        decoder=FrameDecoder(LIMIT),
        pending=[],
        events=events,
        send_window=session.window,
        heartbeat_interval=1.0,
        heartbeat_timeout=5.0,
        session=session,
    )
    conn.resume(resume_from)
    return conn


def message(i: int, sender: LocalNode | None = None) -> Message:
    sender_id = uuid.uuid4() if sender is None else sender.node_id
    return Message(uuid.uuid4(), sender_id, "Alice", 0.0, Text(f"m{i}"))


@settings(max_examples=100, deadline=None)
@given(
    cuts=st.lists(st.integers(0, 4000), max_size=5),
    count=st.integers(1, 80),
    window=st.integers(1, 100),
    event_buffer=st.sampled_from([1, 64, 10_000]),
    data=st.data(),
)
async def test_a_session_resumed_over_cut_connections_delivers_exactly_once(
    cuts: list[int], count: int, window: int, event_buffer: int, data: st.DataObject
) -> None:
    """Connections cut after any number of bytes (either way), messages sent while
    no connection is up, an application that keeps up or falls behind: across
    the connections, the application gets every message once, in order."""
    with trio.fail_after(20):
        alice, bob = node("Alice"), node("Bob")
        # each side's session with the other, living across connections
        at_alice = Session(bob.node_id, bob.nonce, window)
        at_bob = Session(alice.node_id, alice.nonce, window)
        events_in, events = trio.open_memory_channel[Event](event_buffer)
        received: list[Message] = []
        sent: list[Message] = []
        texts = iter(range(count))

        async def application() -> None:
            async for event in events:
                assert isinstance(event, MessageReceived)
                received.append(event.message)
                if len(received) % 7 == 0:
                    await trio.sleep(0.001)  # (falls behind now and then)

        async with trio.open_nursery() as outer:
            outer.start_soon(application)
            for limit in [*cuts, None]:  # the last connection is not cut
                # messages sent while no connection is up wait in the session
                for _ in range(data.draw(st.integers(0, 5), label="queued while down")):
                    if at_alice.window_full or (i := next(texts, None)) is None:
                        break
                    queued = message(i, alice)
                    at_alice.number(queued)
                    sent.append(queued)
                cut = Cut(limit if limit is not None else 1 << 62)
                sa, sb = cut_stream_pair(cut)
                # the hellos: each side says what it has delivered
                resent = at_alice.last_sent - at_bob.last_received
                note_event(f"sent again on a connection: {min(resent, 3)}{'+' * (resent > 3)}")
                a = connect(sa, alice, bob, at_alice, at_bob.last_received, events_in)
                b = connect(sb, bob, alice, at_bob, at_alice.last_received, events_in)
                live = data.draw(st.integers(0, count), label="sent while up")
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(a.run)
                    nursery.start_soon(b.run)
                    for _ in range(live if limit is not None else count):
                        if (i := next(texts, None)) is None:
                            break
                        try:
                            sent.append(await a.send(Text(f"m{i}")))
                        except PeerNotConnectedError:
                            assert cut.broken
                            texts = iter([i, *texts])  # (sent on a later connection)
                            break
                    with trio.move_on_after(1), contextlib.suppress(DeliveryError):
                        await a.flush()
                    await a.close("done")
                    await b.close("done")
                note_event(f"connection cut: {cut.broken}")
            events_in.close()  # the application takes what is left, then stops
        assert received == sent  # every one, once, in order
        assert [m.content for m in sent] == [Text(f"m{i}") for i in range(len(sent))]
        assert at_alice.in_flight == 0


def test_a_resume_point_outside_the_session_is_a_protocol_error() -> None:
    session = Session(uuid.uuid4(), b"n" * 16, 10)
    for i in range(3):
        session.number(message(i))
    session.acknowledge(1)
    with pytest.raises(ProtocolError, match="resumes after message 4"):
        session.resume(4)  # never sent
    with pytest.raises(ProtocolError, match="resumes after message 0"):
        session.resume(0)  # it acknowledged 1 already
    assert [m.content for _, m in session.resume(2)] == [Text("m2")]
    assert session.in_flight == 1


async def test_a_session_of_another_process_is_refused() -> None:
    alice, bob = node("Alice"), node("Bob")
    other_process = Session(bob.node_id, b"x" * 16, 10)
    sa, _ = trio.testing.memory_stream_pair()
    send, _receive = trio.open_memory_channel[Event](1)
    with pytest.raises(ValueError, match="another peer or process"):
        connect(sa, alice, bob, other_process, 0, send)


async def test_a_message_placed_while_the_application_catches_up_counts_as_delivered(
    mock_clock: trio.testing.MockClock,
) -> None:
    """The reader, held back by a full event channel, places a message and waits
    a moment for the application to catch up; a connection cut in that moment
    must not make a resumed session deliver the message again."""
    with trio.fail_after(10):
        alice, bob = node("Alice"), node("Bob")
        sa, sb = trio.testing.memory_stream_pair()
        a = make_side(sa, alice, bob, dialer=True, window=200)
        b = make_side(sb, bob, alice, dialer=False, event_buffer=64)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.conn.run)
            nursery.start_soon(b.conn.run)
            for i in range(65):
                a.conn.send_nowait(Text(f"m{i}"))
            await trio.testing.wait_all_tasks_blocked()
            assert b.conn.session.last_received == 64  # the 65th waits for room
            await b.events.receive()  # the application takes one...
            await trio.testing.wait_all_tasks_blocked()  # ...the 65th is placed
            assert b.events.statistics().current_buffer_used == 64
            b.conn._finish("the link is cut")  # (the clock stands: still catching up)
            a.conn._finish("the link is cut")
        assert b.conn.session.last_received == 65
