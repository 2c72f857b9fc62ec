"""A test LAN made of Linux network namespaces, and the agents that run on it.

Each host is a network namespace with one interface, ``eth0``, the end of a
veth pair whose other end is a port of a Linux bridge living in a namespace of
its own; the hosts take addresses 10.77.0.1, .2, ... in 10.77.0.0/24
(broadcast 10.77.0.255). Nothing is created in, or routed through, the
machine's own namespace: the veth pairs are made inside the namespaces. Every
namespace name starts with a prefix unique to the run (``tp2p<pid>x<random>``),
so parallel runs never collide, and leftovers of runs whose process is gone are
removed when a new LAN is made.

It needs root and ``ip`` (iproute2). Without them the tests that use it skip
with one reason, unless ``TRIO_P2P_REQUIRE_NETNS=1`` (``.ci/run`` sets it),
which makes that a failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from .lan_agent import json_lines

__all__ = ["Agent", "NetLan", "require_netns"]

#: every namespace of these tests starts with this
PREFIX = "tp2p"
SUBNET = "10.77.0"
AGENT = Path(__file__).with_name("lan_agent.py")
SWITCH = Path(__file__).with_name("lan_switch.py")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


def require_netns() -> None:
    """Skip (or, if required, fail) unless network namespaces can be made here."""
    reason = ""
    if sys.platform != "linux":
        reason = "network namespaces need Linux"
    elif os.geteuid() != 0:
        reason = "network namespaces need root"
    elif shutil.which("ip") is None:
        reason = "network namespaces need ip (iproute2)"
    else:
        probe = f"{PREFIX}{os.getpid()}x{secrets.token_hex(2)}probe"
        try:
            _ip("netns", "add", probe)
            _ip("netns", "del", probe)
        except (OSError, subprocess.CalledProcessError) as exc:
            detail = getattr(exc, "stderr", "") or str(exc)
            reason = f"cannot create a network namespace: {detail.strip()}"
    if reason:
        if os.environ.get("TRIO_P2P_REQUIRE_NETNS") == "1":
            pytest.fail(f"TRIO_P2P_REQUIRE_NETNS=1 but {reason}")
        pytest.skip(reason)


def _remove_leftovers() -> None:
    """Delete the namespaces of earlier runs whose process is gone."""
    listing = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, check=False
    ).stdout
    for line in listing.splitlines():
        name = line.split()[0] if line.split() else ""
        match = re.fullmatch(rf"{PREFIX}(\d+)x[0-9a-f]+\w*", name)
        if match is None or int(match[1]) == os.getpid():
            continue
        try:
            os.kill(int(match[1]), 0)
        except ProcessLookupError:
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)
        except PermissionError:
            pass  # alive, someone else's


class NetLan:
    """*count* hosts on one bridged segment (see the module docstring).

    Use as a context manager: everything is removed on exit, whatever happened.
    """

    def __init__(self, count: int, impair: tuple[float, float, float] | None = None) -> None:
        """*impair*: (loss, delay, jitter) for a lan_switch.py in place of the bridge."""
        self.impair = impair
        self.switch: subprocess.Popen[str] | None = None
        self.run = f"{PREFIX}{os.getpid()}x{secrets.token_hex(3)}"
        self.bridge = f"{self.run}br"
        self.hosts = [f"{self.run}h{i}" for i in range(count)]
        self.addresses = [f"{SUBNET}.{i + 1}" for i in range(count)]
        self._made: list[str] = []

    def __enter__(self) -> NetLan:
        _remove_leftovers()
        try:
            self._make()
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()

    def _netns(self, name: str) -> None:
        _ip("netns", "add", name)
        self._made.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def _make(self) -> None:
        self._netns(self.bridge)
        if self.impair is None:
            _ip("-n", self.bridge, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.bridge, "link", "set", "br0", "up")
        for index, (host, address) in enumerate(zip(self.hosts, self.addresses, strict=True)):
            self._netns(host)
            port = f"p{index}"
            _ip("-n", host, "link", "add", "eth0", "type", "veth", "peer", "name", port,
                "netns", self.bridge)  # fmt: skip
            if self.impair is None:
                _ip("-n", self.bridge, "link", "set", port, "master", "br0")
            else:
                # Frames no larger than the MTU, so the switch can forward each one.
                _ip("-n", host, "link", "set", "eth0", "gso_max_size", "1500")
            _ip("-n", self.bridge, "link", "set", port, "up")
            _ip("-n", host, "addr", "add", f"{address}/24", "broadcast", f"{SUBNET}.255",
                "dev", "eth0")  # fmt: skip
            _ip("-n", host, "link", "set", "eth0", "up")
        if self.impair is not None:
            loss, delay, jitter = self.impair
            ports = [f"p{index}" for index in range(len(self.hosts))]
            argv = [sys.executable, str(SWITCH), str(loss), str(delay), str(jitter), *ports]
            self.switch = subprocess.Popen(
                ["ip", "netns", "exec", self.bridge, *argv], stdout=subprocess.PIPE, text=True
            )
            assert self.switch.stdout is not None
            if self.switch.stdout.readline().strip() != "ready":
                raise RuntimeError("the userspace switch did not start")

    def remove(self) -> None:
        """Stop the switch; delete every namespace made (their interfaces go with them)."""
        if self.switch is not None:
            self.switch.terminate()
            try:
                out, _ = self.switch.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                self.switch.kill()
                out, _ = self.switch.communicate()
            self.switch_counts = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
            self.switch = None
        for name in reversed(self._made):
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)
        self._made.clear()

    def set_link(self, index: int, up: bool) -> None:
        """Take host *index*'s eth0 down or up (in its namespace)."""
        _ip("-n", self.hosts[index], "link", "set", "eth0", "up" if up else "down")

    def move(self, index: int, address: str) -> None:
        """Give host *index* a new address on the LAN (as a DHCP change would)."""
        host = self.hosts[index]
        _ip("-n", host, "addr", "del", f"{self.addresses[index]}/24", "dev", "eth0")
        _ip("-n", host, "addr", "add", f"{address}/24", "broadcast", f"{SUBNET}.255", "dev", "eth0")
        self.addresses[index] = address

    def command(self, index: int, *argv: str) -> list[str]:
        """*argv* run inside host *index*'s namespace."""
        return ["ip", "netns", "exec", self.hosts[index], *argv]


