"""The sans-I/O codec: round trips, stream splitting, and every kind of bad input."""

from __future__ import annotations

import contextlib
import struct
import uuid

import attrs
import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_p2p import ProtocolError
from trio_p2p._codec import (
    CHUNK_HEAD_ROOM,
    CHUNK_TAIL_ROOM,
    MAX_BEACON_SIZE,
    FrameDecoder,
    _encode_data_generic,
    chunk_frame_parts,
    decode_beacon,
    decode_frame,
    encode_beacon,
    encode_frame,
    frame_chunk_in_place,
)
from trio_p2p._messages import (
    BEACON_MAGIC,
    PROTOCOL_VERSION,
    Ack,
    Beacon,
    BeaconKind,
    Data,
    FileChunk,
    Frame,
    Hello,
    Message,
    Text,
)

from .strategies import beacons, frames, messages, messages_with, seqs

LIMIT = 1 << 20


def frame_of(payload: object) -> bytes:
    body = cbor2.dumps(payload)
    return struct.pack(">I", len(body)) + body


def good_hello_payload() -> dict[str, object]:
    return {
        "t": "h",
        "v": PROTOCOL_VERSION,
        "id": uuid.uuid4().bytes,
        "s": b"s" * 16,
        "n": "Alice",
        "p": 6969,
        "x": 65536,
        "c": [],
    }


def data_payload(**changes: object) -> dict[str, object]:
    payload: dict[str, object] = {
        "t": "m",
        "q": 1,
        "i": b"i" * 16,
        "f": b"f" * 16,
        "n": "A",
        "ts": 1.0,
        "c": {"t": "text", "x": "a"},
    }
    payload.update(changes)
    return payload


def offer_payload(**changes: object) -> dict[str, object]:
    payload: dict[str, object] = {
        "t": "fo",
        "id": b"i" * 16,
        "n": "a.txt",
        "s": 10,
        "k": 1024,
        "mt": 0,
    }
    payload.update(changes)
    return payload


@given(frames)
def test_every_frame_round_trips(frame: Frame) -> None:
    encoded = encode_frame(frame)
    assert struct.unpack(">I", encoded[:4])[0] == len(encoded) - 4
    assert decode_frame(encoded[4:]) == frame
    assert FrameDecoder(LIMIT).feed(encoded) == [frame]


@given(beacons)
def test_every_beacon_round_trips(beacon: Beacon) -> None:
    data = encode_beacon(beacon)
    assert len(data) <= MAX_BEACON_SIZE
    assert decode_beacon(data) == beacon


@given(st.lists(frames, max_size=8), st.data())
def test_any_split_of_a_stream_decodes_the_same(
    frames_in: list[Frame], data: st.DataObject
) -> None:
    stream = b"".join(encode_frame(f) for f in frames_in)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    decoder = FrameDecoder(LIMIT)
    out: list[Frame] = []
    previous = 0
    for cut in [*cuts, len(stream)]:
        out.extend(decoder.feed(stream[previous:cut]))
        previous = cut
    assert out == frames_in
    assert decoder.buffered == 0


@settings(max_examples=500)
@given(st.lists(st.binary(max_size=64), max_size=6))
def test_arbitrary_bytes_give_frames_or_protocol_error(chunks: list[bytes]) -> None:
    decoder = FrameDecoder(LIMIT)
    try:
        for chunk in chunks:
            for frame in decoder.feed(chunk):
                assert isinstance(frame, Frame)
    except ProtocolError:
        pass


