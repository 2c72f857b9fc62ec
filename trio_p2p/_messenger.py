"""The Messenger and ``open_messenger``: owns the nursery, the sockets and the event channel."""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import pathlib
import random
import socket
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs
import trio
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from ._codec import FrameDecoder, MessageIds, check_name
from ._config import Config
from ._connection import (
    HELLO_LIMIT,
    EventText,
    LocalNode,
    PeerConnection,
    number_message,
    receive_hello,
    send_frame,
)
from ._discovery import Discovery, PeerTable, open_discovery_socket
from ._errors import DeliveryError, HandshakeError, PeerNotConnectedError, ProtocolError
from ._events import (
    DeliveryFailed,
    Error,
    Event,
    PeerConnected,
    PeerDisconnected,
    PeerDiscovered,
    PeerInfo,
    PeerLost,
    Transfer,
)
from ._filetransfer import FileService
from ._identity import Identity, fingerprint
from ._log import RateLimitedWarnings, get_logger
from ._messages import (
    Beacon,
    BeaconKind,
    Content,
    Frame,
    Goodbye,
    GoodbyeCode,
    Hello,
    Message,
    Text,
)
from ._noise import PeerProof, PlaintextPeerError
from ._secure import SecureStream, secure_accept, secure_dial
from ._session import Session
from ._socketio import SocketIO
from ._stats import Statistics
from ._trust import KnownPeer, KnownPeers, known_peers_path

__all__ = ["Messenger", "open_messenger"]

logger = get_logger("messenger")
bad_input = RateLimitedWarnings(logger)

#: Leaving ``open_messenger`` closes the connections within this many seconds
#: (after ``Config.shutdown_grace``); connections still open then are cancelled,
#: and their end is still reported.
CLOSE_PHASE = 0.5
#: Incoming connections from one address allowed in their handshake at once,
#: so that a host opening idle connections cannot take every handshake slot.
HANDSHAKES_PER_ADDRESS = 8
#: The node that dials a broken session's peer again waits this long after its
#: first failed attempt, twice as long after each next one, at most
#: REDIAL_LONGEST, each wait drawn between half and one and a half times that.
REDIAL_FIRST = 0.1
#: Dials of a broken session's peer, in all, at addresses no connection to it
#: came from (where discovery saw it since: it moved, or its owner says it
#: did). Any key owner may announce any address, so this bounds how often it
#: can make this node dial someone else's.
UNPROVEN_DIALS = 2
REDIAL_LONGEST = 2.0
#: why a parked session ends when its peer connects without carrying it on
_NOT_RESUMED = "the peer came back without the session (restarted, or it gave the session up)"


@attrs.define(eq=False)
class _Parked:
    """The session of a connection that broke, waiting for its peer to come back."""

    session: Session
    #: the peer as last connected (the address to dial, unless discovery has a newer one)
    peer: PeerInfo
    #: largest frame body the peer accepts (for messages sent meanwhile)
    max_body: int
    #: why the connection broke
    reason: str
    #: when the session ends if the peer has not come back (Trio clock)
    deadline: float
    #: set once it is carried on or ended
    settled: trio.Event = attrs.field(factory=trio.Event)
    #: why it ended, once it did without being carried on
    ended: str | None = None


class _Outlet:
    """The single way into the event channel.

    Connection events are awaited (back-pressure reaches the connection's reader
    and so its sender). Discovery events never wait: while the channel is full
    they are kept, one per peer (the newest wins), and delivered in order later.
    """

    def __init__(self, channel: trio.MemorySendChannel[Event], counters: Counter[str]) -> None:
        self.channel = channel
        self._counters = counters
        self._pending: dict[uuid.UUID, PeerDiscovered | PeerLost] = {}
        #: peers the application was told were discovered, and not yet lost
        self._told: set[uuid.UUID] = set()
        self._wake = trio.lowlevel.ParkingLot()
        #: while shutting down, events that do not fit are dropped, never awaited
        self.closing = False

    def discovery(self, event: PeerDiscovered | PeerLost) -> None:
        peer_id = event.peer.id
        if not self._pending:
            try:
                self.channel.send_nowait(event)
            except trio.WouldBlock:
                pass
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._counters["events_dropped"] += 1
                return
            else:
                self._told_of(event)
                return
        if self._pending.pop(peer_id, None) is not None:
            self._counters["events_coalesced"] += 1
        if isinstance(event, PeerLost) and peer_id not in self._told:
            # The application never heard of this peer: there is nothing to take
            # back. This keeps the backlog within the peer table's bound.
            return
        self._pending[peer_id] = event
        self._wake.unpark()

    def _told_of(self, event: Event) -> None:
        if isinstance(event, PeerDiscovered):
            self._told.add(event.peer.id)
        elif isinstance(event, PeerLost):
            self._told.discard(event.peer.id)

    def nowait(self, event: Event) -> bool:
        """Place *event* if there is room; else drop and count it. Return whether placed."""
        try:
            self.channel.send_nowait(event)
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            self._counters["events_dropped"] += 1
            return False
        return True

    async def send(self, event: Event) -> bool:
        """Place *event*, waiting for room unless closing. Return whether placed."""
        if self.closing:
            return self.nowait(event)
        try:
            await self.channel.send(event)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._counters["events_dropped"] += 1
            return False
        except trio.Cancelled:  # shutting down: this event is lost, and counted
            self._counters["events_dropped"] += 1
            raise
        return True

    def offer(self, event: Event) -> bool:
        """Place *event* if there is room now; else skip it (not counted). Return whether placed."""
        try:
            self.channel.send_nowait(event)
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True

    def abandon(self) -> None:
        """Count the discovery events still kept aside as dropped (at shutdown)."""
        self._counters["events_dropped"] += len(self._pending)
        self._pending.clear()

    async def run(self) -> None:
        while True:
            if not self._pending:
                await self._wake.park()
                continue
            peer_id = next(iter(self._pending))
            event = self._pending.pop(peer_id)
            if await self.send(event):
                self._told_of(event)


async def _open_listener(config: Config) -> trio.SocketListener:
    ports = [config.tcp_port] if config.tcp_port == 0 else [config.tcp_port, 0]
    for port in ports:
        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            await sock.bind((config.bind_address, port))
            sock.listen(128)
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE and port != 0:
                logger.info("TCP port %d is taken; listening on a free port instead", port)
                continue
            raise
        return trio.SocketListener(sock)
    raise AssertionError("unreachable: port 0 never reports EADDRINUSE")


#: Pause between two attempts to reach an address that did not answer.
RECONNECT_PAUSE = 0.25