class Agent:
    """A ``lan_agent.py`` process on one host: commands in, events out."""

    def __init__(self, name: str, process: trio.Process) -> None:
        self.name = name
        self.process = process
        self.node_id = ""
        self.events: list[dict[str, Any]] = []
        self._replies: dict[int, dict[str, Any]] = {}
        self._changed = trio.lowlevel.ParkingLot()
        self._next_id = 0
        self._sending = trio.Lock()

    @classmethod
    async def start(
        cls,
        nursery: trio.Nursery,
        lan: NetLan,
        index: int,
        name: str,
        download_dir: Path,
        *settings: str,
    ) -> Agent:
        """Start an agent on host *index*; *settings* are ``field=value`` overrides."""
        argv = lan.command(index, sys.executable, str(AGENT), name, str(download_dir), *settings)
        process = await trio.lowlevel.open_process(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        agent = cls(name, process)
        nursery.start_soon(agent._read)
        ready = await agent.wait_event(lambda e: e["event"] == "ready", within=30)
        agent.node_id = ready["node_id"]
        return agent

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for record in json_lines(self.process.stdout):
            if "reply" in record:
                self._replies[record["reply"]] = record
            else:
                self.events.append(record)
            self._changed.unpark_all()
        self._changed.unpark_all()

    async def wait_event(self, match: Any, *, within: float, start: int = 0) -> dict[str, Any]:
        """The first event from index *start* for which ``match(event)`` is true
        (waiting at most *within* seconds)."""
        with trio.fail_after(within):
            position = start
            while True:
                while position < len(self.events):
                    if match(self.events[position]):
                        return self.events[position]
                    position += 1
                if self.process.returncode is not None:
                    raise AssertionError(f"agent {self.name} exited")
                await self._changed.park()

    async def command(self, cmd: str, *, within: float = 30, **fields: Any) -> dict[str, Any]:
        """Run a command; its reply (raises AssertionError if it failed)."""
        self._next_id += 1
        ident = self._next_id
        assert self.process.stdin is not None
        line = json.dumps({"cmd": cmd, "id": ident, **fields}) + "\n"
        async with self._sending:
            await self.process.stdin.send_all(line.encode())
        with trio.fail_after(within):
            while ident not in self._replies:
                if self.process.returncode is not None:
                    raise AssertionError(f"agent {self.name} exited")
                await self._changed.park()
        reply = self._replies.pop(ident)
        if "error" in reply:
            raise AssertionError(f"{self.name}: {cmd} failed: {reply['error']}")
        return reply

    def texts_from(self, node_id: str) -> list[str]:
        return [
            e["text"]
            for e in self.events
            if e["event"] == "MessageReceived" and e["peer"] == node_id
        ]

    async def stop(self) -> None:
        with trio.move_on_after(10):
            with contextlib.suppress(
                AssertionError, trio.BrokenResourceError, trio.ClosedResourceError
            ):
                await self.command("quit", within=10)
            await self.process.wait()
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
