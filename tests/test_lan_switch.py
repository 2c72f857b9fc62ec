"""The userspace switch's checksum filling (no namespaces needed)."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from .lan_switch import fill_checksum


def reference_checksum(data: bytes) -> int:
    """RFC 1071, on big-endian 16-bit words, the plain way."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4_frame(protocol: int, l4: bytes) -> bytearray:
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, 0, 64, protocol, 0,
        bytes([10, 77, 0, 1]), bytes([10, 77, 0, 2]),
    )  # fmt: skip
    return bytearray(b"\xff" * 6 + b"\x02" * 6 + b"\x08\x00" + ip + l4)


@given(st.sampled_from([6, 17]), st.binary(max_size=1400), st.binary(min_size=2, max_size=2))
def test_the_switch_fills_in_tcp_and_udp_checksums(
    protocol: int, payload: bytes, stale: bytes
) -> None:
    if protocol == 17:
        header = struct.pack("!HHH", 5000, 6969, 8 + len(payload)) + stale
        where = 6
    else:
        header = struct.pack("!HHIIBBH", 5000, 6969, 1, 2, 0x50, 0x18, 1000) + stale + b"\0\0"
        where = 16
    l4 = header + payload
    frame = ipv4_frame(protocol, l4)
    fill_checksum(frame)
    got = struct.unpack_from("!H", frame, 34 + where)[0]
    zeroed = l4[:where] + b"\0\0" + l4[where + 2 :]
    pseudo = bytes([10, 77, 0, 1, 10, 77, 0, 2, 0, protocol]) + struct.pack("!H", len(l4))
    expected = reference_checksum(pseudo + zeroed)
    if protocol == 17 and expected == 0:
        expected = 0xFFFF
    assert got == expected
    # and the receiver's check: the sum over the filled segment is all ones
    assert reference_checksum(pseudo + bytes(frame[34:])) == 0


def test_other_frames_are_left_alone() -> None:
    arp = bytearray(b"\xff" * 6 + b"\x02" * 6 + b"\x08\x06" + bytes(28))
    before = bytes(arp)
    fill_checksum(arp)
    assert arp == before
