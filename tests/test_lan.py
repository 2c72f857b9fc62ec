"""trio_p2p on a LAN of network namespaces, with default settings (see netlan.py).

Every host runs lan_agent.py: default ports, default discovery (ifaddr finds
eth0 and its broadcast address 10.77.0.255). Nothing leaves the namespaces.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from .netlan import Agent, NetLan, require_netns

FLOOD = Path(__file__).with_name("lan_flood.py")
IMPOSTOR = Path(__file__).with_name("lan_impostor.py")

#: the default announce interval (Config.announce_interval), seconds
ANNOUNCE = 1.0


@pytest.fixture
def netns() -> None:
    require_netns()


@asynccontextmanager
async def lan_of(
    count: int,
    tmp_path: Path,
    *settings: str,
    impair: tuple[float, float, float] | None = None,
    bare: int = 0,
) -> AsyncIterator[tuple[NetLan, list[Agent]]]:
    """*count* hosts, each running an agent; all stopped and removed on exit.

    *impair*: (loss, delay, jitter) of a userspace switch in place of the bridge.
    *bare*: that many more hosts, with no agent.
    """
    with NetLan(count + bare, impair) as lan:
        async with trio.open_nursery() as nursery:
            started: dict[int, Agent] = {}

            async def start(index: int) -> None:
                folder = tmp_path / f"host{index}"
                folder.mkdir()
                name = f"host{index}"
                started[index] = await Agent.start(nursery, lan, index, name, folder, *settings)

            try:
                async with trio.open_nursery() as starting:  # (all at once)
                    for index in range(count):
                        starting.start_soon(start, index)
                yield lan, [started[index] for index in range(count)]
            finally:
                with trio.CancelScope(shield=True):
                    for agent in started.values():
                        await agent.stop()
                nursery.cancel_scope.cancel()


async def on_every_pair(
    agents: list[Agent], action: Callable[[Agent, Agent], Awaitable[object]]
) -> None:
    """``action(agent, other)`` for every ordered pair of agents, all at once."""

    async def one(agent: Agent, other: Agent) -> None:
        await action(agent, other)

    async with trio.open_nursery() as nursery:
        for agent, other in itertools.permutations(agents, 2):
            nursery.start_soon(one, agent, other)


def event_is(kind: str, peer: str | None = None, **fields: object) -> Callable[[Any], bool]:
    """A match for wait_event: an event of *kind* (about *peer*) with *fields*."""

    def match(event: Any) -> bool:
        return (
            event["event"] == kind
            and (peer is None or event.get("peer") == peer)
            and all(event.get(key) == value for key, value in fields.items())
        )

    return match


def random_file(path: Path, size: int) -> Path:
    """A file of *size* random bytes at *path*."""
    with open(path, "wb") as out:
        for _ in range(size // (1 << 20)):
            out.write(os.urandom(1 << 20))
        out.write(os.urandom(size % (1 << 20)))
    return path


def digest(path: Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(1 << 20):
            hasher.update(block)
    return hasher.hexdigest()


@pytest.mark.usefixtures("netns")
async def test_five_hosts_find_each_other_and_talk_in_a_full_mesh(tmp_path: Path) -> None:
    with trio.fail_after(120):
        async with lan_of(5, tmp_path) as (lan, agents):
            started = trio.current_time()
            # discovery through real subnet broadcast, within 3 announce intervals
            for agent, other in itertools.permutations(agents, 2):
                found = await agent.wait_event(
                    lambda e, o=other: e["event"] == "PeerDiscovered" and e["peer"] == o.node_id,
                    within=started + 3 * ANNOUNCE + 0.5 - trio.current_time(),
                )
                assert found["address"] == lan.addresses[agents.index(other)]
            print(f"all 20 discoveries in {trio.current_time() - started:.2f} s")
            # a full mesh: each pair connected once
            for i, j in itertools.combinations(range(5), 2):
                await agents[i].command("connect", peer=agents[j].node_id)
            for agent, other in itertools.permutations(agents, 2):
                await agent.wait_event(
                    lambda e, o=other: e["event"] == "PeerConnected" and e["peer"] == o.node_id,
                    within=10,
                )
            # text each way
            await everyone_sends(agents, "", 3)
            for agent in agents:
                for other in agents:
                    if other is not agent:
                        await agent.command("flush", peer=other.node_id)
            for agent, other in itertools.permutations(agents, 2):
                prefix = f"{other.name}>{agent.name} "
                await agent.wait_event(
                    lambda e, t=f"{prefix}2": e["event"] == "MessageReceived" and e["text"] == t,
                    within=10,
                )
                assert agent.texts_from(other.node_id) == [f"{prefix}{i}" for i in range(3)]
            # a file each way between every pair
            sources = {}
            for agent in agents:
                source = tmp_path / f"from-{agent.name}.bin"
                source.write_bytes(os.urandom(300_000))
                sources[agent.name] = source
            await on_every_pair(
                agents,
                lambda a, o: a.command(
                    "file", peer=o.node_id, path=str(sources[a.name]), within=60
                ),
            )
            for agent, other in itertools.permutations(agents, 2):
                done = await agent.wait_event(
                    lambda e, o=other, a=agent: (
                        e["event"] == "FileTransferCompleted"
                        and e["peer"] == o.node_id
                        and e["path"] is not None
                        and e["filename"] == f"from-{o.name}.bin"
                    ),
                    within=10,
                )
                assert digest(Path(done["path"])) == digest(sources[other.name])
            failures = [e for a in agents for e in a.events if e["event"].endswith("Failed")]
            assert failures == []


async def mesh(agents: list[Agent]) -> None:
    """Connect every pair of *agents* (after discovery) and wait until all are connected."""
    for i, j in itertools.combinations(range(len(agents)), 2):
        await agents[j].wait_event(
            lambda e, o=agents[i]: e["event"] == "PeerDiscovered" and e["peer"] == o.node_id,
            within=5,
        )
        await agents[i].wait_event(
            lambda e, o=agents[j]: e["event"] == "PeerDiscovered" and e["peer"] == o.node_id,
            within=5,
        )
        await agents[i].command("connect", peer=agents[j].node_id)
    for agent, other in itertools.permutations(agents, 2):
        await agent.wait_event(
            lambda e, o=other: e["event"] == "PeerConnected" and e["peer"] == o.node_id,
            within=10,
        )


async def everyone_sends(agents: list[Agent], prefix: str, count: int) -> None:
    """Every agent sends *count* texts to every other, all at once."""
    await on_every_pair(
        agents,
        lambda a, o: a.command(
            "send", peer=o.node_id, prefix=f"{prefix}{a.name}>{o.name} ", count=count
        ),
    )


@pytest.mark.usefixtures("netns")
async def test_a_link_down_for_five_seconds_loses_nothing_and_duplicates_nothing(
    tmp_path: Path,
) -> None:
    """Every host keeps sending to every other while one host's link is down for
    5 s, and a file is on its way to that host: once it is back, every message
    sent before, during and after arrives exactly once and in order, and the
    file arrives whole, without restarting anything."""
    size = 256 * 1024 * 1024
    source = random_file(tmp_path / "moving.bin", size)
    with trio.fail_after(120):
        async with lan_of(3, tmp_path) as (lan, agents):
            await mesh(agents)
            await everyone_sends(agents, "before ", 100)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    partial(
                        agents[0].command,
                        "file",
                        peer=agents[2].node_id,
                        path=str(source),
                        within=90,
                    )
                )
                moving = await agents[2].wait_event(event_is("FileTransferProgress"), within=10)
                lan.set_link(2, up=False)
                await everyone_sends(agents, "during ", 100)
                await trio.sleep(5)
                lan.set_link(2, up=True)
                await everyone_sends(agents, "after ", 100)
                await on_every_pair(
                    agents, lambda a, o: a.command("flush", peer=o.node_id, within=60)
                )
            arrived = await agents[2].wait_event(
                event_is("FileTransferCompleted", agents[0].node_id), within=10
            )
            assert digest(Path(arrived["path"])) == digest(source)
            for agent in (agents[0], agents[2]):
                files = [e["event"] for e in agent.events if e["event"].startswith("FileTransfer")]
                assert "FileTransferFailed" not in files
            sent = (await agents[0].command("stats"))["file_bytes_sent"]
            print(f"file: {moving['done']:,} of {size:,} in when the link went down; {sent:,} sent")
            assert moving["done"] < size
            for agent, other in itertools.permutations(agents, 2):
                last = f"after {other.name}>{agent.name} 99"
                await agent.wait_event(  # (acknowledged: on its way up the agent's pipe)
                    lambda e, t=last: e["event"] == "MessageReceived" and e["text"] == t,
                    within=10,
                )
                expected = [
                    f"{phase} {other.name}>{agent.name} {i}"
                    for phase in ("before", "during", "after")
                    for i in range(100)
                ]
                assert agent.texts_from(other.node_id) == expected
            failures = [e for a in agents for e in a.events if e["event"] == "DeliveryFailed"]
            assert failures == []
            broke = [
                (a.name, e["reason"], e["resuming"])
                for a in agents
                for e in a.events
                if e["event"] == "PeerDisconnected"
            ]
            print("connections that broke:", broke)
            assert all(resuming for _, _, resuming in broke)


@pytest.mark.usefixtures("netns")
async def test_a_link_down_for_longer_than_resume_timeout_ends_the_sessions(
    tmp_path: Path,
) -> None:
    """Host 2's link stays down past resume_timeout (3 s here) and the peer
    timeout (5 s, the default): the others report it disconnected, lost, and
    the messages it never got in one DeliveryFailed; back up, it is found again
    and connected as a new session."""
    resume_timeout = 3.0
    with trio.fail_after(120):
        async with lan_of(3, tmp_path, f"resume_timeout={resume_timeout}") as (lan, agents):
            await mesh(agents)
            down = agents[2]
            senders = agents[:2]
            for agent in senders:
                await agent.command("send", peer=down.node_id, prefix="before ", count=50)
                await agent.command("flush", peer=down.node_id)
            marks = [len(agent.events) for agent in senders]
            lan.set_link(2, up=False)
            for agent in senders:  # they wait in the session, which then ends
                await agent.command("send", peer=down.node_id, prefix="during ", count=20)
            for agent, mark in zip(senders, marks, strict=True):
                about = down.node_id
                gone = await agent.wait_event(
                    event_is("PeerDisconnected", about), within=15, start=mark
                )
                assert gone["resuming"]
                failed = await agent.wait_event(
                    event_is("DeliveryFailed", about), within=15, start=mark
                )
                assert f"did not come back within {resume_timeout:g} s" in failed["reason"]
                await agent.wait_event(event_is("PeerLost", about), within=15, start=mark)
                got = down.texts_from(agent.node_id)
                assert got == [f"before {i}" for i in range(50)]  # (flushed before)
                assert failed["texts"] == [f"during {i}" for i in range(20)]
            lan.set_link(2, up=True)
            for agent, mark in zip(senders, marks, strict=True):
                await agent.wait_event(
                    lambda e: e["event"] == "PeerDiscovered" and e["peer"] == down.node_id,
                    within=10,
                    start=mark,
                )
                await agent.command("connect", peer=down.node_id)
                back = await agent.wait_event(
                    lambda e: e["event"] == "PeerConnected" and e["peer"] == down.node_id,
                    within=10,
                    start=mark,
                )
                assert not back["resumed"]  # a new session
                await agent.command("send", peer=down.node_id, prefix="again ", count=5)
                await agent.command("flush", peer=down.node_id)
                await down.wait_event(
                    lambda e, a=agent: (
                        e["event"] == "MessageReceived"
                        and e["peer"] == a.node_id
                        and e["text"] == "again 4"
                    ),
                    within=10,
                )
                assert down.texts_from(agent.node_id)[50:] == [f"again {i}" for i in range(5)]


@pytest.mark.usefixtures("netns")
async def test_a_receiver_killed_mid_transfer_resumes_from_its_partial(tmp_path: Path) -> None:
    """SIGKILL the receiving host's agent in the middle of a file: the sender
    reports the failure; the restarted agent (a new process, found again by
    its name) gets the same file by resuming its partial, byte-identical, and
    far fewer bytes cross the second time."""
    size = 256 * 1024 * 1024
    source = random_file(tmp_path / "big.bin", size)
    with trio.fail_after(120):
        async with lan_of(2, tmp_path) as (lan, agents):
            sender, receiver = agents
            await mesh(agents)
            async with trio.open_nursery() as nursery:
                failed: list[str] = []

                async def send_first() -> None:
                    try:
                        await sender.command("file", peer=receiver.node_id, path=str(source))
                    except AssertionError as exc:
                        failed.append(str(exc))

                nursery.start_soon(send_first)
                progress = await receiver.wait_event(
                    lambda e: e["event"] == "FileTransferProgress" and e["done"] >= size // 3,
                    within=60,
                )
                receiver.process.kill()  # SIGKILL
            assert failed, "the first send_file should fail"
            assert progress["done"] < size
            first = (await sender.command("stats"))["file_bytes_sent"]
            await sender.wait_event(event_is("FileTransferFailed", receiver.node_id), within=5)
            # the same host runs a new agent with the same name and download folder
            async with trio.open_nursery() as nursery:
                again = await Agent.start(nursery, lan, 1, receiver.name, tmp_path / "host1")
                try:
                    found = await sender.wait_event(
                        lambda e: e["event"] == "PeerDiscovered" and e["peer"] == again.node_id,
                        within=10,
                    )
                    assert found["address"] == lan.addresses[1]
                    await sender.command("connect", peer=again.node_id)
                    await sender.command("file", peer=again.node_id, path=str(source), within=60)
                    second = (await sender.command("stats"))["file_bytes_sent"] - first
                    done = await again.wait_event(
                        event_is("FileTransferCompleted", sender.node_id), within=10
                    )
                    assert digest(Path(done["path"])) == digest(source)
                    assert second <= size - size // 3 + 16 * 1024 * 1024  # only the rest
                    assert first + second < 1.5 * size
                    print(f"bytes sent: {first:,} before the kill, {second:,} to resume")
                finally:
                    with trio.CancelScope(shield=True):
                        await again.stop()
                    nursery.cancel_scope.cancel()


@pytest.mark.usefixtures("netns")
async def test_a_lossy_jittery_lan_loses_nothing(tmp_path: Path) -> None:
    """Through a switch that drops 10% of the frames and delays each by
    20 ± 10 ms (on every port): discovery converges, 1,000 texts per pair arrive
    exactly once and in order, and a 2 MiB file arrives verified."""
    with trio.fail_after(150):
        async with lan_of(3, tmp_path, impair=(0.10, 0.020, 0.010)) as (lan, agents):
            started = trio.current_time()
            await mesh(agents)
            print(f"discovered and connected in {trio.current_time() - started:.1f} s")
            started = trio.current_time()
            await everyone_sends(agents, "", 1000)
            await on_every_pair(agents, lambda a, o: a.command("flush", peer=o.node_id, within=90))
            for agent, other in itertools.permutations(agents, 2):
                prefix = f"{other.name}>{agent.name} "
                await agent.wait_event(
                    event_is("MessageReceived", other.node_id, text=f"{prefix}999"), within=10
                )
                assert agent.texts_from(other.node_id) == [f"{prefix}{i}" for i in range(1000)]
            print(f"6,000 texts in {trio.current_time() - started:.1f} s")
            started = trio.current_time()
            source = random_file(tmp_path / "two.bin", 2 * 1024 * 1024)
            await agents[0].command("file", peer=agents[1].node_id, path=str(source), within=90)
            done = await agents[1].wait_event(
                event_is("FileTransferCompleted", agents[0].node_id), within=10
            )
            assert digest(Path(done["path"])) == digest(source)
            print(f"2 MiB verified in {trio.current_time() - started:.1f} s")
            assert [e for a in agents for e in a.events if e["event"] == "DeliveryFailed"] == []
        print("switch:", lan.switch_counts)


@pytest.mark.usefixtures("netns")
async def test_twenty_peers_in_a_full_mesh_deliver_every_message_once(tmp_path: Path) -> None:
    """20 hosts, 190 connections, each host sending 500 texts to every other:
    all 190,000 arrive exactly once and in order per sender; memory stays bounded."""
    count, each = 20, 500
    with trio.fail_after(300):
        async with lan_of(count, tmp_path) as (_lan, agents):
            started = trio.current_time()
            await mesh(agents)
            meshed = trio.current_time() - started
            started = trio.current_time()
            await everyone_sends(agents, "", each)
            await on_every_pair(agents, lambda a, o: a.command("flush", peer=o.node_id, within=240))
            sent = trio.current_time() - started
            for agent, other in itertools.permutations(agents, 2):
                prefix = f"{other.name}>{agent.name} "
                await agent.wait_event(
                    event_is("MessageReceived", other.node_id, text=f"{prefix}{each - 1}"),
                    within=30,
                )
                assert agent.texts_from(other.node_id) == [f"{prefix}{i}" for i in range(each)]
            peaks = [(await agent.command("stats"))["peak_rss_mib"] for agent in agents]
            total = count * (count - 1) * each
            print(
                f"mesh of {count} in {meshed:.1f} s; {total:,} messages acknowledged in "
                f"{sent:.1f} s ({total / sent:,.0f}/s); peak RSS {min(peaks):.0f}-"
                f"{max(peaks):.0f} MiB per agent"
            )
            assert max(peaks) < 150
            assert [e for a in agents for e in a.events if e["event"] == "DeliveryFailed"] == []


@pytest.mark.usefixtures("netns")
async def test_a_host_flooding_the_lan_harms_no_honest_host(tmp_path: Path) -> None:
    """A fourth host broadcasts thousands of malformed and spoofed beacons a
    second and keeps 20 idle TCP connections open to each honest host: the
    honest hosts keep messaging and connecting, none loses sight of another,
    their tables and memory stay bounded, and their statistics show the flood."""
    with trio.fail_after(120):
        async with lan_of(3, tmp_path, bare=1) as (lan, honest):
            await mesh(honest)
            marks = [len(agent.events) for agent in honest]
            argv = lan.command(3, sys.executable, str(FLOOD), "8", "20", *lan.addresses[:3])
            flood = await trio.lowlevel.open_process(argv, stdout=subprocess.PIPE)
            await trio.sleep(1.5)  # under way
            await everyone_sends(honest, "", 200)
            await on_every_pair(honest, lambda a, o: a.command("flush", peer=o.node_id))
            # a new connection while the idle ones are held open
            first, second = honest[0], honest[1]
            await first.command("disconnect", peer=second.node_id)
            mark = len(first.events)
            await first.command("connect", peer=second.node_id)
            await first.wait_event(event_is("PeerConnected", second.node_id), within=10, start=mark)
            await first.command("send", peer=second.node_id, prefix="again ", count=5)
            await first.command("flush", peer=second.node_id)
            stats = [await agent.command("stats") for agent in honest]
            for agent, other in itertools.permutations(honest, 2):
                assert (await agent.command("known", peer=other.node_id))["known"]
            assert flood.stdout is not None
            output = b""
            while chunk := await flood.stdout.receive_some(4096):
                output += chunk
            await flood.wait()
            counts = json.loads(output)
            for agent, mark in zip(honest, marks, strict=True):
                lost = [e for e in agent.events[mark:] if e["event"] == "PeerLost"]
                assert all(e["peer"] not in {a.node_id for a in honest} for e in lost)
            for agent, other in itertools.permutations(honest, 2):
                prefix = f"{other.name}>{agent.name} "
                assert agent.texts_from(other.node_id)[:200] == [f"{prefix}{i}" for i in range(200)]
            for each in stats:
                assert each["peers_discovered"] <= 2 + 16  # the flood's address: 16 at most
                assert each["datagrams_dropped"]["malformed"] > 0
                assert each["datagrams_dropped"]["key_mismatch"] > 0
                assert each["connections_refused"]["too_many_handshakes_from_address"] > 0
                assert each["peak_rss_mib"] < 100
            print("flood:", counts)
            print(
                "honest hosts:",
                [
                    (
                        s["datagrams_received"],
                        dict(sorted(s["datagrams_dropped"].items())),
                        dict(sorted(s["connections_refused"].items())),
                        s["peers_discovered"],
                        round(s["peak_rss_mib"]),
                    )
                    for s in stats
                ],
            )


@pytest.mark.usefixtures("netns")
async def test_a_host_impersonating_another_changes_nothing(tmp_path: Path) -> None:
    """A fourth host replays the victim's beacons (from its own address and, with a
    forged source, from the victim's), broadcasts announces and goodbyes in the
    victim's id signed with its own key, and dials every honest host claiming the
    victim's id: everyone refuses it, the victim stays where it is, connected."""
    with trio.fail_after(90):
        async with lan_of(3, tmp_path, bare=1) as (lan, honest):
            await mesh(honest)
            victim, others = honest[0], honest[1:]
            marks = [len(agent.events) for agent in honest]
            argv = lan.command(
                3,
                sys.executable,
                str(IMPOSTOR),
                "6",
                victim.node_id,
                lan.addresses[0],
                *lan.addresses[1:3],
            )
            impostor = await trio.lowlevel.open_process(argv, stdout=subprocess.PIPE)
            assert impostor.stdout is not None
            output = b""
            while chunk := await impostor.stdout.receive_some(4096):
                output += chunk
            assert await impostor.wait() == 0
            report = json.loads(output)
            counts = report["counts"]
            assert counts["captured"] > 0
            assert all(count > 0 for count in counts.values()), counts
            for address in lan.addresses[1:3]:
                assert "proved the key" in report["answers"][address], report
            await everyone_sends(honest, "after ", 20)
            await on_every_pair(honest, lambda a, o: a.command("flush", peer=o.node_id))
            for agent, mark in zip(others, marks[1:], strict=True):
                # the victim was never lost, disconnected or moved
                news = [e for e in agent.events[mark:] if e.get("peer") == victim.node_id]
                assert not [e for e in news if e["event"] in ("PeerLost", "PeerDisconnected")]
                where = await agent.command("known", peer=victim.node_id)
                assert (where["known"], where["address"]) == (True, lan.addresses[0])
                stats = await agent.command("stats")
                dropped = stats["datagrams_dropped"]
                for cause in ("address_not_signed", "key_mismatch", "stale"):
                    assert dropped.get(cause, 0) > 0, (cause, dropped, report)
                assert stats["connections_refused"]["protocol"] >= 1
                texts = agent.texts_from(victim.node_id)
                assert texts[-20:] == [f"after {victim.name}>{agent.name} {i}" for i in range(20)]
            print("impostor:", report)


