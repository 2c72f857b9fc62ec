"""Message benchmark: trio_p2p against a raw Trio socket and pyzmq, in one run.

Every measurement runs a sender and a receiver in two separate processes over
loopback. Each message is a 100-byte text; the baselines do the same
per-message work as trio_p2p's wire format (a uuid4, a timestamp and a CBOR
encode per message on the sender, a decode on the receiver). Results are
printed as rates and as ratios to the baselines measured in the same run.
trio_p2p runs twice: as it is (encrypted, the default) and in plaintext mode
(``Config.insecure_plaintext``), to show what the secure channel costs.

    python benchmarks/bench_messages.py [--count N] [--round-trips K]

Nothing leaves the machine: trio_p2p nodes use a private discovery port and
broadcast to 127.255.255.255 only.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import time
import uuid

import attrs
import cbor2
import trio
from _common import free_port, peak_rss_mib, report

import trio_p2p

TEXT = "x" * 100
HEADER = struct.Struct(">I")
#: set in the processes of the plaintext cases
PLAINTEXT = False


def p2p_config(window: int = 4096) -> trio_p2p.Config:
    return trio_p2p.Config(
        discovery_port=free_port(socket.SOCK_DGRAM),
        tcp_port=0,
        broadcast_addresses=("127.255.255.255",),
        send_window=window,
        insecure_plaintext=PLAINTEXT,
    )


def encode_like_wire(seq: int) -> bytes:
    body = cbor2.dumps({"q": seq, "i": uuid.uuid4().bytes, "ts": time.time(), "x": TEXT})
    return HEADER.pack(len(body)) + body


# ------------------------------------------------------------------ roles


async def p2p_receiver(count: int, style: str) -> None:
    async with trio_p2p.open_messenger("receiver", p2p_config()) as node:
        report(port=node.tcp_port)
        received = 0
        events = node.events
        if style == "drain":
            # what a high-rate consumer does: take everything ready without a
            # checkpoint per event, await only when the channel is empty
            while received < count:
                try:
                    event = events.receive_nowait()
                except trio.WouldBlock:
                    event = await events.receive()
                if isinstance(event, trio_p2p.MessageReceived):
                    received += 1
        else:
            async for event in events:
                if isinstance(event, trio_p2p.MessageReceived):
                    if style == "echo":
                        await node.send_text_message(event.message.sender_id, TEXT)
                    received += 1
                    if received == count:
                        break
        report(t_end=time.monotonic(), rss=peak_rss_mib())
        await node.flush()


def current_rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


async def never_acknowledging_peer(seconds: float) -> None:
    """A peer that reads everything and acknowledges nothing: all sent stays in flight.

    It speaks just enough of the protocol for that: its hello, then a ping
    every second (so the sender's heartbeat does not time it out).
    """
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from trio_p2p._codec import encode_frame
    from trio_p2p._connection import LocalNode
    from trio_p2p._messages import Ping
    from trio_p2p._secure import StreamIO, secure_accept

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    report(port=port)
    raw = await listeners[0].accept()
    identity = trio_p2p.Identity.generate()
    stream, _ = await secure_accept(
        raw, StreamIO(raw), identity, X25519PrivateKey.generate().private_bytes_raw()
    )
    hello = LocalNode(identity.peer_id, "receiver", os.urandom(16), port, 2**21).hello()
    await stream.send_all(encode_frame(hello))

    async def ping() -> None:
        while True:
            await trio.sleep(1)
            await stream.send_all(encode_frame(Ping()))

    with trio.move_on_after(seconds):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ping)
            while await stream.receive_some(1 << 16):
                pass
            nursery.cancel_scope.cancel()


async def p2p_in_flight(port: int, count: int) -> None:
    """RSS growth of a sender with *count* messages unacknowledged (all written)."""
    config = attrs.evolve(p2p_config(), send_window=count)
    async with trio_p2p.open_messenger("sender", config) as node:
        peer = await node.connect_to_peer(("127.0.0.1", port))
        await trio.sleep(0.2)
        before = current_rss_mib()
        with trio.move_on_after(5):  # a bound, in case the peer stops reading
            for _ in range(count):
                try:
                    node.send_text_message_nowait(peer.id, TEXT)
                except trio.WouldBlock:  # 64 KiB queued: let the writer take it
                    await node.send_text_message(peer.id, TEXT)
        await trio.sleep(0.5)
        after = current_rss_mib()
        stats = node.statistics()
        report(
            t_start=0,
            rss=after,
            rtt_us=0,
            grown=after - before,
            in_flight=stats.messages_sent - stats.messages_acknowledged,
        )


async def p2p_sender(port: int, count: int, mode: str) -> None:
    async with trio_p2p.open_messenger("sender", p2p_config()) as node:
        peer = await node.connect_to_peer(("127.0.0.1", port))
        rtts: list[float] = []
        t_start = time.monotonic()
        if mode == "nowait":
            send_nowait = node.send_text_message_nowait
            for _ in range(count):
                try:
                    send_nowait(peer.id, TEXT)
                except trio.WouldBlock:
                    await node.send_text_message(peer.id, TEXT)
        elif mode == "await":
            for _ in range(count):
                await node.send_text_message(peer.id, TEXT)
        else:  # ping-pong
            events = node.events
            for _ in range(count):
                t0 = time.perf_counter()
                await node.send_text_message(peer.id, TEXT)
                while not isinstance(await events.receive(), trio_p2p.MessageReceived):
                    pass
                rtts.append(time.perf_counter() - t0)
        await node.flush()
        report(
            t_start=t_start, rss=peak_rss_mib(), rtt_us=statistics.median(rtts) * 1e6 if rtts else 0
        )


async def raw_receiver(count: int, echo: bool) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    report(port=listeners[0].socket.getsockname()[1])
    stream = await listeners[0].accept()
    stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buffer = bytearray()
    received = 0
    while received < count:
        data = await stream.receive_some(256 * 1024)
        if not data:
            break
        buffer += data
        position = 0
        while len(buffer) - position >= 4:
            (size,) = HEADER.unpack_from(buffer, position)
            if len(buffer) - position - 4 < size:
                break
            item = cbor2.loads(bytes(buffer[position + 4 : position + 4 + size]))
            assert len(item["x"]) == 100
            position += 4 + size
            received += 1
            if echo:
                await stream.send_all(encode_like_wire(received))
        del buffer[:position]
    report(t_end=time.monotonic(), rss=peak_rss_mib())
    await stream.aclose()


async def raw_sender(port: int, count: int, mode: str) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    t_start = time.monotonic()
    rtts: list[float] = []
    if mode == "pingpong":
        for i in range(count):
            t0 = time.perf_counter()
            await stream.send_all(encode_like_wire(i))
            buffer = b""
            while len(buffer) < 4 or len(buffer) < 4 + HEADER.unpack_from(buffer)[0]:
                buffer += await stream.receive_some(65536)
            cbor2.loads(buffer[4:])
            rtts.append(time.perf_counter() - t0)
    else:
        out = bytearray()
        for i in range(count):
            out += encode_like_wire(i)
            if len(out) >= 256 * 1024:
                await stream.send_all(out)
                out = bytearray()
        await stream.send_all(out)
        await stream.receive_some(1)  # the receiver closes when it has everything
    report(t_start=t_start, rss=peak_rss_mib(), rtt_us=statistics.median(rtts) * 1e6 if rtts else 0)


def zmq_receiver(count: int, echo: bool) -> None:
    import zmq

    context = zmq.Context()
    sock = context.socket(zmq.REP if echo else zmq.PULL)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    report(port=port)
    for _ in range(count):
        item = cbor2.loads(sock.recv())
        assert len(item["x"]) == 100
        if echo:
            sock.send(encode_like_wire(0)[4:])
    report(t_end=time.monotonic(), rss=peak_rss_mib())
    sock.close(linger=1000)
    context.term()


def zmq_sender(port: int, count: int, mode: str) -> None:
    import zmq

    context = zmq.Context()
    sock = context.socket(zmq.REQ if mode == "pingpong" else zmq.PUSH)
    sock.connect(f"tcp://127.0.0.1:{port}")
    rtts: list[float] = []
    t_start = time.monotonic()
    for i in range(count):
        if mode == "pingpong":
            t0 = time.perf_counter()
            sock.send(encode_like_wire(i)[4:])
            cbor2.loads(sock.recv())
            rtts.append(time.perf_counter() - t0)
        else:
            sock.send(encode_like_wire(i)[4:])
    report(t_start=t_start, rss=peak_rss_mib(), rtt_us=statistics.median(rtts) * 1e6 if rtts else 0)
    sock.close(linger=-1)
    context.term()


def run_role(role: str, args: list[str]) -> None:
    global PLAINTEXT
    kind, side = role.split("-")
    if kind == "plain":
        PLAINTEXT, kind = True, "p2p"
    if kind == "p2p" and side == "noack":
        trio.run(never_acknowledging_peer, float(args[0]))
    elif kind == "p2p" and side == "inflight":
        trio.run(p2p_in_flight, int(args[0]), int(args[1]))
    elif side == "receiver":
        count, style = int(args[0]), args[1]
        if kind == "zmq":
            zmq_receiver(count, style == "echo")
        elif kind == "raw":
            trio.run(raw_receiver, count, style == "echo")
        else:
            trio.run(p2p_receiver, count, style)
    else:
        port, count, mode = int(args[0]), int(args[1]), args[2]
        if kind == "zmq":
            zmq_sender(port, count, mode)
        else:
            trio.run({"p2p": p2p_sender, "raw": raw_sender}[kind], port, count, mode)


# ------------------------------------------------------------------ driver


def measure(kind: str, mode: str, count: int) -> dict[str, float]:
    """Run one sender/receiver pair; return its rate and round trip."""
    style = "echo" if mode == "pingpong" else "drain" if mode == "drain" else "iter"
    if mode == "drain":
        mode = "nowait"
    me = [sys.executable, os.path.abspath(__file__)]
    receiver = subprocess.Popen(
        [*me, f"{kind}-receiver", str(count), style], stdout=subprocess.PIPE, text=True
    )
    assert receiver.stdout is not None
    port = json.loads(receiver.stdout.readline())["port"]
    sender = subprocess.run(
        [*me, f"{kind}-sender", str(port), str(count), mode],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    sent = json.loads(sender.stdout.splitlines()[-1])
    done = json.loads(receiver.stdout.readline())
    receiver.wait(timeout=30)
    receiver.stdout.close()
    seconds = done["t_end"] - sent["t_start"]
    return {
        "rate": count / seconds,
        "rtt_us": sent["rtt_us"],
        "sender_rss": sent["rss"],
        "receiver_rss": done["rss"],
    }


def measure_in_flight(count: int) -> dict[str, float]:
    me = [sys.executable, os.path.abspath(__file__)]
    receiver = subprocess.Popen([*me, "p2p-noack", "10"], stdout=subprocess.PIPE, text=True)
    assert receiver.stdout is not None
    port = json.loads(receiver.stdout.readline())["port"]
    sender = subprocess.run(
        [*me, "p2p-inflight", str(port), str(count)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    receiver.kill()
    receiver.wait()
    receiver.stdout.close()
    result: dict[str, float] = json.loads(sender.stdout.splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200_000, help="messages per throughput run")
    parser.add_argument("--round-trips", type=int, default=5_000)
    parser.add_argument("--repeat", type=int, default=3, help="runs per case; the best is kept")
    args = parser.parse_args()
    cases = [
        ("p2p", "nowait", args.count),
        ("plain", "nowait", args.count),
        ("p2p", "drain", args.count),
        ("plain", "drain", args.count),
        ("p2p", "await", args.count),
        ("plain", "await", args.count),
        ("raw", "stream", args.count),
        ("zmq", "stream", args.count),
        ("p2p", "pingpong", args.round_trips),
        ("plain", "pingpong", args.round_trips),
        ("raw", "pingpong", args.round_trips),
        ("zmq", "pingpong", args.round_trips),
    ]
    # Rounds of one run per case, so that a slow spell of the machine hits
    # every case alike (the ratios compare cases measured minutes apart).
    runs: dict[tuple[str, str], list[dict[str, float]]] = {(k, m): [] for k, m, _ in cases}
    for _ in range(args.repeat):
        for kind, mode, count in cases:
            runs[kind, mode].append(measure(kind, mode, count))
    results: dict[tuple[str, str], dict[str, float]] = {}
    for (kind, mode), found in runs.items():
        if mode == "pingpong":
            results[kind, mode] = min(found, key=lambda r: r["rtt_us"])
        else:
            results[kind, mode] = max(found, key=lambda r: r["rate"])
    zmq_rate = results["zmq", "stream"]["rate"]
    raw_rate = results["raw", "stream"]["rate"]
    print(
        f"one-way, 100-byte texts, {args.count:,} messages, "
        f"best of {args.repeat} interleaved rounds:"
    )
    for kind, mode, label in [
        ("p2p", "nowait", "trio_p2p nowait -> async for"),
        ("plain", "nowait", "  the same, plaintext"),
        ("p2p", "drain", "trio_p2p nowait -> receive_nowait"),
        ("plain", "drain", "  the same, plaintext"),
        ("p2p", "await", "trio_p2p await send -> async for"),
        ("plain", "await", "  the same, plaintext"),
        ("raw", "stream", "raw Trio socket, same framing"),
        ("zmq", "stream", "pyzmq PUSH/PULL"),
    ]:
        r = results[kind, mode]
        versus = ""
        if kind == "p2p":
            versus = f"  {r['rate'] / results['plain', mode]['rate']:5.2f}x plaintext"
        print(
            f"  {label:36} {r['rate']:>10,.0f} msg/s  {r['rate'] / zmq_rate:5.2f}x pyzmq  "
            f"{r['rate'] / raw_rate:5.2f}x raw  (sender peak RSS {r['sender_rss']:.0f} MiB)"
            f"{versus}"
        )
    held = measure_in_flight(10_000)
    print(
        f"in flight: {held['in_flight']:,.0f} messages unacknowledged (window 10,000, the "
        f"receiver reads them and never acknowledges): sender RSS grew {held['grown']:.1f} MiB "
        f"({held['grown'] * 2**20 / max(held['in_flight'], 1):,.0f} bytes a message)"
    )
    raw_rtt = results["raw", "pingpong"]["rtt_us"]
    print(f"round trip, median of {args.round_trips:,}, best of {args.repeat}:")
    for kind, label in [
        ("p2p", "trio_p2p ping-pong"),
        ("plain", "  the same, plaintext"),
        ("raw", "raw Trio socket echo"),
        ("zmq", "pyzmq REQ/REP"),
    ]:
        r = results[kind, "pingpong"]
        versus = ""
        if kind == "p2p":
            versus = f"  {r['rtt_us'] / results['plain', 'pingpong']['rtt_us']:5.2f}x plaintext"
        print(f"  {label:36} {r['rtt_us']:>8.0f} us  {r['rtt_us'] / raw_rtt:5.2f}x raw{versus}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and "-" in sys.argv[1] and not sys.argv[1].startswith("-"):
        run_role(sys.argv[1], sys.argv[2:])
    else:
        main()
