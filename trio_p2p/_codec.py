"""Sans-I/O codec: frames and beacons to bytes and back. No sockets, no Trio.

Frames are a 4-byte unsigned big-endian length followed by exactly one CBOR
item: a map whose key ``"t"`` holds the frame's wire tag and whose other keys
hold its fields under short names. Unknown keys are ignored (a later minor
revision may add optional fields); everything else that is not exactly as
``docs/protocol.rst`` describes raises :class:`~trio_p2p.ProtocolError`, and
nothing else.
"""

from __future__ import annotations

import collections
import io
import os
import struct
import uuid
from collections.abc import Callable
from typing import Any, NoReturn

import attrs
import cattrs
import cbor2
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

from ._errors import ProtocolError
from ._identity import PUBLIC_KEY_SIZE, SIGNATURE_SIZE, Identity, peer_id_of, verify
from ._messages import (
    BEACON_MAGIC,
    FRAME_TAGS,
    MAX_NAME_BYTES,
    PROTOCOL_VERSION,
    Ack,
    Beacon,
    BeaconKind,
    Content,
    Data,
    FileAccept,
    FileCancel,
    FileChunk,
    FileConfirm,
    FileEnd,
    FileOffer,
    FileReject,
    FileVerdict,
    Frame,
    Goodbye,
    GoodbyeCode,
    Hello,
    Message,
    Ping,
    Pong,
    Text,
)

__all__ = [
    "CHUNK_HEAD_ROOM",
    "CHUNK_TAIL_ROOM",
    "DIGEST_SIZE",
    "MAX_BEACON_ADDRESSES",
    "MAX_BEACON_SIZE",
    "MAX_FILE_NAME_BYTES",
    "MAX_REASON_CHARS",
    "FrameDecoder",
    "MessageIds",
    "beacon_key_matches",
    "beacon_signature_valid",
    "beacon_signed_bytes",
    "chunk_frame_parts",
    "decode_beacon",
    "decode_frame",
    "encode_beacon",
    "encode_data",
    "encode_frame",
    "frame_chunk_in_place",
    "sign_beacon",
]

#: Largest beacon datagram sent or accepted.
MAX_BEACON_SIZE = 512
#: Addresses a beacon may name as its possible sources.
MAX_BEACON_ADDRESSES = 16
_BEACON_DOMAIN = b"trio_p2p beacon v1\x00"
#: Longest reason a goodbye, reject, verdict or cancel may carry.
MAX_REASON_CHARS = 1024
#: Longest file name an offer may carry, in UTF-8 bytes (the receiver shortens it).
MAX_FILE_NAME_BYTES = 4096
#: Size of a BLAKE3 digest in a :class:`FileEnd`.
DIGEST_SIZE = 32
#: Size of a decoder's buffer while frames are small (it grows for large ones).
_SMALL_BUFFER = 64 * 1024
#: A chunk frame at least this large is handed over in the buffer it was
#: received into rather than copied out of it (see FrameDecoder.recycle).
_HAND_OVER_MIN = 256 * 1024
#: Receives in a row that end with small frames, after which a decoder gives
#: back the room that large frames needed.
_RELEASE_AFTER = 8
#: Room added to a buffer grown for a large frame, beyond that frame's size.
_GROW_MARGIN = 4096
#: Buffers handed back that a decoder keeps for its next large frames: more
#: than a file transfer holds at once (its queue of 2, the 2 being written, the
#: one being received), so that none is freed and allocated again; few enough
#: that a connection's spares stay a few MiB.
_SPARE_BUFFERS = 6
#: Deepest nesting of CBOR containers accepted (our frames need 2).
_MAX_DEPTH = 4
_HEADER = struct.Struct(">I")
_MAX_SEQ = 2**63 - 1

# --------------------------------------------------------------- strict hooks


def _fail(what: str, value: object) -> NoReturn:
    raise TypeError(f"expected {what}, got {type(value).__name__}")


def _str(value: object, _: object) -> str:
    if type(value) is not str:
        _fail("text", value)
    return value


def _int(value: object, _: object) -> int:
    if type(value) is not int:  # bool is an int subclass: refused too
        _fail("integer", value)
    return value


def _float(value: object, _: object) -> float:
    if type(value) is float:
        return value
    if type(value) is int:
        return float(value)
    _fail("number", value)


def _bool(value: object, _: object) -> bool:
    if type(value) is not bool:
        _fail("boolean", value)
    return value


def _bytes(value: object, _: object) -> bytes:
    if type(value) is not bytes:
        _fail("byte string", value)
    return value


_new_object = object.__new__
_set_attribute = object.__setattr__
_SAFE_UNKNOWN = uuid.SafeUUID.unknown


def _uuid(value: object, _: object = None) -> uuid.UUID:
    if type(value) is not bytes or len(value) != 16:
        _fail("16-byte id", value)
    # What uuid.UUID(bytes=...) does, without its argument juggling (per-message path).
    result: uuid.UUID = _new_object(uuid.UUID)
    _set_attribute(result, "int", int.from_bytes(value))
    _set_attribute(result, "is_safe", _SAFE_UNKNOWN)
    return result


