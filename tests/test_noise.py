"""The Noise handshake and record layer: official vectors, identity proofs, corruption."""

from __future__ import annotations

import json
import os
import pathlib
import struct
from typing import Any

import pytest
import trio
import trio.testing
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st
from noise.connection import Keypair, NoiseConnection

from trio_p2p._errors import HandshakeError, ProtocolError
from trio_p2p._identity import Identity
from trio_p2p._noise import (
    MAX_RECORD,
    MAX_RECORD_PLAINTEXT,
    RECORD_HEADER,
    TAG_SIZE,
    Handshake,
    Opener,
    Sealer,
    parse_preamble,
    preamble,
)
from trio_p2p._secure import (
    INITIAL_RECEIVE_BUFFER,
    OPEN_AT_ONCE,
    RECEIVE_BUFFER,
    SecureStream,
    StreamIO,
    secure_accept,
    secure_dial,
)

VECTORS = json.loads((pathlib.Path(__file__).parent / "data" / "noise_vectors.json").read_text())[
    "vectors"
]


def static_key() -> bytes:
    return X25519PrivateKey.generate().private_bytes_raw()


# ------------------------------------------------------------ official vectors


def _side(vector: dict[str, Any], role: str) -> Any:
    conn = NoiseConnection.from_name(vector["protocol_name"].encode())
    if role == "init":
        conn.set_as_initiator()
    else:
        conn.set_as_responder()
    conn.set_prologue(bytes.fromhex(vector[f"{role}_prologue"]))
    conn.set_keypair_from_private_bytes(Keypair.STATIC, bytes.fromhex(vector[f"{role}_static"]))
    conn.set_keypair_from_private_bytes(
        Keypair.EPHEMERAL, bytes.fromhex(vector[f"{role}_ephemeral"])
    )
    if f"{role}_psks" in vector:
        conn.set_psks(psks=[bytes.fromhex(p) for p in vector[f"{role}_psks"]])
    conn.start_handshake()
    return conn


@pytest.mark.filterwarnings("ignore:One of ephemeral keypairs:UserWarning")
@pytest.mark.parametrize("vector", VECTORS, ids=[v["protocol_name"] for v in VECTORS])
def test_official_vectors(vector: dict[str, Any]) -> None:
    """noiseprotocol's handshake, and our record layer, give the vectors' bytes."""
    initiator, responder = _side(vector, "init"), _side(vector, "resp")
    messages = vector["messages"]
    sides = [(initiator, responder), (responder, initiator)]
    for i, message in enumerate(messages[:3]):  # XX: three handshake messages
        writer, reader = sides[i % 2]
        payload = bytes.fromhex(message["payload"])
        sent = bytes(writer.write_message(payload))
        assert sent.hex() == message["ciphertext"]
        assert bytes(reader.read_message(sent)) == payload
    assert initiator.handshake_finished
    assert responder.handshake_finished
    # The transport messages, through our own record layer: 4 from the responder
    # (index 3, 5) and from the initiator (index 4), alternating as in the vectors.
    keys = {
        id(conn): (
            bytes(conn.noise_protocol.cipher_state_encrypt.k),
            bytes(conn.noise_protocol.cipher_state_decrypt.k),
        )
        for conn in (initiator, responder)
    }
    sealers = {k: Sealer(v[0]) for k, v in keys.items()}
    openers = {k: Opener(v[1]) for k, v in keys.items()}
    for i, message in enumerate(messages[3:], start=3):
        writer, reader = sides[i % 2]
        payload = bytes.fromhex(message["payload"])
        record = bytes(sealers[id(writer)].seal(payload))
        assert record[:RECORD_HEADER] == len(record[RECORD_HEADER:]).to_bytes(2, "big")
        assert record[RECORD_HEADER:].hex() == message["ciphertext"]
        assert openers[id(reader)].open(memoryview(record)) == payload


# ------------------------------------------------------------ handshake logic


def run_handshake(
    a: Identity, b: Identity, *, key_a: bytes | None = None, key_b: bytes | None = None
) -> tuple[Handshake, Handshake]:
    pre = preamble(key_a is not None)
    dialler = Handshake(a, static_key(), initiator=True, prologue=pre, network_key=key_a)
    other = Handshake(b, static_key(), initiator=False, prologue=pre, network_key=key_b)
    other.read(dialler.write())
    dialler.read(other.write())
    other.read(dialler.write())
    return dialler, other


def test_handshake_proves_both_ids_and_agrees_on_keys() -> None:
    alice, bob = Identity.generate(), Identity.generate()
    dialler, other = run_handshake(alice, bob)
    assert dialler.finished
    assert other.finished
    assert dialler.peer is not None
    assert other.peer is not None
    assert dialler.peer.peer_id == bob.peer_id
    assert other.peer.peer_id == alice.peer_id
    assert dialler.handshake_hash == other.handshake_hash
    seal, _ = dialler.ciphers()
    _, opener = other.ciphers()
    assert opener.open(seal.seal(b"hello")) == b"hello"


