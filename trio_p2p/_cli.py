"""The command-line tool, ``python -m trio_p2p`` (public API only).

It has the demo and the argument parsing (here), the interactive menu
(:mod:`trio_p2p._cli_menu`, drawn by :mod:`trio_p2p._cli_term`) and the
scripting commands listen, send and peers (:mod:`trio_p2p._cli_script`, with
the JSON form of events in :mod:`trio_p2p._cli_json`).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import logging
import os
import pathlib
import socket
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence

import rich.console
import rich.progress
import trio

from . import (
    Config,
    FileTransferCompleted,
    FileTransferProgress,
    IdentityError,
    MessageReceived,
    Messenger,
    PeerConnected,
    PeerDiscovered,
    Text,
    __version__,
    open_messenger,
)
from . import _cli_script as script
from ._cli_menu import PrintableFormatter, menu
from ._cli_script import add_common_options

__all__ = ["main"]


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _wait_discovered(messenger: Messenger, name: str) -> PeerDiscovered:
    async for event in messenger.events:
        if isinstance(event, PeerDiscovered) and event.peer.name == name:
            return event
    raise RuntimeError("event channel closed")


async def _wait_connected(messenger: Messenger) -> PeerConnected:
    async for event in messenger.events:
        if isinstance(event, PeerConnected):
            return event
    raise RuntimeError("event channel closed")


async def _receive_texts(messenger: Messenger, count: int) -> list[MessageReceived]:
    received = []
    async for event in messenger.events:
        if isinstance(event, MessageReceived):
            received.append(event)
            if len(received) == count:
                break
    return received


async def run_demo(burst: int = 10_000, file_mib: int = 64) -> int:
    """Two messengers on loopback find each other, connect, talk and send a file.

    Everything stays on this machine: beacons go to 127.255.255.255 on a private
    discovery port, and the file goes from one temporary folder to another.

    Args:
        burst: how many messages the speed part of the demo sends.
        file_mib: size of the file sent, in MiB.

    Returns:
        The exit status: 0 if every step worked.
    """
    with tempfile.TemporaryDirectory(prefix="trio_p2p_demo_") as folder:
        return await _demo(burst, file_mib, pathlib.Path(folder))


async def _demo(burst: int, file_mib: int, folder: pathlib.Path) -> int:
    config = Config(
        discovery_port=_free_udp_port(),
        tcp_port=0,
        broadcast_addresses=("127.255.255.255",),
        announce_interval=0.25,
        download_dir=folder / "received",
    )
    print(
        f"trio_p2p {__version__} demo: two nodes on loopback, discovery port "
        f"{config.discovery_port}, broadcast to 127.255.255.255"
    )
    started = time.perf_counter()
    async with open_messenger("Alice", config) as alice, open_messenger("Bob", config) as bob:
        for node in (alice, bob):
            print(f"  {node.peer_name}: id {node.peer_id}, TCP port {node.tcp_port}")
        found = await _wait_discovered(alice, "Bob")
        print(
            f"Alice discovered Bob at {found.peer.address}:{found.peer.port} "
            f"({time.perf_counter() - started:.2f} s after start)"
        )
        await alice.connect_to_peer(found.peer)
        await _wait_connected(alice)
        connected = await _wait_connected(bob)
        print(f"Bob sees {connected.peer.name} connected")

        greeting = await alice.send_text_message(bob.peer_id, "Hello, Bob!")
        [event] = await _receive_texts(bob, 1)
        assert isinstance(event.message.content, Text)
        print(
            f"Bob received from {event.message.sender_name}: {event.message.content.text!r} "
            f"(id {greeting.id})"
        )
        await bob.send_text_message(alice.peer_id, "Hi Alice, got it.")
        [event] = await _receive_texts(alice, 1)
        assert isinstance(event.message.content, Text)
        print(f"Alice received from {event.message.sender_name}: {event.message.content.text!r}")

        # a burst, to show ordering, acknowledgement and speed
        t0 = time.perf_counter()
        async with trio.open_nursery() as nursery:
            got: list[MessageReceived] = []

            async def collect() -> None:
                got.extend(await _receive_texts(bob, burst))

            nursery.start_soon(collect)
            for i in range(burst):
                try:
                    alice.send_text_message_nowait(bob.peer_id, f"message {i}")
                except trio.WouldBlock:
                    await alice.send_text_message(bob.peer_id, f"message {i}")
            await alice.flush(bob.peer_id)
        elapsed = time.perf_counter() - t0
        in_order = [e.message.content == Text(f"message {i}") for i, e in enumerate(got)]
        print(
            f"Alice sent {burst} messages; Bob received {len(got)}, "
            f"{'all in order' if all(in_order) else 'OUT OF ORDER'}, all acknowledged, "
            f"in {elapsed:.2f} s ({burst / elapsed:,.0f} msg/s)"
        )
        stats = alice.statistics()
        ok = len(got) == burst and all(in_order) and stats.messages_acknowledged == burst + 1

        # a file, verified end to end
        source = folder / "holiday-video.bin"
        source.write_bytes(os.urandom(file_mib * 1024 * 1024))
        size = file_mib * 1024 * 1024
        saved: pathlib.Path | None = None
        t0 = time.perf_counter()
        async with trio.open_nursery() as nursery:

            async def watch() -> None:  # Bob's side, with a progress bar on a terminal
                nonlocal saved
                with progress_bar(f"Bob receives {source.name}", size) as advance:
                    async for bob_event in bob.events:
                        if isinstance(bob_event, FileTransferProgress):
                            advance(bob_event.bytes_transferred)
                        elif isinstance(bob_event, FileTransferCompleted):
                            saved = bob_event.transfer.path
                            return

            nursery.start_soon(watch)
            sent = await alice.send_file(bob.peer_id, source)
        elapsed = time.perf_counter() - t0
        same = saved is not None and _digest(saved) == _digest(source)
        print(
            f"Alice sent the file {sent.filename!r} ({sent.size:,} bytes) in {elapsed:.2f} s "
            f"({sent.size / elapsed / 1e9:.2f} GB/s); Bob verified it and saved it as "
            f"{saved.name if saved else '?'}: {'identical' if same else 'NOT IDENTICAL'}"
        )
        ok = ok and same
    print(
        f"Summary: discovery, connection, {burst + 2} messages and a {file_mib} MiB file in "
        f"{time.perf_counter() - started:.2f} s; both nodes said goodbye. "
        f"{'OK' if ok else 'FAILED'}"
    )
    return 0 if ok else 1


@contextlib.contextmanager
def progress_bar(title: str, total: int) -> Iterator[Callable[[int], None]]:
    """A live progress bar (bytes, rate, time left) while the block runs.

    Yields the function that sets how much is done. On a terminal it is drawn
    with rich; otherwise nothing is shown (plain output for pipes and files).
    """
    console = rich.console.Console()
    if not console.is_terminal:
        yield lambda done: None
        return
    columns = (
        rich.progress.TextColumn("{task.description}"),
        rich.progress.BarColumn(),
        rich.progress.DownloadColumn(),
        rich.progress.TransferSpeedColumn(),
        rich.progress.TimeRemainingColumn(),
    )
    with rich.progress.Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(title, total=total)
        yield lambda done: progress.update(task, completed=done)
        progress.update(task, completed=total)


def _digest(path: pathlib.Path) -> str:
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


#: The scripting commands; any other first word is the menu's NAME.
COMMANDS = ("demo", "listen", "send", "peers")
_TAKE_VALUES = ("--port", "--discovery-port", "--broadcast", "--download-dir", "--identity")


def _first_word(argv: Sequence[str]) -> str | None:
    """The first argument that is neither an option nor an option's value."""
    words = iter(argv)
    for word in words:
        if word == "--":
            return next(words, None)
        if word in _TAKE_VALUES:
            next(words, None)
        elif not word.startswith("-") or word == "-":
            return word
    return None


