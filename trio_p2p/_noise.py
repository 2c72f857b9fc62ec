"""Sans-I/O Noise: the XX handshake that authenticates a peer, and the record layer.

Every connection starts with a preamble each way, then the Noise XX handshake
(``Noise_XX_25519_AESGCM_SHA256``, or ``Noise_XXpsk3_25519_AESGCM_SHA256`` on a
network with a shared key). The handshake itself runs on ``noiseprotocol``
(checked against the official test vectors in the tests); each side's payload
in it proves its identity: its Ed25519 public key and that key's signature of
its Noise static key (the libp2p construction), so the encrypted session is
bound to the peer id derived from that key.

After the handshake both directions are streams of records: a 2-byte
big-endian length, then that many bytes of AES-GCM ciphertext with its 16-byte
tag (at most 65,535 bytes in all, as Noise requires), under the Noise nonce
(4 zero bytes, then the record counter as 8 big-endian bytes) and no associated
data. The record layer is our own, on ``cryptography``'s AES-GCM with
``encrypt_into`` / ``decrypt_into``, so that bulk data is sealed into and
opened into reused buffers.

Nothing here does I/O: :mod:`trio_p2p._secure` drives it over a connection.
See ``docs/security.rst`` for the protocol.
"""

from __future__ import annotations

import struct
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from noise.connection import Keypair, NoiseConnection

from ._errors import ProtocolError
from ._identity import PUBLIC_KEY_SIZE, SIGNATURE_SIZE, Identity, peer_id_of, verify

__all__ = [
    "MAX_RECORD",
    "MAX_RECORD_PLAINTEXT",
    "PREAMBLE_SIZE",
    "RECORD_HEADER",
    "TAG_SIZE",
    "Handshake",
    "Opener",
    "PeerProof",
    "PlaintextPeerError",
    "Sealer",
    "parse_preamble",
    "preamble",
]

#: The Noise protocol names.
PROTOCOL_NAME = b"Noise_XX_25519_AESGCM_SHA256"
PSK_PROTOCOL_NAME = b"Noise_XXpsk3_25519_AESGCM_SHA256"
#: The preamble each side sends first: magic, version, mode, two zero bytes.
PREAMBLE_MAGIC = b"TP2P"
PREAMBLE_VERSION = 1
PREAMBLE_SIZE = 8
MODE_XX = 1
MODE_XX_PSK = 2
#: What the identity key signs: this prefix, then the Noise static public key.
STATIC_KEY_PREFIX = b"trio_p2p noise static key v1\x00"
#: Mixed into the handshake as the Noise prologue, with the dialler's preamble.
PROLOGUE_PREFIX = b"trio_p2p v1\x00"
#: The identity proof in a handshake payload: version byte, key, signature.
PROOF_VERSION = 1
PROOF_SIZE = 1 + PUBLIC_KEY_SIZE + SIGNATURE_SIZE
#: Largest Noise message (handshake or record), and the record layout.
MAX_MESSAGE = 65535
TAG_SIZE = 16
RECORD_HEADER = 2
MAX_RECORD = RECORD_HEADER + MAX_MESSAGE
MAX_RECORD_PLAINTEXT = MAX_MESSAGE - TAG_SIZE
_NONCE_PREFIX = b"\x00\x00\x00\x00"


class PlaintextPeerError(ProtocolError):
    """The peer spoke plaintext trio_p2p where the secure channel was expected."""


def preamble(network_key: bool) -> bytes:
    """The 8 bytes a side sends before the handshake."""
    mode = MODE_XX_PSK if network_key else MODE_XX
    return PREAMBLE_MAGIC + bytes((PREAMBLE_VERSION, mode, 0, 0))


def parse_preamble(data: bytes) -> int:
    """The mode of a peer's preamble (``MODE_XX`` or ``MODE_XX_PSK``).

    Raises:
        ProtocolError: it is not a trio_p2p preamble, with a reason a person can
            act on (a plaintext trio_p2p node, another protocol, a newer version).
    """
    if len(data) != PREAMBLE_SIZE or data[:4] != PREAMBLE_MAGIC:
        if len(data) >= 4 and data[0] == 0 and data[1] == 0:
            raise PlaintextPeerError(
                "a plaintext connection was refused: this node accepts encrypted "
                "connections only (does the other node run with insecure_plaintext?)"
            )
        raise ProtocolError("the peer does not speak the trio_p2p protocol")
    if data[4] != PREAMBLE_VERSION:
        raise ProtocolError(f"the peer speaks version {data[4]} of the secure channel, not 1")
    if data[5] not in (MODE_XX, MODE_XX_PSK) or data[6:] != b"\x00\x00":
        raise ProtocolError("the peer's preamble names an unknown mode")
    return data[5]