class MessageIds:
    """Random UUID4s for message ids, drawn from a pool of random bytes.

    One ``os.urandom`` call per 256 ids instead of one per id: the per-message
    path on the sender.
    """

    _POOL = 16 * 256
    _VERSION_MASK = ~((0xF000 << 64) | (0xC000 << 48))
    _VERSION_BITS = (0x4000 << 64) | (0x8000 << 48)

    def __init__(self) -> None:
        self._pool = b""
        self._position = 0

    def new(self) -> uuid.UUID:
        """A fresh random (version 4) UUID."""
        position = self._position
        if position == len(self._pool):
            self._pool = os.urandom(self._POOL)
            position = 0
        self._position = position + 16
        value = int.from_bytes(self._pool[position : position + 16])
        result: uuid.UUID = _new_object(uuid.UUID)
        _set_attribute(result, "int", (value & self._VERSION_MASK) | self._VERSION_BITS)
        _set_attribute(result, "is_safe", _SAFE_UNKNOWN)
        return result


def _tuple_of(check: Callable[[object, object], object]) -> Callable[[object, object], Any]:
    """A structure hook for a tuple from a CBOR array whose items pass *check*."""

    def structure(value: object, _: object) -> tuple[Any, ...]:
        if type(value) is not list:
            _fail("array", value)
        for item in value:
            check(item, None)
        return tuple(value)

    return structure


def _check_name(name: str) -> str:
    if not name or len(name.encode("utf-8")) > MAX_NAME_BYTES or not name.isprintable():
        raise ValueError(
            f"a name must be 1 to {MAX_NAME_BYTES} UTF-8 bytes of printable text, got {name!r}"
        )
    return name


def _check_port(port: int, *, allow_zero: bool = False) -> int:
    if not (0 if allow_zero else 1) <= port <= 65535:
        raise ValueError(f"port out of range: {port}")
    return port


def _check_seq(seq: int) -> int:
    if not 0 <= seq <= _MAX_SEQ:
        raise ValueError(f"sequence number out of range: {seq}")
    return seq


def _timestamp(value: object) -> float:
    seconds = _float(value, None)
    if not -1e10 < seconds < 1e11:  # also refuses NaN and infinities
        raise ValueError(f"timestamp out of range: {seconds!r}")
    return seconds


def _structure_content(value: object) -> Content:
    if type(value) is not dict:
        _fail("content map", value)
    tag = value.get("t")
    if tag == "text":
        return Text(_str(value["x"], None))
    raise ValueError(f"unknown content tag {tag!r}")


def _unstructure_content(content: Content) -> dict[str, Any]:
    return {"t": "text", "x": content.text}


def _structure_data(value: dict[str, Any], senders: dict[bytes, uuid.UUID]) -> Data:
    # Hand-written, with the checks of _str and _structure_content inline: this
    # is the per-message path (when the fast path below does not apply).
    content = value["c"]
    if type(content) is not dict or content.get("t") != "text":
        content = _structure_content(content)  # raises with the reason
        text = content.text
    else:
        text = content["x"]
        if type(text) is not str:
            _fail("text", text)
    return _data(value["q"], value["i"], value["f"], value["n"], value["ts"], text, senders)