def test_network_key_must_match() -> None:
    alice, bob = Identity.generate(), Identity.generate()
    key = os.urandom(32)
    _, other = run_handshake(alice, bob, key_a=key, key_b=key)
    assert other.peer is not None
    assert other.peer.peer_id == alice.peer_id
    with pytest.raises(ProtocolError, match="message 3"):
        run_handshake(alice, bob, key_a=key, key_b=os.urandom(32))


def test_a_proof_for_another_static_key_is_refused() -> None:
    """A man in the middle replaying a victim's proof with its own static key fails."""
    victim, attacker, bob = Identity.generate(), Identity.generate(), Identity.generate()
    pre = preamble(False)
    # The attacker claims the victim's public identity key, but can only sign
    # its own handshake key with its own identity key: the check fails.
    forger = Handshake(attacker, static_key(), initiator=True, prologue=pre)
    forger._identity = _Impostor(victim, attacker)  # type: ignore[assignment]
    other = Handshake(bob, static_key(), initiator=False, prologue=pre)
    other.read(forger.write())
    forger.read(other.write())
    with pytest.raises(ProtocolError, match="did not sign"):
        other.read(forger.write())


class _Impostor:
    """Claims *victim*'s public key but can only sign with *signer*'s."""

    def __init__(self, victim: Identity, signer: Identity) -> None:
        self.public_key = victim.public_key
        self._signer = signer

    def sign(self, data: bytes) -> bytes:
        return self._signer.sign(data)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_handshake_messages_are_protocol_errors(data: bytes) -> None:
    other = Handshake(Identity.generate(), static_key(), initiator=False, prologue=b"x")
    try:
        other.read(data)
        other.write()
        other.read(data)
    except ProtocolError:
        pass


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x00\x00\x00\x50\xa8abcd", "plaintext connection"),
        (b"GET / HT", "does not speak"),
        (b"TP2P\x02\x01\x00\x00", "version 2"),
        (b"TP2P\x01\x07\x00\x00", "unknown mode"),
    ],
)
def test_preamble_reasons(data: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        parse_preamble(data)
    assert parse_preamble(preamble(True)) == 2


# ------------------------------------------------------------ record layer


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 3 * MAX_RECORD_PLAINTEXT + 5))
def test_records_round_trip_any_size(size: int) -> None:
    key = os.urandom(32)
    data = os.urandom(size)
    sealed = bytes(Sealer(key).seal(data))
    assert len(sealed) == Sealer.sealed_size(size)
    opener = Opener(key)
    out = bytearray()
    view = memoryview(sealed)
    while view:
        record = opener.next_record(view)
        assert record
        out += opener.open(view[:record])
        view = view[record:]
    assert bytes(out) == data


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.binary(min_size=1, max_size=200), min_size=1, max_size=4),
    st.data(),
)
def test_any_corruption_of_records_is_a_protocol_error(
    parts: list[bytes], data: st.DataObject
) -> None:
    key = os.urandom(32)
    sealer = Sealer(key)
    stream = bytearray()
    for part in parts:
        stream += sealer.seal(part)
    position = data.draw(st.integers(0, len(stream) - 1))
    flip = data.draw(st.integers(1, 255))
    stream[position] ^= flip
    opener = Opener(key)
    view = memoryview(bytes(stream))
    opened: list[bytes] = []

    def open_all() -> None:
        nonlocal view
        while True:
            size = opener.next_record(view)
            if not size:
                # a changed length made a record longer than the stream: the
                # connection would wait, then time out; here that is an error
                raise ProtocolError("incomplete")
            opened.append(opener.open(view[:size]))
            view = view[size:]

    with pytest.raises(ProtocolError):
        open_all()
    assert opened == parts[: len(opened)]


def test_reordered_or_replayed_records_fail() -> None:
    key = os.urandom(32)
    sealer = Sealer(key)
    first, second = bytes(sealer.seal(b"one")), bytes(sealer.seal(b"two"))
    opener = Opener(key)
    with pytest.raises(ProtocolError, match="record 0"):
        opener.open(memoryview(second))
    opener = Opener(key)
    assert opener.open(memoryview(first)) == b"one"
    with pytest.raises(ProtocolError):
        opener.open(memoryview(first))


def test_an_empty_record_is_refused() -> None:
    key = os.urandom(32)
    sealer = Sealer(key)
    assert len(sealer.seal(b"")) == 0  # nothing is sealed as nothing
    with pytest.raises(ProtocolError, match="no plaintext"):
        Opener(key).next_record(struct.pack(">H", TAG_SIZE) + bytes(TAG_SIZE))


