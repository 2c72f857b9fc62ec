"""Safe names in the download folder, whatever name a peer offers."""

from __future__ import annotations

import os
import pathlib
import unicodedata
import uuid

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from trio_p2p._files import (
    MAX_NAME_BYTES,
    PART_SUFFIX,
    SIDECAR_SUFFIX,
    DownloadFolder,
    resume_key,
    safe_filename,
    unique_path,
)

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


SENDER = uuid.UUID(int=1)
DESCRIBES: dict[str, object] = {"sender": str(SENDER), "name": "a.bin", "size": 10, "mtime_ns": 1}


def test_a_partial_resumes_only_the_same_file(tmp_path: pathlib.Path) -> None:
    folder = DownloadFolder(tmp_path / "dl", 0)
    key = resume_key(SENDER, "a.bin", 10, 1)
    partial = folder.open_partial(key, DESCRIBES, 10)
    assert partial.offset == 0
    assert partial.sidecar.exists()  # written before any data
    partial.file.write(b"hello")
    partial.file.close()
    assert folder.held(key, DESCRIBES, 10) == 5
    assert folder.held(key, {**DESCRIBES, "mtime_ns": 2}, 10) == 0  # another file
    assert folder.held(key, DESCRIBES, 4) == 0  # holds more than the file has
    again = folder.open_partial(key, DESCRIBES, 10)
    assert again.offset == 5
    again.file.write(b"world")
    saved = folder.finish(again, "a.bin")
    assert saved == tmp_path / "dl" / "a.bin"
    assert saved.read_bytes() == b"helloworld"
    assert sorted(p.name for p in saved.parent.iterdir()) == ["a.bin"]


def test_finishing_never_overwrites(tmp_path: pathlib.Path) -> None:
    folder = DownloadFolder(tmp_path, 0)
    (tmp_path / "a.bin").write_bytes(b"precious")
    partial = folder.open_partial(resume_key(SENDER, "a.bin", 3, 0), DESCRIBES, 3)
    partial.file.write(b"new")
    saved = folder.finish(partial, "../a.bin")
    assert saved == tmp_path / "a (1).bin"
    assert (tmp_path / "a.bin").read_bytes() == b"precious"
    assert saved.read_bytes() == b"new"


def test_discard_and_sweep_remove_only_partials(tmp_path: pathlib.Path) -> None:
    folder = DownloadFolder(tmp_path, 0)
    old = folder.open_partial(resume_key(SENDER, "old", 1, 0), DESCRIBES, 1)
    old.file.close()
    fresh = folder.open_partial(resume_key(SENDER, "new", 1, 0), DESCRIBES, 1)
    fresh.file.close()
    (tmp_path / "mine.txt").write_text("not ours to remove")
    (tmp_path / ".hidden").write_text("not ours either")
    for path in (old.path, old.sidecar):
        os.utime(path, (1000, 1000))
    assert folder.sweep(ttl=3600) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [".hidden", "mine.txt", fresh.path.name, fresh.sidecar.name]
    )
    folder.discard(folder.open_partial(resume_key(SENDER, "new", 1, 0), DESCRIBES, 1))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden", "mine.txt"]
    assert DownloadFolder(tmp_path / "missing", 0).sweep(ttl=1) == 0


def test_kept_partials_are_bounded_oldest_first_busy_ones_never(tmp_path: pathlib.Path) -> None:
    folder = DownloadFolder(tmp_path, 0)
    keys = [resume_key(SENDER, f"f{i}", 1, 0) for i in range(5)]
    for i, key in enumerate(keys):
        partial = folder.open_partial(key, DESCRIBES, 1)
        partial.file.close()
        for path in (partial.path, partial.sidecar):
            os.utime(path, (1000 + i, 1000 + i))
    (tmp_path / "mine.txt").write_text("not a partial")
    newest = folder.open_partial(resume_key(SENDER, "new", 1, 0), DESCRIBES, 1)
    newest.file.write(b"x")
    # keys[0] is the oldest but under way: it stays; keys[1] and keys[2] go
    assert folder.keep(newest, frozenset({keys[0]}), limit=3) == 2
    assert newest.file.closed
    left = {p.name for p in tmp_path.iterdir()}
    for key in (keys[0], keys[3], keys[4], resume_key(SENDER, "new", 1, 0)):
        assert f".{key}{PART_SUFFIX}" in left
        assert f".{key}{SIDECAR_SUFFIX}" in left
    assert len(left) == 9  # four partials with their sidecars, and mine.txt