def _data(
    seq: object,
    raw_id: object,
    sender: object,
    name: object,
    seconds: object,
    text: str,
    senders: dict[bytes, uuid.UUID],
) -> Data:
    """A Data frame from its decoded fields, checked as _uuid, _str, _timestamp and _int do.

    *senders* caches the sender ids already seen on this stream (one, normally).
    """
    sender_id = senders.get(sender) if type(sender) is bytes else None
    if sender_id is None:
        sender_id = _uuid(sender)
        if len(senders) < 4 and type(sender) is bytes:
            senders[sender] = sender_id
    message_id = _uuid(raw_id)
    if not isinstance(name, str):
        _fail("text", name)
    timestamp = (
        seconds if type(seconds) is float and -1e10 < seconds < 1e11 else _timestamp(seconds)
    )
    number = seq if type(seq) is int and 0 <= seq <= _MAX_SEQ else _check_seq(_int(seq, None))
    return Data(number, Message(message_id, sender_id, name, timestamp, Text(text)))


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(detailed_validation=False, forbid_extra_keys=False)
    conv.register_structure_hook(str, _str)
    conv.register_structure_hook(int, _int)
    conv.register_structure_hook(float, _float)
    conv.register_structure_hook(bytes, _bytes)
    # (a chunk's data: bytes from the wire; a view only from the fast path)
    conv.register_structure_hook_func(lambda t: t == bytes | memoryview, _bytes)
    conv.register_unstructure_hook_func(lambda t: t == bytes | memoryview, bytes)
    conv.register_structure_hook(bool, _bool)
    conv.register_structure_hook(uuid.UUID, _uuid)
    conv.register_unstructure_hook(uuid.UUID, lambda u: u.bytes)
    conv.register_structure_hook_func(lambda t: t == tuple[str, ...], _tuple_of(_str))
    conv.register_unstructure_hook_func(lambda t: t == tuple[str, ...], list)
    conv.register_structure_hook_func(lambda t: t == tuple[bytes, ...], _tuple_of(_bytes))
    conv.register_unstructure_hook_func(lambda t: t == tuple[bytes, ...], list)
    for enum_cls in (GoodbyeCode, BeaconKind):
        conv.register_structure_hook(enum_cls, lambda v, cls: cls(_str(v, None)))
        conv.register_unstructure_hook(enum_cls, str)
    renames: dict[type[Any], dict[str, str]] = {
        Hello: {
            "version": "v",
            "node_id": "id",
            "session": "s",
            "name": "n",
            "port": "p",
            "max_frame_size": "x",
            "capabilities": "c",
            "resumes": "rs",
            "received": "rq",
        },
        Ack: {"seq": "q"},
        Goodbye: {"code": "c", "reason": "r"},
        Beacon: {
            "kind": "k",
            "node_id": "id",
            "name": "n",
            "port": "p",
            "version": "v",
            "key": "pk",
            "counter": "c",
            "addresses": "ad",
            "signature": "sg",
        },
        Ping: {},
        Pong: {},
        FileOffer: {
            "transfer": "id",
            "name": "n",
            "size": "s",
            "chunk_size": "k",
            "mtime_ns": "mt",
        },
        FileAccept: {"transfer": "id", "offset": "o"},
        FileReject: {"transfer": "id", "reason": "r"},
        FileChunk: {"transfer": "id", "offset": "o", "data": "d"},
        FileConfirm: {"transfer": "id", "offset": "o"},
        FileEnd: {"transfer": "id", "digest": "h"},
        FileVerdict: {"transfer": "id", "verified": "ok", "reason": "r"},
        FileCancel: {"transfer": "id", "reason": "r"},
    }
    #: fields left out of a frame while they hold their default
    omitted = {(Hello, "resumes"), (Hello, "received")}
    for cls, names in renames.items():
        overrides = {
            field: override(rename=key, omit_if_default=(cls, field) in omitted)
            for field, key in names.items()
        }
        conv.register_structure_hook(cls, make_dict_structure_fn(cls, conv, **overrides))  # type: ignore[arg-type]
        conv.register_unstructure_hook(cls, make_dict_unstructure_fn(cls, conv, **overrides))  # type: ignore[arg-type]
    return conv


_converter = _make_converter()

_TAG_TO_CLASS: dict[str, type[Frame]] = {tag: cls for cls, tag in FRAME_TAGS.items()}


def _validate_hello(hello: Hello) -> None:
    _check_name(hello.name)
    _check_port(hello.port)
    if len(hello.session) != 16:
        raise ValueError("session nonce must be 16 bytes")
    if not 1024 <= hello.max_frame_size <= 2**32 - 1:
        raise ValueError(f"max_frame_size out of range: {hello.max_frame_size}")
    capabilities = hello.capabilities
    if len(capabilities) > 16 or not all(
        0 < len(c) <= 32 and c.isascii() and c.isprintable() for c in capabilities
    ):
        raise ValueError("at most 16 capabilities, each 1 to 32 printable ASCII characters")
    if hello.resumes is not None and len(hello.resumes) != 16:
        raise ValueError("the session nonce a hello resumes must be 16 bytes")
    if hello.resumes is None and hello.received:
        raise ValueError("a hello that resumes no session has received nothing in it")
    _check_seq(hello.received)


def _validate_ack(ack: Ack) -> None:
    _check_seq(ack.seq)


def _check_reason(reason: str) -> None:
    if len(reason) > MAX_REASON_CHARS:
        raise ValueError(f"reason longer than {MAX_REASON_CHARS} characters")


def _validate_goodbye(goodbye: Goodbye) -> None:
    _check_reason(goodbye.reason)


def _check_offset(offset: int) -> None:
    if not 0 <= offset <= _MAX_SEQ:
        raise ValueError(f"offset out of range: {offset}")


def _validate_offer(offer: FileOffer) -> None:
    if not offer.name or len(offer.name.encode("utf-8", "surrogatepass")) > MAX_FILE_NAME_BYTES:
        raise ValueError(f"a file name must be 1 to {MAX_FILE_NAME_BYTES} UTF-8 bytes")
    _check_offset(offer.size)
    if not 1 <= offer.chunk_size <= 2**32 - 1:
        raise ValueError(f"chunk size out of range: {offer.chunk_size}")
    if not -(2**63) <= offer.mtime_ns <= 2**63 - 1:
        raise ValueError(f"modification time out of range: {offer.mtime_ns}")


def _validate_chunk(chunk: FileChunk) -> None:
    _check_offset(chunk.offset)
    if not chunk.data:
        raise ValueError("empty chunk")


def _validate_end(end: FileEnd) -> None:
    if len(end.digest) != DIGEST_SIZE:
        raise ValueError(f"a digest must be {DIGEST_SIZE} bytes, got {len(end.digest)}")