def _add_general_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", action="version", version=f"trio_p2p {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="log to stderr (-v: info, -vv: debug)"
    )


def _menu_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trio_p2p",
        usage="%(prog)s [options] [NAME]\n       %(prog)s {demo,listen,send,peers} ...",
        description="Peer-to-peer messaging on a local network, built on Trio. Without a "
        "command: the interactive menu, as NAME (asked for when not given).",
        epilog="commands: demo (two nodes on loopback talk and send a file), listen (print "
        "every event), send (send a text or a file, then exit), peers (list who answers "
        "discovery). Each has --help.",
    )
    _add_general_options(parser)
    parser.add_argument("name", nargs="?", metavar="NAME", help="this node's name")
    add_common_options(parser)
    return parser


def _command_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trio_p2p",
        description="Peer-to-peer messaging on a local network, built on Trio.",
    )
    _add_general_options(parser)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser(
        "demo", help="two nodes on loopback discover each other, talk and send a file"
    )
    listen = commands.add_parser("listen", help="run a node and print every event")
    listen.add_argument("name", help="this node's name")
    listen.add_argument("--json", action="store_true", help="one JSON object a line")
    send = commands.add_parser("send", help="send a text or a file to a peer, then exit")
    send.add_argument("name", help="this node's name")
    send.add_argument("--to", required=True, metavar="PEER", help="peer name or id prefix")
    what = send.add_mutually_exclusive_group(required=True)
    what.add_argument("--text", help="a text message")
    what.add_argument("--file", type=pathlib.Path, help="a file")
    send.add_argument(
        "--timeout", type=float, default=10.0, help="seconds to find and reach the peer"
    )
    peers = commands.add_parser("peers", help="list the nodes that answer discovery")
    peers.add_argument("--name", help="this node's name while it asks")
    peers.add_argument("--timeout", type=float, default=2.0, help="seconds to listen")
    peers.add_argument("--json", action="store_true", help="one JSON object a line")
    for command in (listen, send, peers):
        add_common_options(command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m trio_p2p``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if _first_word(argv) in COMMANDS:
        args = _command_parser().parse_args(argv)
    else:
        args = _menu_parser().parse_args(argv)
        args.command = "menu"
    if args.verbose:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(PrintableFormatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        logging.basicConfig(
            level=logging.DEBUG if args.verbose > 1 else logging.INFO, handlers=[handler]
        )
    run: dict[str, Callable[[argparse.Namespace], Awaitable[int]]] = {
        "demo": lambda _: run_demo(),
        "listen": script.listen,
        "send": script.send,
        "peers": script.peers,
        "menu": menu,
    }
    try:
        return trio.run(run[args.command], args)
    except KeyboardInterrupt:
        return 130
    except (OSError, ValueError, IdentityError) as exc:  # a bad name, address, key file...
        print(f"trio_p2p: {exc}", file=sys.stderr)
        return 1
