"""Wire messages and the records they carry (attrs classes, no I/O).

Every frame on a connection is one of the classes of :data:`Frame`; every
discovery datagram is a :class:`Beacon`. Wire tags are explicit short strings
(:data:`FRAME_TAGS`), never derived from class names, so renaming a class never
changes the protocol. ``docs/protocol.rst`` describes the encoding.
"""

from __future__ import annotations

import datetime
import enum
import uuid

import attrs

__all__ = [
    "BEACON_MAGIC",
    "PROTOCOL_VERSION",
    "Ack",
    "Beacon",
    "BeaconKind",
    "Content",
    "Data",
    "FileAccept",
    "FileCancel",
    "FileChunk",
    "FileConfirm",
    "FileEnd",
    "FileFrame",
    "FileOffer",
    "FileReject",
    "FileVerdict",
    "Frame",
    "Goodbye",
    "GoodbyeCode",
    "Hello",
    "Message",
    "Ping",
    "Pong",
    "Text",
]

#: Version of the wire protocol, carried in every hello and beacon.
PROTOCOL_VERSION = 1
#: First field of every beacon: tells our datagrams from anyone else's.
BEACON_MAGIC = b"TP2P"
#: Longest node name, in UTF-8 bytes.
MAX_NAME_BYTES = 128


@attrs.frozen
class Text:
    """Plain text content of a :class:`Message`.

    Attributes:
        text: the text, any Unicode string.
    """

    text: str


#: The closed union of message contents (file parts join it later).
Content = Text


@attrs.frozen
class Message:
    """A typed message between two nodes: what ``MessageReceived`` carries.

    Attributes:
        id: unique id of this message (a random UUID4).
        sender_id: node id of the sender (checked against the handshake).
        sender_name: the sender's display name.
        timestamp: when it was sent, seconds since the Unix epoch (sender's clock).
        content: what it carries, e.g. :class:`Text`.
    """

    id: uuid.UUID
    sender_id: uuid.UUID
    sender_name: str
    timestamp: float
    content: Content

    @property
    def sent_at(self) -> datetime.datetime:
        """The timestamp as an aware UTC :class:`~datetime.datetime`."""
        return datetime.datetime.fromtimestamp(self.timestamp, datetime.UTC)


# ---------------------------------------------------------------- frames


@attrs.frozen
class Hello:
    """First frame each way on a connection (wire tag ``"h"``).

    Attributes:
        version: protocol version of the sender.
        node_id: the sender's node id.
        session: 16 random bytes chosen once per messenger run: tells a restarted
            peer from the same run reconnecting (not a secret: anyone who dials
            the node learns it).
        name: the sender's display name.
        port: the TCP port the sender listens on.
        max_frame_size: largest frame the sender accepts.
        capabilities: optional protocol features the sender supports.
        resumes: to carry on a session after a broken connection, the session
            nonce of the peer it was with (None for a new session).
        received: with *resumes*, the number of the last message of that
            session the sender delivered to its application.
    """

    version: int
    node_id: uuid.UUID
    session: bytes
    name: str
    port: int
    max_frame_size: int
    capabilities: tuple[str, ...] = ()
    resumes: bytes | None = None
    received: int = 0


@attrs.define
class Data:
    """A :class:`Message` with its sequence number in the session (wire tag ``"m"``).

    Attributes:
        seq: 1 for the first message of a session, then one more per message.
        message: the message.
    """

    seq: int
    message: Message


@attrs.frozen
class Ack:
    """Cumulative acknowledgement (wire tag ``"a"``).

    Attributes:
        seq: every message up to and including this number has been placed in the
            receiver's event channel.
    """

    seq: int


@attrs.frozen
class Ping:
    """Heartbeat sent on an idle connection (wire tag ``"p"``); answered by :class:`Pong`."""


@attrs.frozen
class Pong:
    """Answer to a :class:`Ping` (wire tag ``"o"``)."""


class GoodbyeCode(enum.StrEnum):
    """Why a connection is being closed (the ``code`` of a :class:`Goodbye`)."""

    #: the sender closes the connection on purpose (disconnect or shutdown)
    CLOSING = "closing"
    #: handshake refused: a connection to this peer already exists
    DUPLICATE = "duplicate"
    #: handshake refused for another reason (identity, limits)
    REFUSED = "refused"
    #: the peer broke the protocol (a malformed hello, another protocol version)
    PROTOCOL = "protocol"


@attrs.frozen
class Goodbye:
    """Last frame before a deliberate close (wire tag ``"g"``).

    Attributes:
        code: a machine-readable :class:`GoodbyeCode`.
        reason: a sentence a person can read.
    """

    code: GoodbyeCode
    reason: str


# ------------------------------------------------------------ file frames
#
# A file transfer is a conversation of its own beside the messages: its frames
# carry no sequence number and are not acknowledged like messages. Each names
# its transfer by the 16-byte id the sender chose in the offer.