@settings(max_examples=500)
@given(st.binary(max_size=MAX_BEACON_SIZE + 10))
def test_arbitrary_datagrams_give_beacon_or_protocol_error(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        assert isinstance(decode_beacon(data), Beacon)


@given(
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats()
        | st.text(max_size=5)
        | st.binary(max_size=20),
        lambda children: (
            st.lists(children, max_size=3)
            | st.dictionaries(
                st.sampled_from(
                    ["t", "v", "id", "s", "n", "p", "x", "c", "q", "i", "f", "ts", "r", "k", "m"]
                ),
                children,
                max_size=8,
            )
        ),
        max_leaves=20,
    )
)
def test_arbitrary_cbor_values_give_frame_or_protocol_error(value: object) -> None:
    for payload in (value, {"t": "m", "c": value}, {**good_hello_payload(), "c": value}):
        with contextlib.suppress(ProtocolError):
            FrameDecoder(LIMIT).feed(frame_of(payload))


def test_oversize_prefix_is_rejected_before_buffering() -> None:
    decoder = FrameDecoder(LIMIT)
    with pytest.raises(ProtocolError, match="limit"):
        decoder.feed(struct.pack(">I", 4 * 1024**3 - 1))
    # the limit itself is accepted and buffered while incomplete
    decoder = FrameDecoder(LIMIT)
    assert decoder.feed(struct.pack(">I", LIMIT) + b"\xa0") == []
    assert decoder.buffered == 5


def test_prefix_checked_as_soon_as_its_four_bytes_arrive() -> None:
    decoder = FrameDecoder(LIMIT)
    header = struct.pack(">I", LIMIT + 1)
    assert decoder.feed(header[:3]) == []
    with pytest.raises(ProtocolError):
        decoder.feed(header[3:])


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        pytest.param(b"\x00\x00\x00\x00", "empty", id="empty-frame"),
        pytest.param(b"\x00\x00\x00\x03\xff\xff\xff", "CBOR", id="garbage"),
        pytest.param(
            b"\x00\x00\x00\x07" + cbor2.dumps({"t": "a", "q": 1}) + b"\x00",
            "fill|end of stream",
            id="trailing-bytes",
        ),
        pytest.param(frame_of({"t": "zz"}), "unknown frame tag", id="unknown-tag"),
        pytest.param(frame_of({"q": 1}), "unknown frame tag", id="no-tag"),
        pytest.param(frame_of([1, 2]), "map", id="not-a-map"),
        pytest.param(frame_of({"t": "a"}), "lacks", id="missing-field"),
        pytest.param(frame_of({"t": "a", "q": "1"}), "integer", id="ill-typed"),
        pytest.param(frame_of({"t": "a", "q": True}), "integer", id="bool-as-int"),
        pytest.param(frame_of({"t": "a", "q": -1}), "range", id="negative-seq"),
        # {"t": "a", "q": 1, "q": 2}: a map of three pairs, the key "q" twice
        pytest.param(
            b"\x00\x00\x00\x0b\xa3\x61t\x61a\x61q\x01\x61q\x02", "Duplicate", id="duplicate-keys"
        ),
        pytest.param(frame_of({"t": "a", "q": 1, "z": [[[[[[1]]]]]]}), "depth", id="deep-nesting"),
        pytest.param(frame_of({"t": "a", "q": cbor2.CBORTag(2, b"\x01")}), "tag", id="bignum-tag"),
        pytest.param(frame_of({"t": "a", "q": cbor2.CBORTag(9999, 1)}), "tag", id="unknown-tag"),
        pytest.param(frame_of({**good_hello_payload(), "v": 99}), "version", id="version"),
        pytest.param(frame_of({**good_hello_payload(), "s": b"x"}), "nonce", id="short-nonce"),
        pytest.param(frame_of({**good_hello_payload(), "n": ""}), "name", id="empty-name"),
        pytest.param(
            frame_of({**good_hello_payload(), "n": "a\x1b[2J"}), "name", id="control-name"
        ),
        pytest.param(frame_of({**good_hello_payload(), "n": "x" * 200}), "name", id="long-name"),
        pytest.param(frame_of({**good_hello_payload(), "p": 70000}), "port", id="bad-port"),
        pytest.param(frame_of({**good_hello_payload(), "id": b"short"}), "16-byte", id="bad-id"),
        pytest.param(frame_of({"t": "g", "c": "nope", "r": "x"}), "Goodbye", id="bad-enum"),
        pytest.param(
            frame_of(data_payload(c={"t": "file", "x": "a"})), "content", id="bad-content"
        ),
        *[
            pytest.param(frame_of(data_payload(ts=ts)), "timestamp", id=f"timestamp-{ts}")
            for ts in (float("nan"), float("inf"), -float("inf"), 1e300)
        ],
        pytest.param(frame_of(offer_payload(n="")), "file name", id="offer-empty-name"),
        pytest.param(frame_of(offer_payload(n="x" * 5000)), "file name", id="offer-long-name"),
        pytest.param(frame_of(offer_payload(s=-1)), "offset", id="offer-negative-size"),
        pytest.param(frame_of(offer_payload(k=0)), "chunk size", id="offer-zero-chunk"),
        pytest.param(frame_of(offer_payload(mt=2**63)), "modification time", id="offer-huge-mtime"),
        pytest.param(frame_of(offer_payload(s=True)), "integer", id="offer-bool-size"),
        pytest.param(frame_of({"t": "fa", "id": b"i" * 16, "o": -5}), "offset", id="accept-neg"),
        pytest.param(
            frame_of({"t": "fc", "id": b"i" * 16, "o": 0, "d": b""}),
            "empty chunk",
            id="empty-chunk",
        ),
        pytest.param(
            frame_of({"t": "fc", "id": b"i" * 16, "o": 0, "d": "text"}),
            "byte string",
            id="text-chunk",
        ),
        pytest.param(
            frame_of({"t": "fe", "id": b"i" * 16, "h": b"x" * 31}), "digest", id="short-digest"
        ),
        pytest.param(
            frame_of({"t": "fv", "id": b"i" * 16, "ok": 1, "r": ""}), "boolean", id="int-as-bool"
        ),
        pytest.param(
            frame_of({"t": "fv", "id": b"i" * 16, "ok": True, "r": "x"}),
            "reason",
            id="verified-with-reason",
        ),
        pytest.param(
            frame_of({"t": "fx", "id": b"i" * 16, "r": "x" * 2000}), "reason", id="long-reason"
        ),
        pytest.param(frame_of({"t": "fk", "id": b"short", "o": 1}), "16-byte", id="confirm-bad-id"),
    ],
)
def test_malformed_frames_raise_protocol_error(raw: bytes, match: str | None) -> None:
    with pytest.raises(ProtocolError, match=match):
        FrameDecoder(LIMIT).feed(raw)


