"""A host that tries to impersonate another, for the namespace LAN tests.

    python lan_impostor.py SECONDS VICTIM_ID VICTIM_ADDRESS TARGET...

For SECONDS, from its own host on the LAN (10.77.0.0/24), it:

* captures the victim's genuine beacons and broadcasts them again, from its
  own address, and (a raw socket forging the source) from the victim's;
* broadcasts beacons in the victim's id signed with its own key: announces
  (pointing at its own port) and goodbyes, from its own address and, forged,
  from the victim's;
* dials every TARGET's port 6969, completes the secure handshake as itself,
  and sends a hello claiming the victim's id.

It prints its counts, and what the targets answered, as JSON at the end.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import os
import socket
import struct
import sys
import time
import uuid

import trio
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from trio_p2p._codec import (
    FrameDecoder,
    beacon_key_matches,
    decode_beacon,
    encode_beacon,
    encode_frame,
    sign_beacon,
)
from trio_p2p._connection import LocalNode, receive_hello
from trio_p2p._errors import HandshakeError, ProtocolError
from trio_p2p._identity import Identity
from trio_p2p._messages import Beacon, BeaconKind
from trio_p2p._secure import StreamIO, secure_dial

BROADCAST = ("10.77.0.255", 6968)


def spoofed_udp(source: str, payload: bytes) -> bytes:
    """An IPv4 packet with a UDP datagram from *source*:6968 to the broadcast port."""
    udp = struct.pack(">HHHH", 6968, BROADCAST[1], 8 + len(payload), 0) + payload
    header = struct.pack(
        ">BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(udp),
        0,
        0,
        64,
        socket.IPPROTO_UDP,
        0,  # (the kernel fills in the checksum)
        socket.inet_aton(source),
        socket.inet_aton(BROADCAST[0]),
    )
    return header + udp


async def beacons(victim: uuid.UUID, victim_address: str, counts: dict[str, int]) -> None:
    me = Identity.generate()
    counter = itertools.count(time.time_ns() // 1_000_000)
    listen = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listen.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listen.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    listen.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    await listen.bind(("0.0.0.0", 6968))
    raw = trio.socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    own_address = ""

    async def send(data: bytes, *, forged_source: bool, kind: str) -> None:
        if forged_source:
            await raw.sendto(spoofed_udp(victim_address, data), (BROADCAST[0], 0))
        else:
            await listen.sendto(data, BROADCAST)
        counts[kind] += 1

    async def forge(kind: BeaconKind) -> bytes:
        beacon = Beacon(
            kind,
            victim,
            "impostor",
            6969,
            counter=next(counter),
            addresses=(socket.inet_aton(victim_address), socket.inet_aton(own_address)),
        )
        return encode_beacon(sign_beacon(beacon, me))

    with trio.move_on_after(0.5):  # learn this host's address from its own broadcast
        while not own_address:
            await listen.sendto(b"hello?", BROADCAST)
            data, source = await listen.recvfrom(1024)
            if data == b"hello?":
                own_address = source[0]
    assert own_address, "no broadcast came back"
    replayed: set[int] = set()

    async def capture_and_replay() -> None:
        while True:
            data, source = await listen.recvfrom(1024)
            try:
                beacon = decode_beacon(data)
            except ProtocolError:
                continue
            if (
                beacon.node_id == victim
                and beacon_key_matches(beacon)  # the victim's own, not a forgery heard back
                and source[0] == victim_address
                and beacon.counter not in replayed  # (nor its own forged-source replay)
            ):
                replayed.add(beacon.counter)
                counts["captured"] += 1
                await send(data, forged_source=False, kind="replayed_from_own_address")
                await send(data, forged_source=True, kind="replayed_from_victim_address")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(capture_and_replay)
        while True:  # forgeries, 20 a second of each kind and source
            for kind in (BeaconKind.ANNOUNCE, BeaconKind.GOODBYE):
                forged = await forge(kind)
                await send(forged, forged_source=False, kind=f"forged_{kind.name.lower()}")
                await send(forged, forged_source=True, kind=f"forged_{kind.name.lower()}_spoofed")
            await trio.sleep(0.05)


async def claim(victim: uuid.UUID, target: str, answers: dict[str, str]) -> None:
    """Dial *target* and claim the victim's id in the hello (the key is the impostor's)."""
    me = Identity.generate()
    stream = await trio.open_tcp_stream(target, 6969)
    async with stream:
        secure, _ = await secure_dial(
            stream, StreamIO(stream), me, X25519PrivateKey.generate().private_bytes_raw()
        )
        hello = LocalNode(victim, "impostor", os.urandom(16), 6969, 1 << 20).hello()
        await secure.send_all(encode_frame(hello))
        try:
            await receive_hello(secure, FrameDecoder(1 << 20))
        except HandshakeError as exc:
            answers[target] = str(exc)
        else:
            answers[target] = "accepted"


async def main(seconds: float, victim: str, victim_address: str, targets: list[str]) -> None:
    counts: dict[str, int] = {
        "captured": 0,
        "replayed_from_own_address": 0,
        "replayed_from_victim_address": 0,
        "forged_announce": 0,
        "forged_announce_spoofed": 0,
        "forged_goodbye": 0,
        "forged_goodbye_spoofed": 0,
    }
    answers: dict[str, str] = {}
    victim_id = uuid.UUID(victim)
    ipaddress.IPv4Address(victim_address)
    with trio.move_on_after(seconds):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(beacons, victim_id, victim_address, counts)
            await trio.sleep(1)
            for target in targets:
                await claim(victim_id, target, answers)
    print(json.dumps({"counts": counts, "answers": answers}), flush=True)


if __name__ == "__main__":
    trio.run(main, float(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4:])