def aged_partials(folder: DownloadFolder, descriptions: list[dict[str, object]]) -> list[str]:
    """One kept partial per description (their keys), each a second older than the next."""
    keys = []
    for i, describes in enumerate(descriptions):
        key = resume_key(SENDER, f"f{i}", 1, 0)
        keys.append(key)
        partial = folder.open_partial(key, describes, 1)
        partial.file.close()
        for path in (partial.path, partial.sidecar):
            os.utime(path, (1000 + i, 1000 + i))
    return keys


def still_kept(folder: DownloadFolder, keys: list[str]) -> list[str]:
    return [key for key in keys if (folder.folder / f".{key}{PART_SUFFIX}").exists()]


def test_the_sender_keeping_most_partials_loses_its_own_first(tmp_path: pathlib.Path) -> None:
    folder = DownloadFolder(tmp_path, 0)
    honest = {**DESCRIBES, "sender": str(uuid.UUID(int=2))}
    keys = aged_partials(folder, [honest, DESCRIBES, DESCRIBES, DESCRIBES])
    newest = folder.open_partial(resume_key(SENDER, "new", 1, 0), DESCRIBES, 1)
    assert folder.keep(newest, frozenset(), limit=3) == 2
    # the honest sender's partial is the oldest, but the other sender keeps more
    assert still_kept(folder, keys) == [keys[0], keys[3]]


def test_a_partial_resumes_when_the_same_sender_comes_from_another_address(
    tmp_path: pathlib.Path,
) -> None:
    folder = DownloadFolder(tmp_path, 0)
    key = resume_key(SENDER, "f", 100, 0)
    partial = folder.open_partial(key, {**DESCRIBES, "address": "127.0.0.2"}, 100)
    partial.file.write(b"x" * 50)
    partial.file.close()
    assert folder.held(key, {**DESCRIBES, "address": "127.0.0.3"}, 100) == 50
    assert folder.held(key, DESCRIBES, 100) == 50  # (a sidecar from before addresses)
    assert folder.held(key, {**DESCRIBES, "size": 99}, 100) == 0  # (another file)


def test_one_host_keeping_most_partials_loses_its_own_first_whatever_its_keys(
    tmp_path: pathlib.Path,
) -> None:
    folder = DownloadFolder(tmp_path, 0)
    honest = {**DESCRIBES, "sender": str(uuid.UUID(int=1)), "address": "127.0.0.2"}
    # a throw-away key for each of Mallory's partials, all from one address
    mallory = [
        {**DESCRIBES, "sender": str(uuid.UUID(int=100 + i)), "address": "127.0.0.3"}
        for i in range(3)
    ]
    keys = aged_partials(folder, [honest, *mallory])
    newest = folder.open_partial(resume_key(SENDER, "new", 1, 0), DESCRIBES, 1)
    assert folder.keep(newest, frozenset(), limit=3) == 2
    assert still_kept(folder, keys) == [keys[0], keys[3]]


def test_room_is_checked_with_the_margin(tmp_path: pathlib.Path) -> None:
    folder = DownloadFolder(tmp_path / "not-yet", 1 << 20)
    folder.check_room(1000)  # the nearest existing parent's file system is used
    with pytest.raises(OSError, match="not enough free space"):
        DownloadFolder(tmp_path, 1 << 62).check_room(1)


def test_a_dangling_link_counts_as_taken(tmp_path: pathlib.Path) -> None:
    (tmp_path / "a.txt").symlink_to(tmp_path / "nowhere")
    assert unique_path(tmp_path, "a.txt") == tmp_path / "a (1).txt"
    folder = DownloadFolder(tmp_path, 0)
    partial = folder.open_partial(resume_key(SENDER, "a.txt", 1, 0), DESCRIBES, 1)
    partial.file.write(b"x")
    assert folder.finish(partial, "a.txt") == tmp_path / "a (1).txt"  # and it returns


def test_the_partial_being_kept_counts_for_its_own_sender(tmp_path: pathlib.Path) -> None:
    folder = DownloadFolder(tmp_path, 0)
    honest = {**DESCRIBES, "address": "127.0.0.2"}
    mallory = {**DESCRIBES, "address": "127.0.0.3"}
    keys = aged_partials(folder, [honest, mallory])
    newest = folder.open_partial(resume_key(SENDER, "new", 1, 0), mallory, 1)
    # one each among the candidates, but Mallory keeps two with the newest
    assert folder.keep(newest, frozenset(), limit=2) == 1
    assert still_kept(folder, keys) == [keys[0]]
