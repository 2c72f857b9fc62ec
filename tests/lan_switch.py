"""A userspace Ethernet switch that loses, delays and jitters frames.

Run inside the test LAN's switch namespace (see netlan.py) instead of the
kernel bridge, whose kernel here has no netem:

    python lan_switch.py LOSS DELAY JITTER PORT...

It opens one AF_PACKET socket per port (a veth end) and forwards every frame
a port receives: to the port that the destination MAC address was last seen
on, or to every other port for broadcast, multicast and unknown addresses.
Each frame is dropped with probability LOSS, else sent DELAY ± JITTER seconds
later (uniformly; frames may be reordered, as on a real network). It prints
``ready`` once its sockets are open, and counters when it is stopped (SIGTERM).
"""

from __future__ import annotations

import array
import json
import random
import signal
import socket
import struct
import sys

import trio

ETH_P_ALL = 0x0003
#: a frame carries at most the MTU (1500) plus its 14-byte header
FRAME = 1514 + 64


def _ones_complement_sum(data: bytes | bytearray | memoryview) -> int:
    """The 16-bit one's complement sum of *data*, as RFC 1071 (little-endian words)."""
    if len(data) % 2:
        data = bytes(data) + b"\0"
    total = sum(array.array("H", bytes(data)))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def fill_checksum(frame: bytearray) -> None:
    """Compute the TCP or UDP checksum of an IPv4 frame.

    Frames a host sends on its veth may leave the checksum to the "hardware"
    (checksum offload); a frame forwarded as it is would then be dropped by the
    receiver. So the switch computes it, for every TCP and UDP frame.
    """
    if frame[12:14] != b"\x08\x00":
        return
    header = (frame[14] & 0x0F) * 4
    protocol = frame[23]
    total_length = struct.unpack_from("!H", frame, 16)[0]
    start, end = 14 + header, 14 + total_length
    if protocol == 6:
        where = start + 16
    elif protocol == 17:
        where = start + 6
    else:
        return
    if end > len(frame) or where + 2 > end:
        return
    frame[where : where + 2] = b"\0\0"
    pseudo = frame[26:34] + struct.pack("!BBH", 0, protocol, end - start)
    total = _ones_complement_sum(pseudo) + _ones_complement_sum(memoryview(frame)[start:end])
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    checksum = ~total & 0xFFFF
    if protocol == 17 and checksum == 0:
        checksum = 0xFFFF
    frame[where : where + 2] = struct.pack("<H", checksum)


class Switch:
    def __init__(self, ports: list[str], loss: float, delay: float, jitter: float) -> None:
        self.loss, self.delay, self.jitter = loss, delay, jitter
        self.sockets: dict[str, socket.socket] = {}
        for port in ports:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            sock.bind((port, 0))
            sock.setblocking(False)
            self.sockets[port] = sock
        self.where: dict[bytes, str] = {}
        self.counts = {"received": 0, "dropped": 0, "sent": 0, "too_big": 0}

    async def receive(self, nursery: trio.Nursery, port: str) -> None:
        sock = self.sockets[port]
        while True:
            await trio.lowlevel.wait_readable(sock)
            while True:
                try:
                    data, address = sock.recvfrom(65536)
                except BlockingIOError:
                    break
                if address[2] == socket.PACKET_OUTGOING:
                    continue  # (what this switch sent on the port)
                self.counts["received"] += 1
                if len(data) > FRAME:
                    self.counts["too_big"] += 1  # (offloads must be off on the hosts)
                    continue
                frame = bytearray(data)
                fill_checksum(frame)
                self.where[bytes(frame[6:12])] = port
                destination = bytes(frame[0:6])
                out = self.where.get(destination) if not destination[0] & 1 else None
                targets = [out] if out is not None else [p for p in self.sockets if p != port]
                for target in targets:
                    if target == port:
                        continue
                    if random.random() < self.loss:
                        self.counts["dropped"] += 1
                        continue
                    wait = self.delay + random.uniform(-self.jitter, self.jitter)
                    nursery.start_soon(self.send_later, target, frame, max(0.0, wait))

    async def send_later(self, port: str, frame: bytearray, wait: float) -> None:
        await trio.sleep(wait)
        try:
            self.sockets[port].send(frame)
        except OSError:  # (a port whose host link is down)
            self.counts["dropped"] += 1
        else:
            self.counts["sent"] += 1


async def main(loss: float, delay: float, jitter: float, ports: list[str]) -> None:
    switch = Switch(ports, loss, delay, jitter)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            for port in ports:
                nursery.start_soon(switch.receive, nursery, port)
            print("ready", flush=True)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break
    print(json.dumps(switch.counts), flush=True)


if __name__ == "__main__":
    trio.run(main, float(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), sys.argv[4:])
