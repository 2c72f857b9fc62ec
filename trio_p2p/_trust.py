"""Peers seen before: remembered by id, kept in a file beside a kept identity.

A peer id derives from a key, so an impostor must come with a new id. What
this store makes visible is the other half: a *name* that was known with one
id and comes back with another is flagged (see ``PeerInfo.new_key``). With
``Config.trust = "known"``, only remembered or listed ids may connect.
"""

from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import pathlib
import threading
import time
import uuid
from typing import Any

import attrs

from ._log import RateLimitedWarnings, get_logger

__all__ = ["KnownPeer", "KnownPeers", "Snapshot", "known_peers_path"]

logger = get_logger("trust")
#: (a flood of new keys against a full table is logged, but not line by line)
full = RateLimitedWarnings(logger)

#: Peers remembered at most; the least recently seen are forgotten first...
KNOWN_PEERS_LIMIT = 4096
#: ...but not one seen within this many seconds: a full table of peers seen
#: lately takes no new ones (else a flood of new keys would push out the peers
#: whose names the new-key flag protects).
KNOWN_PEERS_KEPT = 7 * 24 * 3600
#: Names remembered per peer (with when each was first used), the most
#: recently taken kept.
NAMES_KEPT = 8
_FORMAT_VERSION = 1


def known_peers_path(identity_path: pathlib.Path) -> pathlib.Path:
    """Where the known peers of the identity kept at *identity_path* are kept."""
    return identity_path.with_name(identity_path.name + ".known.json")


@attrs.frozen
class KnownPeer:
    """A peer seen before.

    Attributes:
        peer_id: its id.
        name: the name it last had.
        fingerprint: its key's fingerprint.
        first_seen: when it was first connected (Unix time).
        last_seen: when it was last connected, or its last connection ended
            (Unix time).
        names: the names it has had, each with when it was first connected
            under it (Unix time), the most recently taken last; its current
            name among them (by default, since *first_seen*). At most
            ``NAMES_KEPT``: a name taken again keeps its first time, so a peer
            that renames and comes back to its name is still its first holder.
    """

    peer_id: uuid.UUID
    name: str
    fingerprint: str
    first_seen: float
    last_seen: float
    names: tuple[tuple[str, float], ...] = attrs.field(
        default=attrs.Factory(lambda self: ((self.name, self.first_seen),), takes_self=True)
    )

    def named_since(self, name: str) -> float | None:
        """When this peer was first connected under *name*, or None if never (kept)."""
        for known, since in self.names:
            if known == name:
                return since
        return None

    def renamed(self, name: str, now: float) -> KnownPeer:
        """This peer, now called *name* (seen at *now*)."""
        since = self.named_since(name)
        names = [entry for entry in self.names if entry[0] != name]
        names.append((name, now if since is None else since))
        return attrs.evolve(self, name=name, last_seen=now, names=tuple(names[-NAMES_KEPT:]))


@attrs.frozen
class Snapshot:
    """The known peers at one moment, numbered in the order taken.

    Taking one copies references only (a :class:`KnownPeer` never changes):
    turning it into the file's text is left to :meth:`KnownPeers.write`, in a
    worker thread (20 ms for a full table of 4,096 peers here).

    Attributes:
        number: 1 for the first snapshot of a table, then 2, 3...
        peers: the peers.
    """

    number: int
    peers: tuple[KnownPeer, ...]

    @property
    def text(self) -> str:
        """The file's content."""
        entries = [
            {
                "id": str(p.peer_id),
                "name": p.name,
                "fingerprint": p.fingerprint,
                "first_seen": p.first_seen,
                "last_seen": p.last_seen,
                "names": [[name, since] for name, since in p.names],
            }
            for p in sorted(self.peers, key=lambda p: p.first_seen)
        ]
        return json.dumps({"version": _FORMAT_VERSION, "peers": entries}, indent=1)


