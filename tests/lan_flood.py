"""A hostile host for the namespace LAN tests.

    python lan_flood.py SECONDS IDLE_PER_TARGET TARGET...

For SECONDS it broadcasts, from its own address to the LAN's discovery port
(6968), as fast as it can: malformed datagrams, genuinely signed announce
beacons of a crowd of made-up nodes (random names and ports), and forgeries
(a made-up node's key claiming another id), and keeps IDLE_PER_TARGET idle TCP
connections open to each TARGET's port 6969, opening a new one whenever one
is closed. It prints its counts as JSON at the end.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import socket
import sys
import time
import uuid

import trio

from trio_p2p._codec import encode_beacon, sign_beacon
from trio_p2p._identity import Identity
from trio_p2p._messages import Beacon, BeaconKind

BROADCAST = ("10.77.0.255", 6968)


def own_address() -> bytes:
    """This host's address on the LAN (the source of its broadcasts), packed."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        probe.connect(BROADCAST)
        return socket.inet_aton(probe.getsockname()[0])


async def beacons(counts: dict[str, int]) -> None:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    crowd = [Identity.generate() for _ in range(200)]
    sources = (own_address(),)
    counter = itertools.count(time.time_ns() // 1_000_000)
    while True:
        for _ in range(100):
            choice = random.random()
            if choice < 0.4:
                datagram = os.urandom(random.randint(1, 600))
                counts["garbage"] += 1
            else:
                identity = random.choice(crowd)
                forged = choice > 0.8
                beacon = Beacon(
                    BeaconKind.ANNOUNCE,
                    uuid.uuid4() if forged else identity.peer_id,
                    f"spoof{random.randrange(10**6)}",
                    random.randint(1, 65535),
                    counter=next(counter),
                    addresses=sources,
                )
                datagram = encode_beacon(sign_beacon(beacon, identity))
                counts["forged" if forged else "spoofed"] += 1
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
        "garbage": 0, "spoofed": 0, "forged": 0, "send_errors": 0, "connections": 0,
        "connect_errors": 0,
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