def _validate_verdict(verdict: FileVerdict) -> None:
    _check_reason(verdict.reason)
    if verdict.verified and verdict.reason:
        raise ValueError("a verified verdict has no reason")


_VALIDATORS: dict[type[Any], Callable[[Any], None]] = {
    Hello: _validate_hello,
    Ack: _validate_ack,
    Goodbye: _validate_goodbye,
    FileOffer: _validate_offer,
    FileAccept: lambda frame: _check_offset(frame.offset),
    FileReject: lambda frame: _check_reason(frame.reason),
    FileChunk: _validate_chunk,
    FileConfirm: lambda frame: _check_offset(frame.offset),
    FileEnd: _validate_end,
    FileVerdict: _validate_verdict,
    FileCancel: lambda frame: _check_reason(frame.reason),
}

# ---------------------------------------------------------------- decoding


def _reject_tag(*_args: object) -> NoReturn:
    raise ValueError("CBOR tags are not allowed")


# Every tag number cbor2 decodes itself is overridden to fail; any other tag
# reaches tag_hook, which fails too. So no tagged value is ever built.
_NO_SEMANTIC_TAGS: dict[int, Callable[..., Any]] = {
    tag: _reject_tag for tag in (*range(0, 300), 1004, 55799)
}

_DECODE_OPTIONS: dict[str, Any] = {
    "tag_hook": _reject_tag,
    "semantic_decoders": _NO_SEMANTIC_TAGS,
    "max_depth": _MAX_DEPTH,
    "allow_duplicate_keys": False,
    "strict_hashable_types": True,
    "allow_indefinite": False,
}


def _loads_exact(data: bytes | bytearray | memoryview) -> Any:
    """Decode exactly one CBOR item that fills *data*; anything else is ProtocolError."""
    if not data:
        raise ProtocolError("empty item")
    stream = io.BytesIO(data)
    try:
        item = cbor2.CBORDecoder(stream, **_DECODE_OPTIONS).decode()
    except Exception as exc:  # cbor2 raises several types, ours among them
        raise ProtocolError(f"invalid CBOR: {exc}") from None
    if stream.tell() != len(data):
        raise ProtocolError(f"{len(data) - stream.tell()} trailing bytes after the CBOR item")
    return item


def _structure_frame(payload: Any, senders: dict[bytes, uuid.UUID]) -> Frame:
    if type(payload) is not dict:
        raise ProtocolError(f"a frame must be a CBOR map, got {type(payload).__name__}")
    tag = payload.get("t")
    if tag == "m":
        try:
            return _structure_data(payload, senders)
        except KeyError as exc:
            raise ProtocolError(f"Data frame lacks field {exc}") from None
        except Exception as exc:
            raise ProtocolError(f"invalid Data frame: {exc}") from None
    cls = _TAG_TO_CLASS.get(tag) if type(tag) is str else None
    if cls is None:
        raise ProtocolError(f"unknown frame tag {tag!r}")
    if cls is Hello and payload.get("v") != PROTOCOL_VERSION:
        raise ProtocolError(
            f"unsupported protocol version {payload.get('v')!r} (this node speaks "
            f"{PROTOCOL_VERSION})"
        )
    try:
        frame: Frame = _converter.structure(payload, cls)
        validate = _VALIDATORS.get(cls)
        if validate is not None:
            validate(frame)
    except KeyError as exc:
        raise ProtocolError(f"{cls.__name__} frame lacks field {exc}") from None
    except Exception as exc:  # type and value errors of any origin
        raise ProtocolError(f"invalid {cls.__name__} frame: {exc}") from None
    return frame


def decode_frame(body: bytes | bytearray | memoryview) -> Frame:
    """Decode the body of one frame (the bytes after the length prefix).

    Raises:
        ProtocolError: for anything that is not exactly one valid frame.
    """
    return _structure_frame(_loads_exact(body), {})


