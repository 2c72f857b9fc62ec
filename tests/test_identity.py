"""Identities: derived ids, fingerprints, key files and their locks."""

from __future__ import annotations

import os
import pathlib
import re
import stat
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_p2p._identity import (
    Identity,
    IdentityError,
    IdentityInUseError,
    fingerprint,
    peer_id_of,
    verify,
)


@given(st.binary(min_size=32, max_size=32))
def test_peer_id_is_a_version_8_uuid_of_the_key(key: bytes) -> None:
    peer_id = peer_id_of(key)
    assert peer_id.version == 8
    assert peer_id.variant == "specified in RFC 4122"
    assert peer_id_of(key) == peer_id
    assert peer_id_of(bytes([key[0] ^ 1]) + key[1:]) != peer_id
    assert re.fullmatch(r"\d{5} \d{5} \d{5} \d{5}", fingerprint(key))


def test_identity_signs_and_ids_differ() -> None:
    a, b = Identity.generate(), Identity.generate()
    assert a.peer_id != b.peer_id
    assert a.peer_id == peer_id_of(a.public_key)
    assert a.fingerprint == fingerprint(a.public_key)
    signature = a.sign(b"data")
    assert verify(a.public_key, signature, b"data")
    assert not verify(a.public_key, signature, b"other")
    assert not verify(b.public_key, signature, b"data")
    assert not verify(a.public_key[:5], signature, b"data")
    assert a.path is None
    assert "fingerprint" in repr(a)


def test_load_or_create_keeps_one_private_key(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "keys" / "alice.key"
    first = Identity.load_or_create(path)
    assert first.path == path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    again = Identity.load_or_create(path)
    assert again.peer_id == first.peer_id
    assert [p.name for p in path.parent.iterdir()] == ["alice.key"]


def test_unsafe_or_bad_files_are_refused(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "id.key"
    Identity.load_or_create(path)
    path.chmod(0o644)
    with pytest.raises(IdentityError, match="chmod 600"):
        Identity.load_or_create(path)
    path.write_bytes(b"not a key")
    path.chmod(0o600)
    with pytest.raises(IdentityError, match="usable private key"):
        Identity.load_or_create(path)


def test_a_locked_identity_cannot_be_locked_again(tmp_path: pathlib.Path) -> None:
    identity = Identity.load_or_create(tmp_path / "id.key")
    again = Identity.load_or_create(tmp_path / "id.key")
    with identity.locked():
        with pytest.raises(IdentityInUseError, match=f"process {os.getpid()}"), again.locked():
            pass
        # another process is refused too
        code = (
            "import sys; from trio_p2p._identity import Identity, IdentityInUseError\n"
            "try:\n"
            f"    Identity.load_or_create({str(identity.path)!r}).locked().__enter__()\n"
            "except IdentityInUseError as exc:\n"
            "    print(exc); sys.exit(3)\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 3, done.stderr
        assert "in use by another running node" in done.stdout
    with identity.locked():  # released
        pass
    with Identity.generate().locked():  # nothing to lock
        pass
