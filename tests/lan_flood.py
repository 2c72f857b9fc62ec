"""A hostile host for the namespace LAN tests.

    python lan_flood.py SECONDS IDLE_PER_TARGET TARGET...

For SECONDS it broadcasts, from its own address to the LAN's discovery port
(6968), malformed datagrams and spoofed announce beacons (random node ids,
names and ports) as fast as it can, and keeps IDLE_PER_TARGET idle TCP
connections open to each TARGET's port 6969, opening a new one whenever one
is closed. It prints its counts as JSON at the end.
"""

from __future__ import annotations

import json
import os
import random
import socket
import sys
import uuid

import trio

from trio_p2p._codec import encode_beacon
from trio_p2p._messages import Beacon, BeaconKind

BROADCAST = ("10.77.0.255", 6968)


async def beacons(counts: dict[str, int]) -> None:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    while True:
        for _ in range(100):
            if random.random() < 0.5:
                datagram = os.urandom(random.randint(1, 600))
                counts["garbage"] += 1
            else:
                name = f"spoof{random.randrange(10**6)}"
                port = random.randint(1, 65535)
                datagram = encode_beacon(Beacon(BeaconKind.ANNOUNCE, uuid.uuid4(), name, port))
                counts["spoofed"] += 1
            try:
                await sock.sendto(datagram, BROADCAST)
            except OSError:
                counts["send_errors"] += 1
        await trio.sleep(0.02)  # (about 5,000 a second, leaving the CPU to the others)


async def idle_connection(target: str, counts: dict[str, int]) -> None:
    while True:
        try:
            stream = await trio.open_tcp_stream(target, 6969)
        except OSError:
            counts["connect_errors"] += 1
            await trio.sleep(0.1)
            continue
        counts["connections"] += 1
        async with stream:
            while await stream.receive_some(4096):
                pass  # (whatever the node says; it closes the connection in the end)
        await trio.sleep(0.05)


async def main(seconds: float, per_target: int, targets: list[str]) -> None:
    counts = {
        "garbage": 0, "spoofed": 0, "send_errors": 0, "connections": 0, "connect_errors": 0,
    }  # fmt: skip
    with trio.move_on_after(seconds):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(beacons, counts)
            for target in targets:
                for _ in range(per_target):
                    nursery.start_soon(idle_connection, target, counts)
    print(json.dumps(counts), flush=True)


if __name__ == "__main__":
    trio.run(main, float(sys.argv[1]), int(sys.argv[2]), sys.argv[3:])
