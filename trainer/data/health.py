"""Dataset health report: everything worth fixing before a run, found in one pass. No torch.

Used before every run (the loop emits it) and on demand (``python -m trainer check-dataset``, the UI).
It never raises for a bad dataset: every finding is a field of the report; ``ok`` says whether
training would start.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from trainer.config import PRESETS, DatasetConfig
from trainer.data.buckets import assign_buckets, crop_box, summarize_buckets
from trainer.data.captions import compose_caption, split_tags
from trainer.data.images import ImageReadError, load_rgb
from trainer.data.phash import ImageHash, image_hash, near_duplicate_groups
from trainer.data.scan import ImageRecord, scan_folder

# Heuristic behind the suggestions: about 10 epochs over the preset's step budget is the common
# advice for LoRA (sd-scripts / kohya_ss guides); 1500 steps when no preset is chosen.
TARGET_EPOCHS = 10
DEFAULT_TARGET_STEPS = 1500
TOP_TAGS = 30
EXTREME_ASPECT = 4.0


@dataclass
class LongCaption:
    path: str
    tokens: int
    limit: int


@dataclass
class HealthReport:
    """Findings for one dataset folder; paths are strings so the report serialises to JSON as is."""

    path: str
    num_images: int = 0
    num_captioned: int = 0
    resolution_histogram: dict[str, int] = field(default_factory=dict)  # "WxH" → images, most common first
    small_images: list[str] = field(default_factory=list)  # upscaled to reach their training size
    extreme_aspect: list[str] = field(default_factory=list)
    near_duplicates: list[list[str]] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)  # "path: reason"
    problems: list[str] = field(default_factory=list)  # layout errors that stop a run (duplicate stems, ...)
    missing_captions: list[str] = field(default_factory=list)
    long_captions: list[LongCaption] = field(default_factory=list)
    token_limit: int | None = None
    tag_frequency: list[tuple[str, int]] = field(default_factory=list)
    suggested_repeats: int = 1
    suggested_steps: int = 0
    buckets: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # about the check itself, e.g. "caption lengths not checked"

    @property
    def ok(self) -> bool:
        """True when a run would start (unreadable files stop it unless skip_bad_images is set)."""
        return self.num_images > 0 and not self.problems and not self.unreadable

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        data["tag_frequency"] = [list(t) for t in self.tag_frequency]
        return data

    def format(self) -> str:
        from trainer.data.health_text import format_report  # noqa: PLC0415 - text layout kept apart

        return format_report(self)


def health_report(
    path: str | Path,
    cfg: DatasetConfig,
    tokenizer: Any = None,
    *,
    preset: str | None = None,
    batch_size: int = 1,
) -> HealthReport:
    """Scan ``path`` with the dataset settings of ``cfg``; ``tokenizer`` enables the caption-length check."""
    scan = scan_folder(Path(path), repeats=cfg.repeats, trigger=cfg.trigger_word, class_word=cfg.class_word)
    report = HealthReport(path=str(path), problems=list(scan.problems), unreadable=list(scan.bad_files),
                          warnings=list(scan.warnings))
    records = scan.records
    report.num_images = len(records)
    if not records and not scan.missing:
        report.problems.append(f"{path}: no usable images (png, jpg, jpeg, webp, bmp, gif; or `N_name class` subfolders)")
    report.num_captioned = sum(1 for r in records if r.caption)
    report.missing_captions = [str(r.path) for r in records if not r.caption]
    report.resolution_histogram = dict(Counter(f"{r.width}x{r.height}" for r in records).most_common())
    limits = assign_buckets(records, cfg.resolution, cfg.bucketing, cfg.bucket_min, cfg.bucket_max, cfg.bucket_step,
                            cfg.bucket_no_upscale)
    report.small_images = [f"{r.path} ({r.width}x{r.height})" for r in records if _upscaled(r)]
    report.extreme_aspect = [
        f"{r.path} ({r.width}x{r.height})" for r in records if max(r.width / r.height, r.height / r.width) > EXTREME_ASPECT
    ]
    items = [r.bucket for r in records for _ in range(r.repeats)]
    report.buckets = summarize_buckets([r.bucket for r in records], items, limits).to_dict()
    report.near_duplicates = [[str(p) for p in group] for group in near_duplicate_groups(_hashes(records, report))]
    report.tag_frequency = Counter(t.lower() for r in records for t in split_tags(r.caption)).most_common(TOP_TAGS)
    if tokenizer is not None:
        _check_lengths(records, tokenizer, report)
    _suggest(report, cfg, records, preset, batch_size)
    return report


def _upscaled(record: ImageRecord) -> bool:
    box = crop_box(record.width, record.height, record.bucket, None)
    return box.resized[0] > record.width or box.resized[1] > record.height


def _hashes(records: list[ImageRecord], report: HealthReport) -> list[ImageHash]:
    hashes = []
    for r in records:
        try:
            hashes.append(image_hash(r.path, load_rgb(r.path)))
        except ImageReadError as err:  # changed since the scan: report it, do not stop
            report.unreadable.append(f"{r.path}: {err}")
    return hashes


def _check_lengths(records: list[ImageRecord], tokenizer: Any, report: HealthReport) -> None:
    """Captions (as trained: with trigger/class word) longer than the text encoder's window."""
    limit = int(tokenizer.model_max_length)
    report.token_limit = limit
    for r in records:
        caption = compose_caption(r.caption, r.trigger, r.class_word)
        tokens = len(tokenizer(caption, truncation=False).input_ids)  # includes BOS/EOS, as the encoder sees
        if tokens > limit:
            report.long_captions.append(LongCaption(str(r.caption_file or r.path), tokens, limit))


def _suggest(report: HealthReport, cfg: DatasetConfig, records: list[ImageRecord], preset: str | None, batch_size: int) -> None:
    n = len(records)
    if n == 0:
        return
    target = DEFAULT_TARGET_STEPS
    if preset in PRESETS:
        target = int(PRESETS[preset].get("training", {}).get("max_steps", target))
    report.suggested_repeats = max(1, round(target * batch_size / (n * TARGET_EPOCHS)))
    report.suggested_steps = target