# ------------------------------------------------------------ the secure stream


async def secure_pair(
    a: Identity | None = None, b: Identity | None = None
) -> tuple[SecureStream, SecureStream]:
    left, right = trio.testing.memory_stream_pair()
    a = a or Identity.generate()
    b = b or Identity.generate()
    results: dict[str, SecureStream] = {}

    async def dial() -> None:
        stream, proof = await secure_dial(left, StreamIO(left), a, static_key())
        assert proof.peer_id == b.peer_id
        results["a"] = stream

    async def accept() -> None:
        stream, proof = await secure_accept(right, StreamIO(right), b, static_key())
        assert proof.peer_id == a.peer_id
        results["b"] = stream

    async with trio.open_nursery() as nursery:
        nursery.start_soon(dial)
        nursery.start_soon(accept)
    return results["a"], results["b"]


async def test_secure_stream_carries_bytes_both_ways() -> None:
    with trio.fail_after(10):
        a, b = await secure_pair()
        big = os.urandom(3 * MAX_RECORD_PLAINTEXT + 77)

        async def reader(stream: SecureStream, size: int) -> bytes:
            got = bytearray()
            while len(got) < size:
                chunk = await stream.receive_some(1000)  # smaller than a record
                assert chunk
                got += chunk
            return bytes(got)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.send_all, big)
            assert await reader(b, len(big)) == big
        await b.send_all(b"back")
        assert await a.receive_some(100) == b"back"
        await a.aclose()
        assert await b.receive_some(100) == b""


async def test_bulk_data_grows_the_receive_buffer_once() -> None:
    with trio.fail_after(20):
        a, b = await secure_pair()
        assert len(b._in) == INITIAL_RECEIVE_BUFFER
        b.allow_bulk()  # (until then, it grows to a record's size at most)
        big = os.urandom(40 * MAX_RECORD_PLAINTEXT + 5)
        got = bytearray()
        room = bytearray(300_000)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.send_all, big)
            while len(got) < len(big):
                count = await b.receive_into(memoryview(room))
                got += room[:count]
        assert got == big
        assert len(b._in) == RECEIVE_BUFFER


async def test_dial_refuses_an_unexpected_id() -> None:
    with trio.fail_after(10):
        left, right = trio.testing.memory_stream_pair()
        a, b, expected = Identity.generate(), Identity.generate(), Identity.generate()

        async def accept() -> None:
            with pytest.raises((HandshakeError, trio.BrokenResourceError)):
                await secure_accept(right, StreamIO(right), b, static_key())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(accept)
            with pytest.raises(HandshakeError, match="not " + str(expected.peer_id)):
                await secure_dial(left, StreamIO(left), a, static_key(), expected=expected.peer_id)
            await left.aclose()


async def test_network_key_mismatch_is_named() -> None:
    with trio.fail_after(10):
        left, right = trio.testing.memory_stream_pair()

        async def accept() -> None:
            with pytest.raises(HandshakeError, match="needs a network key"):
                await secure_accept(right, StreamIO(right), Identity.generate(), static_key())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(accept)
            with pytest.raises(HandshakeError, match="has no network key"):
                await secure_dial(
                    left,
                    StreamIO(left),
                    Identity.generate(),
                    static_key(),
                    network_key=os.urandom(32),
                )


def test_record_overhead() -> None:
    assert Sealer.sealed_size(0) == 0
    assert Sealer.sealed_size(1) == 1 + RECORD_HEADER + TAG_SIZE
    assert Sealer.sealed_size(MAX_RECORD_PLAINTEXT + 1) == MAX_RECORD_PLAINTEXT + 1 + 2 * (
        RECORD_HEADER + TAG_SIZE
    )


async def test_one_receive_opens_a_bounded_number_of_records() -> None:
    with trio.fail_after(10):
        a, b = await secure_pair()
        count = 3 * OPEN_AT_ONCE + 5
        for _ in range(count):  # a record each
            await a.send_all(b"x")
        room = bytearray(count)
        sizes: list[int] = []
        total = 0
        while total < count:
            placed = (
                b.receive_nowait(memoryview(room))
                if sizes
                else await b.receive_into(memoryview(room))
            )
            sizes.append(placed)
            total += placed
        assert max(sizes) <= OPEN_AT_ONCE
        assert total == count


async def test_before_bulk_is_allowed_the_buffer_holds_a_record_at_most() -> None:
    with trio.fail_after(10):
        a, b = await secure_pair()
        big = os.urandom(10 * MAX_RECORD_PLAINTEXT)
        got = bytearray()
        room = bytearray(300_000)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.send_all, big)
            while len(got) < len(big):
                count = await b.receive_into(memoryview(room))
                got += room[:count]
                assert len(b._in) <= MAX_RECORD
        assert got == big
