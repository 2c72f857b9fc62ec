"""The exception hierarchy: one base class, one subclass per kind of failure."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._messages import Message


class TrioP2PError(Exception):
    """Base class of every error this library raises on purpose."""


class ProtocolError(TrioP2PError):
    """The peer sent something that breaks the wire protocol.

    Raised by the sans-I/O codec for every malformed input (garbage, truncated
    or oversized frames, unknown tags, missing or ill-typed fields, ...). The
    connection that received it is closed; the messenger keeps running.
    """


class HandshakeError(TrioP2PError):
    """A connection could not be established: the handshake was refused or failed.

    Attributes:
        code: the refusing peer's goodbye code (``"duplicate"``, ``"refused"``, ...),
            or None when the handshake failed for another reason.
        peer_id: the id the refusing peer proved before it refused (encrypted
            connections), else None.
    """

    def __init__(
        self, message: str, code: str | None = None, peer_id: uuid.UUID | None = None
    ) -> None:
        self.code = code
        self.peer_id = peer_id
        super().__init__(message)


class PeerNotConnectedError(TrioP2PError):
    """The operation needs a connection to a peer that is unknown or disconnected.

    Attributes:
        peer_id: the peer the operation was for.
    """

    def __init__(self, peer_id: uuid.UUID, detail: str = "") -> None:
        self.peer_id = peer_id
        text = f"peer {peer_id} is not connected"
        super().__init__(f"{text}: {detail}" if detail else text)


class DeliveryError(PeerNotConnectedError):
    """The session with a peer ended before it acknowledged every message.

    Raised by :meth:`Messenger.flush`. The same messages are also named in a
    :class:`DeliveryFailed` event.

    Attributes:
        peer_id: the peer.
        messages: the messages the peer had not acknowledged.
        reason: why the session ended.
    """

    def __init__(self, peer_id: uuid.UUID, messages: Sequence[Message], reason: str) -> None:
        self.messages = tuple(messages)
        self.reason = reason
        super().__init__(
            peer_id, f"session ended ({reason}) with {len(self.messages)} unacknowledged"
        )


class TransferError(TrioP2PError):
    """A file transfer failed.

    Attributes:
        reason: a sentence a person can read.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)
