"""Automatic captioning (BLIP-style image-to-text, or a booru-style multi-label tagger) and batch edits.

Models load through transformers' Auto classes from a local folder or a hub id, so any BLIP/BLIP-2/GIT
style captioner and any multi-label ``*ForImageClassification`` tagger (e.g. the HF ports of the WD
taggers) plugs in without code here. Captions are written next to the images as ``.txt`` (or into the
existing ``.caption`` file), atomically, and existing captions are kept unless ``overwrite``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

from trainer.atomic import write_text
from trainer.data.captions import add_prefix, add_suffix, read_caption
from trainer.data.errors import DatasetError
from trainer.data.images import ImageReadError, load_rgb
from trainer.data.scan import ImageRecord, scan_folder
from trainer.errors import UserFacingError

CAPTIONER_KINDS = ("blip", "tagger")
# Rating pseudo-tags of the WD taggers: not content, so not written into captions.
RATING_TAGS = frozenset({"general", "sensitive", "questionable", "explicit"})

Progress = Callable[[int, int], None]


class CaptionerError(UserFacingError):
    """A captioning model that cannot be loaded or run, with what to do about it."""


class Captioner(Protocol):
    def caption(self, images: list[Image.Image]) -> list[str]: ...


@dataclass
class CaptionerOptions:
    model: str
    kind: str = "blip"
    device: str = "auto"
    max_new_tokens: int = 40
    num_beams: int = 1
    prompt: str = ""  # conditional captioning prefix for BLIP, e.g. "a photo of"
    threshold: float = 0.35  # tagger: minimum sigmoid score (the WD taggers' usual cut-off)
    revision: str = ""


def _device(name: str) -> Any:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_captioner(options: CaptionerOptions) -> Captioner:
    if options.kind not in CAPTIONER_KINDS:
        raise CaptionerError(f"captioner kind must be one of {', '.join(CAPTIONER_KINDS)}, got {options.kind!r}")
    kwargs = {"revision": options.revision} if options.revision else {}
    try:
        if options.kind == "blip":
            return BlipCaptioner(options, kwargs)
        return TaggerCaptioner(options, kwargs)
    except (OSError, ValueError, KeyError) as err:
        raise CaptionerError(
            f"could not load the {options.kind} captioner {options.model!r}: {err}. Give a local model folder or a "
            "hub id (downloading needs internet)."
        ) from None


class BlipCaptioner:
    """Image-to-text generation: processor(images) → model.generate → decoded text."""

    def __init__(self, options: CaptionerOptions, kwargs: dict[str, Any]):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.options = options
        self.device = _device(options.device)
        self.processor = AutoProcessor.from_pretrained(options.model, **kwargs)
        self.model = AutoModelForImageTextToText.from_pretrained(options.model, **kwargs).to(self.device).eval()

    def caption(self, images: list[Image.Image]) -> list[str]:
        import torch

        text = [self.options.prompt] * len(images) if self.options.prompt else None
        inputs = self.processor(images=images, text=text, return_tensors="pt").to(self.device)
        with torch.no_grad():
            ids = self.model.generate(**inputs, max_new_tokens=self.options.max_new_tokens,
                                      num_beams=self.options.num_beams, do_sample=False)
        return [t.strip() for t in self.processor.batch_decode(ids, skip_special_tokens=True)]


class TaggerCaptioner:
    """Multi-label tagger: labels whose sigmoid score passes the threshold, best first, as tags."""

    def __init__(self, options: CaptionerOptions, kwargs: dict[str, Any]):
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        self.options = options
        self.device = _device(options.device)
        self.processor = AutoImageProcessor.from_pretrained(options.model, **kwargs)
        self.model = AutoModelForImageClassification.from_pretrained(options.model, **kwargs).to(self.device).eval()

    def caption(self, images: list[Image.Image]) -> list[str]:
        import torch

        inputs = self.processor(images=images, return_tensors="pt").to(self.device)
        with torch.no_grad():
            scores = torch.sigmoid(self.model(**inputs).logits.float())  # (B, num_labels)
        labels = self.model.config.id2label
        out = []
        for row in scores.tolist():
            ranked = sorted(((s, labels[i]) for i, s in enumerate(row) if s >= self.options.threshold), reverse=True)
            tags = [label.replace("_", " ") for _, label in ranked if label not in RATING_TAGS]
            out.append(", ".join(tags))
        return out


@dataclass
class CaptionRun:
    """What a captioning or editing pass did; nothing is skipped without being listed."""

    written: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)  # already captioned (no --overwrite) or unchanged
    failed: list[str] = field(default_factory=list)  # "path: reason"


def _records(folder: Path) -> list[ImageRecord]:
    scan = scan_folder(folder, probe=False)
    if scan.problems:
        raise DatasetError(f"{folder}: fix these before captioning:", scan.problems)
    return scan.records


def caption_target(record: ImageRecord) -> Path:
    """The file a caption is written to: the existing .txt/.caption, else a new .txt."""
    if record.caption_file is not None and record.caption_file.suffix.lower() in (".txt", ".caption"):
        return record.caption_file
    return record.path.with_suffix(".txt")


def caption_folder(
    folder: str | Path,
    captioner: Captioner,
    *,
    overwrite: bool = False,
    batch_size: int = 4,
    edit: Callable[[str], str] | None = None,
    on_progress: Progress | None = None,
    show_progress: bool = True,
) -> CaptionRun:
    """Caption every image of ``folder`` (kohya subfolders included) that has no caption yet."""
    from tqdm import tqdm

    run = CaptionRun()
    todo = []
    for record in _records(Path(folder)):
        if record.caption and not overwrite:
            run.kept.append(record.path)
        else:
            todo.append(record)
    bar = tqdm(total=len(todo), desc="captioning", unit="img", file=sys.stderr, disable=not show_progress)
    for start in range(0, len(todo), batch_size):
        batch, images = [], []
        for record in todo[start : start + batch_size]:
            try:
                images.append(load_rgb(record.path))
                batch.append(record)
            except ImageReadError as err:
                run.failed.append(f"{record.path}: {err}")
        for record, text in zip(batch, captioner.caption(images) if images else [], strict=True):
            write_text(caption_target(record), (edit(text) if edit else text) + "\n")
            run.written.append(record.path)
        bar.update(len(todo[start : start + batch_size]))
        if on_progress:
            on_progress(min(start + batch_size, len(todo)), len(todo))
    bar.close()
    return run


def edit_captions(folder: str | Path, edit: Callable[[str], str], *, dry_run: bool = False) -> CaptionRun:
    """Apply ``edit`` to every existing caption file; metadata.jsonl captions are listed as failed."""
    run = CaptionRun()
    for record in _records(Path(folder)):
        if record.caption_file is None:
            continue
        target = caption_target(record)
        if target != record.caption_file:
            run.failed.append(f"{record.path}: caption comes from {record.caption_file.name}; edit that file directly")
            continue
        old = read_caption(target).text
        new = edit(old)
        if new == old:
            run.kept.append(target)
            continue
        if not dry_run:
            write_text(target, new + "\n")
        run.written.append(target)
    return run


def compose_edits(prefix: str = "", suffix: str = "", steps: list[Callable[[str], str]] | None = None) -> Callable[[str], str]:
    """One edit function: the given steps in order, then prefix and suffix."""

    def apply(caption: str) -> str:
        for step in steps or []:
            caption = step(caption)
        return add_suffix(add_prefix(caption, prefix), suffix)

    return apply
