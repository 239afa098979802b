"""File rules of the UI's dataset store (``app.datasets``, its only user; hence the private names): what an
uploaded name may be, which file is whose caption, how a file is staged and given a free name, and how an
upload's summary lists things. Pure functions, no state.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import time
import unicodedata
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from PIL import Image

from trainer.data.captions import (
    CAPTION_EXTENSIONS,
    add_prefix,
    add_suffix,
    compose_caption,
    dedupe_tags,
    read_caption,
    replace_text,
    sort_tags,
)
from trainer.data.images import IMAGE_EXTENSIONS, UNSUPPORTED_IMAGE_EXTENSIONS, upright_size

UPLOAD_IMAGE_EXTENSIONS = IMAGE_EXTENSIONS  # the trainer's list: what uploads accept is what training reads
BULK_ACTIONS = ("prefix", "suffix", "replace", "dedupe", "sort", "trigger")
_HINT_TYPES = "upload images (PNG, JPEG, WebP, BMP, GIF), .txt captions, or a .zip of them"
MAX_LISTED = 10  # names listed per section of the summary
JUNK_NAMES = frozenset({"__MACOSX", ".DS_Store", "Thumbs.db", "desktop.ini", "Desktop.ini"})
_WINDOWS_UNSAFE = re.compile(r'[<>:"|?*]')
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f")
MAX_NAME_BYTES = 180  # file names: leaves room for the ".<name>.<random>.tmp" siblings under NAME_MAX (255)


class _Reject(Exception):
    """Internal: this file is not stored; ``str`` is the reason shown to the user."""


def _edit_function(action: str, *, text: str, old: str, new: str, whole_tag: bool,
                   keep_tokens: int) -> Callable[[str], str]:
    if action not in BULK_ACTIONS:
        raise ValueError(f"unknown caption action {action!r}; use one of {', '.join(BULK_ACTIONS)}")
    text = (text or "").strip()
    if action in ("prefix", "suffix", "trigger") and not text.strip(", "):
        raise ValueError(f"enter the text for '{action}' first")
    if action == "replace" and not old:
        raise ValueError("enter the text to find first")
    edits: dict[str, Callable[[str], str]] = {
        "prefix": lambda c: add_prefix(c, text),
        "suffix": lambda c: add_suffix(c, text),
        "trigger": lambda c: compose_caption(c, text, ""),
        "replace": lambda c: replace_text(c, old, new or "", whole_tag=whole_tag),
        "dedupe": dedupe_tags,
        "sort": lambda c: sort_tags(c, max(0, keep_tokens)),
    }
    return edits[action]


def _valid_dataset_name(name: str) -> bool:
    """A single existing-folder-style name: not hidden, no separators or control characters."""
    return (bool(name) and name not in (".", "..") and not name.startswith(".") and "/" not in name
            and "\\" not in name and _strip_controls(name) == name and name == name.strip())


def _strip_controls(text: str) -> str:
    return "".join(ch for ch in text if unicodedata.category(ch) not in ("Cc", "Cs") and ch not in _BIDI_CONTROLS)


def _truncate_bytes(text: str, limit: int) -> str:
    return text.encode("utf-8")[:limit].decode("utf-8", errors="ignore")


def _clean_component(raw: str) -> str:
    """One file or folder name as stored: NFC, no control/bidi characters, no separators, not hidden.

    Unicode and spaces are kept. Characters Windows forbids become '_' so a downloaded copy of the
    dataset still unpacks there. Over-long names are shortened, keeping the extension.
    """
    text = _strip_controls(unicodedata.normalize("NFC", raw)).replace("/", "_").replace("\\", "_")
    text = _WINDOWS_UNSAFE.sub("_", text).strip().lstrip(".").strip()
    if text in ("", ".", ".."):
        return ""
    if len(text.encode("utf-8")) > MAX_NAME_BYTES:
        suffix = Path(text).suffix if len(Path(text).suffix) <= 16 else ""
        text = _truncate_bytes(text[: len(text) - len(suffix)], MAX_NAME_BYTES - len(suffix)).rstrip() + suffix
    return text


def _is_junk(name: str) -> bool:
    """Files the OS leaves behind (skipped silently): __MACOSX, .DS_Store, ._* resource forks, Thumbs.db."""
    return name in JUNK_NAMES or name.startswith("._")


def _is_caption_name(name: str) -> bool:
    return Path(name).suffix.lower() in CAPTION_EXTENSIONS


def _kind(base: str) -> str:
    """'image' or 'caption', else _Reject with the reason."""
    if not base:
        raise _Reject("the file name is empty after removing unsafe characters; rename the file")
    suffix = Path(base).suffix.lower()
    if suffix in UPLOAD_IMAGE_EXTENSIONS:
        return "image"
    if suffix in CAPTION_EXTENSIONS:
        return "caption"
    if suffix in UNSUPPORTED_IMAGE_EXTENSIONS:
        raise _Reject(f"unsupported type {suffix}; convert it to PNG or JPEG")
    if not suffix:
        raise _Reject(f"unsupported type (no file extension); {_HINT_TYPES}")
    raise _Reject(f"unsupported type {suffix}; {_HINT_TYPES}")


def _decode_caption(path: Path) -> str:
    """The caption text by the trainer's reader; Windows "ANSI" files (cp1252) keep their curly quotes."""
    caption = read_caption(path)
    text = caption.text
    if caption.encoding == "latin-1":
        with contextlib.suppress(UnicodeDecodeError):
            decoded = path.read_bytes().decode("cp1252").replace("\x00", "")
            text = ", ".join(line.strip() for line in decoded.splitlines() if line.strip())
    if any(unicodedata.category(ch) == "Cc" and ch != "\t" for ch in text):
        raise _Reject("binary data, not text; save the caption as plain text (UTF-8)")
    return text.strip()


