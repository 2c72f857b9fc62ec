"""The interactive menu: its pieces, then two or three real processes driven through a pty."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pathlib
import re
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

import pexpect
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from trio_p2p import Direction, FileOffered, Message, MessageReceived, PeerInfo, Text, Transfer
from trio_p2p._cli import _first_word
from trio_p2p._cli_json import describe_event, event_to_json, event_to_line, printable
from trio_p2p._cli_menu import _Bar, choose_peer
from trio_p2p._cli_term import Terminal

from .conftest import free_udp_port

# ------------------------------------------------------------ picking a peer


def peer(name: str, prefix: str) -> PeerInfo:
    """A peer called *name*, whose id starts with *prefix*."""
    text = (prefix + "0" * 32)[:32]
    return PeerInfo(id=uuid.UUID(text), name=name, address="127.0.0.1", port=1, last_seen=0.0)


def test_choose_peer_by_number_name_prefix_or_id() -> None:
    bob, bobby, carol = peer("Bob", "1"), peer("bobby", "2"), peer("Carol", "c0ffee")
    peers = [bob, bobby, carol]
    assert choose_peer(peers, "1") is bob
    assert choose_peer(peers, " 3 ") is carol
    assert choose_peer(peers, "ca") is carol
    assert choose_peer(peers, "BOB") is bob  # a whole name wins over longer ones
    assert choose_peer(peers, "bobb") is bobby
    assert choose_peer(peers, "c0ff") is carol  # an id prefix
    assert choose_peer(peers, "0") == "there is no peer number 0 (1 to 3)"
    assert choose_peer(peers, "4") == "there is no peer number 4 (1 to 3)"
    assert choose_peer(peers, "dave") == "no peer here is called 'dave'"
    ambiguous = "'b' could be Bob, bobby: type more of the name, or the number"
    assert choose_peer(peers, "b") == ambiguous


def test_the_first_word_decides_between_a_command_and_the_menu() -> None:
    assert _first_word(["listen", "bob"]) == "listen"
    assert _first_word(["-v", "--port", "0", "send", "x"]) == "send"
    assert _first_word(["--broadcast", "127.255.255.255", "alice"]) == "alice"
    assert _first_word(["--port=0", "peers"]) == "peers"
    assert _first_word(["-vv"]) is None
    assert _first_word(["--", "listen"]) == "listen"


# ------------------------------------------------------------ what peers send, on a terminal


@given(st.text())
def test_printable_leaves_nothing_a_terminal_acts_on(text: str) -> None:
    shown = printable(text)
    assert shown.isprintable()
    if text.isprintable():
        assert shown == text


@given(st.text(), st.text())
def test_json_lines_are_printable_and_decode_to_what_was_sent(text: str, name: str) -> None:
    sent = Message(uuid.uuid4(), uuid.uuid4(), "mallory", 0.0, Text(text))
    transfer = Transfer(uuid.uuid4(), uuid.uuid4(), name or "x", 1, Direction.RECEIVE)
    for event in (MessageReceived(sent), FileOffered(transfer)):
        line = event_to_line(event)
        assert line.isprintable()
        assert json.loads(line) == event_to_json(event)


def test_printable_escapes_controls_line_breaks_and_bidi_overrides() -> None:
    assert printable("héllo 日本 [b]") == "héllo 日本 [b]"
    assert printable("\x1b[2J\nnext\x9b\u202egnp.exe\U000e0001") == (
        "\\x1b[2J\\nnext\\x9b\\u202egnp.exe\\U000e0001"
    )


def test_hostile_texts_and_file_names_are_shown_inert() -> None:
    hostile = "[red]x[/red]\x1b]0;owned\x07\nfake line"
    sent = Message(uuid.uuid4(), uuid.uuid4(), "mallory", 0.0, Text(hostile))
    sentence = describe_event(MessageReceived(sent))
    assert sentence == "mallory: [red]x[/red]\\x1b]0;owned\\x07\\nfake line"
    terminal, _ = screen_terminal()
    transfer = Transfer(uuid.uuid4(), uuid.uuid4(), hostile, 10, Direction.RECEIVE)
    line = _Bar(transfer, "mallory").line(terminal)
    assert "[red]x[/red]" in line  # not taken as markup
    assert "\x07" not in line
    assert "\n" not in line
    assert "\x1b]" not in line  # colour codes (ESC [) are ours; ESC ] is not


# ------------------------------------------------------------ the terminal


def screen_terminal() -> tuple[Terminal, io.StringIO]:
    """A terminal drawing into a string, as it would on a real one."""
    out = io.StringIO()
    terminal = Terminal(os.open(os.devnull, os.O_RDONLY), out)
    terminal.interactive = True
    return terminal, out


async def test_printed_lines_go_above_the_line_being_typed() -> None:
    with trio.fail_after(5):
        terminal, out = screen_terminal()
        async with trio.open_nursery() as nursery:
            answers: list[str] = []

            async def ask() -> None:
                answers.append(await terminal.ask("bob> "))

            nursery.start_soon(ask)
            await trio.testing.wait_all_tasks_blocked()
            terminal.feed("héllo".encode()[:3])  # a key split across two reads
            terminal.feed("héllo".encode()[3:])
            terminal.print("* alice: hi")
            screen = out.getvalue()
            # the event, then the prompt and what was typed, drawn again under it
            assert screen.endswith("\r\x1b[J* alice: hi\nbob> héllo")
            terminal.set_status(["[####    ] 50%"])
            assert out.getvalue().endswith("\r\x1b[J[####    ] 50%\nbob> héllo")
            terminal.print("* more")  # the status line is redrawn too: go up one row first
            assert out.getvalue().endswith("\r\x1b[1A\x1b[J* more\n[####    ] 50%\nbob> héllo")
            terminal.feed(b"\x7f\x7f\x1b[D\x1bOPp!\n")  # backspaces, arrow and F1 ignored
        assert answers == ["hélp!"]
        assert not terminal.typing
        assert "bob> hélp!\n" in out.getvalue()  # the answered question stays on screen


async def test_line_editing_keys_and_end_of_input() -> None:
    with trio.fail_after(5):
        terminal, _ = screen_terminal()
        terminal.feed(b"one two three\x17\x17four\n")  # Ctrl-W twice
        terminal.feed(b"gone\x15kept\n")  # Ctrl-U
        terminal.feed(b"\x1bxtyped\n")  # Alt-x dropped
        assert await terminal.ask("> ") == "one four"
        assert await terminal.ask("> ") == "kept"
        assert await terminal.ask("> ") == "typed"
        terminal.feed(b"half\x04")  # Ctrl-D on a line with text: ignored
        terminal.feed(b"\x15\x04")  # on an empty line: the input ends
        with pytest.raises(EOFError):
            await terminal.ask("> ")


async def test_plain_input_is_read_line_by_line() -> None:
    with trio.fail_after(5):
        out = io.StringIO()
        terminal = Terminal(os.open(os.devnull, os.O_RDONLY), out)
        assert not terminal.interactive
        terminal.feed(b"first\r\nsec")
        terminal.feed(b"ond\n")
        terminal.set_status(["not shown"])
        assert await terminal.ask("q1") == "first"
        assert await terminal.ask("q2") == "second"
        terminal.print("event")
        assert out.getvalue() == "q1\nq2\nevent\n"
        terminal.end()
        with pytest.raises(EOFError):
            await terminal.ask("q3")


# ------------------------------------------------------------ real processes, through a pty

STEP = 15.0  # seconds any one expected output may take


class _Tee:
    def __init__(self, *files: TextIO) -> None:
        self.files = files

    def write(self, text: str) -> None:
        for file in self.files:
            file.write(text)

    def flush(self) -> None:
        for file in self.files:
            file.flush()


class Node:
    """A ``python -m trio_p2p`` process driven through a pseudo-terminal."""

    def __init__(self, args: list[str], log: pathlib.Path) -> None:
        self.child = pexpect.spawn(
            sys.executable,
            ["-m", "trio_p2p", *args],
            encoding="utf-8",
            timeout=STEP,
            dimensions=(50, 140),
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.screen = io.StringIO()
        self.log = log.open("w")
        self.child.logfile_read = _Tee(self.log, self.screen)

    def expect(self, pattern: str) -> str:
        """Wait for *pattern* (plain text) in the output; the text before it."""
        self.child.expect_exact(pattern)
        return str(self.child.before)

    def saw(self, text: str) -> None:
        """Wait until *text* has been shown, at any time since the start."""
        if text not in self.screen.getvalue():
            self.child.expect_exact(text)

    def line(self, text: str) -> None:
        """Type *text* and Enter."""
        self.child.send(text + "\r")

    def answer(self, question: str, text: str) -> None:
        """Wait for *question*, then type *text* and Enter."""
        self.expect(question)
        self.line(text)

    def exit_status(self) -> int | None:
        """Wait for the process to end; its exit status."""
        self.child.expect(pexpect.EOF)
        self.child.close()
        status: int | None = self.child.exitstatus
        return status


def menu_args(discovery_port: int, folder: pathlib.Path, *extra: str) -> list[str]:
    """Options that keep a node on loopback, on a private discovery port."""
    return [
        "--port",
        "0",
        "--discovery-port",
        str(discovery_port),
        "--broadcast",
        "127.255.255.255",
        "--download-dir",
        str(folder),
        *extra,
    ]


@contextmanager
def nodes(tmp_path: pathlib.Path) -> Iterator[Callable[[str, list[str]], Node]]:
    """Start nodes with ``start(name, args)``; every one is killed at the end."""
    started: list[Node] = []

    def start(name: str, args: list[str]) -> Node:
        node = Node(args, tmp_path / f"{name}.screen")
        started.append(node)
        return node

    try:
        yield start
    finally:
        for node in started:
            node.child.close(force=True)
            node.log.close()


def digest(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def in_thread(scenario: Callable[[], None], seconds: float) -> None:
    """Run a blocking pexpect scenario, bounded in time."""
    with trio.fail_after(seconds):
        await trio.to_thread.run_sync(scenario, abandon_on_cancel=True)


async def test_every_menu_command_between_two_processes(tmp_path: pathlib.Path) -> None:
    port = free_udp_port()
    source = tmp_path / "photo album.bin"
    source.write_bytes(os.urandom(6 * 1024 * 1024 + 123))

    def scenario() -> None:
        with nodes(tmp_path) as start:
            # a third node that only listens, to see the others leave
            watcher = start(
                "carol", ["-v", "listen", "carol", "--json", *menu_args(port, tmp_path)]
            )
            alice = start("alice", [*menu_args(port, tmp_path / "alice"), "alice"])
            bob = start("bob", [*menu_args(port, tmp_path / "bob"), "bob"])
            watcher.expect('"event": "peer_discovered"')
            alice.expect("Type h for help")
            alice.expect("alice> ")
            bob.expect("bob> ")

            alice.line("h")
            alice.expect("6  disconnect a peer")
            alice.line("8")
            alice.expect("asked the network")
            alice.saw("* found bob")
            alice.saw("* found carol")
            alice.line("1")
            alice.expect("carol")  # the table lists bob and carol
            alice.line("2")
            alice.expect("not connected to any peer")

            # bad input gets one line, and the menu goes on
            alice.line("9")
            alice.expect("unknown command '9': type h for the list")
            alice.line("3")
            alice.answer("connect to (number or name; empty to cancel): ", "7")
            alice.expect("there is no peer number 7 (1 to 2)")
            alice.line("4")
            alice.expect("not connected to any peer: connect with 3 first")

            alice.line("3")
            alice.answer("connect to (number or name; empty to cancel): ", "bo")
            alice.expect("* connected to bob")
            bob.saw("* connected to alice")
            alice.line("2")
            alice.expect("127.0.0.1")

            # an event arriving while alice types does not garble her line
            alice.expect("alice> ")
            alice.child.send("4")
            bob.line("4")
            bob.answer("send to (number or name; empty to cancel): ", "1")
            bob.answer("message to alice: ", "hi alice, from bob")
            bob.expect("alice has the message")
            alice.expect("* bob: hi alice, from bob")
            alice.expect("alice> 4")  # drawn again under the event
            alice.child.send("\r")
            alice.answer("send to (number or name; empty to cancel): ", "bob")
            alice.answer("message to bob: ", "hello bob")
            alice.expect("bob has the message")
            bob.expect("* alice: hello bob")

            alice.line("5")
            alice.answer("send the file to (number or name; empty to cancel): ", "1")
            alice.answer("file to send: ", str(tmp_path / "missing.bin"))
            alice.expect("no such file: ")
            alice.line("5")
            alice.answer("send the file to (number or name; empty to cancel): ", "1")
            alice.answer("file to send: ", f"'{source}'")
            alice.expect("* sending photo album.bin (6,291,579 bytes) to bob")
            bob.expect("* receiving photo album.bin (6,291,579 bytes) from alice")
            bob.expect("photo album.bin from alice")  # the progress bars
            alice.saw("photo album.bin to bob")
            bob.expect("* photo album.bin: done, verified as ")
            alice.expect("* photo album.bin: done, verified (")
            received = tmp_path / "bob" / "photo album.bin"
            assert digest(received) == digest(source)

            alice.line("7")
            status = alice.expect("in flight")
            assert "TCP port" in status
            assert str(port) in status
            assert "127.255.255.255" in status
            assert "1 done, 0 failed" in status

            alice.line("6")
            alice.answer("disconnect from (number or name; empty to cancel): ", "bob")
            alice.expect("* disconnected from bob")
            bob.expect("* disconnected from alice")

            # Ctrl-C quits cleanly: bob says goodbye, and the others see him go
            bob.child.sendintr()
            bob.expect("bob left the network")
            assert bob.exit_status() == 0
            alice.saw("* lost bob")
            # q quits too
            alice.line("q")
            alice.expect("alice left the network")
            assert alice.exit_status() == 0
            # both left with a goodbye beacon, not by falling silent
            gone: set[str] = set()
            for _ in range(2):
                watcher.child.expect(r"peer (\w+) \([0-9a-f-]+\) said goodbye")
                match = watcher.child.match
                assert isinstance(match, re.Match)
                gone.add(match.group(1))
            assert gone == {"alice", "bob"}

    await in_thread(scenario, 150)


async def test_offers_are_asked_about_without_auto_accept(tmp_path: pathlib.Path) -> None:
    port = free_udp_port()
    source = tmp_path / "report.pdf"
    source.write_bytes(os.urandom(300_000))

    def scenario() -> None:
        with nodes(tmp_path) as start:
            # alice logs (-v): the records are printed above her prompt
            alice = start("alice", ["-v", *menu_args(port, tmp_path / "alice"), "alice"])
            bob = start("bob", [*menu_args(port, tmp_path / "bob", "--no-auto-accept"), "bob"])
            alice.expect("alice> ")
            bob.expect("bob> ")
            alice.line("8")
            alice.saw("* found bob")
            alice.line("3")
            alice.answer("connect to (number or name; empty to cancel): ", "bob")
            bob.expect("* connected to alice")

            alice.line("5")
            alice.answer("send the file to (number or name; empty to cancel): ", "bob")
            alice.answer("file to send: ", str(source))
            bob.expect("* alice offers report.pdf (300,000 bytes)")
            bob.answer("accept report.pdf (300,000 bytes) from alice? [y/n] ", "y")
            bob.expect("* report.pdf: done, verified as ")
            alice.expect("* report.pdf: done, verified")
            assert digest(tmp_path / "bob" / "report.pdf") == digest(source)

            alice.line("5")
            alice.answer("send the file to (number or name; empty to cancel): ", "bob")
            alice.answer("file to send: ", str(source))
            bob.answer("accept report.pdf (300,000 bytes) from alice? [y/n] ", "n")
            bob.expect("declined report.pdf")
            alice.expect("* report.pdf: failed: ")
            alice.expect("declined by the user")
            assert sorted(p.name for p in (tmp_path / "bob").iterdir()) == ["report.pdf"]

            # Ctrl-D on an empty line quits as well
            bob.child.sendeof()
            bob.expect("bob left the network")
            assert bob.exit_status() == 0
            alice.saw("trio_p2p.discovery INFO peer bob (")
            alice.saw(") said goodbye\r\nalice> ")
            alice.saw("* lost bob")
            alice.line("0")
            assert alice.exit_status() == 0

    await in_thread(scenario, 90)


async def test_the_menu_asks_for_a_name_and_reads_plain_lines(tmp_path: pathlib.Path) -> None:
    # stdin and stdout are pipes here: no live region, just lines
    args = menu_args(free_udp_port(), tmp_path)
    with trio.fail_after(30):
        result = await trio.run_process(
            [sys.executable, "-m", "trio_p2p", *args],
            stdin=b"dora\n7\nwhat\n5\n\nq\n",
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    out = result.stdout.decode()
    assert result.returncode == 0, out + result.stderr.decode()
    assert "your name [" in out
    assert "dora (" in out
    assert "unknown command 'what'" in out
    assert "not connected to any peer: connect with 3 first" in out
    assert "dora left the network" in out
    assert "\x1b[" not in out  # no drawing codes in plain output


async def test_usage_errors_exit_2() -> None:
    for args in (["--port", "many"], ["listen"], ["send", "x", "--to", "y"]):
        with trio.fail_after(30):
            result = await trio.run_process(
                [sys.executable, "-m", "trio_p2p", *args],
                stdin=subprocess.DEVNULL,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
        assert result.returncode == 2, args
        assert b"usage:" in result.stderr