@given(frames)
def test_every_truncated_body_is_a_protocol_error(frame: Frame) -> None:
    body = encode_frame(frame)[4:]
    for cut in range(len(body)):
        with pytest.raises(ProtocolError):
            decode_frame(body[:cut])


@given(frames)
def test_a_partial_frame_waits_in_the_stream(frame: Frame) -> None:
    encoded = encode_frame(frame)
    decoder = FrameDecoder(LIMIT)
    assert decoder.feed(encoded[:-1]) == []
    assert decoder.buffered == len(encoded) - 1
    assert decoder.feed(encoded[-1:]) == [frame]


def test_unknown_fields_are_ignored() -> None:
    assert FrameDecoder(LIMIT).feed(frame_of({"t": "a", "q": 7, "future": "x"})) == [Ack(7)]


def test_protocol_error_inside_a_batch_does_not_pass_silently() -> None:
    good = encode_frame(Ack(1))
    decoder = FrameDecoder(LIMIT)
    with pytest.raises(ProtocolError):
        decoder.feed(good + frame_of({"t": "zz"}) + good)


def beacon_payload(**changes: object) -> dict[str, object]:
    payload: dict[str, object] = {
        "m": BEACON_MAGIC,
        "v": PROTOCOL_VERSION,
        "k": "a",
        "id": uuid.uuid4().bytes,
        "n": "Bob",
        "p": 7000,
        "pk": bytes(32),
        "c": 1,
        "ad": [bytes(4)],
        "sg": bytes(64),
    }
    payload.update(changes)
    return payload


