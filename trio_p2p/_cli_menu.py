"""The interactive menu of ``python -m trio_p2p [NAME]`` (public API only).

The seed's numbered commands, peers picked by number or name prefix, events
shown as they happen above the line being typed (:mod:`trio_p2p._cli_term`),
and a live progress bar for every file transfer in flight, on both sides.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import getpass
import logging
import pathlib
import signal
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence

import attrs
import ifaddr
import rich.filesize
import rich.progress_bar
import rich.table
import rich.text
import trio

from . import (
    Direction,
    Event,
    FileOffered,
    FileTransferCompleted,
    FileTransferFailed,
    FileTransferProgress,
    FileTransferStarted,
    IdentityError,
    Messenger,
    PeerConnected,
    PeerDiscovered,
    PeerInfo,
    Transfer,
    TransferError,
    TrioP2PError,
    open_messenger,
)
from ._cli_json import describe_event, printable
from ._cli_script import config_from, identity_for
from ._cli_term import Terminal, open_terminal

__all__ = ["HELP", "choose_peer", "menu"]

HELP = """\
  1  list discovered peers        5  send a file
  2  list connected peers         6  disconnect a peer
  3  connect to a peer            7  status
  4  send a text message          8  ask the network who is there
  h  this help                    0 or q  quit (Ctrl-C and Ctrl-D too)
Peers are picked by their number in the list shown, or by the start of their name."""

#: How long connecting to a peer may take from the menu.
CONNECT_TIMEOUT = 10.0
#: How long a sent text may wait for the peer's acknowledgement before the menu says so.
ACK_TIMEOUT = 10.0


def choose_peer(peers: Sequence[PeerInfo], answer: str) -> PeerInfo | str:
    """The peer *answer* picks from *peers*, or why it picks none.

    *answer* is a number in the list (from 1), a name or the start of one (case
    is ignored; a whole name wins over longer names it starts), or the start
    of an id.
    """
    answer = answer.strip()
    if answer.isdigit():
        number = int(answer)
        if 1 <= number <= len(peers):
            return peers[number - 1]
        return f"there is no peer number {number} (1 to {len(peers)})"
    wanted = answer.casefold()
    exact = [p for p in peers if p.name.casefold() == wanted]
    named = exact or [p for p in peers if p.name.casefold().startswith(wanted)]
    found = named or [p for p in peers if str(p.id).startswith(wanted)]
    if len(found) == 1:
        return found[0]
    if not found:
        return f"no peer here is called {answer!r}"
    names = ", ".join(sorted(p.name for p in found))
    return f"{answer!r} could be {names}: type more of the name, or the number"


class _Bar:
    """A transfer in flight, drawn as one progress line."""

    def __init__(self, transfer: Transfer, peer: str) -> None:
        self.transfer = transfer
        arrow = "to" if transfer.direction == Direction.SEND else "from"
        self.label = f"{printable(transfer.filename)} {arrow} {peer}"
        self.done = transfer.offset
        self.started = time.monotonic()
        self.start_bytes = transfer.offset

    def line(self, terminal: Terminal) -> str:
        total = self.transfer.size
        elapsed = time.monotonic() - self.started
        rate = (self.done - self.start_bytes) / elapsed if elapsed > 0.2 else 0.0
        if rate > 0:
            left = int((total - self.done) / rate)
            eta = f"{left // 60}:{left % 60:02d}"
        else:
            eta = "-:--"
        grid = rich.table.Table.grid(padding=(0, 1))
        grid.add_column(no_wrap=True, max_width=30, overflow="ellipsis")
        grid.add_column(width=24)
        grid.add_column(no_wrap=True, justify="right")
        grid.add_column(no_wrap=True)
        grid.add_row(
            rich.text.Text(self.label),
            rich.progress_bar.ProgressBar(total=max(total, 1), completed=self.done, width=24),
            f"{100 * self.done / total if total else 100:3.0f}%",
            f"{rich.filesize.decimal(self.done)}/{rich.filesize.decimal(total)} "
            f"{rich.filesize.decimal(int(rate))}/s ETA {eta}",
        )
        return terminal.render(grid)[0]


class _TerminalLog(logging.Handler):
    """Log records printed above the prompt instead of through it."""

    def __init__(self, terminal: Terminal) -> None:
        super().__init__()
        self.terminal = terminal

    def emit(self, record: logging.LogRecord) -> None:
        try:
            trio.lowlevel.current_task()
        except RuntimeError:  # not in the Trio thread: no drawing from here
            sys.stderr.write(self.format(record) + "\n")
            return
        self.terminal.print(self.format(record))


class PrintableFormatter(logging.Formatter):
    """Log messages with what peers sent made safe for a terminal (:func:`printable`)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return printable(super().formatMessage(record))


