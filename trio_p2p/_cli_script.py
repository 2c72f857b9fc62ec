"""The scripting commands of ``python -m trio_p2p``: listen, send, peers.

Each runs one messenger built from the command-line options, does its job and
exits 0, or prints why not on stderr and exits 1.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pathlib
import re
import sys
import uuid

import platformdirs
import rich.console
import rich.table
import rich.text
import trio

from . import (
    Config,
    FileTransferProgress,
    Identity,
    Messenger,
    PeerDiscovered,
    PeerInfo,
    TransferError,
    TrioP2PError,
    open_messenger,
)
from ._cli_json import describe_event, event_to_line, printable

__all__ = [
    "add_common_options",
    "config_from",
    "default_identity_path",
    "identity_for",
    "listen",
    "peers",
    "send",
]


def add_common_options(parser: argparse.ArgumentParser) -> None:
    """The options every command that runs a node takes."""
    parser.add_argument("--port", type=int, default=6969, help="TCP port (default 6969)")
    parser.add_argument(
        "--discovery-port", type=int, default=6968, help="UDP discovery port (default 6968)"
    )
    parser.add_argument(
        "--broadcast",
        action="append",
        metavar="ADDR",
        help="send beacons to ADDR only (repeatable; default: every interface's broadcast "
        "address). Use 127.255.255.255 to stay on this machine",
    )
    parser.add_argument(
        "--download-dir",
        type=pathlib.Path,
        help="where received files go (default ~/Downloads/trio_p2p)",
    )
    parser.add_argument(
        "--no-auto-accept", action="store_true", help="do not accept file offers by themselves"
    )
    keys = parser.add_mutually_exclusive_group()
    keys.add_argument(
        "--identity",
        type=pathlib.Path,
        metavar="PATH",
        help="keep this node's key in PATH (created if missing; default: one per NAME in "
        "the user's data folder, so the id stays the same across runs)",
    )
    keys.add_argument(
        "--ephemeral",
        action="store_true",
        help="a fresh key for this run only (a new id; nothing written)",
    )


def default_identity_path(name: str) -> pathlib.Path:
    """Where the CLI keeps the key of the node called *name*.

    In the user's data folder (``platformdirs``: ``~/.local/share/trio_p2p`` on
    Linux), one file per name: a safe form of the name plus a hash of it, so
    that two names never share a file.
    """
    folder = platformdirs.user_data_path("trio_p2p", appauthor=False) / "identities"
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-")[:48] or "node"
    return folder / f"{safe}-{hashlib.sha256(name.encode()).hexdigest()[:8]}.key"


def identity_for(args: argparse.Namespace, name: str | None) -> Identity | None:
    """The identity the options ask for: a file, a fresh key (None), or NAME's own."""
    if args.ephemeral:
        return None
    if args.identity is not None:
        return Identity.load_or_create(args.identity.expanduser())
    if name is None:
        return None
    return Identity.load_or_create(default_identity_path(name))


def config_from(args: argparse.Namespace, name: str | None = None) -> Config:
    """The messenger settings the options ask for (with *name*'s identity, if given).

    Raises:
        IdentityError: the identity file is unusable.
        OSError: it cannot be read or written.
    """
    settings: dict[str, object] = {
        "tcp_port": args.port,
        "discovery_port": args.discovery_port,
        "auto_accept_files": not args.no_auto_accept,
    }
    if args.broadcast:
        settings["broadcast_addresses"] = tuple(args.broadcast)
    if args.download_dir is not None:
        settings["download_dir"] = args.download_dir
    if name is not None:
        settings["identity"] = identity_for(args, name)
    return Config(**settings)  # type: ignore[arg-type]


def _fail(message: str) -> int:
    print(f"trio_p2p: {message}", file=sys.stderr)
    return 1