class FrameDecoder:
    """Incremental frame decoder: feed it bytes as they arrive, get whole frames.

    A length prefix above *max_frame_size* raises :class:`ProtocolError` as soon
    as the 4 prefix bytes are in, before anything of the frame is buffered. After
    a :class:`ProtocolError` the stream is out of step: close it.

    Args:
        max_frame_size: largest frame body accepted, in bytes.
    """

    def __init__(self, max_frame_size: int) -> None:
        self.max_frame_size = max_frame_size
        #: received bytes are buffer[:_length]; the rest is room for more
        self._buffer = bytearray(_SMALL_BUFFER)
        self._length = 0
        self._senders: dict[bytes, uuid.UUID] = {}
        #: buffers given back by recycle(), for the next large frames (a deque:
        #: recycle may be called from another thread)
        self._spare: collections.deque[bytearray] = collections.deque(maxlen=_SPARE_BUFFERS)
        #: receives in a row that emptied the large buffer after small frames
        self._small_batches = 0

    def expect_sender(self, node_id: uuid.UUID) -> None:
        """Decode messages from *node_id* to this very UUID object (cheaper to check)."""
        self._senders[node_id.bytes] = node_id

    def recycle(self, data: bytes | memoryview) -> None:
        """Take back the buffer of a chunk's *data* once nothing will read it again.

        A large chunk frame's data is a view of the buffer it was received
        into, which the decoder hands over with the chunk (and replaces); given
        back here once the chunk is written, it receives a later frame, with no
        new allocation. Anything else is ignored, and so is a buffer given back
        once the decoder has given back its large buffers (only small frames
        came for a while). Safe to call from any thread.
        """
        if (
            isinstance(data, memoryview)
            and type(data.obj) is bytearray
            and len(self._buffer) > _SMALL_BUFFER
        ):
            self._spare.append(data.obj)

    def _replace_buffer(self, keep: int) -> None:
        """Receive into another buffer from now on, with the last *keep* bytes."""
        old, available = self._buffer, self._length
        try:
            buffer = self._spare.pop()
        except IndexError:
            buffer = bytearray(len(old))
        if len(buffer) < len(old):
            buffer = bytearray(len(old))
        buffer[:keep] = old[available - keep : available]
        self._buffer = buffer

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete frame."""
        return self._length

    @property
    def missing(self) -> int:
        """Bytes still to come before the frame in progress is complete (0 if unknown)."""
        if self._length < 4:
            return 0
        (size,) = _HEADER.unpack_from(self._buffer)
        return 4 + int(size) - self._length

    def receive_buffer(self, size: int) -> memoryview:
        """Room for the next *size* bytes received: fill it, then call :meth:`commit`.

        For ``recv_into``-style receiving without an intermediate copy. The
        buffer is reused from one receive to the next. The room is smaller than
        *size* where the buffer has room for the rest of the frame under way
        (:attr:`missing`) but not for all *size* bytes: a large buffer is not
        grown only for what comes after that frame.
        """
        return self._room(size, exact=False)

    def _room(self, size: int, *, exact: bool) -> memoryview:
        needed = self._length + size
        if len(self._buffer) < needed:
            missing = self.missing
            if not exact and missing and self._length + missing <= len(self._buffer):
                # The rest of the frame under way fits: receive what there is room for.
                return memoryview(self._buffer)[self._length :]
            # Twice the room, or this frame's and a little more: the next chunk
            # frame may be a few bytes longer (its offset takes more bytes), and
            # must fit without doubling a large buffer.
            grown = bytearray(max(needed + _GROW_MARGIN, 2 * len(self._buffer)))
            grown[: self._length] = memoryview(self._buffer)[: self._length]
            self._buffer = grown
        return memoryview(self._buffer)[self._length : needed]

    def commit(self, count: int) -> list[Frame]:
        """*count* bytes were written at the start of the last :meth:`receive_buffer`.

        Returns:
            Every frame they complete, in order.

        Raises:
            ProtocolError: for an oversized length prefix or an invalid frame.
        """
        self._length += count
        return self._parse()

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Add *data* and return every frame it completes, in order.

        Raises:
            ProtocolError: for an oversized length prefix or an invalid frame.
        """
        size = len(data)
        with self._room(size, exact=True) as room:
            room[:] = data
        return self.commit(size)

    def _parse(self) -> list[Frame]:
        buffer = self._buffer
        available = self._length
        bounds: list[tuple[int, int]] = []
        position = 0
        unpack = _HEADER.unpack_from
        limit = self.max_frame_size
        while available - position >= 4:
            (size,) = unpack(buffer, position)
            if size > limit:
                raise ProtocolError(f"frame of {size} bytes announced, the limit is {limit}")
            end = position + 4 + size
            if end > available:
                break
            bounds.append((position + 4, end))
            position = end
        if not bounds:
            return []
        # One decoder over the whole batch; each item must end exactly at its frame end.
        stream: io.BytesIO | None = None
        decoder: cbor2.CBORDecoder | None = None
        frames: list[Frame] = []
        for start, end in bounds:
            if start == end:
                raise ProtocolError("empty frame")
            first = buffer[start]
            if first == 0xA7:  # the map of a Data frame, perhaps as encode_data writes it
                data = _fast_data(buffer[start:end], self._senders)
                if data is not None:
                    frames.append(data)
                    continue
            elif first == 0xA2:  # perhaps an Ack as encode_frame writes it
                ack = _fast_ack(buffer[start:end])
                if ack is not None:
                    frames.append(ack)
                    continue
            elif first == 0xA4 and end - start >= _FAST_CHUNK_MIN:
                # (a large chunk that ends the batch keeps its data where it is)
                hand_over = end == position and end - start >= _HAND_OVER_MIN
                chunk = _fast_chunk(buffer, start, end, view=hand_over)
                if chunk is not None:
                    frames.append(chunk)
                    if hand_over:
                        self._small_batches = 0
                        self._replace_buffer(available - position)
                        self._length = available - position
                        return frames
                    continue
            if stream is None or decoder is None:
                with memoryview(buffer) as view, view[:position] as batch:
                    stream = io.BytesIO(batch)
                decoder = cbor2.CBORDecoder(stream, **_DECODE_OPTIONS)
            stream.seek(start)
            try:
                item = decoder.decode()
            except Exception as exc:  # cbor2 raises several types, ours among them
                raise ProtocolError(f"invalid CBOR: {exc}") from None
            if stream.tell() != end:
                raise ProtocolError("the CBOR item does not fill its frame exactly")
            frames.append(_structure_frame(item, self._senders))
        rest = available - position
        if rest:
            buffer[:rest] = buffer[position:available]
        elif len(buffer) > _SMALL_BUFFER:
            if bounds[-1][1] - bounds[-1][0] >= _SMALL_BUFFER:
                self._small_batches = 0
            else:
                # Empty after small frames, several times in a row: give back the
                # room large frames needed, and the spare buffers. (Not at the
                # first: a message or a ping in the middle of a file transfer
                # would have the next chunks allocate all of them again.)
                self._small_batches += 1
                if self._small_batches >= _RELEASE_AFTER:
                    self._buffer = bytearray(_SMALL_BUFFER)
                    self._spare.clear()
                    self._small_batches = 0
        self._length = rest
        return frames


