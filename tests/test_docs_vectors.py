"""The test vectors of docs/protocol.rst: each encodes and decodes exactly as documented.

A vector in the page is a ``.. code-block:: text`` whose first line is
``name: <name>``, followed by ``kind: frame|beacon``, an informative ``cbor:``
line and one or more ``hex:`` lines (concatenated, whitespace ignored). The
Python value of each vector is defined here, by name; the names in the page and
here must be the same set, so no vector goes unchecked.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import NamedTuple

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from trio_p2p._codec import (
    FrameDecoder,
    beacon_signature_valid,
    decode_beacon,
    encode_beacon,
    encode_frame,
    sign_beacon,
)
from trio_p2p._identity import Identity
from trio_p2p._messages import (
    Ack,
    Beacon,
    BeaconKind,
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

PROTOCOL_RST = Path(__file__).parent.parent / "docs" / "protocol.rst"

ALICE = uuid.UUID(int=1)
BOB = uuid.UUID(int=2)
#: the identity keys of the beacon vectors: Ed25519 private keys 00 01 .. 1f
#: and 20 21 .. 3f (their signatures are deterministic)
ALICE_KEY = Identity._of(Ed25519PrivateKey.from_private_bytes(bytes(range(32))), None)
BOB_KEY = Identity._of(Ed25519PrivateKey.from_private_bytes(bytes(range(32, 64))), None)
TIMESTAMP = 1700000000.5
TRANSFER = uuid.UUID(int=5)


def signed_beacon(
    kind: BeaconKind, key: Identity, name: str, port: int, counter: int, *addresses: bytes
) -> Beacon:
    """The beacon vectors: *key*'s node, signed by *key*."""
    beacon = Beacon(kind, key.peer_id, name, port, counter=counter, addresses=addresses)
    return sign_beacon(beacon, key)


VALUES: dict[str, Frame | Beacon] = {
    "hello": Hello(
        version=1,
        node_id=ALICE,
        session=bytes(range(16)),
        name="Alice",
        port=6969,
        max_frame_size=8388608,
    ),
    "hello-resume": Hello(
        version=1,
        node_id=ALICE,
        session=bytes(range(16)),
        name="Alice",
        port=6969,
        max_frame_size=8388608,
        resumes=bytes(range(16, 32)),
        received=41,
    ),
    "hello-capabilities": Hello(
        version=1,
        node_id=BOB,
        session=bytes(range(16, 32)),
        name="Bob",
        port=40001,
        max_frame_size=1024,
        capabilities=("x-example",),
    ),
    "data": Data(
        seq=1,
        message=Message(
            id=uuid.UUID(int=3),
            sender_id=ALICE,
            sender_name="Alice",
            timestamp=TIMESTAMP,
            content=Text("Hello!"),
        ),
    ),
    "data-unicode": Data(
        seq=2,
        message=Message(
            id=uuid.UUID(int=4),
            sender_id=ALICE,
            sender_name="Alice",
            timestamp=TIMESTAMP,
            content=Text("Grüße ✓"),
        ),
    ),
    "ack": Ack(seq=1),
    "ack-max": Ack(seq=2**63 - 1),
    "ping": Ping(),
    "pong": Pong(),
    "goodbye": Goodbye(GoodbyeCode.CLOSING, "the peer is shutting down"),
    "goodbye-duplicate": Goodbye(
        GoodbyeCode.DUPLICATE,
        "simultaneous dial: the smaller node id's dial wins",
    ),
    "file-offer": FileOffer(
        transfer=TRANSFER,
        name="notes.txt",
        size=3,
        chunk_size=1048576,
        mtime_ns=1700000000500000000,
    ),
    "file-accept": FileAccept(TRANSFER, offset=0),
    "file-accept-resume": FileAccept(TRANSFER, offset=2),
    "file-reject": FileReject(TRANSFER, "not now"),
    "file-chunk": FileChunk(TRANSFER, offset=0, data=b"abc"),
    "file-confirm": FileConfirm(TRANSFER, offset=3),
    "file-end": FileEnd(TRANSFER, digest=bytes(range(32))),
    "file-verdict": FileVerdict(TRANSFER, verified=True, reason=""),
    "file-verdict-failed": FileVerdict(TRANSFER, verified=False, reason="corrupt"),
    "file-cancel": FileCancel(TRANSFER, "cancelled"),
    "beacon-announce": signed_beacon(
        BeaconKind.ANNOUNCE, ALICE_KEY, "Alice", 6969, 1700000000500, bytes([192, 168, 1, 20])
    ),
    "beacon-request": signed_beacon(
        BeaconKind.REQUEST,
        BOB_KEY,
        "Bob",
        40001,
        1700000000501,
        bytes([192, 168, 1, 21]),
        bytes([10, 0, 0, 5]),
    ),
    "beacon-goodbye": signed_beacon(
        BeaconKind.GOODBYE, ALICE_KEY, "Alice", 6969, 1700000000502, bytes([192, 168, 1, 20])
    ),
}


class Vector(NamedTuple):
    name: str
    kind: str
    data: bytes


_CODE_BLOCK = re.compile(r"^\.\. code-block:: text\n((?:[ \t]*\n|[ \t]+\S.*\n)*)", re.MULTILINE)
_FIELD = re.compile(r"(\w+):\s*(.*)")


def parse_vectors(text: str) -> dict[str, Vector]:
    """Every vector of the page, by name."""
    vectors: dict[str, Vector] = {}
    for block in _CODE_BLOCK.finditer(text):
        lines = [line.strip() for line in block.group(1).splitlines() if line.strip()]
        if not lines or not lines[0].startswith("name:"):
            continue  # an illustration, not a vector
        fields: dict[str, str] = {}
        hex_digits: list[str] = []
        for line in lines:
            match = _FIELD.fullmatch(line)
            assert match is not None, f"not a 'key: value' line in a vector: {line!r}"
            key, value = match.groups()
            if key == "hex":
                hex_digits.append(value)
            else:
                assert key not in fields, f"{key!r} given twice in vector {lines[0]!r}"
                fields[key] = value
        name = fields["name"]
        assert name not in vectors, f"vector {name!r} is documented twice"
        assert hex_digits, f"vector {name!r} has no hex: line"
        data = bytes.fromhex("".join("".join(hex_digits).split()))
        vectors[name] = Vector(name, fields["kind"], data)
    return vectors


DOCUMENTED = parse_vectors(PROTOCOL_RST.read_text(encoding="utf-8"))


def test_every_documented_vector_is_checked() -> None:
    assert set(DOCUMENTED) == set(VALUES)


def test_the_required_kinds_are_all_documented() -> None:
    kinds = {type(value) for value in VALUES.values()}
    assert kinds == {Hello, Data, Ack, Ping, Pong, Goodbye, Beacon} | {
        FileOffer,
        FileAccept,
        FileReject,
        FileChunk,
        FileConfirm,
        FileEnd,
        FileVerdict,
        FileCancel,
    }


@pytest.mark.parametrize("name", sorted(VALUES))
def test_vector_encodes_and_decodes_as_documented(name: str) -> None:
    vector = DOCUMENTED[name]
    value = VALUES[name]
    if isinstance(value, Beacon):
        assert vector.kind == "beacon"
        assert encode_beacon(value) == vector.data
        assert decode_beacon(vector.data) == value
        assert beacon_signature_valid(value)
    else:
        assert vector.kind == "frame"
        assert encode_frame(value) == vector.data
        assert FrameDecoder(1 << 20).feed(vector.data) == [value]
