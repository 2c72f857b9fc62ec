"""Application events: everything the application learns arrives as one of these.

All are frozen attrs classes; :data:`Event` is their closed union, so a
``match`` over it can be checked for exhaustiveness by a type checker.
"""

from __future__ import annotations

import enum
import pathlib
import uuid

import attrs

from ._errors import TransferError
from ._messages import Message

__all__ = [
    "DeliveryFailed",
    "Direction",
    "Error",
    "Event",
    "FileOffered",
    "FileTransferCompleted",
    "FileTransferFailed",
    "FileTransferProgress",
    "FileTransferStarted",
    "MessageReceived",
    "PeerConnected",
    "PeerDisconnected",
    "PeerDiscovered",
    "PeerInfo",
    "PeerLost",
    "Transfer",
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
        fingerprint: the fingerprint of the peer's key (see
            :attr:`Identity.fingerprint`): the key that signed its beacons for
            a discovered peer, the key it proved in the handshake for a
            connected one (None in plaintext mode).
        new_key: True for a connected peer whose name this node knew with
            another id (another key): an impostor, or the same node with a new
            key (an ephemeral identity is new on every run). Compare
            fingerprints before trusting it. (Set at an id's first connection,
            and at every later one while the other id is still seen; see
            ``docs/security.rst``.)
    """

    id: uuid.UUID
    name: str
    address: str
    port: int
    last_seen: float = attrs.field(eq=False)
    fingerprint: str | None = attrs.field(default=None, eq=False)
    new_key: bool = attrs.field(default=False, eq=False)


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
        resumed: the connection carries on the session of a connection that
            broke (its :class:`PeerDisconnected` said ``resuming``): messages
            continue exactly once and in order, nothing was lost.
    """

    peer: PeerInfo
    resumed: bool = False


@attrs.frozen
class PeerDisconnected:
    """A connection ended. Every :class:`PeerConnected` is followed by exactly one.

    Attributes:
        peer: the peer.
        reason: why, in words a person can read.
        resuming: the connection broke and its session waits for the peer to
            come back (``Config.resume_timeout``): messages sent meanwhile wait
            in it, and a :class:`PeerConnected` with ``resumed`` follows if the
            peer comes back, or a :class:`DeliveryFailed` for what it never
            acknowledged if it does not.
    """

    peer: PeerInfo
    reason: str
    resuming: bool = False


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


class Direction(enum.StrEnum):
    """Which way a :class:`Transfer` goes."""

    #: this node sends the file
    SEND = "send"
    #: this node receives the file
    RECEIVE = "receive"


@attrs.frozen
class Transfer:
    """A file transfer, as it stood when the event carrying it was made.

    Attributes:
        id: the transfer id (chosen by the sender, the same on both ends).
        peer_id: the node at the other end.
        filename: the file's name as the sender offered it (for a received file,
            the saved name is ``path.name``, made safe and unique).
        size: the file's size in bytes.
        direction: :attr:`Direction.SEND` or :attr:`Direction.RECEIVE`.
        path: for a sent file, the file read; for a received file, where it was
            saved (None until it is).
        offset: where the transfer started: 0, or what the receiver already held
            from an interrupted transfer of the same file (a resume).
    """

    id: uuid.UUID
    peer_id: uuid.UUID
    filename: str
    size: int
    direction: Direction
    path: pathlib.Path | None = None
    offset: int = 0


@attrs.frozen
class FileOffered:
    """A peer offers a file and waits for ``accept_file`` or ``reject_file``.

    Sent only when ``Config.auto_accept_files`` is False (otherwise offers are
    accepted at once); an offer not answered within ``Config.offer_timeout`` is
    rejected.

    Attributes:
        transfer: the offered transfer.
    """

    transfer: Transfer


@attrs.frozen
class FileTransferStarted:
    """A transfer was accepted and its bytes start to flow.

    Attributes:
        transfer: the transfer (``offset`` says where a resume starts).
    """

    transfer: Transfer


@attrs.frozen
class FileTransferProgress:
    """Bytes of a file confirmed written by the receiver.

    Sent at most every 0.1 s per transfer and only after 1 MiB more (or 1% of
    the file, if that is less), skipped while the event channel is full; always
    once more at 100%.

    Attributes:
        transfer: the transfer.
        bytes_transferred: bytes the receiver holds, from 0 (a resume starts at
            its offset).
        total_bytes: the file's size.
    """

    transfer: Transfer
    bytes_transferred: int
    total_bytes: int


@attrs.frozen
class FileTransferCompleted:
    """The receiver verified the file's digest and saved it.

    Attributes:
        transfer: the transfer; on the receiving side ``path`` is the saved file.
    """

    transfer: Transfer


@attrs.frozen
class FileTransferFailed:
    """A transfer ended without a verified file.

    Also sent, on the receiving end, for an offer that was refused (by the
    application, a limit, or a folder it cannot write to) or not answered in
    time.

    Attributes:
        transfer: the transfer.
        error: why (its ``reason`` is a sentence a person can read).
    """

    transfer: Transfer
    error: TransferError


#: The closed union of every event on ``Messenger.events``.
Event = (
    PeerDiscovered
    | PeerLost
    | PeerConnected
    | PeerDisconnected
    | MessageReceived
    | DeliveryFailed
    | FileOffered
    | FileTransferStarted
    | FileTransferProgress
    | FileTransferCompleted
    | FileTransferFailed
    | Error
)