# ------------------------------------------------------- file chunks, fast
#
# A file chunk is a large frame whose bulk is one byte string. Encoded as
# below (the layout encode_frame produces) it is read and written without the
# generic CBOR path's extra copies of the data; any other layout of the same
# map takes the generic path, so both accept exactly the same frames.

#: map of 4 pairs, the key "id", a 16-byte byte string follows
_CHUNK_HEAD = b"\xa4\x62id\x50"
#: the pair "t": "fc"
_CHUNK_TAIL = b"\x61t\x62fc"
#: the keys "o" and "d"
_KEY_O = b"\x61o"
_KEY_D = b"\x61d"
#: smaller frames are not worth the fast path
_FAST_CHUNK_MIN = 1024
_UINT_SIZES = {24: 1, 25: 2, 26: 4, 27: 8}


def _cbor_head(major: int, value: int) -> bytes:
    """The shortest CBOR head of *major* type with argument *value*."""
    base = major << 5
    if value < 24:
        return bytes((base | value,))
    for info, size in _UINT_SIZES.items():
        if value < 1 << (8 * size):
            return bytes((base | info,)) + value.to_bytes(size)
    raise ValueError(f"{value} does not fit a CBOR head")


def _read_head(
    data: bytes | bytearray | memoryview, position: int, major: int
) -> tuple[int, int] | None:
    """(argument, next position) of a CBOR head of *major* type, or None."""
    if position >= len(data) or data[position] >> 5 != major:
        return None
    info = data[position] & 31
    if info < 24:
        return info, position + 1
    size = _UINT_SIZES.get(info)
    if size is None or position + 1 + size > len(data):
        return None
    return int.from_bytes(data[position + 1 : position + 1 + size]), position + 1 + size


#: Room left before a chunk's data for its frame's prefix and head, and after
#: it for the tail, by :func:`frame_chunk_in_place`.
CHUNK_HEAD_ROOM = 64
CHUNK_TAIL_ROOM = len(_CHUNK_TAIL)


def _chunk_head(transfer: uuid.UUID, offset: int, length: int) -> bytes:
    """The length prefix and the CBOR up to the data of a chunk frame."""
    head = (
        _CHUNK_HEAD
        + transfer.bytes
        + _KEY_O
        + _cbor_head(0, offset)
        + _KEY_D
        + _cbor_head(2, length)
    )
    return _HEADER.pack(len(head) + length + len(_CHUNK_TAIL)) + head


def chunk_frame_parts(chunk: FileChunk) -> tuple[bytes, bytes | memoryview, bytes]:
    """A chunk frame as (prefix and head, data, tail).

    Joined, they are the bytes of :func:`encode_frame`; apart, the data is not copied.
    """
    return _chunk_head(chunk.transfer, chunk.offset, len(chunk.data)), chunk.data, _CHUNK_TAIL


def frame_chunk_in_place(
    buffer: bytearray, transfer: uuid.UUID, offset: int, length: int
) -> memoryview:
    """Frame the *length* bytes at ``buffer[CHUNK_HEAD_ROOM:]`` as a chunk, in place.

    Writes the prefix and head just before the data and the tail just after it
    (the buffer has :data:`CHUNK_HEAD_ROOM` and :data:`CHUNK_TAIL_ROOM` bytes of
    room for them) and returns the whole frame, a view of *buffer*: the bytes of
    :func:`encode_frame` for the same chunk, without copying the data.
    """
    head = _chunk_head(transfer, offset, length)
    start = CHUNK_HEAD_ROOM - len(head)
    end = CHUNK_HEAD_ROOM + length
    if start < 0 or end + CHUNK_TAIL_ROOM > len(buffer):
        raise ValueError(f"no room to frame {length} bytes in a {len(buffer)}-byte buffer")
    buffer[start:CHUNK_HEAD_ROOM] = head
    buffer[end : end + CHUNK_TAIL_ROOM] = _CHUNK_TAIL
    return memoryview(buffer)[start : end + CHUNK_TAIL_ROOM]


