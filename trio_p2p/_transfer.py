"""File transfers as sans-I/O state: offer, accept, chunks, confirmations, verdict.

No sockets, no files, no threads. The connection tasks read and write the file
and compute digests; the classes here decide what may happen next and which
frame says so, and raise :class:`~trio_p2p.ProtocolError` for anything the
peer may not do. One :class:`Transfers` table per connection routes the peer's
file frames to the transfers they name.

A transfer, seen from the sender (:class:`OutgoingTransfer`)::

    OFFERED --accept(offset)--> ACTIVE --every byte sent, end(digest)--> ENDING
       |                          |                                        |
       +--reject--> FAILED        +--cancel (either side)--> FAILED        +--verdict--> VERIFIED
                                                                                      or FAILED

and from the receiver (:class:`IncomingTransfer`) the same phases: the offer
waits for the application's (or the policy's) answer, chunks arrive in order
from the accepted offset, the end brings the sender's digest and the receiver
answers with its verdict.
"""

from __future__ import annotations

import collections
import enum
import uuid

import attrs

from ._errors import ProtocolError
from ._messages import (
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

__all__ = [
    "CONFIRM_EVERY",
    "SEND_AHEAD",
    "IncomingTransfer",
    "OutgoingTransfer",
    "Phase",
    "Transfers",
]

#: The receiver confirms what it has written at least every this many bytes
#: (and at the last byte).
CONFIRM_EVERY = 4 * 1024 * 1024
#: The sender stays at most this many bytes ahead of the receiver's last
#: confirmation: what a broken connection can lose, and what bounds the data
#: queued between the two files.
SEND_AHEAD = 16 * 1024 * 1024
#: How many ended transfer ids a table remembers, to ignore frames that were
#: already on their way when the transfer ended (a chunk behind a cancel).
REMEMBER_ENDED = 1024


class Phase(enum.StrEnum):
    """Where a transfer stands."""

    #: the offer is made, the receiver has not answered
    OFFERED = "offered"
    #: accepted: chunks flow
    ACTIVE = "active"
    #: every byte is across and the sender's digest sent: the verdict is due
    ENDING = "ending"
    #: the receiver verified the digest and saved the file
    VERIFIED = "verified"
    #: rejected, cancelled, broken or not verified (see ``failure``)
    FAILED = "failed"


_DONE = (Phase.VERIFIED, Phase.FAILED)


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise ProtocolError(message)


@attrs.define
class _Transfer:
    """What both directions share."""

    id: uuid.UUID
    name: str
    size: int
    chunk_size: int
    mtime_ns: int
    phase: Phase = Phase.OFFERED
    #: where the accepted transfer started (a resume starts past 0)
    start: int = 0
    #: why it failed, once it has
    failure: str | None = None

    @property
    def done(self) -> bool:
        """True once verified or failed."""
        return self.phase in _DONE

    def _fail(self, reason: str) -> None:
        self.phase = Phase.FAILED
        self.failure = reason

    def _require(self, *phases: Phase, frame: str) -> None:
        _expect(self.phase in phases, f"{frame} for transfer {self.id} while it is {self.phase}")

    def cancel(self, reason: str) -> FileCancel | None:
        """End the transfer from this side; the frame that tells the peer, or None if done."""
        if self.done:
            return None
        self._fail(reason)
        return FileCancel(self.id, reason)

    def on_cancel(self, frame: FileCancel) -> None:
        """The peer cancelled."""
        if not self.done:
            self._fail(f"cancelled by the peer: {frame.reason}")


@attrs.define
class OutgoingTransfer(_Transfer):
    """A file this node sends.

    Attributes:
        sent: bytes handed to the connection so far (counted from 0, so a resume
            starts at its accepted offset).
        confirmed: bytes the receiver has confirmed writing.
    """

    sent: int = 0
    confirmed: int = 0

    def offer(self) -> FileOffer:
        """The offer frame."""
        return FileOffer(self.id, self.name, self.size, self.chunk_size, self.mtime_ns)

    def on_accept(self, frame: FileAccept) -> None:
        """The receiver accepted, holding *frame.offset* bytes already."""
        self._require(Phase.OFFERED, frame="accept")
        _expect(
            frame.offset <= self.size,
            f"accept at offset {frame.offset} of a {self.size}-byte file",
        )
        self.phase = Phase.ACTIVE
        self.start = self.sent = self.confirmed = frame.offset

    def on_reject(self, frame: FileReject) -> None:
        """The receiver declined."""
        self._require(Phase.OFFERED, frame="reject")
        self._fail(f"refused by the peer: {frame.reason}")

    def next_chunk(self) -> tuple[int, int] | None:
        """The (offset, length) to read and send next, or None for now.

        None while not active, once every byte is sent, and while the sender is
        :data:`SEND_AHEAD` bytes ahead of the receiver's confirmation.
        """
        pieces = self.next_chunks(1)
        return pieces[0] if pieces else None

    def next_chunks(self, count: int) -> list[tuple[int, int]]:
        """Up to *count* of the next (offset, length) pieces to read and send.

        Like :meth:`next_chunk` called *count* times with each piece sent in
        between: consecutive, within :data:`SEND_AHEAD` of the confirmation.
        """
        pieces: list[tuple[int, int]] = []
        if self.phase is not Phase.ACTIVE:
            return pieces
        position = self.sent
        while len(pieces) < count and position < self.size:
            if position - self.confirmed >= SEND_AHEAD:
                break
            length = min(self.chunk_size, self.size - position)
            pieces.append((position, length))
            position += length
        return pieces

    def take(self, offset: int, length: int) -> None:
        """*length* bytes read at *offset* as :meth:`next_chunk` said are sent now."""
        if self.phase is not Phase.ACTIVE or offset != self.sent:
            raise ValueError(f"chunk at {offset}, expected at {self.sent} of an active transfer")
        if not 0 < length <= min(self.chunk_size, self.size - offset):
            raise ValueError(f"chunk of {length} bytes at {offset} does not fit")
        self.sent += length

    def chunk(self, offset: int, data: bytes) -> FileChunk:
        """The frame for *data*, read at *offset* as :meth:`next_chunk` said."""
        self.take(offset, len(data))
        return FileChunk(self.id, offset, data)

    @property
    def all_sent(self) -> bool:
        """True when the transfer is active and every byte is sent."""
        return self.phase is Phase.ACTIVE and self.sent == self.size

    def end(self, digest: bytes) -> FileEnd:
        """The end frame, with the digest of the whole file."""
        if not self.all_sent:
            raise ValueError("the end comes after every byte")
        self.phase = Phase.ENDING
        return FileEnd(self.id, digest)

    def on_confirm(self, frame: FileConfirm) -> None:
        """The receiver has written up to *frame.offset*."""
        self._require(Phase.ACTIVE, Phase.ENDING, frame="confirmation")
        _expect(
            self.confirmed <= frame.offset <= self.sent,
            f"confirmation of {frame.offset} bytes when {self.confirmed} were confirmed "
            f"and {self.sent} sent",
        )
        self.confirmed = frame.offset

    def on_verdict(self, frame: FileVerdict) -> None:
        """The receiver's verdict on the whole file."""
        self._require(Phase.ENDING, frame="verdict")
        if frame.verified:
            self.phase = Phase.VERIFIED
            self.confirmed = self.size
        else:
            self._fail(f"the receiver could not verify the file: {frame.reason}")


@attrs.define
class IncomingTransfer(_Transfer):
    """A file offered to this node.

    Attributes:
        received: bytes received so far (counted from 0).
        confirmed: bytes this node has confirmed writing.
        digest: the sender's digest, once its end has arrived.
    """

    received: int = 0
    confirmed: int = 0
    digest: bytes | None = None

    @classmethod
    def from_offer(cls, offer: FileOffer) -> IncomingTransfer:
        """The transfer an offer proposes."""
        return cls(offer.transfer, offer.name, offer.size, offer.chunk_size, offer.mtime_ns)

    def accept(self, offset: int = 0) -> FileAccept:
        """Take the file; *offset* bytes of it are already held (a resume)."""
        if self.phase is not Phase.OFFERED or not 0 <= offset <= self.size:
            raise ValueError(f"cannot accept at {offset} a transfer that is {self.phase}")
        self.phase = Phase.ACTIVE
        self.start = self.received = self.confirmed = offset
        return FileAccept(self.id, offset)

    def reject(self, reason: str) -> FileReject:
        """Decline the offer."""
        if self.phase is not Phase.OFFERED:
            raise ValueError(f"cannot reject a transfer that is {self.phase}")
        self._fail(f"rejected: {reason}")
        return FileReject(self.id, reason)

    def on_chunk(self, frame: FileChunk) -> None:
        """A chunk arrived: it must continue exactly where the last one ended."""
        self._require(Phase.ACTIVE, frame="chunk")
        _expect(
            frame.offset == self.received,
            f"chunk at offset {frame.offset}, expected {self.received}",
        )
        _expect(
            len(frame.data) <= self.chunk_size,
            f"chunk of {len(frame.data)} bytes, the offer said at most {self.chunk_size}",
        )
        _expect(
            self.received + len(frame.data) <= self.size,
            f"chunk runs to {self.received + len(frame.data)}, past the {self.size}-byte file",
        )
        self.received += len(frame.data)

    def written(self, offset: int) -> FileConfirm | None:
        """This node has written the file up to *offset*; a confirmation if one is due."""
        if not self.confirmed <= offset <= self.received:
            raise ValueError(f"written up to {offset} of {self.received} received")
        due = offset - self.confirmed >= CONFIRM_EVERY or (
            offset == self.size and offset > self.confirmed
        )
        if not due or self.done:
            return None
        self.confirmed = offset
        return FileConfirm(self.id, offset)

    def on_end(self, frame: FileEnd) -> None:
        """The sender's end: every byte must have arrived."""
        self._require(Phase.ACTIVE, frame="end")
        _expect(
            self.received == self.size,
            f"end after {self.received} of {self.size} bytes",
        )
        self.phase = Phase.ENDING
        self.digest = frame.digest

    def verdict(self, digest: bytes | None, problem: str = "") -> FileVerdict:
        """The verdict, given the digest of what this node wrote.

        Args:
            digest: BLAKE3 of the file as written (None if it could not be read).
            problem: why the file cannot be saved even if the digests match
                (for instance the rename failed), or empty.
        """
        if self.phase is not Phase.ENDING:
            raise ValueError(f"no verdict is due for a transfer that is {self.phase}")
        if digest != self.digest:
            problem = problem or "the digest does not match: the file is corrupt"
        if problem:
            self._fail(problem)
            return FileVerdict(self.id, False, problem)
        self.phase = Phase.VERIFIED
        return FileVerdict(self.id, True, "")


#: Which direction's table each frame is for: True for frames a sender receives.
_TO_SENDER: dict[type[FileFrame], bool] = {
    FileAccept: True,
    FileReject: True,
    FileConfirm: True,
    FileVerdict: True,
    FileChunk: False,
    FileEnd: False,
}


class Transfers:
    """The transfers on one connection, both ways.

    Every offer is taken into the table; how many may be open at once is the
    caller's policy, which refuses the rest.
    """

    def __init__(self) -> None:
        self.outgoing: dict[uuid.UUID, OutgoingTransfer] = {}
        self.incoming: dict[uuid.UUID, IncomingTransfer] = {}
        self._ended: collections.OrderedDict[uuid.UUID, None] = collections.OrderedDict()

    def add(self, transfer: OutgoingTransfer) -> FileOffer:
        """Register a transfer this node offers; its offer frame."""
        if transfer.id in self.outgoing or transfer.id in self._ended:
            raise ValueError(f"transfer id {transfer.id} is in use")
        self.outgoing[transfer.id] = transfer
        return transfer.offer()

    def end(self, transfer_id: uuid.UUID) -> None:
        """Forget an ended transfer (late frames for it are then ignored)."""
        self.outgoing.pop(transfer_id, None)
        self.incoming.pop(transfer_id, None)
        self._ended[transfer_id] = None
        if len(self._ended) > REMEMBER_ENDED:
            self._ended.popitem(last=False)

    def receive(self, frame: FileFrame) -> OutgoingTransfer | IncomingTransfer | None:
        """Apply a file frame from the peer to the transfer it names.

        Returns:
            The transfer the frame changed (look at its phase and fields), or None
            if the frame is for a transfer that has ended here (one that crossed
            a cancel or a failure on the way) and is ignored.

        Raises:
            ProtocolError: the frame names a transfer the peer may not address
                this way, or breaks its order.
        """
        tid = frame.transfer
        if isinstance(frame, FileOffer):
            _expect(
                tid not in self.incoming and tid not in self.outgoing and tid not in self._ended,
                f"offer reuses transfer id {tid}",
            )
            incoming = IncomingTransfer.from_offer(frame)
            self.incoming[tid] = incoming
            return incoming
        if isinstance(frame, FileCancel):
            transfer: OutgoingTransfer | IncomingTransfer | None = self.outgoing.get(
                tid
            ) or self.incoming.get(tid)
            if transfer is None:
                _expect(tid in self._ended, f"cancel of unknown transfer {tid}")
                return None
            transfer.on_cancel(frame)
            return transfer
        to_sender = _TO_SENDER[type(frame)]
        transfer = self.outgoing.get(tid) if to_sender else self.incoming.get(tid)
        if transfer is None:
            _expect(
                tid in self._ended,
                f"{type(frame).__name__} for unknown transfer {tid}",
            )
            return None
        if transfer.done:
            return None  # ended here, not yet forgotten: the frame crossed the end
        if isinstance(transfer, OutgoingTransfer):
            if isinstance(frame, FileAccept):
                transfer.on_accept(frame)
            elif isinstance(frame, FileReject):
                transfer.on_reject(frame)
            elif isinstance(frame, FileConfirm):
                transfer.on_confirm(frame)
            else:
                assert isinstance(frame, FileVerdict)
                transfer.on_verdict(frame)
        elif isinstance(frame, FileChunk):
            transfer.on_chunk(frame)
        else:
            assert isinstance(frame, FileEnd)
            transfer.on_end(frame)
        return transfer