@pytest.mark.parametrize(
    ("data", "match"),
    [
        pytest.param(b"", "empty", id="empty"),
        pytest.param(b"\x00\x01\x02\x03", "CBOR|magic", id="four-bytes"),
        pytest.param(cbor2.dumps(beacon_payload(m=b"XXXX")), "magic", id="bad-magic"),
        pytest.param(cbor2.dumps(beacon_payload(v=2)), "version", id="future-version"),
        pytest.param(cbor2.dumps(beacon_payload(k="x")), "invalid", id="bad-kind"),
        pytest.param(cbor2.dumps(beacon_payload(p=0)), "port", id="port-zero"),
        pytest.param(cbor2.dumps(beacon_payload(n="\x00")), "name", id="bad-name"),
        pytest.param(cbor2.dumps(beacon_payload()) + b"\x00", "trailing", id="trailing"),
        pytest.param(cbor2.dumps(beacon_payload(x="y" * 600)), "exceeds", id="oversize"),
        pytest.param(
            cbor2.dumps({k: v for k, v in beacon_payload().items() if k != "id"}),
            "lacks",
            id="missing-id",
        ),
        pytest.param(
            cbor2.dumps({k: v for k, v in beacon_payload().items() if k != "sg"}),
            "unsigned",
            id="unsigned",
        ),
        pytest.param(cbor2.dumps(beacon_payload(pk=bytes(31))), "size", id="short-key"),
        pytest.param(cbor2.dumps(beacon_payload(ad=[])), "addresses", id="no-address"),
        pytest.param(cbor2.dumps(beacon_payload(ad=[bytes(16)])), "addresses", id="ipv6"),
        pytest.param(cbor2.dumps(beacon_payload(ad=[bytes(4)] * 17)), "addresses", id="17"),
        pytest.param(cbor2.dumps(beacon_payload(c=-1)), "invalid", id="negative-counter"),
        pytest.param(cbor2.dumps(beacon_payload(ad="x")), "invalid", id="not-an-array"),
    ],
)
def test_malformed_beacons_raise_protocol_error(data: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        decode_beacon(data)


def test_beacon_kinds_have_short_wire_values() -> None:
    assert [k.value for k in BeaconKind] == ["a", "r", "g"]
    hello = Hello(PROTOCOL_VERSION, uuid.UUID(int=1), b"n" * 16, "A", 1, 1024)
    assert cbor2.loads(encode_frame(hello)[4:])["t"] == "h"


def test_message_ids_are_random_version_4_uuids() -> None:
    from trio_p2p._codec import MessageIds

    ids = MessageIds()
    drawn = [ids.new() for _ in range(1000)]  # crosses several pool refills
    assert len(set(drawn)) == 1000
    for value in drawn:
        assert value.version == 4
        assert value.variant == uuid.RFC_4122
        assert uuid.UUID(bytes=value.bytes) == value
        assert hash(value) == hash(uuid.UUID(str(value)))


def test_the_largest_valid_hello_fits_the_hello_limit() -> None:
    from trio_p2p._connection import HELLO_LIMIT

    hello = Hello(
        PROTOCOL_VERSION,
        uuid.uuid4(),
        b"s" * 16,
        "\U0001f600" * 32,
        65535,
        2**32 - 1,
        tuple("c" * 32 for _ in range(16)),
        resumes=b"r" * 16,
        received=2**63 - 1,
    )
    assert len(encode_frame(hello)) - 4 <= HELLO_LIMIT
    with pytest.raises(ProtocolError, match="capabilities"):
        decode_frame(encode_frame(attrs.evolve(hello, capabilities=("x" * 33,)))[4:])


@pytest.mark.parametrize(
    ("resumes", "received", "match"),
    [
        (b"r" * 15, 1, "resumes must be 16 bytes"),
        (None, 3, "resumes no session"),
        (b"r" * 16, 2**63, "sequence number out of range"),
    ],
)
def test_invalid_resume_fields_of_a_hello_are_protocol_errors(
    resumes: bytes | None, received: int, match: str
) -> None:
    hello = Hello(PROTOCOL_VERSION, uuid.uuid4(), b"s" * 16, "A", 1, 4096)
    bad = attrs.evolve(hello, resumes=resumes, received=received)
    with pytest.raises(ProtocolError, match=match):
        decode_frame(encode_frame(bad)[4:])


big_chunks = st.builds(
    FileChunk,
    transfer=st.uuids(),
    offset=st.integers(0, 2**63 - 1),
    data=st.binary(min_size=1000, max_size=3000),
)


def generic_decode(frame: bytes) -> Frame | ProtocolError:
    """What the generic CBOR path makes of a frame (the fast path must agree)."""
    try:
        return decode_frame(frame[4:])
    except ProtocolError as exc:
        return exc


def assert_decodes_as_the_generic_path(frame: bytes, decoder: FrameDecoder) -> None:
    """*decoder* makes of *frame* what the generic path makes: the same frame, or an error."""
    expected = generic_decode(frame)
    try:
        got: Frame | ProtocolError = decoder.feed(frame)[0]
    except ProtocolError as exc:
        got = exc
    if isinstance(expected, ProtocolError):
        assert isinstance(got, ProtocolError)
    else:
        assert got == expected


@given(big_chunks)
def test_chunk_frames_are_written_without_copying_the_data(chunk: FileChunk) -> None:
    head, data, tail = chunk_frame_parts(chunk)
    assert data is chunk.data
    assert head + data + tail == encode_frame(chunk)
    assert FrameDecoder(LIMIT).feed(head + data + tail) == [chunk]


@given(big_chunks, st.integers(0, 64), st.binary(max_size=8))
def test_a_chunk_framed_in_place_is_the_encoded_frame(
    chunk: FileChunk, spare: int, stale: bytes
) -> None:
    """Framed in a (reused, so not blank) buffer around its data, a chunk is the
    bytes encode_frame writes, and nothing of the buffer outside the frame moves."""
    length = len(chunk.data)
    size = CHUNK_HEAD_ROOM + length + CHUNK_TAIL_ROOM + spare
    buffer = bytearray(((stale + b"\xff") * size)[:size])
    buffer[CHUNK_HEAD_ROOM : CHUNK_HEAD_ROOM + length] = chunk.data
    before = bytes(buffer)
    frame = frame_chunk_in_place(buffer, chunk.transfer, chunk.offset, length)
    assert frame.obj is buffer
    assert bytes(frame) == encode_frame(chunk)
    start = CHUNK_HEAD_ROOM + length + CHUNK_TAIL_ROOM - len(frame)
    assert buffer[:start] == before[:start]
    assert buffer[start + len(frame) :] == before[start + len(frame) :]


def test_framing_a_chunk_in_a_buffer_too_small_is_refused() -> None:
    buffer = bytearray(CHUNK_HEAD_ROOM + 10)
    with pytest.raises(ValueError, match="no room"):
        frame_chunk_in_place(buffer, uuid.uuid4(), 0, 10)


@settings(max_examples=300)
@given(
    big_chunks,
    st.lists(st.tuples(st.integers(0, 40), st.integers(0, 255)), min_size=1, max_size=3),
)
def test_the_chunk_fast_path_agrees_with_the_generic_decoder(
    chunk: FileChunk, changes: list[tuple[int, int]]
) -> None:
    """Damage a chunk frame's head or tail anywhere: the decoder still makes of it
    exactly what the generic path makes (the same frame, or a protocol error)."""
    frame = bytearray(encode_frame(chunk))
    for where, value in changes:  # within the head (after the prefix) or the tail
        index = 4 + where if where < 30 else len(frame) - (where - 29)
        frame[index] = value
    assert_decodes_as_the_generic_path(bytes(frame), FrameDecoder(1 << 20))


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param({"t": "fc", "id": b"i" * 16, "o": 3, "d": b"x" * 2000}, id="other-order"),
        pytest.param({"id": b"i" * 16, "o": 3, "d": b"x" * 2000, "t": "fc", "z": 1}, id="extra"),
        pytest.param({"id": b"i" * 16, "o": 3, "d": b"x" * 2000, "t": "fc"}, id="same-layout"),
    ],
)
def test_chunks_in_any_valid_layout_decode_alike(payload: dict[str, object]) -> None:
    frame = frame_of(payload)
    assert FrameDecoder(LIMIT).feed(frame) == [decode_frame(frame[4:])]


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        ({"id": b"i" * 16, "o": 2**64 - 1, "d": b"x" * 2000, "t": "fc"}, "offset"),
        ({"id": b"i" * 16, "o": 0, "d": b"", "t": "fc", "z": "x" * 2000}, "empty chunk"),
        ({"id": b"i" * 16, "o": 0, "d": b"x" * 2000, "t": "fx"}, "FileCancel"),
    ],
)
def test_invalid_chunks_in_the_fast_layout_are_protocol_errors(
    payload: dict[str, object], match: str
) -> None:
    with pytest.raises(ProtocolError, match=match):
        FrameDecoder(LIMIT).feed(frame_of(payload))