def _clean_caption(caption: str) -> str:
    """One line as the trainer reads it: lines joined with ', ', control characters removed."""
    lines = [_strip_controls(line).strip() for line in str(caption or "").splitlines()]
    return ", ".join(line for line in lines if line)


def _caption_files(image: Path) -> list[Path]:
    out = []
    for ext in CAPTION_EXTENSIONS:
        for candidate in {image.with_suffix(ext), image.with_suffix(ext.upper())}:
            if candidate.is_file():
                out.append(candidate)
    return sorted(out)


def _caption_file(image: Path) -> Path | None:
    """The caption the trainer uses: the .txt, else the .caption; None when there is none."""
    files = _caption_files(image)
    return files[0] if files else None


def _header_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as image:
            return upright_size(image)
    except Exception:  # noqa: BLE001 - any unreadable image shows as 0 x 0 so the user can delete it
        return 0, 0


def _inside(root: Path, path: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except (ValueError, OSError):
        return False
    return True


def _file_size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


@contextlib.contextmanager
def _staged(folder: Path, opener: Callable[[], BinaryIO]) -> Iterator[Path]:
    """Copy the upload to a hidden temporary file in ``folder`` (same file system: os.replace is atomic)."""
    fd, name = tempfile.mkstemp(prefix=".upload-", suffix=".tmp", dir=folder)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with opener() as src:
                    shutil.copyfileobj(src, out, 1024 * 1024)
            except (EOFError, zipfile.BadZipFile, zlib.error, RuntimeError, NotImplementedError) as err:
                raise _Reject(f"damaged inside the zip ({err}); create the zip again and re-upload it") from None
            out.flush()
            os.fsync(out.fileno())
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


def _free_stem(folder: Path, stem: str, suffixes: list[str]) -> str:
    """``stem``, or ``stem (2)``, ... such that no ``stem + suffix`` exists in ``folder``."""
    candidate, n = stem, 1
    while any((folder / f"{candidate}{s}").exists() for s in suffixes):
        n += 1
        candidate = f"{stem} ({n})"
    return candidate


def _unique(path: Path) -> Path:
    if not path.exists():
        return path
    stamp = time.strftime("%Y%m%d-%H%M%S")
    candidate, n = path.with_name(f"{path.name} {stamp}"), 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name} {stamp} ({n})")
    return candidate


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _code(name: str) -> str:
    return "`" + _strip_controls(name).replace("`", "'") + "`"


def _listing(entries: list[str], sep: str) -> str:
    shown = sep.join(entries[:MAX_LISTED])
    if len(entries) > MAX_LISTED:
        shown += f"{sep}and {len(entries) - MAX_LISTED} more"
    return shown


def _size_text(n: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:,} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"