@attrs.frozen
class FileOffer:
    """The sender proposes a file (wire tag ``"fo"``).

    Attributes:
        transfer: id of the transfer, chosen by the sender (a random UUID4).
        name: the file's name as the sender has it (the receiver makes it safe).
        size: the file's size in bytes.
        chunk_size: largest chunk the sender will send.
        mtime_ns: the file's modification time, ns since the Unix epoch (with the
            name and size, what lets a receiver recognise a file it holds part of).
    """

    transfer: uuid.UUID
    name: str
    size: int
    chunk_size: int
    mtime_ns: int


@attrs.frozen
class FileAccept:
    """The receiver takes the file, from *offset* on (wire tag ``"fa"``).

    Attributes:
        transfer: id of the transfer.
        offset: bytes the receiver already holds (0, or where a resume starts).
    """

    transfer: uuid.UUID
    offset: int


@attrs.frozen
class FileReject:
    """The receiver declines the offer (wire tag ``"fr"``).

    Attributes:
        transfer: id of the transfer.
        reason: a sentence a person can read.
    """

    transfer: uuid.UUID
    reason: str


@attrs.define
class FileChunk:
    """Bytes of the file at *offset* (wire tag ``"fc"``).

    Attributes:
        transfer: id of the transfer.
        offset: where *data* starts in the file: exactly where the previous chunk
            ended (or the accepted offset, for the first).
        data: 1 to ``chunk_size`` bytes. A large chunk a connection receives
            holds a view of the buffer it was received into (no copy), which
            the connection reuses once the chunk is written to its file.
    """

    transfer: uuid.UUID
    offset: int
    data: bytes | memoryview = attrs.field(repr=lambda data: f"<{len(data)} bytes>")


@attrs.frozen
class FileConfirm:
    """The receiver has written the file up to *offset* (wire tag ``"fk"``).

    Attributes:
        transfer: id of the transfer.
        offset: bytes written so far (never less than an earlier confirmation).
    """

    transfer: uuid.UUID
    offset: int


@attrs.frozen
class FileEnd:
    """Every byte is sent; here is the digest of the whole file (wire tag ``"fe"``).

    Attributes:
        transfer: id of the transfer.
        digest: BLAKE3 digest (32 bytes) of the whole file, from byte 0.
    """

    transfer: uuid.UUID
    digest: bytes


@attrs.frozen
class FileVerdict:
    """The receiver's verdict after the end (wire tag ``"fv"``).

    Attributes:
        transfer: id of the transfer.
        verified: True if the digest matched and the file is saved.
        reason: why not, when not verified (empty when verified).
    """

    transfer: uuid.UUID
    verified: bool
    reason: str


@attrs.frozen
class FileCancel:
    """Either side abandons the transfer (wire tag ``"fx"``).

    Attributes:
        transfer: id of the transfer.
        reason: a sentence a person can read.
    """

    transfer: uuid.UUID
    reason: str


#: The frames of a file transfer.
FileFrame = (
    FileOffer
    | FileAccept
    | FileReject
    | FileChunk
    | FileConfirm
    | FileEnd
    | FileVerdict
    | FileCancel
)

#: Every frame a connection can carry.
Frame = Hello | Data | Ack | Ping | Pong | Goodbye | FileFrame

#: Wire tag of each frame class.
FRAME_TAGS: dict[type[Frame], str] = {
    Hello: "h",
    Data: "m",
    Ack: "a",
    Ping: "p",
    Pong: "o",
    Goodbye: "g",
    FileOffer: "fo",
    FileAccept: "fa",
    FileReject: "fr",
    FileChunk: "fc",
    FileConfirm: "fk",
    FileEnd: "fe",
    FileVerdict: "fv",
    FileCancel: "fx",
}


# ---------------------------------------------------------------- beacons


class BeaconKind(enum.StrEnum):
    """What a beacon says."""

    #: "I am here" (sent every announce interval)
    ANNOUNCE = "a"
    #: "everybody announce yourselves now" (``discover_peers``)
    REQUEST = "r"
    #: "I am leaving"
    GOODBYE = "g"


@attrs.frozen
class Beacon:
    """One discovery datagram, signed by its sender's identity key.

    Attributes:
        kind: announce, request or goodbye.
        node_id: the sender's node id.
        name: the sender's display name.
        port: the TCP port the sender listens on.
        version: protocol version of the sender.
        key: the sender's Ed25519 public key (its node id derives from it).
        counter: grows with every beacon the sender sends (milliseconds since
            the Unix epoch, or one more than the last if the clock did not
            advance): a receiver drops one not newer than the last it accepted.
        addresses: the IPv4 addresses (4 bytes each) the beacon may come from:
            the sender's own, on the network it is broadcast to.
        signature: the key's signature of the other fields (see
            ``beacon_signed_bytes``).
    """

    kind: BeaconKind
    node_id: uuid.UUID
    name: str
    port: int
    version: int = PROTOCOL_VERSION
    key: bytes = b""
    counter: int = 0
    addresses: tuple[bytes, ...] = ()
    signature: bytes = b""
