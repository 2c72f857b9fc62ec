"""The JSON form of every event, shared by everything that scripts the tool.

One event is one JSON object with a key ``"event"`` naming its kind (the
event class's name in snake case) and the event's fields; ids are strings,
times are numbers, paths are strings or null. ``docs/cli.rst`` documents the
form; :func:`event_to_json` is its reference.
"""

from __future__ import annotations

import json
from typing import Any, assert_never

from . import (
    DeliveryFailed,
    Error,
    Event,
    FileOffered,
    FileTransferCompleted,
    FileTransferFailed,
    FileTransferProgress,
    FileTransferStarted,
    Message,
    MessageReceived,
    PeerConnected,
    PeerDisconnected,
    PeerDiscovered,
    PeerInfo,
    PeerLost,
    Text,
    Transfer,
)

__all__ = ["describe_event", "event_to_json", "event_to_line", "printable"]


_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(char: str) -> str:
    if char in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[char]
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def printable(text: str) -> str:
    r"""*text* safe to show on a terminal.

    Peers choose message texts, file names and reasons: any character a
    terminal could act on (escape and other control characters, line breaks,
    bidirectional overrides and other format characters) is shown as a
    Python-style escape instead (``\x1b``), so nothing received can move the
    cursor, recolour the screen or disguise itself as a line of its own.
    """
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else _escape(char) for char in text)


def _peer(peer: PeerInfo) -> dict[str, Any]:
    return {
        "id": str(peer.id),
        "name": peer.name,
        "address": peer.address,
        "port": peer.port,
        "fingerprint": peer.fingerprint,
        "new_key": peer.new_key,
    }


def _message(message: Message) -> dict[str, Any]:
    content = message.content
    return {
        "id": str(message.id),
        "sender_id": str(message.sender_id),
        "sender_name": message.sender_name,
        "timestamp": message.timestamp,
        "text": content.text if isinstance(content, Text) else None,
    }


def _transfer(transfer: Transfer) -> dict[str, Any]:
    return {
        "id": str(transfer.id),
        "peer_id": str(transfer.peer_id),
        "filename": transfer.filename,
        "size": transfer.size,
        "direction": str(transfer.direction),
        "path": None if transfer.path is None else str(transfer.path),
        "offset": transfer.offset,
    }


def event_to_json(event: Event) -> dict[str, Any]:
    """The JSON form of *event* (a dict ready for :func:`json.dumps`)."""
    match event:
        case PeerDiscovered(peer=peer):
            return {"event": "peer_discovered", "peer": _peer(peer)}
        case PeerLost(peer=peer):
            return {"event": "peer_lost", "peer": _peer(peer)}
        case PeerConnected(peer=peer, resumed=resumed):
            return {"event": "peer_connected", "peer": _peer(peer), "resumed": resumed}
        case PeerDisconnected(peer=peer, reason=reason, resuming=resuming):
            return {
                "event": "peer_disconnected",
                "peer": _peer(peer),
                "reason": reason,
                "resuming": resuming,
            }
        case MessageReceived(message=message):
            return {"event": "message_received", "message": _message(message)}
        case DeliveryFailed(peer=peer, messages=messages, reason=reason):
            return {
                "event": "delivery_failed",
                "peer": _peer(peer),
                "messages": [_message(m) for m in messages],
                "reason": reason,
            }
        case FileOffered(transfer=transfer):
            return {"event": "file_offered", "transfer": _transfer(transfer)}
        case FileTransferStarted(transfer=transfer):
            return {"event": "file_transfer_started", "transfer": _transfer(transfer)}
        case FileTransferProgress(transfer=transfer, bytes_transferred=done, total_bytes=total):
            return {
                "event": "file_transfer_progress",
                "transfer": _transfer(transfer),
                "bytes_transferred": done,
                "total_bytes": total,
            }
        case FileTransferCompleted(transfer=transfer):
            return {"event": "file_transfer_completed", "transfer": _transfer(transfer)}
        case FileTransferFailed(transfer=transfer, error=error):
            return {
                "event": "file_transfer_failed",
                "transfer": _transfer(transfer),
                "error": error.reason,
            }
        case Error(error=error):
            return {"event": "error", "error": str(error)}
        case _:
            assert_never(event)


def _json_escape(char: str) -> str:
    code = ord(char)
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000  # a surrogate pair, as JSON spells characters beyond the BMP
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def event_to_line(event: Event) -> str:
    r"""The JSON form of *event* as one line (no newline), safe to print.

    Text stays readable (not ASCII-escaped), but every character a terminal
    could act on is written as a JSON ``\u`` escape, so the line is
    printable and decodes to exactly what was sent.
    """
    line = json.dumps(event_to_json(event), ensure_ascii=False)
    if line.isprintable():
        return line
    return "".join(char if char.isprintable() else _json_escape(char) for char in line)


def describe_event(event: Event) -> str:
    """*event* as a sentence for a person, safe to print (see :func:`printable`)."""
    return printable(_sentence(event))


def _sentence(event: Event) -> str:
    match event:
        case PeerDiscovered(peer=p):
            return f"found {p.name} ({p.id}) at {p.address}:{p.port}"
        case PeerLost(peer=p):
            return f"lost {p.name} ({p.id})"
        case PeerConnected(peer=p, resumed=carried_on):
            again = ", the session carries on" if carried_on else ""
            key = f", fingerprint {p.fingerprint}" if p.fingerprint else ""
            if p.new_key:
                key += f" (NEW KEY: {p.name} was known with another; compare fingerprints)"
            return f"connected to {p.name} ({p.id}) at {p.address}:{p.port}{again}{key}"
        case PeerDisconnected(peer=p, reason=reason, resuming=resuming):
            waiting = " (waiting for it to come back)" if resuming else ""
            return f"disconnected from {p.name}: {reason}{waiting}"
        case MessageReceived(message=m):
            text = m.content.text if isinstance(m.content, Text) else repr(m.content)
            return f"{m.sender_name}: {text}"
        case DeliveryFailed(peer=p, messages=messages, reason=reason):
            return f"{len(messages)} messages to {p.name} may not have arrived: {reason}"
        case FileOffered(transfer=t):
            return f"offered {t.filename} ({t.size:,} bytes), id {t.id}"
        case FileTransferStarted(transfer=t):
            resumed = f", resuming at {t.offset:,}" if t.offset else ""
            return f"{t.direction} {t.filename} ({t.size:,} bytes{resumed})"
        case FileTransferProgress(transfer=t, bytes_transferred=done, total_bytes=total):
            percent = 100 * done / total if total else 100.0
            return f"{t.filename}: {done:,} of {total:,} bytes ({percent:.0f}%)"
        case FileTransferCompleted(transfer=t):
            where = f" as {t.path}" if t.direction == "receive" else ""
            return f"{t.filename}: done, verified{where}"
        case FileTransferFailed(transfer=t, error=error):
            return f"{t.filename}: failed: {error.reason}"
        case Error(error=error):
            return f"error: {error}"
        case _:
            assert_never(event)
