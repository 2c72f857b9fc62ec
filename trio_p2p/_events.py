"""Application events: everything the application learns arrives as one of these.

All are frozen attrs classes; :data:`Event` is their closed union, so a
``match`` over it can be checked for exhaustiveness by a type checker.
"""

from __future__ import annotations

import uuid

import attrs

from ._messages import Message

__all__ = [
    "DeliveryFailed",
    "Error",
    "Event",
    "MessageReceived",
    "PeerConnected",
    "PeerDisconnected",
    "PeerDiscovered",
    "PeerInfo",
    "PeerLost",
]


@attrs.frozen
class PeerInfo:
    """What this node knows of another node.

    Attributes:
        id: the peer's node id.
        name: the peer's display name.
        address: the IPv4 address it was last heard on (beacon source, or the
            remote end of the connection).
        port: the TCP port it listens on.
        last_seen: when it was last heard, on the Trio clock
            (:func:`trio.current_time`).
    """

    id: uuid.UUID
    name: str
    address: str
    port: int
    last_seen: float = attrs.field(eq=False)


@attrs.frozen
class PeerDiscovered:
    """A peer announced itself for the first time, or again after it was lost.

    Attributes:
        peer: the peer.
    """

    peer: PeerInfo


@attrs.frozen
class PeerLost:
    """A discovered peer stopped announcing (``peer_timeout``) or said goodbye.

    A connection to it, if any, is not affected: only the connection itself can end.

    Attributes:
        peer: the peer, as last heard.
    """

    peer: PeerInfo


@attrs.frozen
class PeerConnected:
    """A connection to a peer completed its handshake (whoever dialled).

    Attributes:
        peer: the peer.
    """

    peer: PeerInfo


@attrs.frozen
class PeerDisconnected:
    """A connection ended. Every :class:`PeerConnected` is followed by exactly one.

    Attributes:
        peer: the peer.
        reason: why, in words a person can read.
    """

    peer: PeerInfo
    reason: str


@attrs.frozen
class MessageReceived:
    """A peer's message, delivered at most once and in the order sent.

    Attributes:
        message: the message.
    """

    message: Message


@attrs.frozen
class DeliveryFailed:
    """A session ended with messages the peer never acknowledged.

    They may or may not have reached the peer's application (the
    acknowledgement may be what was lost); they were not silently dropped.

    Attributes:
        peer: the peer.
        messages: the unacknowledged messages, in the order sent.
        reason: why the session ended.
    """

    peer: PeerInfo
    messages: tuple[Message, ...]
    reason: str


@attrs.frozen
class Error:
    """A failure the application should know of that belongs to no other event.

    Attributes:
        error: the exception.
    """

    error: Exception


#: The closed union of every event on ``Messenger.events``.
Event = (
    PeerDiscovered
    | PeerLost
    | PeerConnected
    | PeerDisconnected
    | MessageReceived
    | DeliveryFailed
    | Error
)