def _fast_chunk(buffer: bytearray, start: int, end: int, *, view: bool = False) -> FileChunk | None:
    """The chunk frame at buffer[start:end], if laid out as encode_frame writes it.

    Its data is a copy, or with *view* a view of *buffer*.

    None (for any other layout, or an invalid value) sends the frame down the
    generic path, which accepts or refuses it as for any frame.
    """
    with memoryview(buffer) as whole, whole[start:end] as body:
        if body[:5] != _CHUNK_HEAD or body[21:23] != _KEY_O:
            return None
        offset = _read_head(body, 23, 0)
        if offset is None or body[offset[1] : offset[1] + 2] != _KEY_D:
            return None
        length = _read_head(body, offset[1] + 2, 2)
        if length is None:
            return None
        data_end = length[1] + length[0]
        if (
            data_end + len(_CHUNK_TAIL) != len(body)
            or body[data_end:] != _CHUNK_TAIL
            or length[0] == 0
            or offset[0] > _MAX_SEQ
        ):
            return None  # the generic path says what is wrong, if anything
        transfer = _uuid(bytes(body[5:21]))
        if not view:
            return FileChunk(transfer, offset[0], bytes(body[length[1] : data_end]))
    return FileChunk(transfer, offset[0], memoryview(buffer)[start + length[1] : start + data_end])


#: Data frames, as encode_data lays them out: a map of 7 pairs, "t": "m" and the key "q"
_DATA_HEAD = b"\xa7\x61t\x61m\x61q"
#: the key "i" or "f" and the head of a 16-byte byte string
_KEY_I = b"\x61i\x50"
_KEY_F = b"\x61f\x50"
_KEY_N = b"\x61n"
#: the key "ts" and the head of a double
_KEY_TS = b"\x62ts\xfb"
#: the key "c", the map {"t": "text", "x": ...} up to the text's head
_KEY_C = b"\x61c\xa2\x61t\x64text\x61x"
#: after the sequence number: ids and keys up to the name's first head byte
_DATA_IDS = struct.Struct(">3s16s3s16s2sB")
#: after the name: the timestamp and keys up to the text's first head byte
_DATA_TAIL = struct.Struct(">4sd12sB")
_DOUBLE = struct.Struct(">d")


def _fast_data(body: bytearray, senders: dict[bytes, uuid.UUID]) -> Data | None:
    """The Data frame *body*, if laid out as encode_data writes it.

    None (for any other layout, or an invalid value) sends the frame down the
    generic path, which accepts or refuses it as for any frame.
    """
    size = len(body)
    if not body.startswith(_DATA_HEAD) or size < 7 + 1 + _DATA_IDS.size:
        return None
    head = _read_head(body, 7, 0)
    if head is None or head[1] + _DATA_IDS.size > size:
        return None
    seq, position = head
    key_i, raw_id, key_f, sender, key_n, _ = _DATA_IDS.unpack_from(body, position)
    if key_i != _KEY_I or key_f != _KEY_F or key_n != _KEY_N:
        return None
    head = _read_head(body, position + _DATA_IDS.size - 1, 3)  # the name's
    if head is None:
        return None
    position, name_end = head[1], head[1] + head[0]
    if name_end + _DATA_TAIL.size > size:
        return None
    key_ts, seconds, key_c, _ = _DATA_TAIL.unpack_from(body, name_end)
    if key_ts != _KEY_TS or key_c != _KEY_C:
        return None
    text_head = _read_head(body, name_end + _DATA_TAIL.size - 1, 3)
    if text_head is None or text_head[1] + text_head[0] != size:
        return None
    try:
        name = body[position:name_end].decode()
        text = body[text_head[1] :].decode()
        return _data(seq, raw_id, sender, name, seconds, text, senders)
    except (TypeError, ValueError):  # UnicodeDecodeError among them
        return None  # the generic path says what is wrong


#: Ack frames, as encode_frame lays them out: {"q": seq, "t": "a"}
_ACK_HEAD = b"\xa2\x61q"
_ACK_TAIL = b"\x61t\x61a"


def _fast_ack(body: bytearray) -> Ack | None:
    """The Ack frame *body*, if laid out as encode_frame writes it (else None)."""
    if not body.startswith(_ACK_HEAD) or not body.endswith(_ACK_TAIL):
        return None
    head = _read_head(body, 3, 0)
    if head is None or head[1] + len(_ACK_TAIL) != len(body) or head[0] > _MAX_SEQ:
        return None
    return Ack(head[0])


# ---------------------------------------------------------------- encoding


def encode_frame(frame: Frame) -> bytes:
    """Encode *frame* with its length prefix, ready to write to a stream."""
    if type(frame) is Data:
        return encode_data(frame.seq, frame.message)
    if type(frame) is Ack and 0 <= frame.seq <= _MAX_SEQ:  # after every read batch
        body = _ACK_HEAD + _cbor_head(0, frame.seq) + _ACK_TAIL
        return _HEADER.pack(len(body)) + body
    payload = _converter.unstructure(frame)
    payload["t"] = FRAME_TAGS[type(frame)]
    body = cbor2.dumps(payload)
    return _HEADER.pack(len(body)) + body


