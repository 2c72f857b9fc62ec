"""Files on disk for transfers: safe names, partial files, hashing. Blocking code.

The offered name comes from the network: it is reduced to one safe base name
before it touches the file system, so that a peer can never write outside the
download folder, over an existing file, or under a name that means something
else to the system (a device on Windows, a hidden file, a path).

A file being received is written to a hidden *partial* file in the download
folder, with a *sidecar* beside it that says which file it is part of; both are
named after the resume key (:func:`resume_key`). Only a verified file is moved
to its final name, and never over an existing file. The functions here block:
the transfer tasks run them in worker threads.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import json
import os
import pathlib
import shutil
import time
import unicodedata
import uuid
from collections.abc import Container
from typing import BinaryIO

import attrs
import blake3
import cbor2

__all__ = [
    "MAX_NAME_BYTES",
    "PART_SUFFIX",
    "SIDECAR_SUFFIX",
    "DownloadFolder",
    "Partial",
    "hash_range",
    "resume_key",
    "safe_filename",
    "unique_path",
]

#: Suffix of a partial file (the name is ``.<resume key>`` plus this).
PART_SUFFIX = ".trio_p2p.part"
#: Partial files kept to resume, at most (with those of transfers under way
#: besides): the oldest go first. Many transfers broken off on purpose cannot
#: pile up hidden files.
PARTIALS_KEPT = 128
#: Suffix of the sidecar that describes a partial file.
SIDECAR_SUFFIX = ".trio_p2p.json"
#: Bytes read per call when hashing a file.
_HASH_BLOCK = 1024 * 1024

#: Longest saved name, in UTF-8 bytes: under the usual 255-byte limit with room
#: for a " (9999)" suffix and the partial file's prefix and suffix.
MAX_NAME_BYTES = 200
#: Longest extension kept whole when a long name is shortened.
_MAX_EXTENSION_CHARS = 16
#: Characters Windows refuses in a name (and the path separators everywhere).
_FORBIDDEN = frozenset('<>:"/\\|?*')
#: Unicode categories dropped: controls, format characters (bidi overrides,
#: zero-width joiners), line and paragraph separators, surrogates, unassigned.
_DROPPED_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})
_RESERVED = frozenset(
    {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"}
    | {f"{device}{n}" for device in ("COM", "LPT") for n in (*"123456789", "¹", "²", "³")}
)
_FALLBACK = "file"


def _clean(text: str) -> str:
    kept = []
    for char in unicodedata.normalize("NFC", text):
        if char in _FORBIDDEN:
            kept.append("_")
        elif unicodedata.category(char) not in _DROPPED_CATEGORIES:
            kept.append(" " if char.isspace() else char)
    return "".join(kept)


def _split(name: str, longest: int | None = None) -> tuple[str, str]:
    """(stem, extension with its dot) of *name*.

    No extension if there is none, or if it is longer than *longest* characters.
    """
    stem, dot, extension = name.rpartition(".")
    if not dot or not stem or (longest is not None and len(extension) > longest):
        return name, ""
    return stem, "." + extension


def _cut(text: str, room: int) -> str:
    """*text* cut to at most *room* UTF-8 bytes, on a character boundary."""
    return text.encode("utf-8")[:room].decode("utf-8", "ignore").rstrip(" .")


def _shorten(name: str, limit: int) -> str:
    """Cut *name* to at most *limit* UTF-8 bytes, keeping a short extension."""
    if len(name.encode("utf-8")) <= limit:
        return name
    stem, extension = _split(name, _MAX_EXTENSION_CHARS)
    return (_cut(stem, limit - len(extension.encode("utf-8"))) or _FALLBACK) + extension


def safe_filename(offered: str) -> str:
    """Reduce a name that came from a peer to one safe base name.

    The result is never empty; it has no path separator, no ``..``, no leading
    dot (no hidden file), no control or format character, no character that
    Windows refuses, is not a Windows device name, and is at most
    :data:`MAX_NAME_BYTES` UTF-8 bytes. Only the last path component of the
    offered name counts (``../../etc/passwd`` becomes ``passwd``).
    """
    components = offered.replace("\\", "/").split("/")
    last = next((c for c in reversed(components) if c.strip(" .")), "")
    name = _clean(last).strip(" .")
    name = " ".join(name.split())  # one space for any run of white space
    if not name:
        return _FALLBACK
    stem = name.split(".", 1)[0].rstrip(" ").upper()
    if stem in _RESERVED:
        name = "_" + name
    return _shorten(name, MAX_NAME_BYTES)


def unique_path(folder: pathlib.Path, name: str) -> pathlib.Path:
    """A path in *folder* for *name* (already safe) that no file has yet.

    ``report.pdf`` becomes ``report (1).pdf``, ``report (2).pdf``... if taken.
    Whoever creates the file must still refuse to overwrite (the name can be
    taken between this call and that moment).
    """
    candidate = folder / name
    if not os.path.lexists(candidate):  # (a dangling link is taken too)
        return candidate
    stem, extension = _split(name)
    number = 1
    while True:
        suffix = f" ({number})"
        base = _cut(stem, MAX_NAME_BYTES - len(extension.encode("utf-8")) - len(suffix))
        candidate = folder / f"{base or _FALLBACK}{suffix}{extension}"
        if not os.path.lexists(candidate):
            return candidate
        number += 1


def resume_key(sender: uuid.UUID, name: str, size: int, mtime_ns: int) -> str:
    """What names the partial of one file from one sender.

    The same sender (its node id, which only its key can claim: not its name,
    which anyone may take), offered file name, size and modification time give
    the same key, so a new offer of a file that was interrupted finds its
    partial (even across restarts of either node, as long as the sender keeps
    its identity). The final digest catches a partial that was not the same
    file after all.
    """
    return blake3.blake3(cbor2.dumps([sender.bytes, name, size, mtime_ns])).hexdigest()[:32]


#: what a sidecar records of who sent the file, besides what describes it: not
#: compared (the same file sent again from another address resumes)
KEEPER_FIELDS = frozenset({"address"})


def _same_file(recorded: object, describes: dict[str, object]) -> bool:
    """Whether a sidecar's *recorded* description is that of *describes*."""
    if not isinstance(recorded, dict):
        return False

    def what(description: dict[str, object]) -> dict[str, object]:
        return {k: v for k, v in description.items() if k not in KEEPER_FIELDS}

    return what(recorded) == what(describes)