CLIENT = """
import socket, sys, time
plaintext = sys.argv[2] == "plaintext"
with socket.create_connection((sys.argv[1], 6969), timeout=20) as sock:
    if plaintext:  # the start of a plaintext hello
        sock.sendall(bytes([0, 0, 0, 60, 0xA8]) + b"x" * 20)
    start = time.monotonic()
    reply = b""
    while chunk := sock.recv(4096):
        reply += chunk
    print(round(time.monotonic() - start, 1), reply[:200])
"""


@pytest.mark.usefixtures("netns")
async def test_keys_and_trust_decide_who_connects(tmp_path: Path) -> None:
    """On the LAN: a network key keeps out nodes without it or with another;
    trust=known refuses unknown keys both ways; a known name coming back with a
    new key is flagged; a plaintext client and a stalled handshake are dropped
    within the handshake timeout, and counted."""
    with trio.fail_after(150), NetLan(5) as lan:
        async with trio.open_nursery() as nursery:
            started: list[Agent] = []

            async def agent(index: int, name: str, *settings: str) -> Agent:
                folder = tmp_path / f"host{index}-{name}-{len(started)}"
                folder.mkdir()
                new = await Agent.start(nursery, lan, index, name, folder, *settings)
                started.append(new)
                return new

            try:
                alpha = await agent(0, "alpha", "network_key=alpha")
                alpha_too = await agent(1, "alpha-too", "network_key=alpha")
                beta = await agent(2, "beta", "network_key=beta")
                strict = await agent(3, "strict", "trust=known")
                carol = await agent(4, "carol")
                for other in (alpha_too, beta, strict):
                    await alpha.wait_event(event_is("PeerDiscovered", other.node_id), within=10)
                await strict.wait_event(event_is("PeerDiscovered", carol.node_id), within=10)
                await carol.wait_event(event_is("PeerDiscovered", strict.node_id), within=10)
                await alpha.command("connect", peer=alpha_too.node_id)
                with pytest.raises(AssertionError, match="same network key"):
                    await alpha.command("connect", peer=beta.node_id)
                with pytest.raises(AssertionError, match="has no network key"):
                    await alpha.command("connect", peer=strict.node_id)
                with pytest.raises(AssertionError, match="known peers only"):
                    await strict.command("connect", peer=carol.node_id)
                with pytest.raises(AssertionError, match="known peers only"):
                    await carol.command("connect", peer=strict.node_id)
                refused = (await strict.command("stats"))["connections_refused"]
                assert refused["unknown_peer"] == 2
                # a plaintext client and a stalled handshake, from the fifth host
                await beta.stop()
                for mode, within in (("plaintext", 2.0), ("stall", 7.0)):
                    argv = lan.command(2, sys.executable, "-c", CLIENT, lan.addresses[4], mode)
                    done = await trio.run_process(argv, capture_stdout=True)
                    seconds = float(done.stdout.split()[0])
                    assert seconds < within, (mode, done.stdout)
                    if mode == "plaintext":
                        assert b"accepts encrypted connections only" in done.stdout
                refused = (await carol.command("stats"))["connections_refused"]
                assert refused["plaintext"] == 1
                assert refused["handshake_timeout"] == 1
                # "dave" meets carol, then comes back with another key: flagged
                for again in (False, True):
                    dave = await agent(2, "dave")
                    await dave.wait_event(event_is("PeerDiscovered", carol.node_id), within=10)
                    mark = len(carol.events)
                    await dave.command("connect", peer=carol.node_id)
                    met = await carol.wait_event(
                        event_is("PeerConnected", dave.node_id), within=10, start=mark
                    )
                    assert met["new_key"] is again
                    assert met["fingerprint"]
                    await dave.stop()
            finally:
                with trio.CancelScope(shield=True):
                    for each in started:
                        await each.stop()
                nursery.cancel_scope.cancel()


