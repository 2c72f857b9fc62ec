"""A node's identity: an Ed25519 key, the peer id derived from it, its fingerprint.

The peer id is a UUID computed from the public key, so nobody can claim an id
without holding its key: the handshake proves the key (see ``_noise``). The
fingerprint is the same key shown as digits that two people can read to each
other to be sure they talk to whom they think.

An identity is ephemeral (a fresh key per messenger, nothing on disk) unless it
is loaded from a file with :meth:`Identity.load_or_create`; a file in use by a
running messenger is locked (see :meth:`Identity.locked`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pathlib
import sys
import uuid
from collections.abc import Iterator
from typing import IO

import attrs
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from ._errors import TrioP2PError

__all__ = [
    "Identity",
    "IdentityError",
    "IdentityInUseError",
    "fingerprint",
    "peer_id_of",
    "verify",
]

#: Size of an Ed25519 public key, and of a signature.
PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64
_ID_DOMAIN = b"trio_p2p peer id v1\x00"
_FINGERPRINT_DOMAIN = b"trio_p2p fingerprint v1\x00"


class IdentityError(TrioP2PError):
    """An identity file cannot be used: unreadable, malformed or unsafe."""


class IdentityInUseError(IdentityError):
    """The identity file is in use by another running node (it is locked)."""


def peer_id_of(public_key: bytes) -> uuid.UUID:
    r"""The peer id of an Ed25519 *public_key* (32 bytes).

    It is the first 16 bytes of ``SHA-256("trio_p2p peer id v1\0" + key)``,
    marked as a version 8 (custom) UUID of the RFC 9562 variant: 122 bits of
    the digest remain.
    """
    digest = bytearray(hashlib.sha256(_ID_DOMAIN + public_key).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x80
    digest[8] = (digest[8] & 0x3F) | 0x80
    return uuid.UUID(bytes=bytes(digest))


def fingerprint(public_key: bytes) -> str:
    r"""The fingerprint of an Ed25519 *public_key*: 20 digits in four groups of five.

    The digits are the first 9 bytes of ``SHA-256("trio_p2p fingerprint v1\0" +
    key)`` as a big-endian number, modulo 10**20 (about 66 bits): two people
    compare it aloud, as ``"04521 99812 30457 11230"``.
    """
    digest = hashlib.sha256(_FINGERPRINT_DOMAIN + public_key).digest()
    digits = f"{int.from_bytes(digest[:9], 'big') % 10**20:020d}"
    return " ".join(digits[i : i + 5] for i in range(0, 20, 5))


def verify(public_key: bytes, signature: bytes, data: bytes) -> bool:
    """Whether *signature* is *public_key*'s Ed25519 signature of *data*.

    Malformed keys and signatures are simply not valid (False).
    """
    if len(public_key) != PUBLIC_KEY_SIZE or len(signature) != SIGNATURE_SIZE:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, data)
    except (InvalidSignature, ValueError):
        return False
    return True


@attrs.frozen(eq=False, repr=False)
class Identity:
    """A node's Ed25519 key pair, and what is derived from it.

    Create one with :meth:`generate` (ephemeral) or :meth:`load_or_create` (kept
    in a file), and pass it as :attr:`Config.identity`.

    Attributes:
        public_key: the raw Ed25519 public key (32 bytes).
        peer_id: the peer id derived from it.
        fingerprint: its fingerprint: 20 digits in four groups of five, for
            people to compare (see :doc:`security`).
        path: the file it was loaded from, or None for an ephemeral identity.
    """

    _private: Ed25519PrivateKey
    public_key: bytes
    peer_id: uuid.UUID
    fingerprint: str
    path: pathlib.Path | None = None

    @classmethod
    def generate(cls) -> Identity:
        """A new, ephemeral identity (nothing is written anywhere)."""
        return cls._of(Ed25519PrivateKey.generate(), None)

    @classmethod
    def _of(cls, private: Ed25519PrivateKey, path: pathlib.Path | None) -> Identity:
        public = private.public_key().public_bytes_raw()
        return cls(private, public, peer_id_of(public), fingerprint(public), path)

    @classmethod
    def load_or_create(cls, path: str | os.PathLike[str]) -> Identity:
        """The identity kept in the file at *path*, created there if there is none.

        A new file holds the private key in PKCS#8 PEM form, readable and
        writable by its owner only (mode 0600, in a folder created with mode
        0700); it is written under a temporary name and linked into place, so a
        concurrent creator never sees half a file and one of two racing creators
        wins.

        Raises:
            IdentityError: the file is not an Ed25519 private key, or (on POSIX)
                others may read or write it.
            OSError: the file or its folder cannot be read or written.
        """
        target = pathlib.Path(path)
        try:
            return cls._load(target)
        except FileNotFoundError:
            pass
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        private = Ed25519PrivateKey.generate()
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(pem)
                out.flush()
                os.fsync(out.fileno())
            try:
                os.link(temporary, target)
            except FileExistsError:  # another process created it meanwhile: theirs wins
                return cls._load(target)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
        return cls._of(private, target)

    @classmethod
    def _load(cls, path: pathlib.Path) -> Identity:
        with open(path, "rb") as file:
            if os.name == "posix":
                mode = os.fstat(file.fileno()).st_mode
                if mode & 0o077:
                    raise IdentityError(
                        f"identity file {path} may be read or changed by others "
                        f"(mode {mode & 0o777:04o}); make it private: chmod 600 {path}"
                    )
            data = file.read(64 * 1024)
        try:
            private = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise IdentityError(f"{path} does not hold a usable private key: {exc}") from None
        if not isinstance(private, Ed25519PrivateKey):
            raise IdentityError(f"{path} holds a {type(private).__name__}, not an Ed25519 key")
        return cls._of(private, path)

    def sign(self, data: bytes) -> bytes:
        """This identity's Ed25519 signature of *data* (64 bytes)."""
        return self._private.sign(data)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the lock of this identity's file while the block runs.

        The lock is an exclusive advisory lock on a ``.lock`` file beside the
        identity file, released when the block ends or the process dies. An
        ephemeral identity has nothing to lock.

        Raises:
            IdentityInUseError: another process (or messenger) holds the lock.
        """
        if self.path is None:
            yield
            return
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        with os.fdopen(fd, "r+") as lock_file:
            if not _try_lock(lock_file):
                holder = lock_file.read(32).strip()
                who = f" (process {holder})" if holder.isdigit() else ""
                raise IdentityInUseError(
                    f"identity file {self.path} is in use by another running node{who}; "
                    "stop that node, or use another identity"
                )
            try:
                lock_file.seek(0)
                lock_file.truncate()
                lock_file.write(str(os.getpid()))
                lock_file.flush()
                yield
            finally:
                lock_file.seek(0)
                lock_file.truncate()
                _unlock(lock_file)

    def __repr__(self) -> str:
        where = f", path={str(self.path)!r}" if self.path is not None else ""
        return f"Identity(peer_id={self.peer_id}, fingerprint={self.fingerprint!r}{where})"


if sys.platform == "win32":  # pragma: no cover - not run here
    import msvcrt

    def _try_lock(file: IO[str]) -> bool:
        try:
            msvcrt.locking(file.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

    def _unlock(file: IO[str]) -> None:
        with contextlib.suppress(OSError):
            msvcrt.locking(file.fileno(), msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def _try_lock(file: IO[str]) -> bool:
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _unlock(file: IO[str]) -> None:
        fcntl.flock(file.fileno(), fcntl.LOCK_UN)
