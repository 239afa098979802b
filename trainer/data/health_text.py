"""Plain-text layout of a HealthReport for the terminal (the JSON form is ``to_dict``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trainer.data.health import HealthReport

MAX_LISTED = 20


def _section(lines: list[str], title: str, items: list[str]) -> None:
    if not items:
        return
    lines.append(f"{title} ({len(items)}):")
    lines.extend(f"  - {item}" for item in items[:MAX_LISTED])
    if len(items) > MAX_LISTED:
        lines.append(f"  ... and {len(items) - MAX_LISTED} more (use --json for all)")


def format_report(report: HealthReport) -> str:
    lines = [f"Dataset {report.path}: {report.num_images} image(s), {report.num_captioned} with captions"]
    sizes = ", ".join(f"{size} x{count}" for size, count in list(report.resolution_histogram.items())[:8])
    if sizes:
        lines.append(f"Sizes: {sizes}")
    _section(lines, "Problems that stop training", report.problems)
    _section(lines, "Unreadable images", report.unreadable)
    _section(lines, "Smaller than the training size (will be upscaled)", report.small_images)
    _section(lines, "Extreme aspect ratio (mostly cropped away unless bucketing)", report.extreme_aspect)
    _section(lines, "Near duplicates", [" = ".join(group) for group in report.near_duplicates])
    _section(lines, "Missing captions (train as trigger + class word)", report.missing_captions)
    _section(lines, f"Captions longer than the text encoder's {report.token_limit} tokens (the rest is cut off)",
             [f"{c.path}: {c.tokens} tokens" for c in report.long_captions])
    _section(lines, "Warnings", report.warnings)
    if report.tag_frequency:
        lines.append("Top tags: " + ", ".join(f"{tag} ({count})" for tag, count in report.tag_frequency[:15]))
    _section(lines, "Notes", report.notes)
    if report.buckets and report.buckets["buckets"]:
        rows = report.buckets["buckets"]
        lines.append("Buckets: " + ", ".join(f"{r['width']}x{r['height']} ({r['images']})" for r in rows))
    if report.num_images:
        lines.append(f"Suggested: repeats = {report.suggested_repeats}, max_steps = {report.suggested_steps}")
    lines.append("OK: training can start" if report.ok else "NOT OK: fix the problems above before training")
    return "\n".join(lines)