class PeerProof:
    """The identity a peer proved in the handshake.

    Attributes:
        public_key: its Ed25519 public key.
        peer_id: the peer id derived from it.
    """

    __slots__ = ("peer_id", "public_key")

    def __init__(self, public_key: bytes) -> None:
        self.public_key = public_key
        self.peer_id = peer_id_of(public_key)


def _proof(identity: Identity, static_public: bytes) -> bytes:
    return (
        bytes((PROOF_VERSION,))
        + identity.public_key
        + identity.sign(STATIC_KEY_PREFIX + static_public)
    )


def _check_proof(payload: bytes, static_public: bytes) -> PeerProof:
    if len(payload) != PROOF_SIZE or payload[0] != PROOF_VERSION:
        raise ProtocolError("the peer's handshake payload is not an identity proof")
    key = payload[1 : 1 + PUBLIC_KEY_SIZE]
    signature = payload[1 + PUBLIC_KEY_SIZE :]
    if not verify(key, signature, STATIC_KEY_PREFIX + static_public):
        raise ProtocolError("the peer's identity key did not sign its handshake key")
    return PeerProof(key)


class Handshake:
    """One side of the Noise XX handshake, sans I/O.

    The dialler (*initiator*) writes message 1, reads 2, writes 3; the other
    side reads 1, writes 2, reads 3. Messages 2 and 3 carry each side's identity
    proof; :attr:`peer` is set once the peer's proof is read and checked.

    Args:
        identity: this node's identity.
        static_key: this node's X25519 static private key (32 raw bytes).
        initiator: whether this side dialled.
        prologue: the dialler's preamble (both sides mix it in, so a changed
            preamble fails the handshake).
        network_key: a shared 32-byte secret (the Noise PSK, mixed in at
            message 3), or None.
    """

    def __init__(
        self,
        identity: Identity,
        static_key: bytes,
        *,
        initiator: bool,
        prologue: bytes,
        network_key: bytes | None = None,
    ) -> None:
        self._identity = identity
        self._static_public = (
            X25519PrivateKey.from_private_bytes(static_key).public_key().public_bytes_raw()
        )
        self.initiator = initiator
        self._psk = network_key is not None
        name = PSK_PROTOCOL_NAME if self._psk else PROTOCOL_NAME
        self._noise: Any = NoiseConnection.from_name(name)
        if initiator:
            self._noise.set_as_initiator()
        else:
            self._noise.set_as_responder()
        self._noise.set_keypair_from_private_bytes(Keypair.STATIC, static_key)
        if network_key is not None:
            if len(network_key) != 32:
                raise ValueError("a network key is 32 bytes")
            self._noise.set_psks(psk=network_key)
        self._noise.set_prologue(PROLOGUE_PREFIX + prologue)
        self._noise.start_handshake()
        self._step = 0
        #: the peer's proven identity, once its proof was read
        self.peer: PeerProof | None = None

    @property
    def finished(self) -> bool:
        """Whether all three messages were exchanged."""
        return self._step == 3

    def write(self) -> bytes:
        """The next handshake message this side sends.

        Raises:
            ProtocolError: the peer's keys make it impossible (a low-order
                ephemeral key, say).
        """
        self._step += 1
        payload = _proof(self._identity, self._static_public) if self._step > 1 else b""
        try:
            return bytes(self._noise.write_message(payload))
        except Exception as exc:  # what the peer sent before breaks this message
            raise ProtocolError(
                f"handshake message {self._step} cannot be made with the peer's keys "
                f"({type(exc).__name__})"
            ) from None

    def read(self, message: bytes) -> None:
        """Take the peer's next handshake message.

        Raises:
            ProtocolError: it is malformed, fails authentication (a wrong network
                key shows here, at message 3), or its identity proof is invalid.
        """
        self._step += 1
        expect_payload = self._step > 1
        # (noiseprotocol drops its handshake state when the handshake ends)
        state = self._noise.noise_protocol.handshake_state
        try:
            payload = bytes(self._noise.read_message(message))
        except Exception as exc:  # noiseprotocol raises several kinds for bad input
            hint = ""
            if self._psk and self._step == 3:
                hint = ": the peer may use another network key"
            raise ProtocolError(
                f"handshake message {self._step} is invalid ({type(exc).__name__}){hint}"
            ) from None
        if not expect_payload:
            if payload:
                raise ProtocolError("handshake message 1 must carry no payload")
            return
        remote = state.rs
        if remote is None:
            raise ProtocolError("the peer sent no static key")
        self.peer = _check_proof(payload, remote.public_bytes)

    @property
    def handshake_hash(self) -> bytes:
        """The Noise handshake hash (it names this session; for tests and logs)."""
        return bytes(self._noise.get_handshake_hash())

    def ciphers(self) -> tuple[Sealer, Opener]:
        """The record sealer (this side to the peer) and opener (the peer to this side)."""
        if not self.finished:
            raise RuntimeError("the handshake is not finished")
        protocol = self._noise.noise_protocol
        return (
            Sealer(bytes(protocol.cipher_state_encrypt.k)),
            Opener(bytes(protocol.cipher_state_decrypt.k)),
        )


