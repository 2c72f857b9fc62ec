"""The command-line tool, run as a person would (a subprocess)."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import pathlib
import pty
import stat
import subprocess
import sys
import uuid
from typing import Any

import attrs
import pytest
import trio

from trio_p2p import (
    DeliveryFailed,
    Direction,
    Error,
    Event,
    FileOffered,
    FileTransferCompleted,
    FileTransferFailed,
    FileTransferProgress,
    FileTransferStarted,
    Message,
    MessageReceived,
    PeerConnected,
    PeerDisconnected,
    PeerDiscovered,
    PeerInfo,
    PeerLost,
    Text,
    Transfer,
    TransferError,
)
from trio_p2p._cli_json import describe_event, event_to_json, event_to_line

from .conftest import free_udp_port


async def run_tool(*args: str) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(30):
        return await trio.run_process(
            [sys.executable, "-m", "trio_p2p", *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )


async def test_demo_exits_zero_and_names_both_peers_and_the_messages() -> None:
    result = await run_tool("demo")
    out = result.stdout.decode()
    assert result.returncode == 0, out + result.stderr.decode()
    assert "Alice discovered Bob" in out
    assert "Bob received from Alice: 'Hello, Bob!'" in out
    assert "Alice received from Bob: 'Hi Alice, got it.'" in out
    assert "Bob received 10000, all in order" in out
    assert "Alice sent the file 'holiday-video.bin'" in out
    assert "Bob verified it and saved it as holiday-video.bin: identical" in out
    assert "Bob receives" not in out  # no progress bar: stdout is not a terminal
    assert out.rstrip().endswith("OK")
    # it stays on loopback
    assert "127.255.255.255" in out


async def test_version_and_usage_errors() -> None:
    result = await run_tool("--version")
    assert result.returncode == 0
    assert result.stdout.decode().startswith("trio_p2p ")
    result = await run_tool("--no-such-option")
    assert result.returncode == 2
    assert b"unrecognized arguments: --no-such-option" in result.stderr


def loopback_options(discovery_port: int) -> list[str]:
    """Options that keep a CLI node on this machine, on a private discovery port."""
    return [
        "--port",
        "0",
        "--discovery-port",
        str(discovery_port),
        "--broadcast",
        "127.255.255.255",
    ]


async def test_listen_json_and_send_text_and_file(tmp_path: pathlib.Path) -> None:
    options = loopback_options(free_udp_port())
    note = tmp_path / "note.txt"
    note.write_text("a small file")
    with trio.fail_after(40):
        async with trio.open_nursery() as nursery:
            listener = await nursery.start(
                functools.partial(
                    trio.run_process,
                    [
                        sys.executable,
                        "-m",
                        "trio_p2p",
                        "listen",
                        "Bob",
                        "--json",
                        *options,
                        "--download-dir",
                        str(tmp_path / "received"),
                    ],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    check=False,
                )
            )
            assert listener.stdout is not None
            lines = JsonLines(listener.stdout)
            sent = await run_tool("send", "Alice", "--to", "Bob", "--text", "hi Bob", *options)
            assert sent.returncode == 0, sent.stderr.decode()
            assert b"acknowledged" in sent.stdout
            message = await lines.next_of("message_received")
            assert message["message"]["text"] == "hi Bob"
            assert message["message"]["sender_name"] == "Alice"
            uuid.UUID(message["message"]["id"])
            sent = await run_tool("send", "Alice", "--to", "Bob", "--file", str(note), *options)
            assert sent.returncode == 0, sent.stderr.decode()
            done = await lines.next_of("file_transfer_completed")
            transfer = done["transfer"]
            assert (transfer["filename"], transfer["size"], transfer["direction"]) == (
                "note.txt",
                12,
                "receive",
            )
            assert read_text(transfer["path"]) == "a small file"
            listed = await run_tool("peers", "--json", "--timeout", "1", *options)
            assert listed.returncode == 0
            names = [json.loads(line)["name"] for line in listed.stdout.decode().splitlines()]
            assert "Bob" in names
            plain = await run_tool("peers", "--timeout", "1", *options)  # not a terminal
            rows = [line.split("\t") for line in plain.stdout.decode().splitlines()]
            assert any(row[0] == "Bob" and row[2].startswith("127.0.0.1:") for row in rows)
            listener.terminate()


async def test_identities_one_per_name_stable_and_locked(tmp_path: pathlib.Path) -> None:
    """Two names are two nodes; a name keeps its id; a key file in use is refused."""
    options = loopback_options(free_udp_port())
    listen = [sys.executable, "-m", "trio_p2p", "listen", "--json"]
    with trio.fail_after(40):
        async with trio.open_nursery() as nursery:
            nodes = {}
            for name in ("Ann", "Ben"):
                process = await nursery.start(
                    functools.partial(
                        trio.run_process,
                        [*listen, name, *options],
                        stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE,
                        check=False,
                    )
                )
                assert process.stdout is not None
                nodes[name] = (process, JsonLines(process.stdout))
            # each finds the other: two nodes, with their own ids and keys
            found = await nodes["Ann"][1].next_of("peer_discovered")
            assert found["peer"]["name"] == "Ben"
            ben_id = found["peer"]["id"]
            folder = pathlib.Path(os.environ["XDG_DATA_HOME"]) / "trio_p2p" / "identities"
            keys = sorted(p.name for p in folder.glob("*.key"))
            assert [k.split("-")[0] for k in keys] == ["Ann", "Ben"]
            # a second Ben, on the same key file, is refused with a clear error
            again = await run_tool("listen", "Ben", *options)
            assert again.returncode == 1
            assert b"is in use by another running node" in again.stderr
            for process, _ in nodes.values():
                process.terminate()
        # Ben comes back with the same id; --ephemeral and --identity change it
        listed = await run_tool(
            "send", "Ben", "--to", "Nobody", "--text", "x", "--timeout", "1", *options
        )
        assert listed.returncode == 1  # (nobody there: it only had to start)
        own = tmp_path / "own.key"
        for extra, same in ((), True), (("--ephemeral",), False), (("--identity", str(own)), False):
            async with trio.open_nursery() as nursery:
                process = await nursery.start(
                    functools.partial(
                        trio.run_process,
                        [*listen, "Ben", *options, *extra],
                        stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE,
                        check=False,
                    )
                )
                assert process.stdout is not None
                probe = await run_tool("peers", "--json", "--timeout", "1", *options)
                ids = {json.loads(line)["id"] for line in probe.stdout.decode().splitlines()}
                assert (ben_id in ids) is same, (extra, ids)
                assert len(ids) == 1
                process.terminate()
        assert stat.S_IMODE(own.stat().st_mode) == 0o600


async def test_send_to_a_missing_peer_exits_1_within_its_timeout() -> None:
    options = loopback_options(free_udp_port())
    start = trio.current_time()
    result = await run_tool(
        "send", "Alice", "--to", "Nobody", "--text", "x", "--timeout", "1", *options
    )
    assert result.returncode == 1
    assert b"no peer 'Nobody' answered discovery within 1 s" in result.stderr
    assert trio.current_time() - start < 10


def read_text(path: str) -> str:
    return pathlib.Path(path).read_text()


class JsonLines:
    """The JSON lines a child process prints, read as they come."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buffer = b""

    async def next_of(self, kind: str) -> dict[str, Any]:
        """The next object whose "event" is *kind* (the others are skipped, but parsed)."""
        while True:
            while b"\n" not in self._buffer:
                chunk = await self._stream.receive_some(65536)
                assert chunk, "the child process closed its output"
                self._buffer += chunk
            line, self._buffer = self._buffer.split(b"\n", 1)
            record = json.loads(line)
            assert isinstance(record, dict)
            assert isinstance(record["event"], str)
            if record["event"] == kind:
                return record


