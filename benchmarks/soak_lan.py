"""Soak: peers in a full mesh on the namespace test LAN, sending for minutes.

    python benchmarks/soak_lan.py [--peers 20] [--minutes 5] [--rate 10000]

It builds the LAN of ``tests/netlan.py`` (one network namespace per peer, a
bridge in its own namespace: nothing leaves the machine, nor even its own
namespace), runs ``tests/lan_agent.py`` on every host with default settings,
connects them all, and has every peer send texts to every other, at about
RATE messages a second over the whole LAN. Every 10 seconds it prints the
messages received per second, the median and 99th percentile latency (from
each message's timestamp to its arrival in the receiver's event channel), and
the largest current and peak RSS of the agents. At the end it flushes every
pair: every message sent is acknowledged (and a message out of order or
repeated would have been a protocol error, ending its connection).

Needs root and iproute2; not part of the test suite.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import sys
import tempfile
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.netlan import Agent, NetLan

#: texts per send command (one command per pair at a time)
BATCH = 20
REPORT_EVERY = 10.0


async def pair_sender(
    agent: Agent, other: Agent, interval: float, stop: trio.Event, sent: dict[str, int]
) -> None:
    key = f"{agent.name}>{other.name}"
    while not stop.is_set():
        start = trio.current_time()
        await agent.command(
            "send",
            peer=other.node_id,
            prefix=f"{key} {sent[key]}+",
            count=BATCH,
            within=120,
        )
        sent[key] += BATCH
        await trio.sleep_until(start + interval)


async def report(agents: list[Agent], since: float) -> None:
    counts, p50s, p99s, rss = 0, [], [], []
    for agent in agents:
        latency = await agent.command("latency")
        counts += latency["count"]
        if latency["count"]:
            p50s.append(latency["p50_ms"])
            p99s.append(latency["p99_ms"])
            rss.append(latency["rss_mib"])
    peaks = [(await agent.command("stats"))["peak_rss_mib"] for agent in agents]
    elapsed = trio.current_time() - since
    print(
        f"{counts / elapsed:9,.0f} msg/s  p50 {max(p50s, default=0):6.1f} ms (worst agent)"
        f"  p99 {max(p99s, default=0):7.1f} ms (worst agent)"
        f"  RSS now {max(rss, default=0):5.1f} MiB  peak {max(peaks):5.1f} MiB",
        flush=True,
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", type=int, default=20)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=10_000.0, help="messages/s in all")
    args = parser.parse_args()
    if os.geteuid() != 0 or shutil.which("ip") is None:
        raise SystemExit("needs root and ip (iproute2) to build network namespaces")
    pairs = args.peers * (args.peers - 1)
    interval = BATCH * pairs / args.rate
    with tempfile.TemporaryDirectory() as work, NetLan(args.peers) as lan:
        async with trio.open_nursery() as nursery:
            agents: list[Agent] = []
            for index in range(args.peers):
                folder = Path(work) / f"host{index}"
                folder.mkdir()
                agents.append(
                    await Agent.start(nursery, lan, index, f"host{index}", folder, "quiet=1")
                )
            for i, j in itertools.combinations(range(args.peers), 2):
                await agents[i].wait_event(
                    lambda e, o=agents[j]: (
                        e["event"] == "PeerDiscovered" and e["peer"] == o.node_id
                    ),
                    within=30,
                )
                await agents[i].command("connect", peer=agents[j].node_id)
            print(
                f"{args.peers} peers, {pairs} pairs, {args.minutes:g} min at about "
                f"{args.rate:,.0f} msg/s ({BATCH} texts per pair every {interval:.2f} s)",
                flush=True,
            )
            stop = trio.Event()
            sent = {f"{a.name}>{o.name}": 0 for a, o in itertools.permutations(agents, 2)}
            async with trio.open_nursery() as senders:
                for agent, other in itertools.permutations(agents, 2):
                    senders.start_soon(pair_sender, agent, other, interval, stop, sent)
                end = trio.current_time() + 60 * args.minutes
                while trio.current_time() < end:
                    since = trio.current_time()
                    await trio.sleep(REPORT_EVERY)
                    await report(agents, since)
                stop.set()
            for agent, other in itertools.permutations(agents, 2):
                await agent.command("flush", peer=other.node_id, within=120)
            total = sum(sent.values())
            print(f"{total:,} messages sent and acknowledged", flush=True)
            for agent in agents:
                await agent.stop()
            nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main)