long_texts = messages_with(st.text(min_size=200, max_size=70_000))


@settings(max_examples=300)
@given(seqs, messages | long_texts)
def test_data_and_ack_frames_are_the_bytes_cbor2_writes(seq: int, message: Message) -> None:
    assert encode_frame(Data(seq, message)) == _encode_data_generic(seq, message)
    assert encode_frame(Ack(seq)) == frame_of({"q": seq, "t": "a"})


@settings(max_examples=500)
@given(
    st.one_of(st.builds(Data, seqs, messages), st.builds(Ack, seqs)),
    st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), min_size=1, max_size=3),
)
def test_the_data_and_ack_fast_paths_agree_with_the_generic_decoder(
    frame: Data | Ack, changes: list[tuple[int, int]]
) -> None:
    """Damage a Data or Ack frame's body anywhere: the decoder still makes of it
    exactly what the generic path makes (the same frame, or a protocol error)."""
    encoded = bytearray(encode_frame(frame))
    assert FrameDecoder(LIMIT).feed(bytes(encoded)) == [frame]
    for where, value in changes:
        encoded[4 + where % (len(encoded) - 4)] = value
    decoder = FrameDecoder(LIMIT)
    decoder.expect_sender(frame.message.sender_id if isinstance(frame, Data) else uuid.uuid4())
    assert_decodes_as_the_generic_path(bytes(encoded), decoder)


