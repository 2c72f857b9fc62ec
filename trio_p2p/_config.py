"""Config: every knob of a messenger, with sane defaults, frozen and validated."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

import attrs

__all__ = ["Config"]


def _positive(_inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value > 0:
        raise ValueError(f"Config.{attribute.name} must be > 0, got {value!r}")


def _port(_inst: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not 0 <= value <= 65535:
        raise ValueError(f"Config.{attribute.name} must be a port number 0-65535, got {value!r}")


def _at_least_one(_inst: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        raise ValueError(f"Config.{attribute.name} must be >= 1, got {value!r}")


def _addresses(value: Iterable[str] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = (value,)
    result = tuple(value)
    for address in result:
        ipaddress.IPv4Address(address)  # raises ValueError for anything else
    return result


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
        heartbeat_interval: an idle connection sends a ping this often.
        heartbeat_timeout: a connection on which nothing arrives for this long is closed.
        max_frame_size: largest frame (bytes after the 4-byte prefix) accepted or sent.
            Each connection may buffer up to this much of an incomplete frame, so
            ``max_connections`` times this bounds that memory.
        send_window: messages sent to one peer and not yet acknowledged, at most.
        event_buffer: capacity of the event channel.
        shutdown_grace: seconds leaving ``open_messenger`` waits for unacknowledged
            messages to be acknowledged before closing the connections (which then
            takes at most half a second more).
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
    event_buffer: int = attrs.field(default=1024, validator=_at_least_one)
    shutdown_grace: float = attrs.field(default=0.25, validator=attrs.validators.ge(0))

    def __attrs_post_init__(self) -> None:
        if self.peer_timeout <= self.announce_interval:
            raise ValueError("Config.peer_timeout must be longer than announce_interval")
        if self.heartbeat_timeout <= self.heartbeat_interval:
            raise ValueError("Config.heartbeat_timeout must be longer than heartbeat_interval")
        if not 1024 <= self.max_frame_size <= 2**32 - 1:
            raise ValueError("Config.max_frame_size must be between 1024 and 2**32 - 1 bytes")