async def listen(args: argparse.Namespace) -> int:
    """Print every event as it comes (one JSON object a line with ``--json``)."""
    async with open_messenger(args.name, config_from(args, args.name)) as messenger:
        if not args.json:
            print(
                f"{messenger.peer_name} ({messenger.peer_id}) listening on TCP port "
                f"{messenger.tcp_port}; fingerprint {messenger.identity.fingerprint}",
                flush=True,
            )
        async for event in messenger.events:
            if args.json:
                print(event_to_line(event), flush=True)
            elif not isinstance(event, FileTransferProgress):
                print(describe_event(event), flush=True)
    return 0


def _matches(peer: PeerInfo, wanted: str) -> bool:
    return peer.name == wanted or str(peer.id).startswith(wanted.lower())


async def find_peer(messenger: Messenger, wanted: str) -> PeerInfo | None:
    """The peer named *wanted* (or whose id starts with it), asking discovery for it.

    Waits until it answers (bound it with a cancel scope); None if the
    messenger stops first.
    """
    for peer in await messenger.discover_peers():
        if _matches(peer, wanted):
            return peer
    async for event in messenger.events:
        if isinstance(event, PeerDiscovered) and _matches(event.peer, wanted):
            return event.peer
    return None


async def send(args: argparse.Namespace) -> int:
    """Find a peer, connect, send a text or a file, wait for it to arrive."""
    async with open_messenger(args.name, config_from(args, args.name)) as messenger:
        peer = None
        with trio.move_on_after(args.timeout):
            peer = await find_peer(messenger, args.to)
        if peer is None:
            return _fail(f"no peer {args.to!r} answered discovery within {args.timeout:g} s")
        try:
            with trio.fail_after(args.timeout):
                await messenger.connect_to_peer(peer)
            if args.text is not None:
                message = await messenger.send_text_message(peer.id, args.text)
                with trio.fail_after(args.timeout):
                    await messenger.flush(peer.id)
                print(f"sent to {peer.name}: message {message.id}, acknowledged")
            else:
                transfer = await messenger.send_file(peer.id, args.file)
                print(
                    f"sent {transfer.filename} ({transfer.size:,} bytes) to {peer.name}: "
                    "verified and saved by the peer"
                )
        except trio.TooSlowError:
            return _fail(f"{peer.name} did not answer within {args.timeout:g} s")
        except TransferError as exc:
            return _fail(f"the file was not sent: {printable(exc.reason)}")
        except (TrioP2PError, OSError) as exc:
            return _fail(printable(str(exc)))
    return 0


async def peers(args: argparse.Namespace) -> int:
    """List the nodes that answer discovery within the timeout."""
    name = args.name or f"peers-{uuid.uuid4().hex[:6]}"
    found: dict[uuid.UUID, PeerInfo] = {}
    async with open_messenger(name, config_from(args, args.name)) as messenger:
        with trio.move_on_after(args.timeout):
            for peer in await messenger.discover_peers():
                found[peer.id] = peer
            async for event in messenger.events:
                if isinstance(event, PeerDiscovered):
                    found[event.peer.id] = event.peer
    listed = sorted(found.values(), key=lambda p: (p.name, str(p.id)))
    console = rich.console.Console()
    if args.json:
        for peer in listed:
            record = {"id": str(peer.id), "name": peer.name, "address": peer.address}
            print(json.dumps({**record, "port": peer.port}, ensure_ascii=False))
    elif console.is_terminal:
        table = rich.table.Table("#", "name", "id", "address")
        for number, peer in enumerate(listed, 1):
            name = rich.text.Text(printable(peer.name))
            table.add_row(str(number), name, str(peer.id), f"{peer.address}:{peer.port}")
        console.print(table)
    else:  # plain lines for scripts: name, id, address, tab-separated
        for peer in listed:
            print(f"{printable(peer.name)}\t{peer.id}\t{peer.address}:{peer.port}")
    if not args.json:
        print(f"{len(found)} peers answered within {args.timeout:g} s", file=sys.stderr)
    return 0
