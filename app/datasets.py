"""The UI's dataset store: saved datasets under one folder, uploads, the caption grid, bulk edits. No torch.

Layout: ``data_dir/<name>/`` is one dataset, a folder the trainer reads as is (images with same-stem
``.txt`` captions, plus kohya-style ``N_name class`` subfolders kept from uploaded zips);
``data_dir/.trash/`` receives everything deleted, so nothing a user made is ever lost.

Rules the UI relies on:

- Every uploaded file is either stored or listed in ``UploadResult.rejected`` with a reason in plain
  words; nothing raises for a bad file. Existing files are never replaced unless ``overwrite=True``.
- Names never escape their folder: loose uploads keep only their base name; zip members keep at most
  one ``N_name class`` folder (other folders are flattened into the dataset's main folder, because the
  trainer ignores them); absolute paths, ``..`` and links in zips are rejected.
- Images are checked with the trainer's own ``probe_image`` (a full decode) and ``unusable_reason``
  (animated files), so what the store accepts is what training can read and will use. Captions go
  through the trainer's ``read_caption`` and are stored as UTF-8.
- Writes are atomic (temporary file in the same folder, then ``os.replace``); methods are thread-safe.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import threading
import unicodedata
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from app.dataset_files import (
    _caption_file,
    _caption_files,
    _clean_caption,
    _clean_component,
    _code,
    _decode_caption,
    _edit_function,
    _file_size,
    _free_stem,
    _header_size,
    _inside,
    _is_caption_name,
    _is_junk,
    _kind,
    _listing,
    _plural,
    _Reject,
    _size_text,
    _staged,
    _strip_controls,
    _truncate_bytes,
    _unique,
    _valid_dataset_name,
)
from trainer.atomic import write_text
from trainer.data.captions import (
    CAPTION_EXTENSIONS,
    read_caption,
)
from trainer.data.images import (
    IMAGE_EXTENSIONS,
    ImageReadError,
    probe_image,
    unusable_reason,
)
from trainer.data.scan import kohya_folder

ZIP_EXTENSION = ".zip"
TRASH_DIR = ".trash"
DEFAULT_MAX_ZIP_BYTES = 4 * 1024**3  # uncompressed total of one zip
DEFAULT_MAX_ZIP_MEMBERS = 20_000
MAX_CAPTION_BYTES = 1024 * 1024
MAX_DATASET_NAME_BYTES = 100


@dataclass
class Rejected:
    """One uploaded file (or zip member, ``archive.zip/member``) that was not stored, and why."""

    name: str
    reason: str


@dataclass
class UploadResult:
    added: list[str] = field(default_factory=list)  # relative paths stored (replaced ones included)
    rejected: list[Rejected] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)  # relative paths that existed and were kept
    replaced: list[str] = field(default_factory=list)  # subset of ``added`` that overwrote a file
    warnings: list[str] = field(default_factory=list)  # stored, but worth a look (caption without image)

    def summary(self) -> str:
        """One short markdown paragraph for the UI."""
        parts = []
        images = sum(1 for p in self.added if not _is_caption_name(p))
        captions = len(self.added) - images
        if self.added:
            counts = [c for c in (_plural(images, "image"), _plural(captions, "caption")) if not c.startswith("0 ")]
            text = f"Added {' and '.join(counts)}"
            if self.replaced:
                text += f" ({len(self.replaced)} replaced an existing file)"
            parts.append(text + ".")
        elif not self.rejected and not self.conflicts:
            parts.append("Nothing was added.")
        if self.rejected:
            listed = _listing([f"{_code(r.name)} ({r.reason})" for r in self.rejected], "; ")
            parts.append(f"{_plural(len(self.rejected), 'file')} rejected: {listed}.")
        if self.conflicts:
            verb = "was" if len(self.conflicts) == 1 else "were"
            listed = _listing([_code(c) for c in self.conflicts], ", ")
            parts.append(f"{len(self.conflicts)} already existed and {verb} kept "
                         f"(tick 'Replace existing files' to overwrite): {listed}.")
        parts.extend(self.warnings)
        return " ".join(parts)


@dataclass
class DatasetItem:
    image: str  # path relative to the dataset folder, with "/" separators
    path: Path
    caption: str  # "" when the image has no caption
    caption_file: Path | None
    width: int  # upright size from the header; 0 x 0 when the file cannot be opened
    height: int


@dataclass
class _Upload:
    """State of one ``add_files`` call."""

    root: Path
    overwrite: bool
    result: UploadResult
    planned: dict[str, str] = field(default_factory=dict)  # relative path -> uploaded name, this call
    stems: dict[Path, dict[str, set[str]]] = field(default_factory=dict)  # folder -> stem -> image names
    captions: list[str] = field(default_factory=list)


class DatasetStore:
    """Datasets under ``data_dir`` (one folder each); see the module doc."""

    def __init__(self, data_dir: Path, *, min_side: int = 64, max_zip_bytes: int = DEFAULT_MAX_ZIP_BYTES,
                 max_zip_members: int = DEFAULT_MAX_ZIP_MEMBERS):
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.min_side = int(min_side)
        self.max_zip_bytes = int(max_zip_bytes)
        self.max_zip_members = int(max_zip_members)
        self._lock = threading.RLock()

    # ------------------------------------------------------------------------------------------
    # Datasets

    def names(self) -> list[str]:
        """Saved datasets, sorted (case-insensitively)."""
        found = [p.name for p in self.data_dir.iterdir() if _valid_dataset_name(p.name) and p.is_dir()]
        return sorted(found, key=lambda n: (n.casefold(), n))

    def path(self, name: str) -> Path:
        """The folder of dataset ``name``; ValueError for an unsafe or unknown name."""
        if not isinstance(name, str) or not _valid_dataset_name(name):
            raise ValueError(f"{name!r} is not a valid dataset name: use letters, digits, '-', '_' or '.', "
                             "without slashes")
        folder = self.data_dir / name
        if not folder.is_dir():
            raise ValueError(f"there is no dataset named {name!r}; choose a saved dataset or create one")
        return folder

    def safe_name(self, raw: str) -> str:
        """A dataset folder name made from ``raw``: never empty, no separators, no '.'/'..', not hidden.

        Letters and digits of any script, '-', '_' and '.' are kept; everything else becomes '_'. A name
        like ``2024_photos`` becomes ``2024-photos``: the trainer would read ``N_name`` as a kohya folder
        and train every image 2024 times per epoch.
        """
        text = _strip_controls(unicodedata.normalize("NFC", str(raw)))
        parts = [p.strip() for p in re.split(r"[/\\]+", text)]
        text = "_".join(p for p in parts if p not in ("", ".", ".."))
        text = re.sub(r"[^\w.\-]+", "_", text)
        text = re.sub(r"_{2,}", "_", re.sub(r"\.{2,}", ".", text))
        text = _truncate_bytes(text.strip("._- "), MAX_DATASET_NAME_BYTES).strip("._- ")
        if kohya_folder(text, ""):
            text = re.sub(r"^(\d+)_", r"\1-", text)
        return text or "dataset"

    def create(self, name: str) -> str:
        """Create dataset ``safe_name(name)`` and return that name; an existing one is kept as is."""
        safe = self.safe_name(name)
        folder = self.data_dir / safe
        with self._lock:
            if folder.is_dir():
                return safe
            if folder.exists() or folder.is_symlink():
                raise ValueError(f"cannot create dataset {safe!r}: a file of that name is in the way")
            folder.mkdir()
        return safe

    def delete_dataset(self, name: str) -> None:
        """Move the whole dataset folder into ``data_dir/.trash`` (recoverable; never deleted)."""
        with self._lock:
            folder = self.path(name)
            trash = self.data_dir / TRASH_DIR
            trash.mkdir(exist_ok=True)
            shutil.move(str(folder), str(_unique(trash / name)))

    # ------------------------------------------------------------------------------------------
    # Uploads

    def add_files(self, name: str, files: list[tuple[str, Path]], *, overwrite: bool = False) -> UploadResult:
        """Store uploaded images, captions and zips; every file ends up added, rejected or a conflict."""
        with self._lock:
            upload = _Upload(self.path(name), overwrite, UploadResult())
            for original, temp in files:
                original = str(original)
                raw_base = original.replace("\\", "/").rsplit("/", 1)[-1]
                if _is_junk(raw_base):
                    continue
                base = _clean_component(raw_base)
                if Path(base).suffix.lower() == ZIP_EXTENSION:
                    self._add_zip(upload, original, Path(temp))
                    continue

                def opener(temp: Path = Path(temp)) -> BinaryIO:
                    return open(temp, "rb")  # noqa: SIM115 - closed by the caller's with-block

                self._add_one(upload, original, base, "", opener, _file_size(Path(temp)))
            self._warn_orphan_captions(upload)
            return upload.result

    def _add_zip(self, upload: _Upload, original: str, archive: Path) -> None:
        try:
            with zipfile.ZipFile(archive) as zf:
                members = [i for i in zf.infolist() if not i.is_dir()]
                if len(members) > self.max_zip_members:
                    raise _Reject(f"holds {len(members):,} files, more than the limit of {self.max_zip_members:,}; "
                                  "split it into smaller zips")
                total = sum(i.file_size for i in members)
                if total > self.max_zip_bytes:
                    raise _Reject(f"unpacks to {_size_text(total)}, more than the limit of "
                                  f"{_size_text(self.max_zip_bytes)}; split it into smaller zips")
                for info in members:
                    shown = f"{original}/{info.filename}"
                    try:
                        folder, base = self._zip_target(info)
                    except _Reject as err:
                        upload.result.rejected.append(Rejected(shown, str(err)))
                        continue
                    if base is None:
                        continue  # junk: __MACOSX/, .DS_Store, hidden files
                    if Path(base).suffix.lower() == ZIP_EXTENSION:
                        upload.result.rejected.append(Rejected(shown, "a zip inside the zip; unpack it and upload "
                                                                      "its files or zip them again as one archive"))
                        continue

                    def opener(info: zipfile.ZipInfo = info, zf: zipfile.ZipFile = zf) -> BinaryIO:
                        return zf.open(info)

                    self._add_one(upload, shown, base, folder, opener, info.file_size)
        except _Reject as err:
            upload.result.rejected.append(Rejected(original, str(err)))
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError):
            upload.result.rejected.append(Rejected(original, "not a readable zip archive (damaged or incomplete "
                                                             "upload?); create the zip again and re-upload it"))

    def _zip_target(self, info: zipfile.ZipInfo) -> tuple[str, str | None]:
        """(subfolder or "", base name) for a zip member; base None for junk to skip silently."""
        raw = info.filename.replace("\\", "/")
        if raw.startswith("/") or re.match(r"^[A-Za-z]:", raw):
            raise _Reject("absolute path in the archive; not extracted (zip the files with relative paths)")
        parts = [p for p in raw.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise _Reject("the path points outside the archive ('..'); not extracted")
        if not parts or any(_is_junk(p) or p.startswith(".") for p in parts):
            return "", None  # OS leftovers and hidden files/folders (.git/, ...)
        if stat.S_ISLNK(info.external_attr >> 16):
            raise _Reject("a symbolic link; not extracted (zip the file itself, not a link to it)")
        if info.flag_bits & 0x1:
            raise _Reject("password-protected; zip it again without a password")
        base = _clean_component(parts[-1])
        folder = ""
        if len(parts) > 1:
            parent = _clean_component(parts[-2])
            if parent and kohya_folder(parent, ""):
                folder = parent  # an `N_name class` folder the trainer reads: keep it
        return folder, base

    def _add_one(self, upload: _Upload, shown: str, base: str, folder: str,
                 opener: Callable[[], BinaryIO], size: int | None) -> None:
        result = upload.result
        try:
            kind = _kind(base)
            rel = PurePosixPath(folder, base) if folder else PurePosixPath(base)
            if kind == "caption":
                rel = self._caption_rel(upload.root, rel)
                if size is not None and size > MAX_CAPTION_BYTES:
                    raise _Reject(f"too large for a caption ({_size_text(size)}); captions are a line of text")
            key = rel.as_posix()
            dest = upload.root / rel
            if not _inside(upload.root, dest.parent):
                raise _Reject(f"the folder {folder!r} in the dataset is a link to elsewhere; not written")
            if key in upload.planned:
                raise _Reject(f"same name as {upload.planned[key]!r} in this upload; rename one of them")
            if kind == "image":
                clash = self._stem_clash(upload, dest)
                if clash:
                    raise _Reject(f"the image {clash!r} already has the name {dest.stem!r}, so they would share "
                                  "a caption; rename this file (or delete the other image first)")
            existed = dest.exists() or dest.is_symlink()
            if existed and not upload.overwrite:
                result.conflicts.append(key)
                return
            self._write(upload.root, dest, kind, opener)
        except _Reject as err:
            result.rejected.append(Rejected(shown, str(err)))
            return
        except FileNotFoundError:
            result.rejected.append(Rejected(shown, "the uploaded file is gone from the server (upload interrupted?); "
                                                   "upload it again"))
            return
        except OSError as err:
            result.rejected.append(Rejected(shown, f"could not be read or saved ({err.strerror or err}); "
                                                   "check the free disk space and upload it again"))
            return
        upload.planned[key] = shown
        result.added.append(key)
        if existed:
            result.replaced.append(key)
        if kind == "image":
            self._stem_index(upload, dest.parent).setdefault(dest.stem, set()).add(dest.name)
        else:
            upload.captions.append(key)

    def _write(self, root: Path, dest: Path, kind: str, opener: Callable[[], BinaryIO]) -> None:
        with _staged(root, opener) as staged:
            if kind == "image":
                self._check_image(staged)
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staged, dest)
            else:
                write_text(dest, _decode_caption(staged) + "\n")

    def _check_image(self, path: Path) -> None:
        try:
            info = probe_image(path)
        except ImageReadError as err:
            reason = str(err)
            if ";" not in reason:
                reason += "; upload a complete copy or re-export it as PNG or JPEG"
            raise _Reject(reason) from None
        reason = unusable_reason(info)  # the trainer's own rule, so upload and training agree
        if reason:
            raise _Reject(reason)
        if info.width < self.min_side or info.height < self.min_side:
            raise _Reject(f"too small ({info.width}×{info.height} px; at least {self.min_side} px per side); "
                          "use a larger original")

    def _caption_rel(self, root: Path, rel: PurePosixPath) -> PurePosixPath:
        """Captions are stored as ``.txt``, or into an existing ``.caption`` file of the same stem."""
        txt = rel.with_suffix(".txt")
        if not (root / txt).exists():
            for ext in CAPTION_EXTENSIONS:
                for candidate in (rel.with_suffix(ext), rel.with_suffix(ext.upper())):
                    if (root / candidate).is_file():
                        return candidate
        return txt

    def _stem_clash(self, upload: _Upload, dest: Path) -> str | None:
        """Another image in ``dest``'s folder with the same stem (the trainer refuses such pairs)."""
        others = sorted(self._stem_index(upload, dest.parent).get(dest.stem, set()) - {dest.name})
        return others[0] if others else None

    @staticmethod
    def _stem_index(upload: _Upload, folder: Path) -> dict[str, set[str]]:
        """stem -> image names in ``folder``, read once per upload and kept up to date by it."""
        if folder not in upload.stems:
            index: dict[str, set[str]] = {}
            if folder.is_dir():
                for f in folder.iterdir():
                    if f.suffix.lower() in IMAGE_EXTENSIONS and not f.name.startswith("."):
                        index.setdefault(f.stem, set()).add(f.name)
            upload.stems[folder] = index
        return upload.stems[folder]

    def _warn_orphan_captions(self, upload: _Upload) -> None:
        orphans = []
        for key in upload.captions:
            caption = upload.root / key
            if not any(caption.with_suffix(ext).exists() or caption.with_suffix(ext.upper()).exists()
                       for ext in IMAGE_EXTENSIONS):
                orphans.append(key)
        if orphans:
            listed = _listing([_code(o) for o in orphans], ", ")
            upload.result.warnings.append(
                f"{_plural(len(orphans), 'caption')} without an image of the same name yet "
                f"(upload the image with the same name): {listed}.")

    # ------------------------------------------------------------------------------------------
    # The grid

    def items(self, name: str) -> list[DatasetItem]:
        """Every image the trainer would see (main folder and its subfolders), sorted by relative path."""
        root = self.path(name)
        out = []
        folders = [root, *(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))]
        for folder in folders:
            if not _inside(root, folder):
                continue
            for f in folder.iterdir():
                if f.name.startswith(".") or f.suffix.lower() not in IMAGE_EXTENSIONS or not f.is_file():
                    continue
                if not _inside(root, f):
                    continue
                caption_file = _caption_file(f)
                caption = ""
                if caption_file is not None:
                    with contextlib.suppress(OSError):
                        caption = read_caption(caption_file).text
                width, height = _header_size(f)
                out.append(DatasetItem(f.relative_to(root).as_posix(), f, caption, caption_file, width, height))
        out.sort(key=lambda item: item.image)
        return out

    def set_caption(self, name: str, image: str, caption: str) -> None:
        """Write the caption of ``image`` (atomically): into its existing caption file, else a new .txt."""
        with self._lock:
            path = self._image_path(name, image)
            self._write_caption(path, _clean_caption(caption))

    def delete_image(self, name: str, image: str) -> None:
        """Move ``image`` and its caption file(s) to ``data_dir/.trash/<name>/`` (recoverable)."""
        with self._lock:
            path = self._image_path(name, image)
            rel = PurePosixPath(image.replace("\\", "/"))
            target_dir = self.data_dir / TRASH_DIR / name / rel.parent
            target_dir.mkdir(parents=True, exist_ok=True)
            companions = _caption_files(path)
            stem = _free_stem(target_dir, path.stem, [path.suffix, *(c.suffix for c in companions)])
            shutil.move(str(path), str(target_dir / f"{stem}{path.suffix}"))
            for c in companions:
                shutil.move(str(c), str(target_dir / f"{stem}{c.suffix}"))

    def bulk_edit(self, name: str, action: str, *, text: str = "", old: str = "", new: str = "",
                  whole_tag: bool = False, keep_tokens: int = 1) -> int:
        """Edit every image's caption; returns how many captions changed.

        ``prefix``/``suffix``/``trigger`` use ``text`` and also give uncaptioned images a caption (what
        the grid shows is what trains); ``trigger`` puts ``text`` first unless the caption already has
        it anywhere (the trainer's ``compose_caption`` rule), so it is idempotent. ``replace`` replaces
        ``old`` with ``new`` (whole tags only with ``whole_tag``); ``dedupe`` drops repeated tags;
        ``sort`` sorts tags after the first ``keep_tokens`` (the trigger stays first by default).
        """
        edit = _edit_function(action, text=text, old=old, new=new, whole_tag=whole_tag, keep_tokens=keep_tokens)
        changed = 0
        with self._lock:
            for item in self.items(name):
                updated = _clean_caption(edit(item.caption))
                if updated != item.caption:
                    self._write_caption(item.path, updated)
                    changed += 1
        return changed

    # ------------------------------------------------------------------------------------------

    def _image_path(self, name: str, image: str) -> Path:
        """The file of ``image`` (relative to the dataset); ValueError unless it is an image inside it."""
        root = self.path(name)
        raw = str(image).replace("\\", "/")
        parts = raw.split("/")
        if not raw or raw.startswith("/") or re.match(r"^[A-Za-z]:", raw) or ".." in parts:
            raise ValueError(f"{image!r} is not a path inside dataset {name!r}")
        path = root / raw
        if not _inside(root, path):
            raise ValueError(f"{image!r} points outside dataset {name!r}")
        if not path.is_file() or path.suffix.lower() not in IMAGE_EXTENSIONS:
            raise ValueError(f"there is no image {image!r} in dataset {name!r} (deleted or renamed?)")
        return path

    def _write_caption(self, image: Path, caption: str) -> None:
        target = _caption_file(image) or image.with_suffix(".txt")
        write_text(target, caption + "\n")
