"""Find the images of a dataset folder and their captions; report every problem at once. No torch.

Layouts understood:
- a flat folder of images with optional same-name ``.txt`` / ``.caption`` files;
- sd-scripts (kohya) folders: subfolders (or the folder itself) named ``N_name class`` — ``N`` is the
  repeat count and the name is the caption of uncaptioned images there. The last word is the class
  word; any words before it are the trigger (``10_sks dog`` → trigger ``sks``, class ``dog``;
  ``10_dog`` → class ``dog``, trigger from the config). A kohya folder's N replaces ``dataset.repeats``.
- a ``metadata.jsonl`` (Hugging Face imagefolder): ``{"file_name": ..., "text": ...}`` per line
  (``caption`` or ``prompt`` keys work too). A caption file beside an image wins over the metadata line.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from trainer.data.captions import CAPTION_EXTENSIONS, read_caption
from trainer.data.images import (
    IMAGE_EXTENSIONS,
    UNSUPPORTED_IMAGE_EXTENSIONS,
    ImageReadError,
    probe_image,
    unusable_reason,
)

KOHYA_FOLDER = re.compile(r"^(\d+)_(.+)$")
METADATA_FILE = "metadata.jsonl"
METADATA_CAPTION_KEYS = ("text", "caption", "prompt")


@dataclass
class ImageRecord:
    """One image file of the dataset (not one epoch item: repeats expand records into items)."""

    path: Path
    caption: str  # raw caption text; "" when the image has none
    width: int = 0  # upright size (EXIF orientation applied)
    height: int = 0
    bucket: tuple[int, int] = (0, 0)  # (w, h) training size
    repeats: int = 1
    trigger: str = ""
    class_word: str = ""
    is_regularization: bool = False
    caption_file: Path | None = None


@dataclass
class ScanResult:
    """Usable records, unreadable files, layout problems (always fatal) and warnings."""

    records: list[ImageRecord] = field(default_factory=list)
    bad_files: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    missing: bool = False


@dataclass
class _Folder:
    path: Path
    repeats: int
    trigger: str
    class_word: str


def kohya_folder(name: str, trigger: str) -> tuple[int, str, str] | None:
    """(repeats, trigger, class_word) for an ``N_name class`` folder name, else None."""
    match = KOHYA_FOLDER.match(name)
    if not match or int(match.group(1)) <= 0:
        return None
    words = match.group(2).split()
    if not words:
        return None
    folder_trigger = " ".join(words[:-1]) or trigger
    return int(match.group(1)), folder_trigger, words[-1]


def _image_folders(root: Path, repeats: int, trigger: str, class_word: str, result: ScanResult) -> list[_Folder]:
    own = kohya_folder(root.name, trigger)
    folders = [_Folder(root, *own) if own else _Folder(root, repeats, trigger, class_word)]
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        parsed = kohya_folder(sub.name, trigger)
        if parsed:
            folders.append(_Folder(sub, *parsed))
        elif any(f.suffix.lower() in IMAGE_EXTENSIONS for f in sub.iterdir() if f.is_file()):
            result.warnings.append(
                f"{sub}: subfolder ignored; name it `N_name class` (e.g. `10_sks dog`) to train on its images "
                "N times per epoch"
            )
        elif any(p.is_dir() and kohya_folder(p.name, trigger) for p in sub.iterdir()):
            result.warnings.append(f"{sub} holds `N_name class` folders: point the dataset path at {sub} to use them")
    return folders


def scan_folder(
    root: str | Path,
    *,
    repeats: int = 1,
    trigger: str = "",
    class_word: str = "",
    regularization: bool = False,
    probe: bool = True,
) -> ScanResult:
    """Scan ``root`` (see the module doc for layouts). With ``probe`` every image is fully decoded."""
    root = Path(root)
    result = ScanResult()
    if not root.is_dir():
        result.missing = True
        result.problems.append(f"{root}: folder not found" if not root.exists() else f"{root}: not a folder")
        return result
    for folder in _image_folders(root, repeats, trigger, class_word, result):
        _scan_one(folder, result, regularization, probe)
    return result


def _scan_one(folder: _Folder, result: ScanResult, regularization: bool, probe: bool) -> None:
    files = sorted(p for p in folder.path.iterdir() if p.is_file() and not p.name.startswith("."))
    by_stem: dict[str, list[Path]] = {}
    captions: dict[str, list[Path]] = {}
    for f in files:
        suffix = f.suffix.lower()
        if suffix in IMAGE_EXTENSIONS:
            by_stem.setdefault(f.stem, []).append(f)
        elif suffix in CAPTION_EXTENSIONS:
            captions.setdefault(f.stem, []).append(f)
        elif suffix in UNSUPPORTED_IMAGE_EXTENSIONS:
            result.warnings.append(f"{f}: {suffix} images are not supported and were not used; convert it to PNG")
    metadata = _read_metadata(folder.path / METADATA_FILE, result)
    for name in metadata:
        meta_path = folder.path / name
        if meta_path.parent != folder.path and meta_path.is_file() and meta_path.suffix.lower() in IMAGE_EXTENSIONS:
            by_stem.setdefault(str(Path(name).with_suffix("")), []).append(meta_path)
    for stem in sorted(set(captions) - set(by_stem)):
        result.warnings.append(f"{captions[stem][0]}: caption file without an image of the same name (renamed image?)")
    for stem, paths in sorted(by_stem.items()):
        if len(paths) > 1:
            names = " and ".join(p.name for p in paths)
            result.problems.append(f"{folder.path}: {names} share the name `{stem}`, so their captions would mix; rename one")
            continue
        record = _record(paths[0], folder, captions.get(stem, []), metadata, result, regularization)
        if record is not None and (not probe or _probe(record, result)):
            result.records.append(record)


def _record(
    path: Path, folder: _Folder, caption_files: list[Path], metadata: dict[str, str], result: ScanResult, regularization: bool
) -> ImageRecord | None:
    if len(caption_files) > 1:
        names = " and ".join(p.name for p in caption_files)
        result.problems.append(f"{path}: two caption files ({names}); keep one")
        return None
    record = ImageRecord(path, "", repeats=folder.repeats, trigger=folder.trigger, class_word=folder.class_word,
                         is_regularization=regularization)
    meta_caption = metadata.get(path.relative_to(folder.path).as_posix())
    if caption_files:
        caption = read_caption(caption_files[0])
        if caption.encoding == "latin-1":
            result.warnings.append(f"{caption_files[0]}: not UTF-8; read as Latin-1 (re-save it as UTF-8 to be sure)")
        record.caption, record.caption_file = caption.text, caption_files[0]
        if meta_caption is not None and meta_caption.strip() != caption.text:
            result.warnings.append(f"{path}: has both {caption_files[0].name} and a {METADATA_FILE} caption; using {caption_files[0].name}")
    elif meta_caption is not None:
        record.caption, record.caption_file = meta_caption.strip(), folder.path / METADATA_FILE
    return record


def _probe(record: ImageRecord, result: ScanResult) -> bool:
    try:
        info = probe_image(record.path)
    except ImageReadError as err:
        result.bad_files.append(f"{record.path}: {err}")
        return False
    reason = unusable_reason(info)
    if reason:
        result.warnings.append(f"{record.path}: skipped, {reason}")
        return False
    record.width, record.height = info.width, info.height
    result.warnings.extend(info.warnings)
    return True


def _read_metadata(path: Path, result: ScanResult) -> dict[str, str]:
    """file_name → caption from a metadata.jsonl; every bad line is a problem naming its number."""
    if not path.is_file():
        return {}
    out: dict[str, str] = {}
    text = path.read_bytes().decode("utf-8-sig", errors="replace")
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as err:
            result.problems.append(f"{where}: not valid JSON ({err.msg})")
            continue
        name = entry.get("file_name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not name:
            result.problems.append(f"{where}: needs a \"file_name\" string")
            continue
        if not (path.parent / name).is_file():
            result.problems.append(f"{where}: image {name!r} not found beside {path.name}")
            continue
        caption = next((entry[k] for k in METADATA_CAPTION_KEYS if isinstance(entry.get(k), str)), "")
        out[Path(name).as_posix()] = caption
    return out
