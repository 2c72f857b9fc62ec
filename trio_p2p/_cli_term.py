"""The menu's terminal: a line being typed that printed events never garble.

On a terminal, the keyboard is read key by key (cbreak mode, no echo) and the
bottom of the screen is kept as a small live region: the status lines
(progress bars) and, under them, the prompt with what is typed so far. Text
printed while someone types goes above that region, which is then drawn
again, so nothing typed is lost or overwritten. Anywhere else (a pipe, a
file), lines are read and printed plainly.
"""

from __future__ import annotations

import codecs
import contextlib
import io
import math
import os
import shutil
import sys
import termios
import tty
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Literal, TextIO, cast

import rich.console
import trio

__all__ = ["Terminal", "open_terminal"]

_ESC = "\x1b"
_ColorSystem = Literal["standard", "256", "truecolor", "windows"]
#: Lines typed ahead of the questions that will take them, at most.
_TYPE_AHEAD = 16


class Terminal:
    """Questions and answers on one side, printed lines on the other.

    Use :func:`open_terminal` to get one: it runs the keyboard reader and puts
    the terminal back as it was on the way out.
    """

    def __init__(self, fd: int, out: TextIO) -> None:
        self._fd = fd
        self._out = out
        #: True on a terminal: key by key, with a live bottom region.
        self.interactive = os.isatty(fd) and out.isatty()
        self._lines_in, self._lines = trio.open_memory_channel[str](_TYPE_AHEAD)
        self._prompt = ""
        self._typed: list[str] = []
        self._status: list[str] = []
        self._rows_above = 0  # rows of the live region above the cursor's row
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._escape = ""  # an escape sequence being skipped
        # what rich would do on this terminal (colours, or none with NO_COLOR)
        colors = rich.console.Console(file=out).color_system if self.interactive else None
        self._colors = cast(_ColorSystem | None, colors)

    # ------------------------------------------------------------ output

    @property
    def width(self) -> int:
        """Columns of the terminal (80 when not a terminal)."""
        return shutil.get_terminal_size((80, 24)).columns

    @property
    def typing(self) -> bool:
        """True while something is typed and not yet entered."""
        return bool(self._typed)

    def print(self, text: str = "") -> None:
        """Print *text* (one or more lines) above the prompt."""
        if not self.interactive:
            self._out.write(text + "\n")
            self._out.flush()
            return
        self._draw(text)

    def render(self, renderable: Any, width: int | None = None) -> list[str]:
        """*renderable* (anything rich can print) as lines with this terminal's colours."""
        console = rich.console.Console(
            file=io.StringIO(),
            width=width or max(20, self.width - 1),
            force_terminal=self.interactive,
            color_system=self._colors,
            highlight=False,
        )
        with console.capture() as capture:
            console.print(renderable)
        return capture.get().rstrip("\n").split("\n")

    def set_status(self, lines: Sequence[str]) -> None:
        """Show *lines* (each one row wide) above the prompt until changed."""
        if not self.interactive:
            return
        self._status = list(lines)
        self._draw(None)

    def _draw(self, above: str | None) -> None:
        parts = ["\r"]
        if self._rows_above:
            parts.append(f"{_ESC}[{self._rows_above}A")
        parts.append(f"{_ESC}[J")
        if above is not None:
            parts.append(above + "\n")
        for line in self._status:
            parts.append(line + "\n")
        line = self._prompt + "".join(self._typed)
        parts.append(line)
        rows = max(1, math.ceil(len(line) / max(1, self.width)))
        self._rows_above = len(self._status) + rows - 1
        self._out.write("".join(parts))
        self._out.flush()

    def _clear(self) -> None:
        """Remove the live region (on the way out)."""
        if self.interactive:
            self._status = []
            self._prompt = ""
            self._typed = []
            self._draw(None)

    # ------------------------------------------------------------ input

    async def ask(self, prompt: str) -> str:
        """Show *prompt* and return the line typed after it (without the newline).

        Raises:
            EOFError: the input ended (Ctrl-D on an empty line, or end of file).
        """
        self._prompt = prompt
        if self.interactive:
            self._draw(None)
        else:
            self._out.write(prompt + "\n")
            self._out.flush()
        try:
            return await self._lines.receive()
        except trio.EndOfChannel:
            raise EOFError from None
        finally:
            if self._prompt == prompt:
                self._prompt = ""

    def _enter(self) -> None:
        line = "".join(self._typed)
        entered = self._prompt + line
        self._typed = []
        self._prompt = ""
        self._draw(entered)  # what was asked and answered stays on the screen
        try:
            self._lines_in.send_nowait(line)
        except trio.WouldBlock:
            self._out.write("\a")  # too much typed ahead

    def feed(self, data: bytes) -> None:
        """Take keys from the keyboard (interactive) or lines (otherwise)."""
        text = self._decoder.decode(data)
        if not self.interactive:
            self._typed.append(text)
            *lines, rest = "".join(self._typed).split("\n")
            self._typed = [rest] if rest else []
            for line in lines:
                with contextlib.suppress(trio.WouldBlock):  # more than will be asked
                    self._lines_in.send_nowait(line.rstrip("\r"))
            return
        changed = False
        for key in text:
            if self._escape:  # skip arrow keys and other escape sequences
                self._escape += key
                if len(self._escape) == 2:
                    if key not in "[O":  # Alt and a key: dropped
                        self._escape = ""
                elif "@" <= key <= "~" or len(self._escape) > 16:
                    self._escape = ""
                continue
            if key == _ESC:
                self._escape = key
            elif key in "\r\n":
                self._enter()
                changed = False
            elif key in "\x7f\b":
                if self._typed:
                    self._typed.pop()
                    changed = True
            elif key == "\x15":  # Ctrl-U: the whole line
                self._typed = []
                changed = True
            elif key == "\x17":  # Ctrl-W: the last word
                while self._typed and self._typed[-1] == " ":
                    self._typed.pop()
                while self._typed and self._typed[-1] != " ":
                    self._typed.pop()
                changed = True
            elif key == "\x04":  # Ctrl-D: end of input on an empty line
                if not self._typed:
                    self.end()
                    return
            elif key == "\x0c":  # Ctrl-L
                changed = True
            elif key.isprintable():
                self._typed.append(key)
                changed = True
        if changed:
            self._draw(None)

    def end(self) -> None:
        """End the input: the question being asked, and every later one, raise EOFError."""
        self._lines_in.close()

    async def read_keys(self) -> None:
        """Feed what the keyboard (or standard input) gives until it ends."""
        while True:
            data = await trio.to_thread.run_sync(_read, self._fd, abandon_on_cancel=True)
            if not data:
                self.end()
                return
            self.feed(data)


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, 4096)
    except OSError:
        return b""


@asynccontextmanager
async def open_terminal(
    fd: int | None = None, out: TextIO | None = None
) -> AsyncIterator[Terminal]:
    """A :class:`Terminal` on standard input and output, for the block.

    On a terminal, keys are read one by one without echo while the block runs
    (Ctrl-C still interrupts); the terminal's settings come back afterwards.
    """
    fd = sys.stdin.fileno() if fd is None else fd
    terminal = Terminal(fd, sys.stdout if out is None else out)
    saved = None
    if terminal.interactive:
        saved = termios.tcgetattr(fd)
        tty.setcbreak(fd, termios.TCSANOW)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(terminal.read_keys)
            try:
                yield terminal
            finally:
                nursery.cancel_scope.cancel()
    finally:
        terminal._clear()
        if saved is not None:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)
