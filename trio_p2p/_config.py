"""Config: every knob of a messenger, with sane defaults, frozen and validated."""

from __future__ import annotations

import hashlib
import ipaddress
import os
import pathlib
import uuid
from collections.abc import Iterable

import attrs

from ._identity import Identity

__all__ = ["CHUNK_OVERHEAD", "Config"]

#: Bytes of a chunk frame besides its data (prefix, map, id, offset: 50 at
#: most), with room to spare.
CHUNK_OVERHEAD = 128


def _positive(_inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value > 0:
        raise ValueError(f"Config.{attribute.name} must be > 0, got {value!r}")


def _port(_inst: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not 0 <= value <= 65535:
        raise ValueError(f"Config.{attribute.name} must be a port number 0-65535, got {value!r}")


def _at_least_one(_inst: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        raise ValueError(f"Config.{attribute.name} must be >= 1, got {value!r}")


def _default_download_dir() -> pathlib.Path:
    return pathlib.Path.home() / "Downloads" / "trio_p2p"


def _path(value: str | os.PathLike[str]) -> pathlib.Path:
    return pathlib.Path(value).expanduser()


def _addresses(value: Iterable[str] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = (value,)
    result = tuple(value)
    for address in result:
        ipaddress.IPv4Address(address)  # raises ValueError for anything else
    return result


def _network_key(value: bytes | str | None) -> bytes | None:
    """The 32-byte Noise PSK of a network key given as bytes or text."""
    if value is None:
        return None
    if isinstance(value, str):
        value = value.encode()
    if not isinstance(value, bytes | bytearray) or not value:
        raise ValueError("Config.network_key must be non-empty bytes or text, or None")
    return hashlib.sha256(b"trio_p2p network key v1\x00" + bytes(value)).digest()


@attrs.frozen(kw_only=True)
class Config:
    """Settings of one messenger. Every field has a default; pass only what differs.

    Attributes:
        discovery_port: UDP port of the discovery beacons (all nodes of a network share it).
        tcp_port: TCP port to listen on. If it is taken, a free port is used instead and
            announced in the beacons; 0 always picks a free port.
        bind_address: address the TCP listener and the discovery socket bind to.
        broadcast_addresses: where beacons are sent. ``None`` means the broadcast address
            of every up, non-loopback IPv4 interface (re-read every few intervals). Tests
            and demos pass ``("127.255.255.255",)``.
        announce_interval: seconds between two announcements.
        peer_timeout: a discovered peer not heard for this long is reported lost.
        interface_refresh_intervals: re-read the interfaces every this many announcements.
        max_discovered_peers: bound of the discovered-peer table.
        max_peers_per_address: at most this many node ids are kept per source address; a
            new one evicts that address's stalest entry, so a flood from one host cannot
            push other peers out.
        handshake_timeout: seconds a connection may take to complete its handshake.
        max_pending_handshakes: incoming connections allowed to be in their handshake at
            once; more are closed at once.
        max_connections: established connections allowed at once; more are refused.
            Connections with one address may take half of them at most (a new
            one from an address that has as many is refused).
        heartbeat_interval: an idle connection sends a ping this often.
        heartbeat_timeout: a connection on which nothing arrives for this long is closed.
        max_frame_size: largest frame (bytes after the 4-byte prefix) accepted or sent.
            Each connection may buffer up to this much of an incomplete frame, so
            ``max_connections`` times this bounds that memory.
        send_window: messages sent to one peer and not yet acknowledged, at most.
        resume_timeout: seconds the session of a connection that broke (no
            goodbye: a dropped link, a silent peer) waits for the peer to come
            back over a new connection; the node with the smaller id dials it
            again meanwhile. 0 ends the session with its connection.
        event_buffer: capacity of the event channel.
        shutdown_grace: seconds leaving ``open_messenger`` waits for unacknowledged
            messages to be acknowledged before closing the connections (which then
            takes at most half a second more).
        chunk_size: largest piece of a file sent in one frame (smaller if the
            peer's frame limit requires it).
        download_dir: where received files are saved (created when first needed).
            Default: ``~/Downloads/trio_p2p``.
        auto_accept_files: accept every offer at once; if False, offers arrive as
            :class:`~trio_p2p.FileOffered` events for ``accept_file`` /
            ``reject_file``.
        max_file_size: larger offers are rejected; None for no limit (besides the
            free space).
        offer_timeout: seconds an offer waits for ``accept_file`` before it is
            rejected.
        transfer_idle_timeout: a transfer during which nothing comes from the other
            end for this long fails (a sender that stops sending, a receiver that
            stops confirming); a sender waits this long for an answer to its offer,
            on top of its own ``offer_timeout``.
        max_incoming_transfers: transfers one peer may have coming in at once
            (and all peers together four times as many); further offers are
            rejected.
        free_space_margin: an offer is rejected unless the download folder's file
            system keeps at least this many bytes free after the file.
        partial_ttl: seconds a partial file (kept to resume an interrupted
            transfer) may stay unclaimed before it is removed.
        identity: this node's :class:`~trio_p2p.Identity`, from which its peer id
            derives. None (the default) makes a fresh, ephemeral one for each
            messenger; use :meth:`Identity.load_or_create` for an id that stays
            the same across runs (its file is locked while the messenger runs).
        network_key: a secret shared by every node of a private network (any
            bytes or text; long and random is best): it is mixed into every
            handshake, so nodes without it cannot connect at all. None (the
            default): any node may connect.
        insecure_plaintext: for debugging only: no encryption and no proof of
            identity, so anyone on the network can read, change and impersonate
            everything. Such a node cannot talk to the default, encrypted ones.
        trust: who may connect, once its key is proven: ``"any"`` (the
            default: every node; those seen before are remembered, and a known
            name coming back with another id is flagged, see
            :attr:`PeerInfo.new_key`) or ``"known"`` (only ids remembered from
            earlier connections or listed in *known_peers*; others are refused).
            Peers are remembered in memory, and in a file beside the identity
            file when the identity is kept in one.
        known_peers: peer ids that may always connect, even with
            ``trust="known"`` (say, ids whose fingerprints were checked).
    """

    discovery_port: int = attrs.field(default=6968, validator=_port)
    tcp_port: int = attrs.field(default=6969, validator=_port)
    bind_address: str = "0.0.0.0"
    broadcast_addresses: tuple[str, ...] | None = attrs.field(default=None, converter=_addresses)
    announce_interval: float = attrs.field(default=1.0, validator=_positive)
    peer_timeout: float = attrs.field(default=5.0, validator=_positive)
    interface_refresh_intervals: int = attrs.field(default=5, validator=_at_least_one)
    max_discovered_peers: int = attrs.field(default=512, validator=_at_least_one)
    max_peers_per_address: int = attrs.field(default=16, validator=_at_least_one)
    handshake_timeout: float = attrs.field(default=5.0, validator=_positive)
    max_pending_handshakes: int = attrs.field(default=64, validator=_at_least_one)
    max_connections: int = attrs.field(default=128, validator=_at_least_one)
    heartbeat_interval: float = attrs.field(default=1.0, validator=_positive)
    heartbeat_timeout: float = attrs.field(default=5.0, validator=_positive)
    max_frame_size: int = attrs.field(default=2 * 1024 * 1024, validator=_at_least_one)
    send_window: int = attrs.field(default=4096, validator=_at_least_one)
    resume_timeout: float = attrs.field(default=30.0, validator=attrs.validators.ge(0))
    event_buffer: int = attrs.field(default=1024, validator=_at_least_one)
    shutdown_grace: float = attrs.field(default=0.25, validator=attrs.validators.ge(0))
    chunk_size: int = attrs.field(default=1024 * 1024, validator=_at_least_one)
    download_dir: pathlib.Path = attrs.field(factory=_default_download_dir, converter=_path)
    auto_accept_files: bool = True
    max_file_size: int | None = None
    offer_timeout: float = attrs.field(default=60.0, validator=_positive)
    transfer_idle_timeout: float = attrs.field(default=60.0, validator=_positive)
    max_incoming_transfers: int = attrs.field(default=16, validator=_at_least_one)
    free_space_margin: int = attrs.field(default=64 * 1024 * 1024, validator=attrs.validators.ge(0))
    partial_ttl: float = attrs.field(default=7 * 24 * 3600.0, validator=_positive)
    identity: Identity | None = None
    network_key: bytes | None = attrs.field(default=None, converter=_network_key, repr=False)
    insecure_plaintext: bool = False
    trust: str = attrs.field(default="any", validator=attrs.validators.in_(("any", "known")))
    known_peers: frozenset[uuid.UUID] = attrs.field(default=frozenset(), converter=frozenset)

    def __attrs_post_init__(self) -> None:
        if self.peer_timeout <= self.announce_interval:
            raise ValueError("Config.peer_timeout must be longer than announce_interval")
        if self.heartbeat_timeout <= self.heartbeat_interval:
            raise ValueError("Config.heartbeat_timeout must be longer than heartbeat_interval")
        if not 1024 <= self.max_frame_size <= 2**32 - 1:
            raise ValueError("Config.max_frame_size must be between 1024 and 2**32 - 1 bytes")
        if self.chunk_size > self.max_frame_size - CHUNK_OVERHEAD:
            raise ValueError(
                f"Config.chunk_size must leave {CHUNK_OVERHEAD} bytes of max_frame_size for "
                "the chunk frame's other fields"
            )
        if self.max_file_size is not None and self.max_file_size < 0:
            raise ValueError("Config.max_file_size must be >= 0 or None")
