"""Statistics: the frozen counters returned by ``Messenger.statistics()``."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from types import MappingProxyType

import attrs

__all__ = ["Statistics"]


def _frozen_counts(value: Mapping[str, int]) -> Mapping[str, int]:
    # a read-only view of a private Counter copy: a cause never counted reads as 0
    return MappingProxyType(Counter(value))


@attrs.frozen(kw_only=True)
class Statistics:
    """A snapshot of a messenger's counters since it started.

    Attributes:
        frames_sent: frames written to connections.
        frames_received: frames decoded from connections.
        bytes_sent: bytes written to connections.
        bytes_received: bytes read from connections.
        messages_sent: messages accepted by a send.
        messages_received: messages placed in the event channel.
        messages_acknowledged: sent messages the peers acknowledged.
        messages_undelivered: messages not acknowledged when their session ended
            (each named in a ``DeliveryFailed`` event, unless that event was dropped
            at shutdown: see ``events_dropped``).
        connections_accepted: connections that completed a handshake.
        connections_refused: connections closed before or during the handshake, by cause
            (each mapping reads 0 for a cause never counted).
        connections_failed: connections ended by a protocol error (``protocol``), or
            because the peer read nothing while its queue kept growing (``stalled``).
        datagrams_sent: beacons sent.
        datagram_send_errors: beacons that could not be sent.
        datagrams_received: datagrams read from the discovery socket.
        datagrams_dropped: datagrams ignored, by cause (``own``, ``malformed``,
            ``per_address_cap``, ``table_full``, ...).
        events_coalesced: discovery events merged while the event channel was full.
        events_dropped: events that could not be placed in the event channel: at
            shutdown when it was full, or after the application closed it.
        transfers_completed: file transfers verified, both ways.
        transfers_failed: file transfers that ended otherwise, both ways.
        file_bytes_sent: file bytes sent in chunks (a resume sends only the rest).
        file_bytes_received: file bytes received and written.
    """

    frames_sent: int = 0
    frames_received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    messages_sent: int = 0
    messages_received: int = 0
    messages_acknowledged: int = 0
    messages_undelivered: int = 0
    connections_accepted: int = 0
    connections_refused: Mapping[str, int] = attrs.field(factory=dict, converter=_frozen_counts)
    connections_failed: Mapping[str, int] = attrs.field(factory=dict, converter=_frozen_counts)
    datagrams_sent: int = 0
    datagram_send_errors: int = 0
    datagrams_received: int = 0
    datagrams_dropped: Mapping[str, int] = attrs.field(factory=dict, converter=_frozen_counts)
    events_coalesced: int = 0
    events_dropped: int = 0
    transfers_completed: int = 0
    transfers_failed: int = 0
    file_bytes_sent: int = 0
    file_bytes_received: int = 0