def every_event() -> list[Event]:
    peer = PeerInfo(uuid.UUID(int=1), "Bob", "127.0.0.1", 6969, 0.0)
    message = Message(uuid.UUID(int=2), peer.id, "Bob", 1.5, Text("hi"))
    transfer = Transfer(uuid.UUID(int=3), peer.id, "a.txt", 10, Direction.RECEIVE)
    return [
        PeerDiscovered(peer),
        PeerLost(peer),
        PeerConnected(peer),
        PeerDisconnected(peer, "gone"),
        MessageReceived(message),
        DeliveryFailed(peer, (message,), "gone"),
        FileOffered(transfer),
        FileTransferStarted(transfer),
        FileTransferProgress(transfer, 5, 10),
        FileTransferCompleted(attrs.evolve(transfer, path=pathlib.Path("/tmp/a.txt"))),
        FileTransferFailed(transfer, TransferError("no room")),
        Error(RuntimeError("oops")),
    ]


@pytest.mark.parametrize("event", every_event(), ids=lambda e: type(e).__name__)
def test_every_event_has_a_json_form_and_a_sentence(event: Event) -> None:
    record = json.loads(event_to_line(event))
    snake = "".join(f"_{c.lower()}" if c.isupper() else c for c in type(event).__name__)
    assert record["event"] == snake.lstrip("_")
    for field in attrs.fields(type(event)):
        assert field.name in record
    assert describe_event(event)


def test_the_json_form_of_a_message_and_a_transfer() -> None:
    events = every_event()
    assert event_to_json(events[4])["message"] == {
        "id": "00000000-0000-0000-0000-000000000002",
        "sender_id": "00000000-0000-0000-0000-000000000001",
        "sender_name": "Bob",
        "timestamp": 1.5,
        "text": "hi",
    }
    assert event_to_json(events[9])["transfer"] == {
        "id": "00000000-0000-0000-0000-000000000003",
        "peer_id": "00000000-0000-0000-0000-000000000001",
        "filename": "a.txt",
        "size": 10,
        "direction": "receive",
        "path": "/tmp/a.txt",
        "offset": 0,
    }
    assert event_to_json(events[10])["error"] == "no room"


async def test_the_demo_draws_a_progress_bar_on_a_terminal() -> None:
    parent, child = pty.openpty()
    output = b""
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            screen = trio.lowlevel.FdStream(parent)

            async def read_screen() -> None:
                nonlocal output
                with contextlib.suppress(OSError, trio.BrokenResourceError):
                    while chunk := await screen.receive_some(65536):
                        output += chunk

            done = trio.Event()

            async def read_screen_until_the_summary() -> None:
                await read_screen()
                done.set()

            nursery.start_soon(read_screen_until_the_summary)
            result = await trio.run_process(
                [sys.executable, "-m", "trio_p2p", "demo"], stdout=child, check=False
            )
            os.close(child)  # the reader then sees the end of the screen's output
            with trio.move_on_after(2):
                await done.wait()
            nursery.cancel_scope.cancel()
    assert result.returncode == 0
    text = output.decode(errors="replace")
    assert "Bob receives holiday-video.bin" in text  # the bar's title
    assert "MB" in text  # its byte counts
    assert "identical" in text