@pytest.mark.parametrize(
    ("seq", "timestamp", "text", "match"),
    [
        pytest.param(2**63, 1.0, "x", "sequence number", id="seq-too-large"),
        pytest.param(1, 1e12, "x", "timestamp", id="timestamp-out-of-range"),
        pytest.param(1, float("inf"), "x", "timestamp", id="infinite-timestamp"),
    ],
)
def test_invalid_values_in_the_data_fast_layout_are_protocol_errors(
    seq: int, timestamp: float, text: str, match: str
) -> None:
    message = Message(uuid.uuid4(), uuid.uuid4(), "Alice", timestamp, Text(text))
    with pytest.raises(ProtocolError, match=match):
        FrameDecoder(LIMIT).feed(_encode_data_generic(seq, message))


@pytest.mark.parametrize(
    "head", [b"\x18\x30", b"\x19" + bytes(2), b"\x1a" + bytes(4), b"\x1b" + bytes(8)]
)
@pytest.mark.parametrize("rest", [0, 1, 34, 40])
def test_a_data_frame_cut_short_after_a_long_sequence_number_is_a_protocol_error(
    head: bytes, rest: int
) -> None:
    body = b"\xa7\x61t\x61m\x61q" + head + b"\x61i\x50" + bytes(rest)
    with pytest.raises(ProtocolError):
        FrameDecoder(LIMIT).feed(struct.pack(">I", len(body)) + body)


