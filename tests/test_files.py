"""Safe names in the download folder, whatever name a peer offers."""

from __future__ import annotations

import os
import pathlib
import unicodedata

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from trio_p2p._files import MAX_NAME_BYTES, safe_filename, unique_path

HOSTILE = [
    "../../x",
    "/etc/passwd",
    "C:\\x",
    "C:\\Windows\\System32\\drivers\\etc\\hosts",
    "..",
    ".",
    "",
    "   ",
    "a\x00b",
    "\x00",
    "x" * 1000,
    "é" * 1000 + ".txt",
    "CON",
    "con.txt",
    "LPT1.log",
    "COM¹",
    ".bashrc",
    "...",
    "name.",
    "evil\u202etxt.exe",
    "line\nbreak",
    "tab\there",
    "a/..",
    "dir/",
    "\\\\server\\share\\file",
    "file:stream",
    "naïve résumé.pdf",
    "日本語のファイル.txt",
    "\ud800",
]


def check_safe(name: str) -> None:
    assert name
    assert name not in (".", "..")
    assert not name.startswith(".")
    assert not set(name) & set('<>:"/\\|?*\x00')
    assert len(name.encode("utf-8")) <= MAX_NAME_BYTES
    assert name == name.strip(" .")
    assert all(
        unicodedata.category(c) not in {"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"} for c in name
    )
    assert name.split(".", 1)[0].rstrip(" ").upper() not in {
        "CON",
        "PRN",
        "AUX",
        "NUL",
        "COM1",
        "LPT1",
    }


@pytest.mark.parametrize("offered", HOSTILE)
def test_hostile_names_become_safe_base_names(offered: str, tmp_path: pathlib.Path) -> None:
    name = safe_filename(offered)
    check_safe(name)
    target = (tmp_path / name).resolve()
    assert target.parent == tmp_path.resolve()


@pytest.mark.parametrize(
    ("offered", "expected"),
    [
        ("report.pdf", "report.pdf"),
        ("../../x", "x"),
        ("/etc/passwd", "passwd"),
        ("C:\\x", "x"),
        ("..", "file"),
        ("", "file"),
        ("a\x00b", "ab"),
        ("CON", "_CON"),
        ("con.txt", "_con.txt"),
        (".bashrc", "bashrc"),
        ("evil\u202etxt.exe", "eviltxt.exe"),
        ("line\nbreak", "linebreak"),
        ("a  b\u00a0c", "a b c"),
        ("file:stream", "file_stream"),
        ("dir/", "dir"),
        ("naïve résumé.pdf", "naïve résumé.pdf"),
    ],
)
def test_names_are_reduced_as_documented(offered: str, expected: str) -> None:
    assert safe_filename(offered) == expected


def test_long_names_keep_their_extension() -> None:
    name = safe_filename("é" * 1000 + ".tar.gz")
    assert name.endswith(".gz")
    assert len(name.encode()) <= MAX_NAME_BYTES
    assert safe_filename("x" * 1000) == "x" * MAX_NAME_BYTES


@settings(max_examples=500)
@given(st.text(max_size=300))
@example("../" * 50 + "passwd")
def test_any_offered_name_lands_inside_the_folder(offered: str) -> None:
    name = safe_filename(offered)
    check_safe(name)
    folder = pathlib.Path("/srv/downloads")
    assert os.path.normpath(folder / name).startswith(str(folder) + "/")
    assert safe_filename(name) == name  # already safe: unchanged


def test_unique_path_never_names_an_existing_file(tmp_path: pathlib.Path) -> None:
    (tmp_path / "report.pdf").write_text("first")
    (tmp_path / "report (1).pdf").write_text("second")
    assert unique_path(tmp_path, "report.pdf") == tmp_path / "report (2).pdf"
    assert unique_path(tmp_path, "new.txt") == tmp_path / "new.txt"
    (tmp_path / "README").write_text("x")
    assert unique_path(tmp_path, "README") == tmp_path / "README (1)"
    long = "y" * (MAX_NAME_BYTES - 4) + ".txt"
    (tmp_path / long).write_text("x")
    other = unique_path(tmp_path, long)
    assert other.name.endswith(" (1).txt")
    assert len(other.name.encode()) <= MAX_NAME_BYTES