def encode_data(seq: int, message: Message) -> bytes:
    """Encode a :class:`Data` frame (the per-message path) with its prefix.

    The bytes are those ``cbor2.dumps`` gives for the frame's map, put
    together directly (the layout :func:`_fast_data` reads back).
    """
    seconds = message.timestamp
    if type(seconds) is not float or not -1e10 < seconds < 1e11 or not 0 <= seq <= _MAX_SEQ:
        return _encode_data_generic(seq, message)
    name = message.sender_name.encode()
    text = message.content.text.encode()
    body = b"".join(
        (
            _DATA_HEAD,
            _cbor_head(0, seq),
            _KEY_I,
            message.id.bytes,
            _KEY_F,
            message.sender_id.bytes,
            _KEY_N,
            _cbor_head(3, len(name)),
            name,
            _KEY_TS,
            _DOUBLE.pack(seconds),
            _KEY_C,
            _cbor_head(3, len(text)),
            text,
        )
    )
    return _HEADER.pack(len(body)) + body


def _encode_data_generic(seq: int, message: Message) -> bytes:
    body = cbor2.dumps(
        {
            "t": "m",
            "q": seq,
            "i": message.id.bytes,
            "f": message.sender_id.bytes,
            "n": message.sender_name,
            "ts": message.timestamp,
            "c": _unstructure_content(message.content),
        }
    )
    return _HEADER.pack(len(body)) + body


def encode_beacon(beacon: Beacon) -> bytes:
    """Encode *beacon* as one datagram."""
    payload = _converter.unstructure(beacon)
    payload["m"] = BEACON_MAGIC
    data = cbor2.dumps(payload)
    if len(data) > MAX_BEACON_SIZE:
        raise ValueError(f"beacon of {len(data)} bytes exceeds {MAX_BEACON_SIZE}")
    return data


def decode_beacon(data: bytes) -> Beacon:
    """Decode one discovery datagram.

    Raises:
        ProtocolError: for anything that is not a valid beacon of our protocol
            version (the message says which).
    """
    if len(data) > MAX_BEACON_SIZE:
        raise ProtocolError(f"beacon of {len(data)} bytes exceeds {MAX_BEACON_SIZE}")
    payload = _loads_exact(data)
    if type(payload) is not dict or payload.get("m") != BEACON_MAGIC:
        raise ProtocolError("not a trio_p2p beacon (magic missing)")
    if payload.get("v") != PROTOCOL_VERSION:
        raise ProtocolError(f"unsupported beacon version {payload.get('v')!r}")
    for key in ("pk", "c", "ad", "sg"):
        if key not in payload:
            raise ProtocolError(f"beacon lacks field {key!r} (unsigned)")
    try:
        beacon = _converter.structure(payload, Beacon)
        _check_name(beacon.name)
        _check_port(beacon.port)
        if len(beacon.key) != PUBLIC_KEY_SIZE or len(beacon.signature) != SIGNATURE_SIZE:
            raise ValueError("wrong key or signature size")
        if not 0 <= beacon.counter < 2**63:
            raise ValueError(f"counter out of range: {beacon.counter}")
        addresses = beacon.addresses
        if not 1 <= len(addresses) <= MAX_BEACON_ADDRESSES or any(len(a) != 4 for a in addresses):
            raise ValueError("1 to 16 addresses of 4 bytes each are required")
    except KeyError as exc:
        raise ProtocolError(f"beacon lacks field {exc}") from None
    except Exception as exc:
        raise ProtocolError(f"invalid beacon: {exc}") from None
    return beacon


def beacon_signed_bytes(beacon: Beacon) -> bytes:
    r"""What a beacon's signature signs.

    The domain ``"trio_p2p beacon v1\0"``, then the CBOR array ``[version, kind,
    node id, name, port, counter, [addresses...]]`` (definite lengths, shortest
    integers: the one encoding of that array).
    """
    fields = [
        beacon.version,
        str(beacon.kind),
        beacon.node_id.bytes,
        beacon.name,
        beacon.port,
        beacon.counter,
        list(beacon.addresses),
    ]
    return _BEACON_DOMAIN + cbor2.dumps(fields, canonical=True)


def sign_beacon(beacon: Beacon, identity: Identity) -> Beacon:
    """*beacon* with *identity*'s key and its signature of the rest."""
    keyed = attrs.evolve(beacon, key=identity.public_key, signature=b"")
    return attrs.evolve(keyed, signature=identity.sign(beacon_signed_bytes(keyed)))


def beacon_key_matches(beacon: Beacon) -> bool:
    """Whether the beacon's node id is the one derived from its key (cheap)."""
    return peer_id_of(beacon.key) == beacon.node_id


def beacon_signature_valid(beacon: Beacon) -> bool:
    """Whether the beacon's signature is its key's signature of its fields."""
    return verify(beacon.key, beacon.signature, beacon_signed_bytes(beacon))


def check_name(name: str) -> str:
    """Return *name* if it is a valid node name, else raise :class:`ValueError`."""
    return _check_name(name)