async def _connect(host: str, port: int, failures: list[OSError]) -> trio.SocketStream:
    """A TCP connection to *host*:*port*, trying again until cancelled.

    A lossy link can fail an attempt (the address does not resolve to a
    hardware address in time: EHOSTUNREACH): such failures are appended to
    *failures* and tried again every ``RECONNECT_PAUSE`` seconds (bound it with
    a cancel scope). A refusal (nothing listens there) is not: it is raised at
    once. (*host* is an IPv4 address, see :func:`_resolve_ipv4`: a name that
    does not resolve fails before this.)

    Raises:
        OSError: the connection was refused.
    """
    while True:
        try:
            return await trio.open_tcp_stream(host, port)
        except OSError as exc:
            if _refused(exc):
                raise
            failures.append(exc)
            logger.debug("connecting to %s:%d failed (%s); trying again", host, port, exc)
        await trio.sleep(RECONNECT_PAUSE)


def _check_claim(hello: Hello, proof: PeerProof | None) -> None:
    """Raise ProtocolError unless *hello* claims the id of the key the peer proved."""
    if proof is not None and hello.node_id != proof.peer_id:
        raise ProtocolError(
            f"the hello claims id {hello.node_id}, but the peer proved the key of {proof.peer_id}"
        )


def _refused(exc: BaseException) -> bool:
    """Whether *exc* is a connection refused (nothing listens), however wrapped."""
    if isinstance(exc, ConnectionRefusedError):
        return True
    cause = exc.__cause__
    if isinstance(cause, BaseExceptionGroup):
        return all(_refused(each) for each in cause.exceptions)
    return cause is not None and _refused(cause)


def _text(text: str) -> Text:
    if type(text) is not str:
        raise TypeError(f"text must be a str, not {type(text).__name__}")
    return Text(text)


async def _resolve_ipv4(host: str, port: int) -> str:
    """*host* as an IPv4 address string (so one peer is one address, however named)."""
    try:
        return str(ipaddress.IPv4Address(host))
    except ValueError:
        pass
    infos = await trio.socket.getaddrinfo(
        host, port, family=trio.socket.AF_INET, type=trio.socket.SOCK_STREAM
    )
    if not infos:
        raise OSError(f"{host!r} has no IPv4 address")
    return str(infos[0][4][0])


