"""Sans-I/O session state: message numbering, the send window, acknowledgements.

A session is what two nodes share between their handshake and its end: both
node ids, both per-process session nonces, the numbers of the messages each
has sent, and the messages not yet acknowledged. It does no I/O, so the
connection can end and a new one can resume the same session
(:meth:`Session.resume`).
"""

from __future__ import annotations

import uuid
from collections import deque

from ._errors import ProtocolError
from ._messages import Message

__all__ = ["Session"]


class Session:
    """The delivery state of one session with one peer.

    Args:
        peer_id: the peer's node id.
        peer_nonce: the peer's per-process session nonce.
        window: how many sent messages may wait for an acknowledgement.
    """

    def __init__(self, peer_id: uuid.UUID, peer_nonce: bytes, window: int) -> None:
        self.peer_id = peer_id
        self.peer_nonce = peer_nonce
        self.window = window
        #: number of the last message numbered for sending
        self.last_sent = 0
        #: highest number the peer acknowledged
        self.last_acked = 0
        #: number of the last message received in order (and delivered)
        self.last_received = 0
        #: highest number this side has acknowledged, or queued an ack for
        self.last_ack_sent = 0
        self._unacked: deque[tuple[int, Message]] = deque()

    @property
    def in_flight(self) -> int:
        """Messages sent and not yet acknowledged."""
        return len(self._unacked)

    @property
    def window_full(self) -> bool:
        """True when no more messages may be sent until some are acknowledged."""
        return len(self._unacked) >= self.window

    def number(self, message: Message) -> int:
        """Give *message* the next sequence number and keep it until acknowledged."""
        seq = self.last_sent + 1
        self.last_sent = seq
        self._unacked.append((seq, message))
        return seq

    def acknowledge(self, seq: int) -> int:
        """Apply the peer's cumulative acknowledgement; return how many it settled.

        Raises:
            ProtocolError: if it acknowledges a number never sent.
        """
        if seq > self.last_sent:
            raise ProtocolError(f"ack for message {seq}, but only {self.last_sent} were sent")
        if seq <= self.last_acked:
            return 0
        settled = seq - self.last_acked
        self.last_acked = seq
        unacked = self._unacked
        for _ in range(settled):
            unacked.popleft()
        return settled

    def check_incoming(self, seq: int) -> None:
        """Check that *seq* is the next message expected from the peer.

        Raises:
            ProtocolError: for a gap, a repeat or a reordering.
        """
        if seq != self.last_received + 1:
            raise ProtocolError(f"message {seq} out of order: expected {self.last_received + 1}")

    def received(self, seq: int) -> None:
        """Record that message *seq* was delivered to the application."""
        self.last_received = seq

    def ack_due(self) -> int | None:
        """The number to acknowledge now, or None if the peer already knows it."""
        if self.last_received > self.last_ack_sent:
            self.last_ack_sent = self.last_received
            return self.last_received
        return None

    def resume(self, peer_received: int) -> list[tuple[int, Message]]:
        """Carry the session over to a new connection.

        Each side's hello on the new connection says the number of the last
        message it delivered to its application: what the peer delivered is
        settled (as by an acknowledgement), and what this side delivered the
        peer now knows (as if acknowledged).

        Args:
            peer_received: the last message the peer delivered, from its hello.

        Returns:
            The messages to send again, numbered and in order: every one the
            peer has not delivered.

        Raises:
            ProtocolError: *peer_received* is below what the peer acknowledged
                before, or above what was ever sent.
        """
        if not self.last_acked <= peer_received <= self.last_sent:
            raise ProtocolError(
                f"the peer resumes after message {peer_received}, but it acknowledged "
                f"{self.last_acked} and {self.last_sent} were sent"
            )
        self.acknowledge(peer_received)
        self.last_ack_sent = self.last_received
        return list(self._unacked)

    def unacknowledged(self) -> tuple[Message, ...]:
        """The messages the peer has not acknowledged, in the order sent."""
        return tuple(message for _, message in self._unacked)
