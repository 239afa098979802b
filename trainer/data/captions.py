"""Caption files and caption text: reading, final-caption assembly and editing helpers. No torch.

Captions are comma-separated tags or free text (sd-scripts convention); the trigger word is the first
tag. The editing helpers are pure functions on strings so the UI can preview edits before saving.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

CAPTION_EXTENSIONS = (".txt", ".caption")


@dataclass
class CaptionText:
    """A caption file's text and how it was decoded (``encoding`` is a note for warnings)."""

    text: str
    encoding: str


def read_caption(path: str | Path) -> CaptionText:
    """Read a caption file: UTF-8 (with or without BOM), UTF-16 with BOM, else Latin-1.

    Lines are stripped and joined with ", " so one-tag-per-line files become a tag list.
    Latin-1 is the fallback because it decodes any byte; the encoding is returned so the caller can
    warn that the file should be re-saved as UTF-8.
    """
    data = Path(path).read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        text, encoding = data[3:].decode("utf-8", errors="replace"), "utf-8-sig"
    elif data.startswith((b"\xff\xfe", b"\xfe\xff")):
        text, encoding = data.decode("utf-16", errors="replace"), "utf-16"
    else:
        try:
            text, encoding = data.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            text, encoding = data.decode("latin-1"), "latin-1"
    lines = [line.strip() for line in text.replace("\x00", "").splitlines()]
    return CaptionText(", ".join(line for line in lines if line), encoding)


def split_tags(caption: str) -> list[str]:
    return [t.strip() for t in caption.split(",") if t.strip()]


def join_tags(tags: list[str]) -> str:
    return ", ".join(tags)


def _has_trigger(caption: str, trigger: str) -> bool:
    return trigger in split_tags(caption) or trigger in caption.replace(",", " ").split()


def compose_caption(raw: str, trigger: str, class_word: str) -> str:
    """The caption the model trains on, before any per-step randomness.

    - captioned image: ``"trigger, raw caption"`` (the trigger is not added twice if already present);
    - uncaptioned image: ``"trigger class_word"`` (sd-scripts' folder-name caption), or what of it is set.
    """
    raw = raw.strip()
    trigger = trigger.strip()
    if not raw:
        return " ".join(w for w in (trigger, class_word.strip()) if w)
    if not trigger or _has_trigger(raw, trigger):
        return raw
    return f"{trigger}, {raw}"


def shuffle_caption(caption: str, keep_tokens: int, rng: random.Random) -> str:
    """Shuffle comma-separated tags, keeping the first ``keep_tokens`` (at least the trigger) in place."""
    tags = split_tags(caption)
    keep = max(1, keep_tokens)
    head, tail = tags[:keep], tags[keep:]
    rng.shuffle(tail)
    return join_tags(head + tail)


# ---------------------------------------------------------------------------------------------
# Editing helpers (used by the `caption` command and the UI)


def add_prefix(caption: str, prefix: str) -> str:
    """Prepend ``prefix`` as the first tag unless the caption already starts with it."""
    prefix = prefix.strip().strip(",").strip()
    if not prefix:
        return caption
    tags = split_tags(caption)
    if tags[:1] == [prefix]:
        return caption
    return join_tags([prefix, *tags])


def add_suffix(caption: str, suffix: str) -> str:
    """Append ``suffix`` as the last tag unless the caption already ends with it."""
    suffix = suffix.strip().strip(",").strip()
    if not suffix:
        return caption
    tags = split_tags(caption)
    if tags[-1:] == [suffix]:
        return caption
    return join_tags([*tags, suffix])


def replace_text(caption: str, old: str, new: str, *, whole_tag: bool = False) -> str:
    """Replace ``old`` with ``new``: in the whole text, or (``whole_tag``) only tags equal to ``old``.

    Replacing a whole tag with "" removes it.
    """
    if not old:
        return caption
    if not whole_tag:
        return caption.replace(old, new)
    tags = [new.strip() if t == old.strip() else t for t in split_tags(caption)]
    return join_tags([t for t in tags if t])


def dedupe_tags(caption: str) -> str:
    """Drop repeated tags (case-insensitive), keeping the first occurrence and the order."""
    seen: set[str] = set()
    out = []
    for tag in split_tags(caption):
        key = tag.lower()
        if key not in seen:
            seen.add(key)
            out.append(tag)
    return join_tags(out)


def sort_tags(caption: str, keep_tokens: int = 0) -> str:
    """Sort tags alphabetically (case-insensitive) after the first ``keep_tokens`` ones."""
    tags = split_tags(caption)
    return join_tags(tags[:keep_tokens] + sorted(tags[keep_tokens:], key=str.lower))
