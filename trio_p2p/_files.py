"""Files on the receiving side: safe names in the download folder.

The offered name comes from the network: it is reduced to one safe base name
before it touches the file system, so that a peer can never write outside the
download folder, over an existing file, or under a name that means something
else to the system (a device on Windows, a hidden file, a path).
"""

from __future__ import annotations

import pathlib
import unicodedata

__all__ = ["MAX_NAME_BYTES", "safe_filename", "unique_path"]

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


def _shorten(name: str, limit: int) -> str:
    """Cut *name* to at most *limit* UTF-8 bytes, keeping a short extension."""
    if len(name.encode("utf-8")) <= limit:
        return name
    stem, dot, extension = name.rpartition(".")
    if not dot or not stem or len(extension) > _MAX_EXTENSION_CHARS:
        stem, extension = name, ""
    else:
        extension = "." + extension
    room = limit - len(extension.encode("utf-8"))
    cut = stem.encode("utf-8")[:room].decode("utf-8", "ignore").rstrip(" .")
    return (cut or _FALLBACK) + extension


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
    if not candidate.exists():
        return candidate
    stem, dot, extension = name.rpartition(".")
    if not dot or not stem:
        stem, extension = name, ""
    else:
        extension = "." + extension
    number = 1
    while True:
        suffix = f" ({number})"
        room = MAX_NAME_BYTES - len(extension.encode("utf-8")) - len(suffix)
        base = stem.encode("utf-8")[:room].decode("utf-8", "ignore").rstrip(" .") or _FALLBACK
        candidate = folder / f"{base}{suffix}{extension}"
        if not candidate.exists():
            return candidate
        number += 1
