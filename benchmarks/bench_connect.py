"""Connection benchmark: handshake time and memory per idle connection, encrypted and plaintext.

* **Connect**: one process, two messengers; ``connect_to_peer((host, port))``
  is timed from the call to its return (TCP connect, the secure channel's
  preamble and Noise handshake, the hellos), then the peer is disconnected and
  the next round starts. Median and 90th percentile of many rounds.
* **Idle connections**: a hub messenger in one process; another process opens
  many messengers that each connect to the hub and then stay idle. The hub's
  RSS growth divided by the number of connections is the memory one idle
  connection costs it.

Both run with the default (encrypted) configuration and with
``insecure_plaintext``, in the same run.

    python benchmarks/bench_connect.py [--rounds N] [--connections M]

Nothing leaves the machine: the nodes use private discovery ports, broadcast
to 127.255.255.255 only, and connect to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import time

import trio
from _common import free_port, peak_rss_mib, report

import trio_p2p


def config(plaintext: bool) -> trio_p2p.Config:
    return trio_p2p.Config(
        discovery_port=free_port(socket.SOCK_DGRAM),
        tcp_port=0,
        broadcast_addresses=("127.255.255.255",),
        insecure_plaintext=plaintext,
        heartbeat_interval=5.0,
        heartbeat_timeout=30.0,
    )


def current_rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return peak_rss_mib()


async def connect_times(rounds: int, plaintext: bool) -> list[float]:
    times: list[float] = []
    async with (
        trio_p2p.open_messenger("dialler", config(plaintext)) as a,
        trio_p2p.open_messenger("listener", config(plaintext)) as b,
        trio.open_nursery() as nursery,
    ):
        ended = trio.Event()

        async def drain(node: trio_p2p.Messenger, watch: bool) -> None:
            nonlocal ended
            async for event in node.events:
                if watch and isinstance(event, trio_p2p.PeerDisconnected):
                    ended.set()

        nursery.start_soon(drain, a, False)
        nursery.start_soon(drain, b, True)
        for _ in range(rounds):
            ended = trio.Event()
            start = time.perf_counter()
            peer = await a.connect_to_peer(("127.0.0.1", b.tcp_port))
            times.append(time.perf_counter() - start)
            await a.disconnect_peer(peer.id)
            await ended.wait()
        nursery.cancel_scope.cancel()
    return times


async def hub(plaintext: bool, expected: int) -> None:
    async with trio_p2p.open_messenger("hub", config(plaintext)) as node:
        await trio.sleep(0.5)
        base = current_rss_mib()
        report(port=node.tcp_port)
        connected = 0
        async for event in node.events:
            if isinstance(event, trio_p2p.PeerConnected):
                connected += 1
                if connected == expected:
                    break
        await trio.sleep(1.0)  # idle a while: heartbeats, nothing else
        report(grown=current_rss_mib() - base)


async def clients(port: int, count: int, plaintext: bool) -> None:
    # (a few handshakes at a time: the hub takes at most 8 at once from one address)
    limit = trio.Semaphore(4)
    async with trio.open_nursery() as nursery:

        async def one(i: int) -> None:
            async with trio_p2p.open_messenger(f"c{i}", config(plaintext)) as node:
                async with limit:
                    await node.connect_to_peer(("127.0.0.1", port))
                await trio.sleep(30)

        for i in range(count):
            nursery.start_soon(one, i)


def idle_cost(connections: int, plaintext: bool) -> float:
    me = [sys.executable, __file__]
    mode = "plain" if plaintext else "secure"
    hub_proc = subprocess.Popen(
        [*me, "hub", mode, str(connections)], stdout=subprocess.PIPE, text=True
    )
    assert hub_proc.stdout is not None
    port = json.loads(hub_proc.stdout.readline())["port"]
    client_proc = subprocess.Popen(
        [*me, "clients", mode, str(connections), str(port)], stdout=subprocess.DEVNULL
    )
    grown = float(json.loads(hub_proc.stdout.readline())["grown"])
    client_proc.kill()
    client_proc.wait()
    hub_proc.wait(timeout=30)
    hub_proc.stdout.close()
    return grown * 1024 / connections


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=300, help="connections timed per mode")
    parser.add_argument("--connections", type=int, default=64, help="idle connections")
    args = parser.parse_args()
    print(f"connect_to_peer over loopback, {args.rounds} rounds (median, 90th percentile):")
    medians = {}
    for plaintext in (False, True):
        times = sorted(trio.run(connect_times, args.rounds, plaintext))
        medians[plaintext] = statistics.median(times)
        label = "plaintext" if plaintext else "encrypted (default)"
        print(
            f"  {label:22} {medians[plaintext] * 1e3:6.2f} ms  "
            f"p90 {times[int(len(times) * 0.9)] * 1e3:6.2f} ms"
        )
    print(f"  encrypted / plaintext: {medians[False] / medians[True]:.2f}x")
    print(f"hub memory per idle connection, {args.connections} connections:")
    for plaintext in (False, True):
        label = "plaintext" if plaintext else "encrypted (default)"
        print(f"  {label:22} {idle_cost(args.connections, plaintext):7.1f} KiB")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "hub":
        trio.run(hub, sys.argv[2] == "plain", int(sys.argv[3]))
    elif len(sys.argv) > 1 and sys.argv[1] == "clients":
        trio.run(clients, int(sys.argv[4]), int(sys.argv[3]), sys.argv[2] == "plain")
    else:
        main()
