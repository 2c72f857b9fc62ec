"""A trio_p2p node for the namespace LAN tests, driven over stdin/stdout.

Run inside a test host's network namespace. It opens a messenger with the
default configuration (default ports, default discovery: the broadcast
address of every interface ifaddr finds), using only the public API, and:

* reads one JSON command per line on stdin, and answers each with one JSON
  line ``{"reply": <command id>, ...}`` (``"error"`` if it failed);
* writes every event as one JSON line ``{"event": <kind>, ...}``.

    python lan_agent.py NAME DOWNLOAD_DIR [SETTING=VALUE ...]

Settings after the folder override Config fields, for the tests that must not
wait for a default or need another policy: ``resume_timeout=3``,
``trust=known``, ``network_key=TEXT``. The setting ``quiet=1`` is
the agent's own: it does not write MessageReceived events, only counts them
and their latency (see ``latency``), for long runs at a high rate.

Commands (``"id"`` is echoed in the reply):

``{"cmd": "info"}``
    its node id and TCP port
``{"cmd": "connect", "peer": ID}``
    connect to a discovered peer
``{"cmd": "send", "peer": ID, "prefix": P, "count": N}``
    send texts ``P0`` .. ``P{N-1}`` with ``send_text_message``; replies once
    queued (messages for a peer whose link is down wait in its session)
``{"cmd": "flush", "peer": ID}``
    wait until every message to the peer is acknowledged
``{"cmd": "disconnect", "peer": ID}``
    disconnect from the peer
``{"cmd": "known", "peer": ID}`` (whether discovery knows it, and at which address)
    whether the peer is in its table of discovered peers
``{"cmd": "file", "peer": ID, "path": PATH}``
    send a file; replies once the receiver verified it
``{"cmd": "latency"}``
    messages received since the last call, and the 50th and 99th percentile
    of their latency (from the sender's timestamp; one clock on one machine)
``{"cmd": "stats"}``
    some ``statistics()`` counters, how many peers it knows, its peak RSS (MiB)
``{"cmd": "quit"}``
    leave (the reply comes once the messenger is closed)
"""

from __future__ import annotations

import json
import pathlib
import sys
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import trio

import trio_p2p


def _describe(event: trio_p2p.Event) -> dict[str, Any]:
    """The JSON form of an event (the fields the tests look at)."""
    out: dict[str, Any] = {"event": type(event).__name__}
    peer = getattr(event, "peer", None)
    if peer is not None:
        out["peer"] = str(peer.id)
        out["address"] = peer.address
    if isinstance(event, trio_p2p.MessageReceived):
        content = event.message.content
        out["peer"] = str(event.message.sender_id)
        out["text"] = content.text if isinstance(content, trio_p2p.Text) else None
    elif isinstance(event, trio_p2p.PeerConnected):
        out["resumed"] = event.resumed
        out["fingerprint"] = event.peer.fingerprint
        out["new_key"] = event.peer.new_key
    elif isinstance(event, trio_p2p.PeerDisconnected):
        out["reason"] = event.reason
        out["resuming"] = event.resuming
    elif isinstance(event, trio_p2p.DeliveryFailed):
        out["reason"] = event.reason
        out["texts"] = [
            m.content.text for m in event.messages if isinstance(m.content, trio_p2p.Text)
        ]
    elif isinstance(event, trio_p2p.FileTransferProgress):
        out["peer"] = str(event.transfer.peer_id)
        out["filename"] = event.transfer.filename
        out["done"] = event.bytes_transferred
        out["total"] = event.total_bytes
    elif isinstance(event, trio_p2p.FileTransferCompleted | trio_p2p.FileTransferFailed):
        out["peer"] = str(event.transfer.peer_id)
        out["filename"] = event.transfer.filename
        out["path"] = str(event.transfer.path) if event.transfer.path else None
        if isinstance(event, trio_p2p.FileTransferFailed):
            out["reason"] = event.error.reason
    return out


def _rss_mib(field: str = "VmHWM") -> float:
    """This process's peak (VmHWM) or current (VmRSS) RSS; VmHWM, unlike
    ru_maxrss, is not the parent's from before the exec."""
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise LookupError(f"no {field} in /proc/self/status")


def _plain(value: object) -> object:
    """A counter as JSON takes it (per-cause counts are read-only mappings)."""
    return dict(value) if isinstance(value, Mapping) else value