class KnownPeers:
    """The peers this node has been connected to, by id (sans I/O but for :meth:`save`).

    Args:
        path: the file they are kept in, or None to keep them in memory only.
        limit: how many to keep at most.
    """

    def __init__(self, path: pathlib.Path | None = None, limit: int = KNOWN_PEERS_LIMIT) -> None:
        self.path = path
        self._limit = limit
        self._peers: dict[uuid.UUID, KnownPeer] = {}
        #: the number of the last snapshot taken, and of the last one written
        self._taken = 0
        self._written = 0
        #: held (by worker threads) while a written snapshot replaces the file
        self._replacing = threading.Lock()

    @classmethod
    def load(cls, path: pathlib.Path | None) -> KnownPeers:
        """The peers kept in *path* (none if it does not exist yet).

        A file that cannot be read or understood is logged at WARNING and set
        aside (renamed ``*.bad``) rather than trusted or silently overwritten.
        Temporary files that writes cut short left beside it are removed: load
        only a file this process owns (the messenger holds its identity's lock).
        """
        known = cls(path)
        if path is None:
            return known
        # Temporary files of writes cut short (a process killed, or ended while
        # a slow disk still wrote): the file's owner is this node (its identity
        # is locked), so none of them is still being written.
        for leftover in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
            with contextlib.suppress(OSError):
                leftover.unlink()
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("version") != _FORMAT_VERSION:
                raise ValueError(f"unknown format version {data.get('version')!r}")
            for entry in data["peers"]:
                known._peers[uuid.UUID(entry["id"])] = _peer_from(entry)
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            logger.warning("known peers file %s is unusable (%s); starting afresh", path, exc)
            with contextlib.suppress(OSError):
                path.replace(path.with_name(path.name + ".bad"))
            known._peers.clear()
        return known

    def __len__(self) -> int:
        return len(self._peers)

    def __contains__(self, peer_id: uuid.UUID) -> bool:
        return peer_id in self._peers

    def get(self, peer_id: uuid.UUID) -> KnownPeer | None:
        """The peer known by *peer_id*, if any."""
        return self._peers.get(peer_id)

    def others_named(self, name: str, peer_id: uuid.UUID) -> list[KnownPeer]:
        """Known peers with another id than *peer_id* that have had *name*.

        (As far as their kept names go: see ``NAMES_KEPT``.)
        """
        return [
            p
            for p in self._peers.values()
            if p.peer_id != peer_id and p.named_since(name) is not None
        ]

    def remember(
        self, peer_id: uuid.UUID, name: str, fingerprint: str, now: float | None = None
    ) -> bool:
        """Record a connection to a peer; return whether the file needs saving.

        (A new peer, or a known one with a new name; a mere ``last_seen`` is
        saved with the next change or by :meth:`save`.)
        """
        now = time.time() if now is None else now
        known = self._peers.get(peer_id)
        if known is None:
            if len(self._peers) >= self._limit:
                stalest = min(self._peers.values(), key=lambda p: p.last_seen)
                if stalest.last_seen > now - KNOWN_PEERS_KEPT:
                    full.warning(
                        "%s (%s) is not remembered: the %d known peers were all seen "
                        "in the last %d days",
                        name,
                        peer_id,
                        len(self._peers),
                        KNOWN_PEERS_KEPT // 86400,
                    )
                    return False
                del self._peers[stalest.peer_id]
            self._peers[peer_id] = KnownPeer(peer_id, name, fingerprint, now, now)
            return True
        if known.name != name:
            self._peers[peer_id] = known.renamed(name, now)
            return True
        self._peers[peer_id] = attrs.evolve(known, last_seen=now)
        return False

    def seen(self, peer_id: uuid.UUID, now: float | None = None) -> None:
        """Record that a known peer was connected until *now* (its connection ended).

        (Saved with the next change: not worth a write alone.)
        """
        known = self._peers.get(peer_id)
        if known is not None:
            self._peers[peer_id] = attrs.evolve(
                known, last_seen=time.time() if now is None else now
            )

    def save(self) -> None:
        """Write the peers to the file (atomically, readable by the owner only).

        Blocks: :meth:`snapshot` on the event loop and :meth:`write` in a worker
        thread do the same without blocking it.

        Raises:
            OSError: the file cannot be written.
        """
        self.write(self.snapshot())

    def snapshot(self) -> Snapshot:
        """The peers as they are now, numbered (for :meth:`write`)."""
        self._taken += 1
        return Snapshot(self._taken, tuple(self._peers.values()))

    def write(self, snapshot: Snapshot) -> None:
        """Write a :meth:`snapshot` to the file, atomically, owner-only.

        Blocking (it syncs the file to disk); safe in worker threads, even
        several at once (a write abandoned on a slow disk): each goes through a
        temporary file of its own, and a snapshot older than the one the file
        already holds is dropped rather than put in its place. Nothing is
        written if the peers are kept in memory only.

        Raises:
            OSError: the file cannot be written.
        """
        if self.path is None:
            return
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}-{snapshot.number}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(snapshot.text)
                out.flush()
                os.fsync(out.fileno())
            with self._replacing:
                if snapshot.number > self._written:
                    temporary.replace(self.path)
                    self._written = snapshot.number
                else:  # a later snapshot is in the file already
                    temporary.unlink()
        except BaseException:
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise


def _peer_from(entry: dict[str, Any]) -> KnownPeer:
    """A known peer from its entry in the file.

    Raises:
        ValueError, KeyError, TypeError: the entry is malformed.
    """
    name = entry["name"]
    if not isinstance(name, str):
        raise TypeError(f"a name that is not a string: {name!r}")
    first_seen = _time(entry["first_seen"])
    # (files written before the name history kept one "named_since")
    history = entry.get("names", [[name, entry.get("named_since", first_seen)]])
    if not isinstance(history, list):
        raise TypeError("names that are not a list")
    names = []
    for item in history[-NAMES_KEPT:]:
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)):
            raise TypeError(f"a kept name that is not [name, time]: {item!r}")
        names.append((item[0], _time(item[1])))
    if name not in (n for n, _ in names):
        names = [*names[1 - NAMES_KEPT :], (name, first_seen)]
    return KnownPeer(
        uuid.UUID(entry["id"]),
        name,
        str(entry["fingerprint"]),
        first_seen,
        _time(entry["last_seen"]),
        tuple(names),
    )


def _time(value: object) -> float:
    """A time from the file: a finite number.

    Raises:
        ValueError, TypeError: it is not one.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"a time that is not a number: {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"a time that is not finite: {value!r}")
    return float(value)