class Menu:
    """One person at one node: the commands, and what happens meanwhile."""

    def __init__(
        self,
        messenger: Messenger,
        terminal: Terminal,
        args: argparse.Namespace,
        nursery: trio.Nursery,
    ) -> None:
        self.messenger = messenger
        self.terminal = terminal
        self.args = args
        self.nursery = nursery
        self.bars: dict[uuid.UUID, _Bar] = {}
        self.offers: collections.deque[Transfer] = collections.deque()
        self.names: dict[uuid.UUID, str] = {}
        self._waiting: trio.CancelScope | None = None  # the command prompt, while idle
        self._commands: dict[str, Callable[[], Awaitable[None]]] = {
            "1": self.list_discovered,
            "2": self.list_connected,
            "3": self.connect,
            "4": self.send_text,
            "5": self.send_file,
            "6": self.disconnect,
            "7": self.status,
            "8": self.discover,
        }

    def say(self, text: str) -> None:
        """Print a line above the prompt."""
        self.terminal.print(text)

    # ------------------------------------------------------------ the loop

    async def run(self) -> None:
        """Ask for commands until the person quits (or the input ends)."""
        m = self.messenger
        self.say(
            f"{m.peer_name} ({m.peer_id}) on TCP port {m.tcp_port}, discovery port "
            f"{self.args.discovery_port}; fingerprint {m.identity.fingerprint}. "
            "Type h for help."
        )
        while True:
            if self.offers:
                await self._ask_offer(self.offers.popleft())
                continue
            with trio.CancelScope() as waiting:
                self._waiting = waiting
                try:
                    line = await self.terminal.ask(f"{m.peer_name}> ")
                finally:
                    self._waiting = None
            if waiting.cancelled_caught:
                continue  # an offer to ask about first
            command = line.strip().lower()
            if command in ("0", "q", "quit", "exit"):
                return
            if not command:
                continue
            if command in ("h", "help", "?"):
                self.say(HELP)
            elif command in self._commands:
                await self._commands[command]()
            else:
                self.say(f"unknown command {line.strip()!r}: type h for the list")

    # ------------------------------------------------------------ events

    async def watch(self) -> None:
        """Show every event as it comes."""
        async for event in self.messenger.events:
            self.show(event)

    def _peer_name(self, peer_id: uuid.UUID) -> str:
        return self.names.get(peer_id, str(peer_id)[:8])

    def show(self, event: Event) -> None:
        """Show *event*: a line above the prompt, or a progress bar."""
        if isinstance(event, PeerDiscovered | PeerConnected):
            self.names[event.peer.id] = event.peer.name
        if isinstance(event, FileTransferProgress):
            bar = self.bars.get(event.transfer.id)
            if bar is not None:
                bar.done = event.bytes_transferred
                self._draw_bars()
            return
        if isinstance(event, FileTransferStarted):
            transfer = event.transfer
            self.bars[transfer.id] = _Bar(transfer, self._peer_name(transfer.peer_id))
            self._draw_bars()
            verb = "sending" if transfer.direction == Direction.SEND else "receiving"
            resumed = f", resuming at {transfer.offset:,} bytes" if transfer.offset else ""
            self.say(
                f"* {verb} {printable(transfer.filename)} ({transfer.size:,} bytes{resumed}) "
                f"{'to' if transfer.direction == Direction.SEND else 'from'} "
                f"{self._peer_name(transfer.peer_id)}"
            )
            return
        if isinstance(event, FileTransferCompleted | FileTransferFailed):
            bar = self.bars.pop(event.transfer.id, None)
            self._draw_bars()
            self.offers = collections.deque(t for t in self.offers if t.id != event.transfer.id)
            if isinstance(event, FileTransferCompleted) and bar is not None:
                elapsed = max(time.monotonic() - bar.started, 1e-6)
                rate = rich.filesize.decimal(int((event.transfer.size - bar.start_bytes) / elapsed))
                self.say(f"* {describe_event(event)} ({elapsed:.1f} s, {rate}/s)")
                return
        if isinstance(event, FileOffered):
            transfer = event.transfer
            self.offers.append(transfer)
            self.say(
                f"* {self._peer_name(transfer.peer_id)} offers {printable(transfer.filename)} "
                f"({transfer.size:,} bytes)"
            )
            if self._waiting is not None and not self.terminal.typing:
                self._waiting.cancel()  # ask about it now
            return
        self.say(f"* {describe_event(event)}")

    def _draw_bars(self) -> None:
        self.terminal.set_status([bar.line(self.terminal) for bar in self.bars.values()])

    async def _ask_offer(self, transfer: Transfer) -> None:
        peer = self._peer_name(transfer.peer_id)
        answer = await self.terminal.ask(
            f"accept {printable(transfer.filename)} ({transfer.size:,} bytes) from {peer}? [y/n] "
        )
        try:
            if answer.strip().lower() in ("y", "yes"):
                self.messenger.accept_file(transfer.id)
            else:
                self.messenger.reject_file(transfer.id, "declined by the user")
                self.say(f"declined {printable(transfer.filename)}")
        except TrioP2PError as exc:  # it timed out or was cancelled meanwhile
            self.say(f"too late: {printable(str(exc))}")

    # ------------------------------------------------------------ peers

    def _table(self, peers: Sequence[PeerInfo]) -> None:
        connected = {p.id: p for p in self.messenger.connected_peers()}
        table = rich.table.Table("#", "name", "id", "address", "connected", "fingerprint")
        for number, peer in enumerate(peers, 1):
            live = connected.get(peer.id)
            key = (live or peer).fingerprint or ""
            if live is not None and live.new_key:
                key += " NEW KEY!"
            table.add_row(
                str(number),
                rich.text.Text(printable(peer.name)),
                str(peer.id),
                f"{peer.address}:{peer.port}",
                "yes" if peer.id in connected else "",
                key,
            )
        self.say("\n".join(self.terminal.render(table)))

    @staticmethod
    def _sorted(peers: Sequence[PeerInfo]) -> list[PeerInfo]:
        return sorted(peers, key=lambda p: (p.name.casefold(), str(p.id)))

    async def list_discovered(self) -> None:
        """1: the peers discovery knows."""
        peers = self._sorted(self.messenger.discovered_peers())
        if not peers:
            self.say("no peers discovered yet (8 asks the network)")
        else:
            self._table(peers)

    async def list_connected(self) -> None:
        """2: the peers with a live connection."""
        peers = self._sorted(self.messenger.connected_peers())
        if not peers:
            self.say("not connected to any peer (3 connects)")
        else:
            self._table(peers)

    async def _pick(self, peers: Sequence[PeerInfo], why: str) -> PeerInfo | None:
        self._table(peers)
        answer = await self.terminal.ask(f"{why} (number or name; empty to cancel): ")
        if not answer.strip():
            return None
        chosen = choose_peer(peers, answer)
        if isinstance(chosen, str):
            self.say(chosen)
            return None
        return chosen

    async def _pick_connected(self, why: str) -> PeerInfo | None:
        peers = self._sorted(self.messenger.connected_peers())
        if not peers:
            self.say("not connected to any peer: connect with 3 first")
            return None
        return await self._pick(peers, why)

    async def connect(self) -> None:
        """3: connect to a discovered peer."""
        connected = {p.id for p in self.messenger.connected_peers()}
        peers = self._sorted(
            [p for p in self.messenger.discovered_peers() if p.id not in connected]
        )
        if not peers:
            self.say("no unconnected peers discovered (8 asks the network)")
            return
        peer = await self._pick(peers, "connect to")
        if peer is None:
            return
        try:
            with trio.fail_after(CONNECT_TIMEOUT):
                await self.messenger.connect_to_peer(peer)
        except trio.TooSlowError:
            self.say(f"{peer.name} did not answer within {CONNECT_TIMEOUT:g} s")
        except (TrioP2PError, OSError) as exc:
            self.say(f"could not connect to {peer.name}: {printable(str(exc))}")

    async def send_text(self) -> None:
        """4: send a text message, and say when the peer has it."""
        peer = await self._pick_connected("send to")
        if peer is None:
            return
        text = await self.terminal.ask(f"message to {peer.name}: ")
        if not text:
            self.say("nothing sent")
            return
        try:
            await self.messenger.send_text_message(peer.id, text)
        except TrioP2PError as exc:
            self.say(f"not sent: {printable(str(exc))}")
            return
        self.nursery.start_soon(self._confirm, peer)

    async def _confirm(self, peer: PeerInfo) -> None:
        try:
            with trio.fail_after(ACK_TIMEOUT):
                await self.messenger.flush(peer.id)
        except trio.TooSlowError:
            self.say(f"{peer.name} has not acknowledged the message yet")
        except TrioP2PError as exc:
            self.say(f"the message may not have reached {peer.name}: {printable(str(exc))}")
        else:
            self.say(f"{peer.name} has the message")

    async def send_file(self) -> None:
        """5: send a file; its progress shows as a bar."""
        peer = await self._pick_connected("send the file to")
        if peer is None:
            return
        answer = (await self.terminal.ask("file to send: ")).strip()
        if len(answer) > 1 and answer[0] == answer[-1] and answer[0] in "'\"":
            answer = answer[1:-1]  # a path pasted in quotes
        if not answer:
            self.say("nothing sent")
            return
        path = await trio.Path(answer).expanduser()
        if not await path.is_file():
            exists = await path.exists()
            self.say(f"not a file: {path}" if exists else f"no such file: {path}")
            return
        self.nursery.start_soon(self._send_file, peer, pathlib.Path(path))

    async def _send_file(self, peer: PeerInfo, path: pathlib.Path) -> None:
        try:
            await self.messenger.send_file(peer.id, path)
        except TransferError:
            pass  # FileTransferFailed says why
        except TrioP2PError as exc:
            self.say(f"{path.name} not sent: {printable(str(exc))}")

    async def disconnect(self) -> None:
        """6: close the connection to a peer."""
        peer = await self._pick_connected("disconnect from")
        if peer is not None:
            await self.messenger.disconnect_peer(peer.id)

    async def status(self) -> None:
        """7: who this node is, where it listens, what it has done."""
        m = self.messenger
        stats = m.statistics()
        addresses = [
            f"{ip.ip}/{ip.network_prefix} ({adapter.nice_name})"
            for adapter in ifaddr.get_adapters()
            for ip in adapter.ips
            if isinstance(ip.ip, str)
        ]
        table = rich.table.Table.grid(padding=(0, 2))
        table.add_column(style="bold")
        table.add_column()
        rows = [
            ("name", m.peer_name),
            ("id", str(m.peer_id)),
            ("fingerprint", m.identity.fingerprint),
            ("identity", str(m.identity.path) if m.identity.path else "ephemeral (this run only)"),
            ("TCP port", str(m.tcp_port)),
            ("discovery port", str(self.args.discovery_port)),
            ("beacons go to", ", ".join(m.broadcast_targets) or "nowhere"),
            ("local addresses", ", ".join(addresses) or "none"),
            (
                "peers",
                f"{len(m.discovered_peers())} discovered, {len(m.connected_peers())} connected",
            ),
            (
                "messages",
                f"{stats.messages_sent} sent ({stats.messages_acknowledged} "
                f"acknowledged), {stats.messages_received} received",
            ),
            (
                "traffic",
                f"{rich.filesize.decimal(stats.bytes_sent)} sent, "
                f"{rich.filesize.decimal(stats.bytes_received)} received",
            ),
            (
                "files",
                f"{stats.transfers_completed} done, {stats.transfers_failed} failed, "
                f"{len(self.bars)} in flight",
            ),
        ]
        for key, value in rows:
            table.add_row(key, rich.text.Text(value))
        for bar in self.bars.values():
            table.add_row(
                "", rich.text.Text(f"{bar.label}: {bar.done:,} of {bar.transfer.size:,} bytes")
            )
        self.say("\n".join(self.terminal.render(table)))

    async def discover(self) -> None:
        """8: ask every node to announce itself now."""
        known = await self.messenger.discover_peers()
        self.say(f"asked the network; {len(known)} peers known so far, answers show as they come")