def test_invalid_utf8_in_the_data_fast_layout_is_a_protocol_error() -> None:
    message = Message(uuid.uuid4(), uuid.uuid4(), "Alice", 1.0, Text("abc"))
    frame = bytearray(_encode_data_generic(1, message))
    frame[-1] = 0xFF  # the last byte of the text
    with pytest.raises(ProtocolError, match="invalid CBOR"):
        FrameDecoder(LIMIT).feed(bytes(frame))


def test_the_decoder_says_how_much_of_a_frame_is_missing() -> None:
    decoder = FrameDecoder(LIMIT)
    frame = encode_frame(Ack(7))
    assert decoder.missing == 0
    decoder.feed(frame[:2])
    assert decoder.missing == 0  # the length is not known yet
    decoder.feed(frame[2:5])
    assert decoder.missing == len(frame) - 5
    assert decoder.feed(frame[5:]) == [Ack(7)]
    assert decoder.missing == 0


@settings(max_examples=200)
@given(st.lists(frames, min_size=1, max_size=8), st.data())
def test_receiving_into_the_decoders_own_buffer_decodes_the_same(
    batch: list[Frame], data: st.DataObject
) -> None:
    """What a recv_into-style reader does: ask for room, fill part of it, commit."""
    stream = b"".join(encode_frame(f) for f in batch)
    decoder = FrameDecoder(LIMIT)
    got: list[Frame] = []
    position = 0
    while position < len(stream):
        asked = data.draw(st.integers(1, 70_000), label="room asked")
        missing = decoder.missing
        room = decoder.receive_buffer(asked)
        # as asked, or less where the buffer has room for the rest of the frame
        assert len(room) == asked or 0 < missing <= len(room) < asked
        filled = min(len(room), len(stream) - position, data.draw(st.integers(1, len(room))))
        room[:filled] = stream[position : position + filled]
        room.release()
        position += filled
        got.extend(decoder.commit(filled))
    assert got == batch
    assert decoder.buffered == 0