class Agent:
    def __init__(self, messenger: trio_p2p.Messenger, *, quiet: bool = False) -> None:
        self.messenger = messenger
        self.quiet = quiet
        self.latencies: list[float] = []
        self.discovered: dict[uuid.UUID, trio_p2p.PeerInfo] = {}
        self.lock = trio.Lock()  # one line at a time on stdout

    async def write(self, record: dict[str, Any]) -> None:
        async with self.lock:
            sys.stdout.write(json.dumps(record) + "\n")
            sys.stdout.flush()

    async def events(self) -> None:
        async for event in self.messenger.events:
            if isinstance(event, trio_p2p.MessageReceived):
                latency = time.time() - event.message.timestamp
                if len(self.latencies) < 1_000_000:  # (bounded between two calls)
                    self.latencies.append(latency)
                if self.quiet:
                    continue
            if isinstance(event, trio_p2p.PeerDiscovered):
                self.discovered[event.peer.id] = event.peer
            await self.write(_describe(event))

    async def run(self, command: dict[str, Any]) -> dict[str, Any]:
        m = self.messenger
        kind = command["cmd"]
        if kind == "info":
            return {"node_id": str(m.peer_id), "port": m.tcp_port}
        if kind == "latency":
            seen, self.latencies = sorted(self.latencies), []
            if not seen:
                return {"count": 0}
            return {
                "count": len(seen),
                "p50_ms": 1000 * seen[len(seen) // 2],
                "p99_ms": 1000 * seen[min(len(seen) - 1, len(seen) * 99 // 100)],
                "rss_mib": _rss_mib("VmRSS"),
            }
        if kind == "stats":
            stats = m.statistics()
            counters = {
                name: _plain(getattr(stats, name))
                for name in (
                    "file_bytes_sent",
                    "file_bytes_received",
                    "messages_undelivered",
                    "datagrams_received",
                    "datagrams_dropped",
                    "connections_refused",
                )
            }
            return {
                **counters,
                "peers_discovered": len(m.discovered_peers()),
                "peak_rss_mib": _rss_mib(),
            }
        peer = uuid.UUID(command["peer"])
        if kind == "connect":
            info = self.discovered.get(peer)
            if info is None:
                info = next((p for p in m.discovered_peers() if p.id == peer), None)
            if info is None:
                raise LookupError(f"{peer} is not discovered")
            await m.connect_to_peer(info)
            return {}
        if kind == "send":
            prefix = command["prefix"]
            for i in range(command["count"]):
                await m.send_text_message(peer, f"{prefix}{i}")
            return {}
        if kind == "flush":
            await m.flush(peer)
            return {}
        if kind == "disconnect":
            await m.disconnect_peer(peer)
            return {}
        if kind == "known":
            found = {p.id: p for p in m.discovered_peers()}.get(peer)
            return {"known": found is not None, "address": found and found.address}
        if kind == "file":
            transfer = await m.send_file(peer, command["path"])
            return {"size": transfer.size}
        raise ValueError(f"unknown command {kind!r}")

    async def serve(self, command: dict[str, Any]) -> None:
        reply: dict[str, Any] = {"reply": command.get("id")}
        try:
            reply.update(await self.run(command))
        except Exception as exc:  # reported to the test, which decides
            reply["error"] = f"{type(exc).__name__}: {exc}"
        await self.write(reply)


async def json_lines(stream: trio.abc.ReceiveStream) -> AsyncIterator[dict[str, Any]]:
    """The JSON objects of *stream*, one per line, until it ends."""
    buffer = b""
    while data := await stream.receive_some(65536):
        buffer += data
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            yield json.loads(line)


async def main(name: str, download_dir: str, *settings: str) -> None:
    changes: dict[str, Any] = {}
    for setting in settings:
        key, value = setting.split("=", 1)
        try:
            changes[key] = float(value)
        except ValueError:  # text settings: trust=known, network_key=...
            changes[key] = value
    quiet = bool(changes.pop("quiet", 0))
    config = trio_p2p.Config(download_dir=pathlib.Path(download_dir), **changes)
    stdin = trio.lowlevel.FdStream(sys.stdin.fileno())
    async with trio_p2p.open_messenger(name, config) as messenger:
        agent = Agent(messenger, quiet=quiet)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(agent.events)
            await agent.write({"event": "ready", "node_id": str(messenger.peer_id)})
            quit_id: object = None
            async for command in json_lines(stdin):
                if command["cmd"] == "quit":
                    quit_id = command.get("id")
                    break
                nursery.start_soon(agent.serve, command)
            nursery.cancel_scope.cancel()
    sys.stdout.write(json.dumps({"reply": quit_id}) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2], *sys.argv[3:])
