"""The command-line tool, run as a person would (a subprocess)."""

from __future__ import annotations

import subprocess
import sys

import trio


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
    assert out.rstrip().endswith("OK")
    # it stays on loopback
    assert "127.255.255.255" in out


async def test_version_and_usage_errors() -> None:
    result = await run_tool("--version")
    assert result.returncode == 0
    assert result.stdout.decode().startswith("trio_p2p ")
    result = await run_tool("no-such-command")
    assert result.returncode == 2
    assert b"invalid choice" in result.stderr