_pack_header = struct.Struct(">H").pack_into
_pack_counter = struct.Struct(">Q").pack_into


class Sealer:
    """Seals plaintext into records, numbering them (sans I/O).

    Args:
        key: the 32-byte AES-GCM key of this direction.
    """

    __slots__ = ("_buffer", "_encrypt_into", "_nonce", "_view", "counter")

    def __init__(self, key: bytes) -> None:
        self._encrypt_into = AESGCM(key).encrypt_into
        self._nonce = bytearray(12)
        #: the nonce of the next record
        self.counter = 0
        self._buffer = bytearray(1024)
        self._view = memoryview(self._buffer)

    @staticmethod
    def sealed_size(size: int) -> int:
        """How many bytes *size* bytes of plaintext take as records."""
        records = -(-size // MAX_RECORD_PLAINTEXT) if size else 0
        return size + records * (RECORD_HEADER + TAG_SIZE)

    def seal(self, data: bytes | bytearray | memoryview) -> memoryview:
        """*data* as records, in a buffer reused by the next call.

        The returned view stays valid until the next call of :meth:`seal`.
        """
        size = len(data)
        if not size:
            return self._view[:0]
        total = size + RECORD_HEADER + TAG_SIZE
        if size > MAX_RECORD_PLAINTEXT:
            total = self.sealed_size(size)
        if len(self._buffer) < total:
            self._buffer = bytearray(max(total, 2 * len(self._buffer)))
            self._view = memoryview(self._buffer)
        out = self._view
        nonce = self._nonce
        encrypt_into = self._encrypt_into
        if size <= MAX_RECORD_PLAINTEXT:  # one record (every small write)
            _pack_header(out, 0, size + TAG_SIZE)
            _pack_counter(nonce, 4, self.counter)
            self.counter += 1
            encrypt_into(nonce, data, None, out[RECORD_HEADER:total])
            return out[:total]
        view = memoryview(data)
        position = 0
        for start in range(0, size, MAX_RECORD_PLAINTEXT):
            piece = view[start : start + MAX_RECORD_PLAINTEXT]
            length = len(piece) + TAG_SIZE
            _pack_header(out, position, length)
            _pack_counter(nonce, 4, self.counter)
            self.counter += 1
            end = position + RECORD_HEADER + length
            encrypt_into(nonce, piece, None, out[position + RECORD_HEADER : end])
            position = end
        return out[:position]


class Opener:
    """Opens records into plaintext, checking their order and integrity (sans I/O).

    Args:
        key: the 32-byte AES-GCM key of this direction.
    """

    __slots__ = ("_decrypt_into", "_nonce", "counter")

    def __init__(self, key: bytes) -> None:
        self._decrypt_into = AESGCM(key).decrypt_into
        self._nonce = bytearray(12)
        #: the nonce of the next record
        self.counter = 0

    @staticmethod
    def next_record(data: bytes | bytearray | memoryview, start: int = 0, end: int = -1) -> int:
        """The size of the complete record at *start* of *data*, or 0 if it is incomplete.

        Only ``data[start:end]`` is looked at (*end* -1: to the end of *data*).

        Raises:
            ProtocolError: the record is too short to hold a tag and a byte
                (trio_p2p never seals an empty record: a stream of them would
                keep a receiver busy for nothing).
        """
        if end < 0:
            end = len(data)
        if end - start < RECORD_HEADER:
            return 0
        length = (data[start] << 8) | data[start + 1]
        if length <= TAG_SIZE:
            raise ProtocolError(f"a record of {length} bytes holds no plaintext")
        size = RECORD_HEADER + length
        return size if end - start >= size else 0

    def open_into(self, record: memoryview, out: memoryview) -> int:
        """Open one complete *record* into *out*; return the plaintext size.

        *out* must have room for the plaintext (the record size less 18 bytes).

        Raises:
            ProtocolError: the record fails authentication (changed, reordered,
                replayed, or from another session).
        """
        size = len(record) - RECORD_HEADER - TAG_SIZE
        nonce = self._nonce
        _pack_counter(nonce, 4, self.counter)
        try:
            self._decrypt_into(nonce, record[RECORD_HEADER:], None, out[:size])
        except InvalidTag:
            raise ProtocolError(f"record {self.counter} failed authentication") from None
        self.counter += 1
        return size

    def open(self, record: memoryview) -> bytes:
        """Open one complete *record*; return its plaintext (see :meth:`open_into`)."""
        out = bytearray(len(record) - RECORD_HEADER - TAG_SIZE)
        self.open_into(record, memoryview(out))
        return bytes(out)
