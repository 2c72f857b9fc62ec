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

__all__ = ["describe_event", "event_to_json", "event_to_line"]


def _peer(peer: PeerInfo) -> dict[str, Any]:
    return {
        "id": str(peer.id),
        "name": peer.name,
        "address": peer.address,
        "port": peer.port,
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
        case PeerConnected(peer=peer):
            return {"event": "peer_connected", "peer": _peer(peer)}
        case PeerDisconnected(peer=peer, reason=reason):
            return {"event": "peer_disconnected", "peer": _peer(peer), "reason": reason}
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


def event_to_line(event: Event) -> str:
    """The JSON form of *event* as one line (no newline)."""
    return json.dumps(event_to_json(event), ensure_ascii=False)


def describe_event(event: Event) -> str:
    """*event* as a sentence for a person."""
    match event:
        case PeerDiscovered(peer=p):
            return f"found {p.name} ({p.id}) at {p.address}:{p.port}"
        case PeerLost(peer=p):
            return f"lost {p.name} ({p.id})"
        case PeerConnected(peer=p):
            return f"connected to {p.name} ({p.id}) at {p.address}:{p.port}"
        case PeerDisconnected(peer=p, reason=reason):
            return f"disconnected from {p.name}: {reason}"
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
