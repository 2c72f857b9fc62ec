"""Discovery: the peer table (pure logic) and the UDP announce/listen service.

Beacons go to every broadcast address (``Config.broadcast_addresses`` or the
interfaces' own, re-read every few intervals); every node sharing the port on
a host hears every beacon (SO_REUSEADDR + SO_REUSEPORT). Every beacon is
signed by its sender's identity key, names the addresses it may come from and
carries a growing counter, so a forged, moved or replayed beacon is dropped.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable

import attrs
import trio

from ._codec import (
    MAX_BEACON_SIZE,
    beacon_key_matches,
    beacon_signature_valid,
    decode_beacon,
    encode_beacon,
    sign_beacon,
)
from ._config import Config
from ._errors import ProtocolError
from ._events import PeerDiscovered, PeerInfo, PeerLost
from ._identity import Identity
from ._identity import fingerprint as key_fingerprint
from ._log import RateLimitedWarnings, get_logger
from ._messages import Beacon, BeaconKind
from ._netif import broadcast_addresses, source_addresses

__all__ = ["Discovery", "Observation", "PeerTable", "open_discovery_socket"]

logger = get_logger("discovery")
bad_input = RateLimitedWarnings(logger)

#: Signature checks per second, from one source address and in all; beacons
#: beyond are dropped unchecked (a flood of forged beacons costs bounded CPU).
VERIFY_PER_ADDRESS = 64
VERIFY_TOTAL = 1024


class VerifyBudget:
    """How many beacon signatures may still be checked this second (per address, in all)."""

    def __init__(self, per_address: int = VERIFY_PER_ADDRESS, total: int = VERIFY_TOTAL) -> None:
        self._per_address = per_address
        self._total = total
        self._window = -1.0
        self._spent = 0
        self._by_address: dict[str, int] = {}

    def take(self, address: str, now: float) -> bool:
        """Spend one check for *address*; False if its budget or the total is spent."""
        if now - self._window >= 1.0:
            self._window = now
            self._spent = 0
            self._by_address.clear()
        spent = self._by_address.get(address, 0)
        if self._spent >= self._total or spent >= self._per_address:
            return False
        self._by_address[address] = spent + 1
        self._spent += 1
        return True


@attrs.frozen
class Observation:
    """What hearing one announcement did to the table.

    Attributes:
        peer: the entry as it is now (None if the announcement was dropped).
        news: True if the application should hear of it (new, or address changed).
        evicted: an entry pushed out to make room, if any.
        dropped: why the announcement was dropped, if it was.
    """

    peer: PeerInfo | None
    news: bool = False
    evicted: PeerInfo | None = None
    dropped: str | None = None


class PeerTable:
    """Discovered peers, bounded so that a flood cannot use the bound up.

    At most *per_address* node ids are kept per source address (a newcomer from
    a full address evicts that address's stalest entry), at most *capacity* in
    all (a newcomer to a full table evicts the stalest entry of the address
    with the most entries, if it has more than one; else it is dropped); an
    entry for which *is_connected* is true is never evicted.

    Args:
        capacity: most entries in the table.
        per_address: most entries per source address.
        timeout: an entry not heard for this long expires.
        is_connected: tells whether a node id has a live connection.
        move_after: an entry moves to another source address only once it has not
            been heard at its own for this long (so a spoofed beacon cannot
            redirect a live peer).
    """

    def __init__(
        self,
        capacity: int,
        per_address: int,
        timeout: float,
        is_connected: Callable[[uuid.UUID], bool] = lambda _id: False,
        move_after: float = 0.0,
    ) -> None:
        self.capacity = capacity
        self.per_address = per_address
        self.timeout = timeout
        self.is_connected = is_connected
        self.move_after = move_after
        self._peers: dict[uuid.UUID, PeerInfo] = {}
        self._by_address: dict[str, set[uuid.UUID]] = {}

    def __len__(self) -> int:
        return len(self._peers)

    def get(self, node_id: uuid.UUID) -> PeerInfo | None:
        """The entry for *node_id*, if any."""
        return self._peers.get(node_id)

    def snapshot(self) -> list[PeerInfo]:
        """Every entry, oldest discovery first."""
        return list(self._peers.values())

    def _add(self, peer: PeerInfo) -> None:
        self._peers[peer.id] = peer
        self._by_address.setdefault(peer.address, set()).add(peer.id)

    def remove(self, node_id: uuid.UUID) -> PeerInfo | None:
        """Forget *node_id*; return its entry if it had one."""
        peer = self._peers.pop(node_id, None)
        if peer is not None:
            ids = self._by_address[peer.address]
            ids.discard(node_id)
            if not ids:
                del self._by_address[peer.address]
        return peer

    def observe(
        self,
        node_id: uuid.UUID,
        name: str,
        address: str,
        port: int,
        now: float,
        fingerprint: str | None = None,
    ) -> Observation:
        """Record an announcement heard from *address* (signed by a key of *fingerprint*)."""
        old = self._peers.get(node_id)
        peer = PeerInfo(
            id=node_id, name=name, address=address, port=port, last_seen=now,
            fingerprint=fingerprint,
        )  # fmt: skip
        if old is not None and old.address != address and now - old.last_seen < self.move_after:
            return Observation(None, dropped="address_conflict")
        evicted = None
        if old is None or old.address != address:
            # A newcomer, or a known peer moving here: the address must have room.
            same_address = self._by_address.get(address, set())
            if len(same_address) >= self.per_address:
                evicted = self._stalest(same_address)
                if evicted is None:
                    return Observation(None, dropped="per_address_cap")
            elif old is None and len(self._peers) >= self.capacity:
                crowded = max(self._by_address.values(), key=len)
                evicted = self._stalest(crowded) if len(crowded) > 1 else None
                if evicted is None:
                    return Observation(None, dropped="table_full")
            if evicted is not None:
                self.remove(evicted.id)
            if old is not None:
                self.remove(node_id)
        self._add(peer)
        news = old is None or (old.address, old.port, old.name) != (address, port, name)
        return Observation(peer, news=news, evicted=evicted)

    def _stalest(self, node_ids: set[uuid.UUID]) -> PeerInfo | None:
        candidates = [self._peers[i] for i in node_ids if not self.is_connected(i)]
        return min(candidates, key=lambda p: p.last_seen) if candidates else None

    def expire(self, now: float) -> list[PeerInfo]:
        """Remove and return every entry not heard for ``timeout`` seconds."""
        stale = [p for p in self._peers.values() if now - p.last_seen >= self.timeout]
        for peer in stale:
            self.remove(peer.id)
        return stale

    def next_expiry(self) -> float | None:
        """When the next entry expires (Trio clock), or None if the table is empty."""
        if not self._peers:
            return None
        return min(p.last_seen for p in self._peers.values()) + self.timeout


async def open_discovery_socket(config: Config) -> trio.socket.SocketType:
    """A UDP socket bound to the discovery port, shared with the host's other nodes."""
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        await sock.bind((config.bind_address, config.discovery_port))
    except BaseException:
        sock.close()
        raise
    return sock


class Discovery:
    """The discovery service of one node: announces it, listens, keeps the table.

    Args:
        config: the messenger's configuration.
        sock: the bound discovery socket (see :func:`open_discovery_socket`).
        beacon: this node's announcement (its kind is replaced as needed; it is
            signed for each target).
        table: the peer table to keep.
        notify: receives every :class:`PeerDiscovered` / :class:`PeerLost`; never blocks.
        counters: the messenger's counters (``datagrams_*``).
        drops: the messenger's per-cause drop counters.
        identity: this node's identity, which signs its beacons.
    """

    def __init__(
        self,
        config: Config,
        sock: trio.socket.SocketType,
        beacon: Beacon,
        table: PeerTable,
        notify: Callable[[PeerDiscovered | PeerLost], None],
        counters: Counter[str],
        drops: Counter[str],
        identity: Identity,
    ) -> None:
        self.config = config
        self.sock = sock
        self.identity = identity
        self.beacon = attrs.evolve(beacon, key=identity.public_key)
        #: the addresses each target's beacons may come from (packed IPv4)
        self._sources: dict[str, tuple[bytes, ...]] = {}
        self._last_counter = 0
        #: the newest counter accepted from each node (bounded; oldest forgotten)
        self._counters_seen: OrderedDict[uuid.UUID, int] = OrderedDict()
        self._counters_kept = 4 * config.max_discovered_peers
        self._budget = VerifyBudget()
        self.table = table
        self._notify = notify
        self._counters = counters
        self._drops = drops
        self._announce_now = trio.Event()
        self._targets: tuple[str, ...] = ()
        self._last_announce = -float("inf")
        #: set once the goodbye beacon is sent: nothing more goes out
        self._gone = False

    @property
    def targets(self) -> tuple[str, ...]:
        """The broadcast addresses beacons currently go to."""
        return self._targets

    def refresh_targets(self) -> None:
        """Re-read where beacons go (the configured list, or the interfaces)."""
        if self.config.broadcast_addresses is not None:
            targets = self.config.broadcast_addresses
        else:
            try:
                targets = broadcast_addresses()
            except OSError as exc:
                logger.warning("cannot list network interfaces: %s", exc)
                targets = self._targets
        if targets != self._targets:
            logger.info("discovery broadcasts to %s", ", ".join(targets) or "nothing")
        self._targets = targets
        try:
            sources = source_addresses(targets)
        except OSError as exc:
            logger.warning("cannot list network interfaces: %s", exc)
            return
        self._sources = {
            target: tuple(ipaddress.IPv4Address(a).packed for a in found)
            for target, found in sources.items()
        }

    def _next_counter(self) -> int:
        self._last_counter = max(self._last_counter + 1, time.time_ns() // 1_000_000)
        return self._last_counter

    async def send(self, kind: BeaconKind) -> None:
        """Send one beacon of *kind* to every target; errors are counted, never raised.

        After a goodbye, announcements and requests are not sent any more (a node
        that is leaving must not be discovered again while it closes).
        """
        if self._gone:
            return
        if kind is BeaconKind.GOODBYE:
            self._gone = True
        template = attrs.evolve(self.beacon, kind=kind)
        for target in self._targets:
            beacon = attrs.evolve(
                template, counter=self._next_counter(), addresses=self._sources.get(target, ())
            )
            data = encode_beacon(sign_beacon(beacon, self.identity))
            try:
                await self.sock.sendto(data, (target, self.config.discovery_port))
            except OSError as exc:
                self._counters["datagram_send_errors"] += 1
                bad_input.warning("cannot send a beacon to %s: %s", target, exc.strerror or exc)
            else:
                self._counters["datagrams_sent"] += 1
        if kind is BeaconKind.ANNOUNCE:
            self._last_announce = trio.current_time()

    def request_announce(self) -> None:
        """Announce now rather than at the next interval (rate-limited)."""
        self._announce_now.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve discovery until cancelled."""
        self.refresh_targets()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._listen_loop)
            # A newcomer asks everyone to announce, so it learns of them at once.
            await self.send(BeaconKind.ANNOUNCE)
            await self.send(BeaconKind.REQUEST)
            nursery.start_soon(self._announce_loop)
            task_status.started()

    async def _announce_loop(self) -> None:
        interval = self.config.announce_interval
        min_gap = interval / 4
        rounds = 0
        while True:
            now = trio.current_time()
            deadline = self._last_announce + interval
            expiry = self.table.next_expiry()
            if expiry is not None:
                deadline = min(deadline, expiry)
            with trio.move_on_at(deadline):
                await self._announce_now.wait()
                # asked to announce early: not more often than every min_gap
                await trio.sleep_until(self._last_announce + min_gap)
            self._announce_now = trio.Event()
            for peer in self.table.expire(trio.current_time()):
                logger.info(
                    "peer %s (%s) lost: silent for %g s", peer.name, peer.id, self.table.timeout
                )
                self._notify(PeerLost(peer))
            now = trio.current_time()
            if now - self._last_announce >= min_gap:
                rounds += 1
                if rounds % self.config.interface_refresh_intervals == 0:
                    self.refresh_targets()
                await self.send(BeaconKind.ANNOUNCE)

    async def _listen_loop(self) -> None:
        sock = self.sock
        while True:
            try:
                data, source = await sock.recvfrom(MAX_BEACON_SIZE + 1)
            except OSError as exc:
                # e.g. ICMP errors reported on the socket: never fatal
                if exc.errno not in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
                    logger.warning("discovery socket error: %s", exc)
                continue
            self._counters["datagrams_received"] += 1
            self.handle_datagram(data, source[0])

    def handle_datagram(self, data: bytes, address: str) -> None:
        """Process one datagram heard from *address*."""
        try:
            beacon = decode_beacon(data)
        except ProtocolError as exc:
            self._drops["malformed"] += 1
            bad_input.warning("malformed beacon from %s: %s", address, exc)
            return
        if beacon.node_id == self.beacon.node_id:
            self._drops["own"] += 1
            return
        why = self._check(beacon, address)
        if why is not None:
            self._drops[why] += 1
            if why == "verify_rate":
                logger.debug("beacon from %s dropped unchecked: %s", address, why)
            else:
                bad_input.warning("beacon for %s from %s dropped: %s", beacon.node_id, address, why)
            return
        if beacon.kind is BeaconKind.REQUEST:
            self.request_announce()
            self._observe(beacon, address)
        elif beacon.kind is BeaconKind.ANNOUNCE:
            self._observe(beacon, address)
        else:
            known = self.table.get(beacon.node_id)
            if known is None:
                return
            if known.address != address:  # only the peer's own address may say goodbye
                self._drops["goodbye_from_elsewhere"] += 1
                bad_input.warning(
                    "goodbye for %s from %s ignored: it is at %s", known.id, address, known.address
                )
                return
            self.table.remove(beacon.node_id)
            logger.info("peer %s (%s) said goodbye", known.name, known.id)
            self._notify(PeerLost(known))

    def _check(self, beacon: Beacon, address: str) -> str | None:
        """Why *beacon*, heard from *address*, must be dropped; None if it is genuine.

        Cheap checks first; the signature is checked last, within a budget.
        """
        if not beacon_key_matches(beacon):
            return "key_mismatch"
        try:
            packed = ipaddress.IPv4Address(address).packed
        except ValueError:
            return "address_not_signed"
        if packed not in beacon.addresses:
            return "address_not_signed"
        last = self._counters_seen.get(beacon.node_id)
        if last is not None and beacon.counter <= last:
            return "stale"
        if not self._budget.take(address, time.monotonic()):
            return "verify_rate"
        if not beacon_signature_valid(beacon):
            return "bad_signature"
        seen = self._counters_seen
        seen[beacon.node_id] = beacon.counter
        seen.move_to_end(beacon.node_id)
        if len(seen) > self._counters_kept:
            seen.popitem(last=False)
        return None

    def _observe(self, beacon: Beacon, address: str) -> None:
        seen = self.table.observe(
            beacon.node_id,
            beacon.name,
            address,
            beacon.port,
            trio.current_time(),
            key_fingerprint(beacon.key),
        )
        if seen.dropped is not None:
            self._drops[seen.dropped] += 1
            if seen.dropped == "address_conflict":
                # also a multi-homed peer heard on two networks: not worth a warning
                logger.debug(
                    "beacon for %s from %s ignored: heard elsewhere", beacon.node_id, address
                )
            else:
                bad_input.warning("beacon from %s dropped: %s", address, seen.dropped)
            return
        if seen.evicted is not None:
            self._notify(PeerLost(seen.evicted))
        if seen.news and seen.peer is not None:
            logger.info(
                "peer %s (%s) at %s:%d", seen.peer.name, seen.peer.id, address, seen.peer.port
            )
            self._notify(PeerDiscovered(seen.peer))
