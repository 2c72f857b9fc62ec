"""The sans-I/O transfer state: both ends driven by hand, no sockets, no files."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_p2p import ProtocolError
from trio_p2p._messages import (
    FileAccept,
    FileCancel,
    FileChunk,
    FileConfirm,
    FileEnd,
    FileFrame,
    FileOffer,
    FileReject,
    FileVerdict,
)
from trio_p2p._transfer import (
    CONFIRM_EVERY,
    SEND_AHEAD,
    IncomingTransfer,
    OutgoingTransfer,
    Phase,
    Transfers,
)

DIGEST = b"d" * 32
MiB = 1024 * 1024


@attrs.define
class Pair:
    """A sender's and a receiver's tables with one transfer offered between them."""

    sender: Transfers
    receiver: Transfers
    out: OutgoingTransfer
    inc: IncomingTransfer
    chunked: int = 0

    @classmethod
    def offer(cls, size: int, chunk_size: int = 1000) -> Pair:
        sender, receiver = Transfers(), Transfers()
        out = OutgoingTransfer(uuid.uuid4(), "file.bin", size, chunk_size, 123)
        inc = receiver.receive(sender.add(out))
        assert isinstance(inc, IncomingTransfer)
        assert inc.phase is Phase.OFFERED
        assert (inc.name, inc.size, inc.chunk_size, inc.mtime_ns) == (
            "file.bin",
            size,
            chunk_size,
            123,
        )
        return cls(sender, receiver, out, inc)

    def accept(self, offset: int = 0) -> None:
        assert self.sender.receive(self.inc.accept(offset)) is self.out
        assert self.out.phase is Phase.ACTIVE
        assert self.out.sent == self.out.confirmed == self.out.start == offset

    def send_all(self, *, confirm: bool = True) -> None:
        """Send chunks while the sender may; confirm each as written."""
        while (step := self.out.next_chunk()) is not None:
            offset, length = step
            assert self.out.sent - self.out.confirmed < SEND_AHEAD
            assert self.receiver.receive(self.out.chunk(offset, b"x" * length)) is self.inc
            self.chunked += length
            if confirm and (frame := self.inc.written(self.inc.received)) is not None:
                assert self.sender.receive(frame) is self.out

    def end(self, seen: bytes | None = DIGEST, problem: str = "") -> FileVerdict:
        assert self.out.all_sent
        assert self.receiver.receive(self.out.end(DIGEST)) is self.inc
        assert self.inc.phase is Phase.ENDING
        verdict = self.inc.verdict(seen, problem)
        assert self.sender.receive(verdict) is self.out
        return verdict


@pytest.mark.parametrize(
    ("size", "chunk_size"),
    [(0, 1000), (1, 1000), (1000, 1000), (1001, 1000), (10 * MiB + 7, 256 * 1024)],
)
def test_a_transfer_runs_to_a_verified_verdict(size: int, chunk_size: int) -> None:
    pair = Pair.offer(size, chunk_size)
    pair.accept()
    pair.send_all()
    assert pair.chunked == size
    assert pair.inc.received == pair.inc.confirmed == size
    verdict = pair.end()
    assert verdict == FileVerdict(pair.out.id, True, "")
    assert pair.out.phase is pair.inc.phase is Phase.VERIFIED
    assert pair.out.confirmed == size


def test_confirmations_come_every_few_mib_and_at_the_end() -> None:
    pair = Pair.offer(10 * MiB + 5, MiB)
    pair.accept()
    confirmed = []
    while (step := pair.out.next_chunk()) is not None:
        pair.receiver.receive(pair.out.chunk(step[0], b"x" * step[1]))
        if (frame := pair.inc.written(pair.inc.received)) is not None:
            confirmed.append(frame.offset)
            pair.sender.receive(frame)
    assert confirmed == [4 * MiB, 8 * MiB, 10 * MiB + 5]
    assert 4 * MiB == CONFIRM_EVERY


def test_the_sender_waits_for_confirmations_beyond_the_send_ahead() -> None:
    pair = Pair.offer(3 * SEND_AHEAD, MiB)
    pair.accept()
    pair.send_all(confirm=False)
    assert pair.out.sent == SEND_AHEAD
    assert pair.out.next_chunk() is None
    pair.sender.receive(FileConfirm(pair.out.id, MiB))  # room for one more chunk
    assert pair.out.next_chunk() == (SEND_AHEAD, MiB)


@settings(max_examples=200)
@given(
    size=st.integers(0, 40 * MiB),
    chunk_size=st.sampled_from([1, 1000, 256 * 1024, MiB, 3 * MiB]),
    count=st.integers(1, 8),
    confirmed=st.integers(0, 40 * MiB),
    accepted=st.integers(0, 40 * MiB),
)
def test_next_chunks_are_the_steps_next_chunk_gives_one_by_one(
    size: int, chunk_size: int, count: int, confirmed: int, accepted: int
) -> None:
    """A batch is what next_chunk would hand out if each piece were taken in turn:
    consecutive, never past the file, never beyond the send-ahead window."""
    pair = Pair.offer(size, chunk_size)
    pair.accept(min(accepted, size))
    out = pair.out
    if out.sent < size:  # some bytes sent and (partly) confirmed
        first = min(size, out.sent + 2 * chunk_size)
        while (step := out.next_chunk()) is not None and step[0] < first:
            out.take(*step)
        out.on_confirm(FileConfirm(out.id, min(out.sent, out.start + confirmed)))
    batch = out.next_chunks(count)
    one_by_one: list[tuple[int, int]] = []
    copy = attrs.evolve(out)
    while len(one_by_one) < count and (step := copy.next_chunk()) is not None:
        one_by_one.append(step)
        copy.take(*step)
    assert batch == one_by_one
    for offset, length in batch:
        out.take(offset, length)
    assert out.sent == copy.sent


def test_a_chunk_taken_out_of_turn_is_refused() -> None:
    pair = Pair.offer(10 * MiB, MiB)
    pair.accept()
    with pytest.raises(ValueError, match="expected at 0"):
        pair.out.take(MiB, MiB)
    with pytest.raises(ValueError, match="does not fit"):
        pair.out.take(0, MiB + 1)
    pair.out.take(0, MiB)
    assert pair.out.next_chunks(2) == [(MiB, MiB), (2 * MiB, MiB)]


def test_a_resume_sends_only_the_rest() -> None:
    pair = Pair.offer(5000, 1000)
    pair.accept(3500)
    pair.send_all()
    assert pair.chunked == 1500
    assert pair.end().verified


@pytest.mark.parametrize(
    ("seen", "problem", "reason"),
    [
        (b"e" * 32, "", "digest does not match"),
        (None, "", "digest does not match"),
        (DIGEST, "disk full", "disk full"),
    ],
)
def test_a_failed_verdict_fails_both_ends(seen: bytes | None, problem: str, reason: str) -> None:
    pair = Pair.offer(10)
    pair.accept()
    pair.send_all()
    verdict = pair.end(seen, problem)
    assert not verdict.verified
    assert reason in verdict.reason
    assert pair.inc.phase is pair.out.phase is Phase.FAILED
    assert pair.out.failure is not None
    assert reason in pair.out.failure


def test_a_reject_fails_the_sender_with_its_reason() -> None:
    pair = Pair.offer(10)
    assert pair.sender.receive(pair.inc.reject("too large")) is pair.out
    assert pair.out.phase is Phase.FAILED
    assert pair.out.failure == "refused by the peer: too large"


def test_frames_that_crossed_a_cancel_are_ignored() -> None:
    pair = Pair.offer(10 * MiB, MiB)
    pair.accept()
    in_flight = [pair.out.chunk(*step_bytes(pair.out)) for _ in range(3)]
    cancel = pair.inc.cancel("the user said no")
    assert cancel is not None
    pair.receiver.end(pair.inc.id)
    for chunk in in_flight:  # were on the wire when the receiver cancelled
        assert pair.receiver.receive(chunk) is None
    assert pair.sender.receive(cancel) is pair.out
    assert pair.out.failure == "cancelled by the peer: the user said no"
    assert pair.out.cancel("again") is None  # already over: nothing to send
    pair.sender.end(pair.out.id)
    assert pair.sender.receive(FileConfirm(pair.out.id, MiB)) is None
    assert pair.sender.receive(FileCancel(pair.out.id, "crossed")) is None


def step_bytes(out: OutgoingTransfer) -> tuple[int, bytes]:
    step = out.next_chunk()
    assert step is not None
    return step[0], b"x" * step[1]


def offered_pair() -> Pair:
    pair = Pair.offer(5000, 1000)
    pair.accept()
    pair.receiver.receive(pair.out.chunk(0, b"x" * 1000))
    return pair


@pytest.mark.parametrize(
    ("side", "make", "match"),
    [
        ("receiver", lambda p: FileChunk(p.out.id, 0, b"x"), "expected 1000"),
        ("receiver", lambda p: FileChunk(p.out.id, 2000, b"x"), "expected 1000"),
        ("receiver", lambda p: FileChunk(p.out.id, 1000, b"x" * 1001), "at most 1000"),
        ("receiver", lambda p: FileEnd(p.out.id, DIGEST), "after 1000 of 5000"),
        ("receiver", lambda p: FileChunk(uuid.uuid4(), 0, b"x"), "unknown transfer"),
        ("receiver", lambda p: FileAccept(p.out.id, 0), "unknown transfer"),
        ("receiver", lambda p: FileOffer(p.out.id, "again", 1, 1, 0), "reuses"),
        ("receiver", lambda p: FileCancel(uuid.uuid4(), "who?"), "unknown transfer"),
        ("sender", lambda p: FileAccept(p.out.id, 0), "while it is active"),
        ("sender", lambda p: FileReject(p.out.id, "late"), "while it is active"),
        ("sender", lambda p: FileVerdict(p.out.id, True, ""), "while it is active"),
        ("sender", lambda p: FileConfirm(p.out.id, 1001), "1000 sent"),
        ("sender", lambda p: FileChunk(p.out.id, 0, b"x"), "unknown transfer"),
        ("sender", lambda p: FileEnd(p.out.id, DIGEST), "unknown transfer"),
    ],
)
def test_frames_out_of_order_are_protocol_errors(
    side: str, make: Callable[[Pair], FileFrame], match: str
) -> None:
    pair = offered_pair()
    frame = make(pair)
    table = pair.receiver if side == "receiver" else pair.sender
    with pytest.raises(ProtocolError, match=match):
        table.receive(frame)


def test_confirmations_may_not_go_backwards() -> None:
    pair = offered_pair()
    pair.sender.receive(FileConfirm(pair.out.id, 1000))
    with pytest.raises(ProtocolError, match="1000 were confirmed"):
        pair.sender.receive(FileConfirm(pair.out.id, 500))


def test_an_accept_past_the_end_is_a_protocol_error() -> None:
    pair = Pair.offer(10)
    with pytest.raises(ProtocolError, match="offset 11"):
        pair.sender.receive(FileAccept(pair.out.id, 11))


def test_local_misuse_raises_value_error() -> None:
    pair = Pair.offer(10, 4)
    with pytest.raises(ValueError, match="expected at"):
        pair.out.chunk(0, b"x")  # not accepted yet
    with pytest.raises(ValueError, match="every byte"):
        pair.out.end(DIGEST)
    pair.accept()
    with pytest.raises(ValueError, match="does not fit"):
        pair.out.chunk(0, b"x" * 5)
    with pytest.raises(ValueError, match="cannot accept"):
        pair.inc.accept()
    with pytest.raises(ValueError, match="no verdict"):
        pair.inc.verdict(DIGEST)


# ----------------------------------------------------------- any frame order

ids = [uuid.UUID(int=i) for i in range(1, 4)]
#: one step of a peer: (follow the protocol?, frame kind, which id, deviation)
steps = st.tuples(
    st.booleans(),
    st.integers(0, 7),
    st.integers(0, 2),
    st.sampled_from([0, 0, 0, 0, 0, 1, -1, 3]),
)


def expected_frame(table: Transfers, which: int, delta: int) -> FileFrame | None:
    """What a well-behaved peer sends next for one of the live transfers, off
    by *delta* (0 most of the time)."""
    live: list[IncomingTransfer | OutgoingTransfer] = sorted(
        [*table.incoming.values(), *table.outgoing.values()], key=lambda t: t.id
    )
    if not live:
        return None
    t = live[which % len(live)]
    if isinstance(t, IncomingTransfer):  # the peer sends this file
        if t.phase is Phase.ACTIVE and t.received < t.size:
            length = min(t.chunk_size, t.size - t.received) + (delta == 3)
            return FileChunk(t.id, max(0, t.received + (delta if delta != 3 else 0)), b"x" * length)
        if t.phase is Phase.ACTIVE:
            return FileEnd(t.id, DIGEST)
        return FileOffer(t.id, "again", 1, 1, 0) if delta else None
    if t.phase is Phase.OFFERED:
        return FileAccept(t.id, max(0, delta))
    if t.phase is Phase.ACTIVE:
        return FileConfirm(t.id, max(0, t.sent + (delta if delta != 3 else 0)))
    if t.phase is Phase.ENDING:
        return FileVerdict(t.id, delta == 0, "" if delta == 0 else "bad")
    return None


def any_frame(kind: int, which: int, delta: int) -> FileFrame:
    """Any file frame at all, for one of three ids."""
    tid = ids[which]
    choices: list[FileFrame] = [
        FileOffer(tid, "f", 7 + delta, 3, 0),
        FileAccept(tid, max(0, delta)),
        FileReject(tid, "no"),
        FileChunk(tid, max(0, delta), b"x" * 3),
        FileConfirm(tid, max(0, delta)),
        FileEnd(tid, DIGEST),
        FileVerdict(tid, delta == 0, "" if delta == 0 else "bad"),
        FileCancel(tid, "stop"),
    ]
    return choices[kind]


@settings(max_examples=1000)
@given(script=st.lists(steps, max_size=60), local=st.lists(st.integers(0, 9), max_size=60))
def test_any_frame_order_yields_only_protocol_errors(
    script: list[tuple[bool, int, int, int]], local: list[int]
) -> None:
    """Whatever a peer sends, in any order, the table either moves a transfer
    along a legal path or raises ProtocolError (after which the connection
    closes, so the run stops there); this node's own moves interleave."""
    table = Transfers()
    table.add(OutgoingTransfer(ids[0], "mine", 7, 3, 0))
    moves = iter(local)
    for follow, kind, which, delta in script:
        frame = expected_frame(table, which, delta) if follow else None
        try:
            table.receive(frame or any_frame(kind, which, delta))
        except ProtocolError:
            return
        act = next(moves, 9)
        for inc in list(table.incoming.values()):
            if inc.phase is Phase.OFFERED and act < 7:
                inc.accept(min(act % 3, inc.size))
            elif inc.phase is Phase.OFFERED and act == 7:
                inc.reject("no")
            elif inc.phase is Phase.ACTIVE:
                inc.written(inc.received)
            elif inc.phase is Phase.ENDING:
                inc.verdict(DIGEST if act else None)
            if act == 8:
                inc.cancel("enough")
        for out in list(table.outgoing.values()):
            if act < 8 and (step := out.next_chunk()) is not None:
                out.chunk(step[0], b"x" * step[1])
            if out.all_sent:
                out.end(DIGEST)
            if act == 8:
                out.cancel("enough")
        for done in [t for t in (*table.outgoing.values(), *table.incoming.values()) if t.done]:
            table.end(done.id)
        check_invariants(table)


def check_invariants(table: Transfers) -> None:
    for out in table.outgoing.values():
        assert 0 <= out.start <= out.confirmed <= out.sent <= out.size
        assert out.phase is not Phase.ENDING or out.sent == out.size
    for inc in table.incoming.values():
        assert 0 <= inc.start <= inc.confirmed <= inc.received <= inc.size
        assert inc.phase is not Phase.ENDING or inc.received == inc.size