def large_chunk(index: int, size: int) -> FileChunk:
    return FileChunk(uuid.UUID(int=index), index * size, bytes([index % 251]) * size)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.builds(large_chunk, st.integers(0, 1000), st.sampled_from([300_000, 400_000])),
            frames,
        ),
        min_size=1,
        max_size=6,
    ),
    st.data(),
)
def test_large_chunks_handed_over_in_their_buffers_decode_as_sent(
    batch: list[Frame], data: st.DataObject
) -> None:
    """Received as the connection's reader does (at least 64 KiB asked, the
    rest of a frame under way in one receive, however much comes), with every
    handed-over buffer given back as soon as its chunk is checked (as the file
    writer does once it is written): every frame decodes as sent."""
    stream = b"".join(encode_frame(f) for f in batch)
    decoder = FrameDecoder(LIMIT)
    got = 0
    position = 0
    while position < len(stream):
        asked = max(decoder.missing, 65536)
        room = decoder.receive_buffer(asked)
        filled = min(
            len(stream) - position, data.draw(st.integers(max(1, len(room) // 4), len(room)))
        )
        room[:filled] = stream[position : position + filled]
        room.release()
        position += filled
        for frame in decoder.commit(filled):
            assert frame == batch[got]
            got += 1
            if isinstance(frame, FileChunk) and isinstance(frame.data, memoryview):
                assert len(frame.data) >= 256 * 1024  # (a small one is copied)
                decoder.recycle(frame.data)
    assert got == len(batch)
    assert decoder.buffered == 0


def _receive_as_the_reader_does(decoder: FrameDecoder, stream: bytes) -> list[Frame]:
    """Receive *stream* as a connection's reader does: the rest of a frame in one go."""
    frames: list[Frame] = []
    position = 0
    while position < len(stream):
        with decoder.receive_buffer(max(decoder.missing, 65536)) as room:
            assert len(room)  # (an empty room would read 0 bytes: the end, or a hang here)
            filled = min(len(room), len(stream) - position)
            room[:filled] = stream[position : position + filled]
        position += filled
        frames.extend(decoder.commit(filled))
    return frames


def test_a_stream_of_chunks_is_received_into_two_buffers() -> None:
    """Chunks whose heads grow (their offsets take more bytes), with a message
    and an ack among them, each given back once taken: no buffer is allocated
    after the first two (none freed and allocated again, none grown twice)."""
    decoder = FrameDecoder(LIMIT)
    offsets = [0, 1, 300, 70_000, 5_000_000, 2**33, 2**40, 2**50]
    held: list[object] = []  # (kept alive, so that no new buffer takes an old id)
    for index, offset in enumerate(offsets):
        chunk = FileChunk(uuid.UUID(int=1), offset, bytes([index]) * 300_000)
        message = Message(uuid.uuid4(), uuid.uuid4(), "Alice", 1.0, Text("hi"))
        between: list[Frame] = [Ack(index)] if index % 2 else [Data(index + 1, message)]
        stream = encode_frame(chunk) + b"".join(map(encode_frame, between))
        got = _receive_as_the_reader_does(decoder, stream)
        assert got == [chunk, *between]
        assert isinstance(got[0], FileChunk)
        assert isinstance(got[0].data, memoryview)
        held.append(got[0].data.obj)
        decoder.recycle(got[0].data)
    assert len({id(buffer) for buffer in held}) == 2


def test_a_decoder_gives_back_its_large_buffers_once_frames_stay_small() -> None:
    decoder = FrameDecoder(LIMIT)
    held: list[object] = []
    for index in range(1, 4):  # (offsets of one size: frames of one size)
        (chunk,) = decoder.feed(encode_frame(large_chunk(index, 300_000)))
        assert isinstance(chunk, FileChunk)
        assert isinstance(chunk.data, memoryview)
        held.append(chunk.data.obj)
        decoder.recycle(chunk.data)
    assert len({id(buffer) for buffer in held}) == 2
    (late,) = decoder.feed(encode_frame(large_chunk(4, 300_000)))  # (written slowly)
    assert isinstance(late, FileChunk)
    assert isinstance(late.data, memoryview)
    held.append(late.data.obj)
    for number in range(8):  # small frames only, each alone in a receive
        assert decoder.feed(encode_frame(Ack(number))) == [Ack(number)]
    decoder.recycle(late.data)  # given back once the large buffers went: not kept
    for index in (9, 10):
        (chunk,) = decoder.feed(encode_frame(large_chunk(index, 300_000)))
        assert isinstance(chunk, FileChunk)
        assert isinstance(chunk.data, memoryview)
        assert all(chunk.data.obj is not buffer for buffer in held)


def test_a_handed_over_chunk_keeps_its_data_until_given_back() -> None:
    first, second = large_chunk(1, 300_000), large_chunk(2, 300_000)
    decoder = FrameDecoder(LIMIT)
    (got,) = decoder.feed(encode_frame(first))
    assert isinstance(got, FileChunk)
    assert isinstance(got.data, memoryview)
    held = got.data.obj
    # the next frame goes into another buffer: the first chunk's data stands
    assert decoder.feed(encode_frame(second) + encode_frame(Ack(3))[:3]) == [second]
    assert got == first
    assert decoder.feed(encode_frame(Ack(3))[3:]) == [Ack(3)]
    # once given back, its buffer is the next one the decoder receives into
    decoder.recycle(got.data)
    assert decoder.feed(encode_frame(large_chunk(3, 300_000))) == [large_chunk(3, 300_000)]
    (fourth,) = decoder.feed(encode_frame(large_chunk(4, 300_000)))
    assert isinstance(fourth, FileChunk)
    assert isinstance(fourth.data, memoryview)
    assert fourth.data.obj is held
    assert fourth == large_chunk(4, 300_000)