class Messenger:
    """A node of the peer-to-peer network.

    Made by :func:`open_messenger`, which owns its tasks: never construct it
    yourself.

    Attributes:
        config: the configuration it runs with.
        events: the one channel every :data:`~trio_p2p.Event` arrives on.
    """

    def __init__(
        self,
        name: str,
        config: Config,
        identity: Identity,
        nursery: trio.Nursery,
        listener: trio.SocketListener,
        discovery_socket: trio.socket.SocketType,
        events: tuple[trio.MemorySendChannel[Event], trio.MemoryReceiveChannel[Event]],
    ) -> None:
        self.config = config
        #: this node's identity (its key; the peer id derives from it)
        self.identity = identity
        #: the peers connected before (kept beside the identity file, if any)
        self.known_peers = KnownPeers.load(
            known_peers_path(identity.path) if identity.path is not None else None
        )
        #: set when the known peers changed and are to be saved
        self._known_changed = trio.Event()
        #: held while the known peers are written (one write at a time)
        self._known_writing = trio.Lock()
        #: the X25519 key of this messenger's Noise handshakes (signed by the identity)
        self._static_key = X25519PrivateKey.generate().private_bytes_raw()
        self._nursery = nursery
        self._listener = listener
        port = listener.socket.getsockname()[1]
        self._local = LocalNode(identity.peer_id, name, os.urandom(16), port, config.max_frame_size)
        self._event_send, self.events = events
        self._counters: Counter[str] = Counter()
        self._refused: Counter[str] = Counter()
        self._failed: Counter[str] = Counter()
        self._drops: Counter[str] = Counter()
        self._outlet = _Outlet(self._event_send, self._counters)
        #: message text in the event channel, counted by all connections
        self._event_text = EventText()
        self._connections: dict[uuid.UUID, PeerConnection] = {}
        #: sessions of broken connections, waiting for their peers to come back
        self._parked: dict[uuid.UUID, _Parked] = {}
        #: ids of the messages sent while a session is parked
        self._parked_ids = MessageIds()
        self._dialing: set[uuid.UUID] = set()
        #: node ids whose incoming handshake is replacing a connection right now
        self._admitting: set[uuid.UUID] = set()
        self._registry_changed = trio.lowlevel.ParkingLot()
        self._handshakes = 0
        #: incoming connections in their handshake, by source address
        self._handshaking: Counter[str] = Counter()
        self._closing = False
        self._table = PeerTable(
            config.max_discovered_peers,
            config.max_peers_per_address,
            config.peer_timeout,
            is_connected=lambda node_id: node_id in self._connections,
            move_after=config.peer_timeout / 2,
        )
        self._files = FileService(
            config, nursery, self._outlet.send, self._outlet.offer, self._counters
        )
        self._files.resumed = self._resumed_connection
        self._discovery = Discovery(
            config,
            discovery_socket,
            Beacon(BeaconKind.ANNOUNCE, self._local.node_id, name, port),
            self._table,
            self._outlet.discovery,
            self._counters,
            self._drops,
            identity,
        )

    # ------------------------------------------------------------ identity

    @property
    def peer_id(self) -> uuid.UUID:
        """The id of this node, derived from its identity key (see :attr:`Config.identity`)."""
        return self._local.node_id

    @property
    def peer_name(self) -> str:
        """This node's display name."""
        return self._local.name

    @property
    def tcp_port(self) -> int:
        """The TCP port actually listened on."""
        return self._local.port

    @property
    def broadcast_targets(self) -> tuple[str, ...]:
        """The addresses beacons currently go to."""
        return self._discovery.targets

    # ------------------------------------------------------------ peers

    def discovered_peers(self) -> list[PeerInfo]:
        """A snapshot of the peers discovery currently knows."""
        return self._table.snapshot()

    def connected_peers(self) -> list[PeerInfo]:
        """A snapshot of the peers with a live connection."""
        return [c.peer for c in self._connections.values() if c.is_open]

    async def discover_peers(self) -> list[PeerInfo]:
        """Announce this node now and ask every node to announce itself.

        Returns:
            The discovered peers known right now; answers arrive as
            :class:`~trio_p2p.PeerDiscovered` events.
        """
        await self._discovery.send(BeaconKind.REQUEST)
        await self._discovery.send(BeaconKind.ANNOUNCE)
        return self.discovered_peers()

    def _open_connection(self, peer_id: uuid.UUID) -> PeerConnection | None:
        conn = self._connections.get(peer_id)
        return conn if conn is not None and conn.is_open else None

    def _connection(self, peer_id: uuid.UUID) -> PeerConnection:
        conn = self._open_connection(peer_id)
        if conn is None:
            raise PeerNotConnectedError(peer_id)
        return conn

    async def connect_to_peer(self, peer: PeerInfo | tuple[str, int]) -> PeerInfo:
        """Connect to *peer* unless already connected (idempotent).

        Args:
            peer: a discovered :class:`PeerInfo`, or ``(host, port)`` of a peer that
                discovery cannot see.

        Returns:
            The connected peer.

        Raises:
            HandshakeError: the peer refused, broke the handshake, closed the
                connection during it or took too long.
            OSError: the TCP connection could not be made (or the host name has
                no IPv4 address).
            ValueError: *peer* is this node itself.
        """
        if isinstance(peer, PeerInfo):
            host, port, expected = peer.address, peer.port, peer.id
            if expected == self.peer_id:
                raise ValueError("cannot connect to this node itself")
        else:
            host, port = peer
            expected = None
            host = await _resolve_ipv4(host, port)
        while True:
            existing = self._find_connection(expected, host, port)
            if existing is not None:
                await trio.lowlevel.checkpoint()
                return existing.peer
            if expected is None or expected not in self._dialing:
                break
            await self._registry_changed.park()  # another task is dialling it
        if expected is not None:
            self._dialing.add(expected)
        try:
            conn: PeerConnection = await self._nursery.start(self._dial, host, port, expected)
        except HandshakeError as exc:
            if exc.code != GoodbyeCode.DUPLICATE:
                raise
            # Already connected (the peer dialled): the other connection wins;
            # wait for it, by the id the peer proved when there is one.
            wanted = expected if expected is not None else exc.peer_id
            with trio.move_on_after(self.config.handshake_timeout):
                while (winner := self._find_connection(wanted, host, port)) is None:
                    await self._registry_changed.park()
                return winner.peer
            raise
        finally:
            if expected is not None:
                self._dialing.discard(expected)
                self._registry_changed.unpark_all()
        return conn.peer

    def _find_connection(
        self, peer_id: uuid.UUID | None, host: str, port: int
    ) -> PeerConnection | None:
        if peer_id is not None:
            return self._open_connection(peer_id)
        # Only a connection this node dialled there: a peer that dialled in may
        # claim any port, and a node sharing its address could claim another's.
        # (In plaintext mode nothing is proven anyway: its claim is taken.)
        claims = self.config.insecure_plaintext
        for conn in self._connections.values():
            if (
                conn.is_open
                and (conn.dialer or claims)
                and conn.peer.address == host
                and conn.peer.port == port
            ):
                return conn
        return None

    async def disconnect_peer(self, peer_id: uuid.UUID) -> None:
        """Close the connection to *peer_id* with a goodbye.

        Returns once the connection is closed; its
        :class:`~trio_p2p.PeerDisconnected` event (and a
        :class:`~trio_p2p.DeliveryFailed` for what was not acknowledged) follows
        on the event channel. It does not wait for them to be placed there, so it
        is safe to call from the task that reads the events. For a peer whose
        connection broke and whose session waits for it to come back, it ends
        that session (reported by a :class:`~trio_p2p.DeliveryFailed`).

        Raises:
            PeerNotConnectedError: no live connection to that peer (nor a session
                waiting for it).
        """
        reason = "disconnected by the application"
        parked = self._parked.get(peer_id)
        if parked is not None:  # its connection broke: end the session waiting for it
            self._settle_parked(peer_id, parked, reason)
            self._nursery.start_soon(self._report_parked_end, parked, reason)
            await trio.lowlevel.checkpoint()
            return
        conn = self._connection(peer_id)
        await conn.close(reason)

    # ------------------------------------------------------------ sending

    def send_text_message_nowait(self, peer_id: uuid.UUID, text: str) -> Message:
        """Queue a text message to *peer_id* without waiting.

        Returns:
            The message as sent (with its id and timestamp).

        Raises:
            trio.WouldBlock: the peer's send window is full, or 64 KiB of frames
                wait to be written to it.
            PeerNotConnectedError: no live connection to that peer.
            ValueError: the message is larger than the peer accepts.
            TypeError: *text* is not a str.
        """
        content = _text(text)
        conn = self._open_connection(peer_id)
        if conn is not None:
            return conn.send_nowait(content)
        kept = self._kept_session(peer_id)
        if kept is None:
            raise PeerNotConnectedError(peer_id)
        return self._send_later(*kept, content)

    async def send_text_message(self, peer_id: uuid.UUID, text: str) -> Message:
        """Queue a text message to *peer_id*, waiting while its send window is full.

        The message is delivered at most once and in order, or named in a
        :class:`~trio_p2p.DeliveryFailed` event; :meth:`flush` waits for delivery.

        A full window is waited on until half of it is acknowledged, a full
        write queue (64 KiB not yet written) until the writer takes it.

        While the connection to the peer is broken and its session waits for the
        peer to come back (:attr:`PeerDisconnected.resuming
        <trio_p2p.PeerDisconnected.resuming>`), the message waits in the
        session, within its window, and is sent once the peer is back.

        Raises:
            PeerNotConnectedError: no live connection to that peer (nor a session
                waiting for it).
            ValueError: the message is larger than the peer accepts.
            TypeError: *text* is not a str.
        """
        content = _text(text)
        while True:
            conn = self._open_connection(peer_id)
            if conn is not None:
                try:
                    return await conn.send(content)
                except PeerNotConnectedError:
                    if self._kept_session(peer_id) is None and not self._session_lives(
                        peer_id, conn.session
                    ):
                        raise
                    continue  # it broke meanwhile: the message goes on in its session
            kept = self._kept_session(peer_id)
            if kept is None:
                raise PeerNotConnectedError(peer_id)
            if not kept[0].window_full:
                message = self._send_later(*kept, content)
                await trio.lowlevel.checkpoint()
                return message
            await self._registry_changed.park()  # until the peer is back, or gone

    def _kept_session(self, peer_id: uuid.UUID) -> tuple[Session, int] | None:
        """The session with *peer_id* waiting for a new connection, if any.

        Parked, or about to be (its connection's end is being reported); with
        the largest frame body the peer accepts.
        """
        parked = self._parked.get(peer_id)
        if parked is not None:
            return parked.session, parked.max_body
        conn = self._connections.get(peer_id)
        if conn is not None and conn.reason is not None and self._will_park(conn):
            return conn.session, conn.max_body  # (its end is being reported)
        return None

    def _will_park(self, conn: PeerConnection) -> bool:
        """Whether the session of *conn*, which has ended, waits for the peer.

        At most ``max_connections`` sessions wait at once (each may dial), and
        half of that many of one address: a stream of connections that break
        cannot pile them up, nor one host take every place.
        """
        if not conn.resumable or self._closing or self.config.resume_timeout <= 0:
            return False
        limit = self.config.max_connections
        if len(self._parked) >= limit:
            return False
        address = conn.peer.address
        here = sum(1 for p in self._parked.values() if p.peer.address == address)
        return here < max(1, limit // 2)

    def _send_later(self, session: Session, max_body: int, content: Content) -> Message:
        """Number a message in a session without a connection.

        It is sent once the session carries on over a new connection.

        Raises:
            trio.WouldBlock: the session's send window is full.
            ValueError: the message is larger than the peer accepts.
        """
        if session.window_full:
            raise trio.WouldBlock
        message, _ = number_message(session, self._parked_ids, self._local, content, max_body)
        return message

    async def broadcast_text_message(self, text: str) -> list[Message]:
        """Send a text message to every connected peer.

        Returns:
            One message per peer it was queued for.

        Raises:
            TypeError: *text* is not a str.
        """
        content = _text(text)
        sent = []
        for conn in list(self._connections.values()):
            if conn.is_open:
                try:
                    sent.append(await conn.send(content))
                except PeerNotConnectedError:
                    continue
        await trio.lowlevel.checkpoint()
        return sent

    async def flush(self, peer_id: uuid.UUID | None = None) -> None:
        """Return once everything sent so far is acknowledged by its receiver.

        Args:
            peer_id: the peer to wait for; None waits for every peer.

        Raises:
            DeliveryError: a session ended with messages unacknowledged.
            PeerNotConnectedError: *peer_id* is not connected.
        """
        if peer_id is not None:
            await self._flush_peer(peer_id)
            return
        for each in [*self._connections, *self._parked]:
            await self._flush_peer(each)
        await trio.lowlevel.checkpoint()

    async def _flush_peer(self, peer_id: uuid.UUID) -> None:
        # Across broken connections whose session carries on.
        while True:
            conn = self._open_connection(peer_id)
            if conn is not None:
                try:
                    await conn.flush()
                    return
                except DeliveryError:
                    await conn.finished.wait()  # (parked by then, if it broke)
                    if not self._session_lives(peer_id, conn.session):
                        raise
                    continue
            parked = self._parked.get(peer_id)
            if parked is None:
                raise PeerNotConnectedError(peer_id)
            await parked.settled.wait()
            if parked.ended is not None:
                raise DeliveryError(peer_id, parked.session.unacknowledged(), parked.ended)

    # ------------------------------------------------------------ files

    async def send_file(self, peer_id: uuid.UUID, path: str | os.PathLike[str]) -> Transfer:
        """Send the file at *path* to *peer_id*; return once the peer verified and saved it.

        The file is read chunk by chunk, never whole. Progress arrives as
        :class:`~trio_p2p.FileTransferProgress` events. If an earlier transfer of
        the same file (same name, size and modification time) to the same peer
        was interrupted, the peer resumes it where it stopped. If the connection
        breaks meanwhile and its session carries on over a new one, the same
        transfer goes on there (see :doc:`/delivery`). Cancelling the call
        cancels the transfer (the peer keeps what it has, to resume).

        Returns:
            The transfer, as completed.

        Raises:
            PeerNotConnectedError: no live connection to that peer.
            TransferError: the file cannot be read, the peer refused it or could
                not verify it, or the session ended first.
        """
        conn = self._connection(peer_id)
        return await self._files.send(conn, pathlib.Path(path))

    def accept_file(self, transfer_id: uuid.UUID) -> None:
        """Accept an offer announced by a :class:`~trio_p2p.FileOffered` event.

        Raises:
            ValueError: no offer with that id waits for an answer (it was
                answered, timed out, or its connection ended).
        """
        self._files.answer(transfer_id, True)

    def reject_file(self, transfer_id: uuid.UUID, reason: str = "rejected by the user") -> None:
        """Reject an offer announced by a :class:`~trio_p2p.FileOffered` event.

        Raises:
            ValueError: no offer with that id waits for an answer.
        """
        self._files.answer(transfer_id, False, reason[:1024])

    def cancel_transfer(
        self, transfer_id: uuid.UUID, reason: str = "cancelled by the user"
    ) -> None:
        """Cancel a file transfer in progress, sent or received (or reject its offer).

        The peer is told *reason*; this node's ``send_file`` raises
        :exc:`~trio_p2p.TransferError` and both ends get a
        :class:`~trio_p2p.FileTransferFailed` event. A receiver keeps what it has,
        to resume if the file is sent again.

        Raises:
            ValueError: no transfer with that id is in progress here.
        """
        self._files.cancel(transfer_id, reason[:1024])

    # ------------------------------------------------------------ counters

    def statistics(self) -> Statistics:
        """A frozen snapshot of the counters."""
        totals = Counter(self._counters)
        for conn in self._connections.values():
            totals.update(conn.counters())
        ints = {f.name: totals[f.name] for f in attrs.fields(Statistics) if f.type in (int, "int")}
        return Statistics(
            **ints,
            connections_refused=self._refused,
            connections_failed=self._failed,
            datagrams_dropped=self._drops,
        )

    # ------------------------------------------------------------ serving

    async def _serve(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        nursery = self._nursery
        nursery.start_soon(self._outlet.run)
        nursery.start_soon(self._accept_loop)
        nursery.start_soon(self._files.sweep_loop)
        nursery.start_soon(self._known_peers_loop)
        await nursery.start(self._discovery.run)
        task_status.started()

    async def _accept_loop(self) -> None:
        while True:
            try:
                stream = await self._listener.accept()
            except OSError as exc:
                logger.warning("accepting a connection failed: %s", exc)
                self._outlet.nowait(Error(exc))
                await trio.sleep(0.1)
                continue
            try:
                address = stream.socket.getpeername()[0]
            except OSError:  # (reset already)
                await trio.aclose_forcefully(stream)
                continue
            if self._closing:
                cause = "closing"
            elif self._handshakes >= self.config.max_pending_handshakes:
                cause = "too_many_handshakes"
            elif self._handshaking[address] >= HANDSHAKES_PER_ADDRESS:
                cause = "too_many_handshakes_from_address"
            elif len(self._connections) >= self.config.max_connections:
                cause = "too_many_connections"
            else:
                cause = ""
            if cause:
                self._refused[cause] += 1
                await trio.aclose_forcefully(stream)
                continue
            self._nursery.start_soon(self._serve_incoming, stream, address)

    def _admission(self, hello: Hello, address: str) -> tuple[str, str] | PeerConnection | None:
        """Decide on an incoming hello from *address*.

        Returns:
            None to admit it, an existing connection it may replace, or
            ``(cause, reason)`` to refuse it.
        """
        peer_id = hello.node_id
        if peer_id == self.peer_id:
            return ("own_id", "the hello claims this node's own id")
        if peer_id in self._admitting:
            return ("duplicate", "a handshake for that node id is in progress")
        existing = self._connections.get(peer_id)
        if existing is not None and existing.is_open:
            if existing.session.peer_nonce != hello.session:
                return ("id_taken", "that node id is connected from another process")
            if existing.peer.address != address:
                return ("id_taken", "that node id is connected from another address")
            return existing  # the caller decides (see _may_replace)
        if peer_id in self._dialing and self.peer_id < peer_id:
            return ("duplicate", "simultaneous dial: the smaller node id's dial wins")
        if len(self._connections) >= self.config.max_connections:
            return ("too_many_connections", "too many connections")
        # One address may hold half the places at most, whoever dialled (this
        # node redials broken sessions, so those count too): a host with many
        # keys cannot take them all.
        limit = max(1, self.config.max_connections // 2)
        if sum(1 for c in self._connections.values() if c.peer.address == address) >= limit:
            return ("too_many_connections_from_address", "too many connections from that address")
        return None

    async def _may_replace(self, existing: PeerConnection, peer_id: uuid.UUID) -> str | None:
        """Whether a new connection from *existing*'s peer may replace it.

        The peer is the same process at the same address (see ``_admission``).

        Returns:
            None if it may, else why not.
        """
        if not existing.dialer:
            # The peer dialled again: it believes the old link dead. Replace it only
            # if it really does not answer (anyone can learn a nonce).
            alive = False
            with trio.move_on_after(self.config.handshake_timeout / 2):
                alive = await existing.probe()
            if alive:
                return "already connected (the existing connection is alive)"
            return None
        # Both sides dialled at once: the connection the smaller id dialled wins.
        young = trio.current_time() - existing.established_at < self.config.handshake_timeout
        if peer_id < self.peer_id and young:
            return None
        return "already connected (this node dialled)"

    async def _serve_incoming(self, stream: trio.SocketStream, address: str) -> None:
        self._handshakes += 1
        self._handshaking[address] += 1
        try:
            conn = await self._accept_handshake(stream, address)
        except BaseException:  # cancelled (shutdown) in the middle of the handshake
            await trio.aclose_forcefully(stream)
            raise
        finally:
            self._handshakes -= 1
            self._handshaking[address] -= 1
            if not self._handshaking[address]:
                del self._handshaking[address]
        if conn is not None:
            await self._run_connection(conn)

    async def _secure(
        self, stream: trio.SocketStream, *, expected: uuid.UUID | None = None, dialer: bool
    ) -> tuple[trio.abc.Stream, PeerProof | None]:
        """Run the secure channel's handshake on a new connection (unless plaintext).

        Returns:
            The stream to speak on, and the identity the peer proved (None in
            plaintext mode).
        """
        stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.config.insecure_plaintext:
            return stream, None
        io = SocketIO(stream.socket)
        if dialer:
            return await secure_dial(
                stream,
                io,
                self.identity,
                self._static_key,
                network_key=self.config.network_key,
                expected=expected,
            )
        return await secure_accept(
            stream, io, self.identity, self._static_key, network_key=self.config.network_key
        )

    async def _accept_handshake(
        self, stream: trio.SocketStream, address: str
    ) -> PeerConnection | None:
        decoder = FrameDecoder(HELLO_LIMIT)
        cause = reason = ""
        channel: trio.abc.Stream = stream
        try:
            with trio.move_on_after(self.config.handshake_timeout) as scope:
                channel, proof = await self._secure(stream, dialer=False)
                hello, pending = await receive_hello(channel, decoder)
                _check_claim(hello, proof)
            if scope.cancelled_caught:
                cause, reason = "handshake_timeout", "no hello within the handshake timeout"
            else:
                decision = self._trusted(hello) or self._admission(hello, address)
                if isinstance(decision, PeerConnection):
                    self._admitting.add(hello.node_id)
                    try:
                        why_not = await self._may_replace(decision, hello.node_id)
                        if why_not is None:
                            # (its session waits for the new one, if that one
                            # offers to carry it on)
                            await self._retire(
                                decision,
                                "replaced by a new connection",
                                resumable=hello.resumes == self._local.nonce,
                            )
                    finally:
                        self._admitting.discard(hello.node_id)
                    decision = ("duplicate", why_not) if why_not is not None else None
                if decision is not None:
                    cause, reason = decision
                    code = GoodbyeCode.DUPLICATE if cause == "duplicate" else GoodbyeCode.REFUSED
                    with trio.move_on_after(self.config.handshake_timeout):
                        await send_frame(channel, Goodbye(code, reason))
                else:
                    await self._ended_connection_settled(hello.node_id)
                    parked = self._parked.get(hello.node_id)
                    resumes = self._resumes(hello, parked)
                    if parked is not None and not resumes:
                        await self._end_parked(hello.node_id, parked, _NOT_RESUMED)
                    return self._new_connection(
                        stream,
                        channel,
                        proof,
                        hello,
                        address,
                        False,
                        decoder,
                        pending,
                        answer=self._local.hello(parked.session if resumes and parked else None),
                        resume=parked if resumes else None,
                    )
        except ProtocolError as exc:
            cause, reason = "protocol", str(exc)
            plaintext = isinstance(exc, PlaintextPeerError)
            if plaintext:
                cause = "plaintext"
            # A goodbye only where the peer can read it: in the secure channel, or
            # in plaintext to a plaintext peer (not in the middle of a handshake).
            if channel is not stream or plaintext or self.config.insecure_plaintext:
                with trio.move_on_after(min(1.0, self.config.handshake_timeout)):
                    await send_frame(channel, Goodbye(GoodbyeCode.PROTOCOL, reason[:1000]))
        except HandshakeError as exc:
            cause, reason = "handshake", str(exc)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            cause, reason = "connection_lost", str(exc)
        self._refused[cause] += 1
        bad_input.warning("incoming connection from %s refused: %s", address, reason)
        await trio.aclose_forcefully(stream)
        return None

    async def _dial(
        self,
        host: str,
        port: int,
        expected: uuid.UUID | None,
        *,
        task_status: trio.TaskStatus[PeerConnection] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        timeout = self.config.handshake_timeout
        failures: list[OSError] = []
        with trio.move_on_after(timeout) as scope:
            stream = await _connect(host, port, failures)
        if scope.cancelled_caught:
            last = f" (last attempt: {failures[-1]})" if failures else ""
            raise HandshakeError(f"connecting to {host}:{port} timed out after {timeout:g} s{last}")
        offered = None if expected is None else self._parked.get(expected)
        channel: trio.abc.Stream = stream
        try:
            decoder = FrameDecoder(self.config.max_frame_size)
            with trio.move_on_after(timeout) as scope:
                channel, proof = await self._secure(stream, expected=expected, dialer=True)
                await send_frame(channel, self._local.hello(offered.session if offered else None))
                try:
                    hello, pending = await receive_hello(channel, decoder)
                except (HandshakeError, OSError) as exc:
                    if isinstance(exc, HandshakeError) and exc.code is not None:
                        if proof is not None:
                            exc.peer_id = proof.peer_id  # (who refused: proven)
                        raise  # refused, with a reason
                    # A peer with another network key fails the handshake's last
                    # message, and can only close (or reset) the connection.
                    hint = ""
                    if self.config.network_key is not None:
                        hint = " (does the peer use the same network key?)"
                    raise HandshakeError(
                        f"{host}:{port} closed the connection during the handshake{hint}"
                    ) from exc
            if scope.cancelled_caught:
                raise HandshakeError(f"no answer from {host}:{port} within {timeout:g} s")
            address = stream.socket.getpeername()[0]
            refusal = None
            _check_claim(hello, proof)
            untrusted = self._trusted(hello)
            if untrusted is not None:
                self._refused[untrusted[0]] += 1
                refusal = untrusted[1]
            elif hello.node_id == self.peer_id:
                refusal = f"{host}:{port} is this node itself"
            elif expected is not None and hello.node_id != expected:
                refusal = f"{host}:{port} is node {hello.node_id}, not {expected}"
            elif len(self._connections) >= self.config.max_connections:
                refusal = "too many connections"
            winner = None
            if refusal is None:
                winner = await self._settle_dial(hello)
                if winner is not None:
                    refusal = "already connected"
            if refusal is not None:
                code = GoodbyeCode.REFUSED if winner is None else GoodbyeCode.DUPLICATE
                with trio.move_on_after(timeout):
                    await send_frame(channel, Goodbye(code, refusal))
                if winner is None:
                    raise HandshakeError(refusal)
        except BaseException as exc:
            await trio.aclose_forcefully(stream)
            if isinstance(exc, ProtocolError):
                raise HandshakeError(f"{host}:{port} broke the handshake: {exc}") from exc
            if isinstance(exc, trio.BrokenResourceError | trio.ClosedResourceError | OSError):
                raise HandshakeError(f"{host}:{port} closed the connection: {exc}") from exc
            raise
        if winner is not None:
            await trio.aclose_forcefully(stream)
            task_status.started(winner)  # connect_to_peer is idempotent
            return
        try:
            await self._ended_connection_settled(hello.node_id)
            parked = self._parked.get(hello.node_id)
            resumes = parked is not None and parked is offered and self._resumes(hello, parked)
            if parked is not None and not resumes:
                await self._end_parked(hello.node_id, parked, _NOT_RESUMED)
            conn = self._new_connection(
                stream,
                channel,
                proof,
                hello,
                address,
                True,
                decoder,
                pending,
                resume=parked if resumes else None,
            )
        except BaseException as exc:
            await trio.aclose_forcefully(stream)
            if isinstance(exc, ProtocolError):
                raise HandshakeError(f"{host}:{port} broke the handshake: {exc}") from exc
            raise
        task_status.started(conn)
        await self._run_connection(conn)

    def _trusted(self, hello: Hello) -> tuple[str, str] | None:
        """Why the proven peer of *hello* may not connect (``Config.trust``), or None."""
        if self.config.insecure_plaintext or self.config.trust == "any":
            return None
        if hello.node_id in self.config.known_peers or hello.node_id in self.known_peers:
            return None
        return ("unknown_peer", "this node accepts known peers only, and does not know this one")

    def _remember(self, peer_id: uuid.UUID, name: str, key: str) -> bool:
        """Remember a peer just connected; return whether its name came with a new key."""
        # A key that takes a name another key has is flagged; after that, at
        # each connection while a key that had the name before it is still seen
        # (two keys in use under one name). A node that merely got a new key
        # leaves its old one unseen, and is flagged only the first time.
        # (Taking a name another key had, even if it has another one now, is
        # flagged; the time a key first had a name survives renames: a node that
        # renames and comes back keeps its claim on the name.)
        known = self.known_peers.get(peer_id)
        since = None if known is None else known.named_since(name)

        def had_it_first(other: KnownPeer) -> bool:
            if since is None:  # (this key takes the name now: another has or had it)
                return True
            held = other.named_since(name)
            return (
                held is not None
                and held < since
                and other.name == name  # (one that gave the name up is not in use under it)
                and self._still_seen(other, since)
            )

        others = [p for p in self.known_peers.others_named(name, peer_id) if had_it_first(p)]
        if others:
            logger.warning(
                "peer %r (%s) has a name known with another key (id %s, fingerprint %s): "
                "an impostor, or the same node with a new key; compare fingerprints",
                name,
                peer_id,
                others[0].peer_id,
                others[0].fingerprint,
            )
        if self.known_peers.remember(peer_id, name, key):
            self._known_changed.set()
        return bool(others)

    def _still_seen(self, peer: KnownPeer, since: float) -> bool:
        """Whether *peer* was seen after *since*, or is connected (or resuming) now."""
        return (
            peer.last_seen > since
            or peer.peer_id in self._connections
            or peer.peer_id in self._parked
        )

    async def _known_peers_loop(self) -> None:
        """Save the known peers after each change (changes made meanwhile, at once)."""
        while True:
            await self._known_changed.wait()
            self._known_changed = trio.Event()
            await self._save_known_peers()

    async def _save_known_peers(self) -> None:
        """Write the known peers to their file in a worker thread (it syncs to disk).

        One write at a time; a write cancelled (closing, on a slow disk) is
        abandoned to finish on its own, and cannot replace a later one (see
        :meth:`KnownPeers.write`).
        """
        if self.known_peers.path is None:
            return
        async with self._known_writing:
            snapshot = self.known_peers.snapshot()
            try:
                await trio.to_thread.run_sync(
                    self.known_peers.write, snapshot, abandon_on_cancel=True
                )
            except OSError as exc:
                logger.warning("cannot save the known peers to %s: %s", self.known_peers.path, exc)

    async def _settle_dial(self, hello: Hello) -> PeerConnection | None:
        """Settle a dial that reached *hello*'s node against a connection it has.

        Returns:
            The existing connection to keep instead of the new one, or None to
            keep the new one.
        """
        existing = self._connections.get(hello.node_id)
        if existing is None or not existing.is_open:
            return None
        if existing.dialer or self.peer_id > hello.node_id:
            return existing
        # Both dialled at once and this node's id is the smaller: its dial wins.
        # The connection it accepted ends after its answering hello is written:
        # the peer's dial must read that hello to settle on the kept connection
        # (cut before it, the peer's dial would fail as a broken handshake).
        await self._retire(
            existing,
            "simultaneous dial: the smaller node id's connection is kept",
            goodbye=GoodbyeCode.DUPLICATE,
        )
        return None

    async def _retire(
        self,
        conn: PeerConnection,
        reason: str,
        *,
        resumable: bool = False,
        goodbye: GoodbyeCode | None = None,
    ) -> None:
        """End *conn* for *reason*; wait (boundedly) until its end is reported.

        With *goodbye*, what *conn* has queued is written first, then a goodbye
        with that code (``CLOSE_TIMEOUT`` at most, then it is cut).
        """
        if goodbye is not None:  # (the connection's end, not its report: bounded alone)
            await conn.close(reason, goodbye)
        conn._finish(reason, resumable=resumable)
        with trio.move_on_after(self.config.handshake_timeout):
            await conn.finished.wait()

    def _new_connection(
        self,
        stream: trio.SocketStream,
        channel: trio.abc.Stream,
        proof: PeerProof | None,
        hello: Hello,
        address: str,
        dialer: bool,
        decoder: FrameDecoder,
        pending: list[Frame],
        *,
        answer: Hello | None = None,
        resume: _Parked | None = None,
    ) -> PeerConnection:
        """A connection after the hellos, registered (with *answer* queued first).

        With *resume*, it carries that parked session on.

        Raises:
            ProtocolError: the hello's resume point does not fit the session.
        """
        io: SocketIO | SecureStream
        output_pending = None
        if isinstance(channel, SecureStream):
            io = channel
            output_pending = channel.output_pending
            channel.allow_bulk()
        else:
            io = SocketIO(stream.socket)
        conn = PeerConnection(
            channel,
            local=self._local,
            hello=hello,
            address=address,
            dialer=dialer,
            decoder=decoder,
            pending=pending,
            events=self._event_send,
            event_text=self._event_text,
            send_window=self.config.send_window,
            heartbeat_interval=self.config.heartbeat_interval,
            heartbeat_timeout=self.config.heartbeat_timeout,
            # An idle connection is written to directly by the sending task (no
            # wake-up of the writer task); the reader receives straight into its
            # decoder's (reused) buffer; both switch tasks only when they must
            # wait. Only while the connection is open, so the fd is ours.
            write_nowait=io.write_nowait,
            receive_into=io.receive_into,
            receive_nowait=io.receive_nowait,
            send_all=io.send_all,
            session=None if resume is None else resume.session,
            output_pending=output_pending,
        )
        if proof is not None:
            key = fingerprint(proof.public_key)
            new_key = self._remember(conn.peer.id, conn.peer.name, key)
            conn.peer = attrs.evolve(conn.peer, fingerprint=key, new_key=new_key)
        if answer is not None:
            conn._queue(answer)
        if resume is not None:
            conn.resume(hello.received)
            self._settle_parked(hello.node_id, resume, None)
            logger.info("the session with %s carries on", conn.peer.name)
        conn.files = self._files
        self._connections[hello.node_id] = conn
        self._registry_changed.unpark_all()
        return conn

    async def _run_connection(self, conn: PeerConnection) -> None:
        peer = conn.peer
        self._counters["connections_accepted"] += 1
        logger.info("connected to %s (%s) at %s:%d", peer.name, peer.id, peer.address, peer.port)
        try:
            await conn.run(announce=lambda: self._outlet.send(PeerConnected(peer, conn.resumed)))
        except BaseException:
            # Cancelled (shutdown, or the application's own scope): still report the
            # end, without waiting for room in the event channel.
            await self._report_end(conn, wait=False)
            raise
        await self._report_end(conn, wait=True)

    async def _report_end(self, conn: PeerConnection, *, wait: bool) -> None:
        peer = conn.peer
        reason = conn.reason or "the connection was cancelled"
        if self._connections.get(peer.id) is conn:
            del self._connections[peer.id]
        self.known_peers.seen(peer.id)  # (seen until now: see _remember)
        self._counters.update(conn.counters())
        self._files.connection_ended(conn)
        if conn.failure is not None:
            self._failed[conn.failure] += 1
        resuming = self._will_park(conn)
        if resuming:
            timeout = self.config.resume_timeout
            parked = _Parked(
                conn.session, peer, conn.max_body, reason, trio.current_time() + timeout
            )
            self._parked[peer.id] = parked
            self._nursery.start_soon(self._keep_session, peer.id, parked)
            unacked: tuple[Message, ...] = ()
            logger.info(
                "connection to %s (%s) broke: %s; waiting %g s for it to come back",
                peer.name,
                peer.id,
                reason,
                timeout,
            )
        else:
            unacked = self._undelivered(peer, conn.session, reason)
            logger.info("disconnected from %s (%s): %s", peer.name, peer.id, reason)
        self._registry_changed.unpark_all()
        # A connection that ended before PeerConnected could be placed (the
        # application was behind) is still reported, as the pair of events.
        events: list[Event] = [] if conn.announced else [PeerConnected(peer, conn.resumed)]
        events.append(PeerDisconnected(peer, reason, resuming))
        if unacked:
            events.append(DeliveryFailed(peer, unacked, reason))
        for event in events:
            if wait:
                await self._outlet.send(event)
            else:
                self._outlet.nowait(event)
        conn.finished.set()

    def _undelivered(self, peer: PeerInfo, session: Session, reason: str) -> tuple[Message, ...]:
        """The messages a session ends with unacknowledged (counted and logged)."""
        unacked = session.unacknowledged()
        if unacked:
            self._counters["messages_undelivered"] += len(unacked)
            logger.warning(
                "%d messages to %s were not acknowledged: %s", len(unacked), peer.name, reason
            )
        return unacked

    def _settle_parked(self, peer_id: uuid.UUID, parked: _Parked, ended: str | None) -> None:
        """The parked session is carried on (*ended* None) or ends for *ended*."""
        if self._parked.get(peer_id) is parked:
            del self._parked[peer_id]
        parked.ended = ended
        parked.settled.set()
        self._registry_changed.unpark_all()

    async def _end_parked(self, peer_id: uuid.UUID, parked: _Parked, reason: str) -> None:
        """End a parked session: its unacknowledged messages are reported."""
        self._settle_parked(peer_id, parked, reason)
        await self._report_parked_end(parked, reason)

    async def _report_parked_end(self, parked: _Parked, reason: str) -> None:
        logger.info("the session with %s ended: %s", parked.peer.name, reason)
        unacked = self._undelivered(parked.peer, parked.session, reason)
        if unacked:
            await self._outlet.send(DeliveryFailed(parked.peer, unacked, reason))

    async def _keep_session(self, peer_id: uuid.UUID, parked: _Parked) -> None:
        """Wait for a broken session's peer to come back, dialling it if this node should.

        The node with the smaller id dials (the rule that settles simultaneous
        dials), where discovery last saw the peer, else where it was connected;
        the other waits to be dialled, and only checks that something still
        listens there. An address the peer was never connected at is dialled
        at most ``UNPROVEN_DIALS`` times (its owner may announce anyone's). The
        session ends at its deadline, or as soon as nothing listens where the
        peer was (its process ended: a new one would be a new session anyway).
        """
        delay = REDIAL_FIRST
        gone = ""
        first = True
        unproven = 0  # (dials of an address the peer was never connected at)
        with trio.move_on_at(parked.deadline):
            while self._parked.get(peer_id) is parked and not self._closing:
                where = self._table.get(peer_id) or parked.peer
                if where.address != parked.peer.address:
                    if unproven >= UNPROVEN_DIALS:
                        where = parked.peer
                    else:
                        unproven += 1
                try:
                    if self.peer_id < peer_id:
                        await self.connect_to_peer(where)
                        await trio.lowlevel.checkpoint()
                        continue  # (carried on, unless it came back as a new process)
                    if first:  # (once: the peer dials, if it is there)
                        await self._still_listening(where)
                except (HandshakeError, OSError) as exc:
                    if _refused(exc):
                        gone = f"nothing listens at {where.address}:{where.port} any more"
                        break
                    logger.debug("dialling %s again failed: %s", parked.peer.name, exc)
                first = False
                with trio.move_on_after(delay * random.uniform(0.5, 1.5)):
                    await parked.settled.wait()
                delay = min(2 * delay, REDIAL_LONGEST)
        if self._parked.get(peer_id) is parked:
            timeout = self.config.resume_timeout
            reason = (
                f"the peer's process ended ({gone}; {parked.reason})"
                if gone
                else f"the peer did not come back within {timeout:g} s ({parked.reason})"
            )
            await self._end_parked(peer_id, parked, reason)

    async def _still_listening(self, peer: PeerInfo) -> None:
        """Open (and close at once) a TCP connection to where *peer* listened.

        Raises:
            ConnectionRefusedError: nothing listens there.
        """
        with trio.move_on_after(self.config.handshake_timeout):
            stream = await trio.open_tcp_stream(peer.address, peer.port)
            await trio.aclose_forcefully(stream)

    def _session_lives(self, peer_id: uuid.UUID, session: Session) -> bool:
        """Whether *session* waits for its peer, or carries on over a new connection."""
        parked = self._parked.get(peer_id)
        if parked is not None:
            return parked.session is session
        conn = self._connections.get(peer_id)
        return conn is not None and conn.session is session

    async def _ended_connection_settled(self, peer_id: uuid.UUID) -> None:
        """Wait until a connection to *peer_id* that has ended is taken in.

        Between its end and the report of it, its session is neither live nor
        parked: a new connection from the same peer must not decide on its
        session (carry it on, or start a new one) before that.
        """
        with trio.move_on_after(self.config.handshake_timeout):  # (it takes moments)
            while (old := self._connections.get(peer_id)) is not None and not old.is_open:
                await self._registry_changed.park()

    async def _resumed_connection(self, conn: PeerConnection) -> PeerConnection | None:
        """The connection that carries on *conn*'s session, once there is one.

        None if the session ended instead (or *conn* did not break).
        """
        peer_id = conn.peer_id
        while self._connections.get(peer_id) is conn:  # (until its end is taken in)
            await self._registry_changed.park()
        while True:
            new = self._open_connection(peer_id)
            if new is not None:
                return new if new.session is conn.session else None
            parked = self._parked.get(peer_id)
            if parked is None or parked.session is not conn.session:
                return None
            await self._registry_changed.park()

    def _resumes(self, hello: Hello, parked: _Parked | None) -> bool:
        """Whether *hello* offers to carry on *parked* with this node."""
        return (
            parked is not None
            and hello.session == parked.session.peer_nonce
            and hello.resumes == self._local.nonce
        )

    async def _shutdown(self) -> None:
        """Leave: goodbye beacon, a grace for acknowledgements, then close everything.

        Takes at most ``shutdown_grace`` plus 3 ``CLOSE_PHASE`` seconds (plus the
        goodbye beacon, a few non-blocking sends).
        """
        self._closing = True
        with trio.move_on_after(CLOSE_PHASE) as saving:
            await self._save_known_peers()  # (the last_seen times)
        if saving.cancelled_caught:
            logger.warning(
                "the known peers were not saved to %s: the disk took longer than %g s",
                self.known_peers.path,
                CLOSE_PHASE,
            )
        with trio.move_on_after(CLOSE_PHASE):
            await self._discovery.send(BeaconKind.GOODBYE)
        with trio.move_on_after(self.config.shutdown_grace):
            for conn in list(self._connections.values()):
                with contextlib.suppress(PeerNotConnectedError):
                    await conn.flush()
        left = sum(c.session.in_flight for c in self._connections.values())
        if left:
            logger.warning("leaving with %d messages unacknowledged (use flush())", left)
        self._outlet.closing = True
        self._files.abandon_suspended()
        for peer_id, parked in list(self._parked.items()):
            await self._end_parked(peer_id, parked, "the messenger was closed")
        with trio.move_on_after(CLOSE_PHASE):
            async with trio.open_nursery() as nursery:
                for conn in list(self._connections.values()):
                    nursery.start_soon(conn.close, "the peer is shutting down")
                    nursery.start_soon(conn.finished.wait)
        self._outlet.abandon()


@asynccontextmanager
async def open_messenger(name: str, config: Config | None = None) -> AsyncIterator[Messenger]:
    """Start a messenger: bind its sockets, start its tasks, yield it.

    On exit it says goodbye (beacon and connections), gives unacknowledged
    messages ``config.shutdown_grace`` to be acknowledged, closes every
    connection, cancels its tasks and closes the event channel, within about a
    second.

    Args:
        name: this node's display name (1-128 UTF-8 bytes of printable text).
        config: settings; the defaults suit a real LAN.

    Raises:
        OSError: a socket could not be bound (plain, never in an exception group).
        ValueError: the name is not valid.
        IdentityInUseError: the identity file of ``config.identity`` is in use by
            another running messenger.
    """
    config = config if config is not None else Config()
    check_name(name)
    identity = config.identity if config.identity is not None else Identity.generate()
    with identity.locked():
        async with _running(name, config, identity) as messenger:
            yield messenger


@asynccontextmanager
async def _running(name: str, config: Config, identity: Identity) -> AsyncIterator[Messenger]:
    """The body of :func:`open_messenger`, once the identity is held."""
    listener = await _open_listener(config)
    try:
        discovery_socket = await open_discovery_socket(config)
    except BaseException:
        await listener.aclose()
        raise
    send, receive = trio.open_memory_channel[Event](config.event_buffer)
    body_error: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            messenger = Messenger(
                name, config, identity, nursery, listener, discovery_socket, (send, receive)
            )
            try:
                await nursery.start(messenger._serve)
                yield messenger
            except BaseException as exc:  # re-raised below, outside the nursery
                body_error = exc
            finally:
                with trio.CancelScope(shield=True):
                    await messenger._shutdown()
                nursery.cancel_scope.cancel()
    finally:
        send.close()
        discovery_socket.close()
        await trio.aclose_forcefully(listener)
    if body_error is not None:
        raise body_error