def hash_range(file: BinaryIO, length: int, hasher: blake3.blake3) -> None:
    """Feed the first *length* bytes of *file* to *hasher* (the position moves)."""
    file.seek(0)
    left = length
    while left > 0:
        block = file.read(min(_HASH_BLOCK, left))
        if not block:
            raise OSError(f"the file is shorter than {length} bytes")
        hasher.update(block)
        left -= len(block)


@attrs.define
class Partial:
    """A file being received, open for writing at its end.

    Attributes:
        key: its resume key.
        path: the partial file.
        sidecar: the file that says what it is part of.
        offset: bytes it held when opened (where the transfer resumes).
        file: the open file, positioned at ``offset``.
    """

    key: str
    path: pathlib.Path
    sidecar: pathlib.Path
    offset: int
    file: BinaryIO


class DownloadFolder:
    """The folder received files are saved in.

    Args:
        folder: the folder (created when first needed).
        free_space_margin: bytes that must stay free after a file is saved.
    """

    def __init__(self, folder: pathlib.Path, free_space_margin: int) -> None:
        self.folder = folder
        self.free_space_margin = free_space_margin

    def _paths(self, key: str) -> tuple[pathlib.Path, pathlib.Path]:
        return self.folder / f".{key}{PART_SUFFIX}", self.folder / f".{key}{SIDECAR_SUFFIX}"

    def held(self, key: str, describes: dict[str, object], size: int) -> int:
        """Bytes already held of the file *key* names (0 if none, or not the same file)."""
        part, sidecar = self._paths(key)
        try:
            recorded = json.loads(sidecar.read_text(encoding="utf-8"))
            held = part.stat().st_size
        except (OSError, ValueError):
            return 0
        return held if _same_file(recorded, describes) and held <= size else 0

    def check_room(self, size: int, held: int = 0, reserved: int = 0) -> None:
        """Raise :exc:`OSError` unless the rest of a *size*-byte file fits.

        *reserved* bytes are promised to other files under way, and the margin
        must stay free after all of them.
        """
        folder = self.folder
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        free = shutil.disk_usage(folder).free
        if free < size - held + reserved + self.free_space_margin:
            under_way = f", files under way need {reserved} more" if reserved else ""
            raise OSError(
                f"not enough free space: the file needs {size - held} bytes{under_way}, "
                f"{self.free_space_margin} must stay free, and {free} are free"
            )

    def open_partial(self, key: str, describes: dict[str, object], size: int) -> Partial:
        """Open the partial for *key*, resuming what it holds if it is the same file.

        The sidecar is written (and flushed to disk) before the partial file is
        created, so a partial is never left without its description, even if
        the process is killed.
        """
        if self.folder.exists() and not self.folder.is_dir():
            raise NotADirectoryError(
                errno.ENOTDIR, "the download folder is not a folder", str(self.folder)
            )
        self.folder.mkdir(parents=True, exist_ok=True)
        part, sidecar = self._paths(key)
        offset = self.held(key, describes, size)
        if offset == 0:
            with open(sidecar, "w", encoding="utf-8") as out:
                json.dump(describes, out)
                out.flush()
                os.fsync(out.fileno())
        file = open(part, "r+b" if offset else "w+b")  # noqa: SIM115 (kept open: it is returned)
        try:
            file.truncate(offset)
            file.seek(offset)
        except BaseException:
            file.close()
            raise
        return Partial(key, part, sidecar, offset, file)

    def finish(self, partial: Partial, name: str) -> pathlib.Path:
        """Move a verified partial to a new file named after *name*; return its path.

        The data is flushed to disk first; the final name is never one that
        exists (``name (1).ext``...), also if another file takes it meanwhile.
        """
        file = partial.file
        file.flush()
        os.fsync(file.fileno())
        file.close()
        safe = safe_filename(name)
        while True:
            target = unique_path(self.folder, safe)
            try:
                os.link(partial.path, target)  # fails if the target exists
            except FileExistsError:
                continue
            except OSError:  # no hard links here: rename, after checking again
                if os.path.lexists(target):
                    continue
                os.rename(partial.path, target)
                break
            partial.path.unlink()
            break
        partial.sidecar.unlink(missing_ok=True)
        return target

    def discard(self, partial: Partial) -> None:
        """Close and remove a partial (its data is not worth resuming)."""
        partial.file.close()
        partial.path.unlink(missing_ok=True)
        partial.sidecar.unlink(missing_ok=True)

    def keep(self, partial: Partial, busy: Container[str], limit: int | None = None) -> int:
        """Close *partial*, kept to resume; remove kept partials beyond *limit*.

        Those of the sender address that keeps the most go first, the oldest
        first: one host's many broken-off transfers push out its own partials
        before anyone else's, under however many keys it sends them (a key is
        cheap to make; the sender's id counts where no address was recorded).
        *busy* holds the keys of partials in use (transfers under way, or
        waiting to be offered again), never removed; it may change meanwhile
        on the event loop, so each key is looked up just before its
        removal. Returns how many partials were removed. (*limit*: by default
        ``PARTIALS_KEPT``.)
        """
        limit = PARTIALS_KEPT if limit is None else limit
        partial.file.close()
        kept: list[tuple[float, str, str]] = []
        with contextlib.suppress(FileNotFoundError):
            for path in self.folder.iterdir():
                name = path.name
                if name.startswith(".") and name.endswith(PART_SUFFIX) and path != partial.path:
                    key = name[1 : -len(PART_SUFFIX)]
                    if key not in busy:
                        with contextlib.suppress(FileNotFoundError):
                            kept.append((path.stat().st_mtime, key, self._keeper(key)))
        excess = len(kept) + 1 - limit
        if excess <= 0:
            return 0
        counts = collections.Counter(sender for _, _, sender in kept)
        counts[self._keeper(partial.key)] += 1  # (kept, if not a candidate)
        kept.sort(key=lambda entry: (-counts[entry[2]], entry[0]))
        removed = 0
        for _, key, _ in kept[:excess]:
            if key in busy:  # (claimed since it was listed)
                continue
            for path in self._paths(key):
                path.unlink(missing_ok=True)
            removed += 1
        return removed

    def _keeper(self, key: str) -> str:
        """Who keeps a partial: its sender's address, else its sender's id.

        (From the partial's description; "" if neither can be read.)
        """
        try:
            describes = json.loads(self._paths(key)[1].read_text(encoding="utf-8"))
            keeper = describes.get("address") or describes.get("sender")
        except (OSError, ValueError, AttributeError):
            return ""
        return keeper if isinstance(keeper, str) else ""

    def sweep(self, ttl: float, now: float | None = None) -> int:
        """Remove partials and sidecars untouched for *ttl* seconds; return how many."""
        now = time.time() if now is None else now
        removed = 0
        with contextlib.suppress(FileNotFoundError):
            for path in self.folder.iterdir():
                name = path.name
                if not name.startswith(".") or not name.endswith((PART_SUFFIX, SIDECAR_SUFFIX)):
                    continue
                with contextlib.suppress(FileNotFoundError, PermissionError):
                    if now - path.stat().st_mtime > ttl:
                        path.unlink()
                        removed += 1
        return removed