@pytest.mark.usefixtures("netns")
async def test_a_host_that_comes_back_at_a_new_address_resumes_there(tmp_path: Path) -> None:
    """Host 1's link goes down and comes back with another address: discovery
    sees it there, the node that dials again dials it there (or it dials the
    other, whose address did not change), and the session carries on."""
    with trio.fail_after(90):
        async with lan_of(2, tmp_path) as (lan, agents):
            await mesh(agents)
            first, moving = agents
            await first.command("send", peer=moving.node_id, prefix="before ", count=50)
            lan.set_link(1, up=False)
            lan.move(1, "10.77.0.20")
            await first.command("send", peer=moving.node_id, prefix="during ", count=50)
            await trio.sleep(1)
            lan.set_link(1, up=True)
            # (the heartbeat times the old connection out; then whichever dials
            # again finds the other: at its new address, once discovery moved it)
            await first.command("flush", peer=moving.node_id, within=40)
            await moving.wait_event(event_is("MessageReceived", text="during 49"), within=10)
            expected = [f"{phase} {i}" for phase in ("before", "during") for i in range(50)]
            assert moving.texts_from(first.node_id) == expected
            assert [e for a in agents for e in a.events if e["event"] == "DeliveryFailed"] == []
            # the old connection's address is gone: it broke, and a new one resumed
            connected = [e for e in first.events if e["event"] == "PeerConnected"]
            assert [(e["resumed"], e["address"]) for e in connected] == [
                (False, "10.77.0.2"),
                (True, "10.77.0.20"),
            ]