async def _ask_name(terminal: Terminal) -> str:
    default = getpass.getuser()
    while True:
        name = (await terminal.ask(f"your name [{default}]: ")).strip() or default
        if name:
            return name


async def menu(args: argparse.Namespace) -> int:
    """Run the interactive menu until the person quits."""
    config = config_from(args)  # bad options fail before the terminal changes
    refused: IdentityError | None = None
    async with open_terminal() as terminal:
        handler = _TerminalLog(terminal)
        handler.setFormatter(PrintableFormatter("%(name)s %(levelname)s %(message)s"))
        root = logging.getLogger()
        moved = [h for h in root.handlers if isinstance(h, logging.StreamHandler)]
        for old in moved:
            root.removeHandler(old)
        if moved:
            root.addHandler(handler)
        try:
            try:
                name = args.name or await _ask_name(terminal)
            except EOFError:
                return 0
            try:
                config = attrs.evolve(config, identity=identity_for(args, name))
                async with open_messenger(name, config) as messenger:
                    async with trio.open_nursery() as nursery:
                        ui = Menu(messenger, terminal, args, nursery)
                        nursery.start_soon(ui.watch)
                        nursery.start_soon(_quit_on_interrupt, nursery.cancel_scope)
                        with contextlib.suppress(EOFError):  # Ctrl-D, or the end of the input
                            await ui.run()
                        nursery.cancel_scope.cancel()
                    terminal.set_status([])
                    terminal.print("saying goodbye...")
                terminal.print(f"{name} left the network")
            except IdentityError as exc:  # its file is in use by another node, or unusable
                refused = exc
        finally:
            if moved:
                root.removeHandler(handler)
                for old in moved:
                    root.addHandler(old)
    if refused is not None:
        print(f"trio_p2p: {refused}", file=sys.stderr)
        return 1
    return 0


async def _quit_on_interrupt(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            scope.cancel()
            return
