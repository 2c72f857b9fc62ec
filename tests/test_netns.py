"""Default discovery, proven where it cannot reach a real network: two network
namespaces joined by a veth pair, each running a messenger with every setting
at its default (ports 6968/6969, broadcast addresses found by ifaddr)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import trio

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None,
    reason="needs root and iproute2 to create network namespaces",
)

AGENT = textwrap.dedent(
    """
    import json, sys, trio, trio_p2p

    def say(**fields):
        print(json.dumps(fields), flush=True)

    async def main(name):
        async with trio_p2p.open_messenger(name) as m:  # every setting at its default
            say(ready=str(m.peer_id), port=m.tcp_port, targets=list(m.broadcast_targets))
            async for event in m.events:
                if isinstance(event, trio_p2p.PeerDiscovered):
                    say(discovered=event.peer.name, address=event.peer.address)
                    if name == "A":
                        await m.connect_to_peer(event.peer)
                elif isinstance(event, trio_p2p.PeerConnected):
                    say(connected=event.peer.name)
                    if name == "A":
                        await m.send_text_message(event.peer.id, "hello over the veth")
                        await m.flush()
                        say(flushed=True)
                elif isinstance(event, trio_p2p.MessageReceived):
                    say(received=event.message.content.text)

    trio.run(main, sys.argv[1])
    """
)


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def two_hosts() -> Iterator[list[str]]:
    prefix = f"tp2p{os.getpid() % 100000}{uuid.uuid4().hex[:4]}"
    names = [f"{prefix}a", f"{prefix}b"]
    try:
        for ns in names:
            ip("netns", "add", ns)
        ip(
            "link",
            "add",
            f"{prefix}x",
            "netns",
            names[0],
            "type",
            "veth",
            "peer",
            "name",
            f"{prefix}y",
            "netns",
            names[1],
        )
        for ns, dev, address in (
            (names[0], f"{prefix}x", "10.77.0.1/24"),
            (names[1], f"{prefix}y", "10.77.0.2/24"),
        ):
            ip("-n", ns, "addr", "add", address, "broadcast", "10.77.0.255", "dev", dev)
            ip("-n", ns, "link", "set", dev, "up")
            ip("-n", ns, "link", "set", "lo", "up")
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        for ns in names:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        pytest.skip(f"cannot create network namespaces here: {exc}")
    try:
        yield names
    finally:
        for ns in names:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


class Lines:
    """JSON lines from the agents, with a way to wait for one that matches."""

    def __init__(self) -> None:
        self.by_agent: dict[str, list[dict[str, Any]]] = {"A": [], "B": []}
        self._changed = trio.Event()

    async def read(self, agent: str, stream: trio.abc.ReceiveStream) -> None:
        buffer = b""
        async for chunk in stream:
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                self.by_agent[agent].append(json.loads(line))
                self._changed.set()
                self._changed = trio.Event()

    async def wait_for(self, agent: str, key: str) -> dict[str, Any]:
        while True:
            for line in self.by_agent[agent]:
                if key in line:
                    return line
            await self._changed.wait()


async def test_default_discovery_between_two_namespaces(two_hosts: list[str]) -> None:
    lines = Lines()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            processes = []
            for name, ns in zip("AB", two_hosts, strict=True):
                proc = await trio.lowlevel.open_process(
                    ["ip", "netns", "exec", ns, sys.executable, "-c", AGENT, name],
                    stdout=subprocess.PIPE,
                )
                processes.append(proc)
                assert proc.stdout is not None
                nursery.start_soon(lines.read, name, proc.stdout)
            try:
                await lines.wait_for("A", "flushed")
                await lines.wait_for("B", "received")
                await lines.wait_for("B", "discovered")
            finally:
                for proc in processes:
                    proc.terminate()
                for proc in processes:
                    await proc.wait()
    a, b = lines.by_agent["A"], lines.by_agent["B"]
    # ifaddr found the veth's broadcast address, and only it (loopback is skipped)
    assert a[0]["targets"] == ["10.77.0.255"]
    assert b[0]["targets"] == ["10.77.0.255"]
    # default ports: each namespace is its own host
    assert a[0]["port"] == 6969
    assert b[0]["port"] == 6969
    assert {"discovered": "B", "address": "10.77.0.2"} in a
    assert {"discovered": "A", "address": "10.77.0.1"} in b
    assert {"connected": "A"} in b
    assert {"received": "hello over the veth"} in b
