"""The dataset health report (``python -m trainer check-dataset --json``) as a table for the page.

One row per finding: what it is, how many, and which files (named relative to the dataset folder, so
nothing is cut at the edge); near-duplicate groups as thumbnails side by side. Problems that stop a
run are red. Pure Python (no Gradio, no torch), every string escaped.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.run_detail import file_url

LISTED = 12  # file names shown per row before "and N more"


@dataclass(frozen=True)
class HealthRow:
    finding: str
    count: int | str
    items: list[str] = field(default_factory=list)
    bad: bool = False  # stops training: shown red
    groups: list[list[str]] = field(default_factory=list)  # near-duplicate groups (absolute paths)


def _relative(entry: str, root: str) -> str:
    """``/data/dog/a.png (32x32)`` → ``a.png (32x32)``: the dataset folder is said once, above the table."""
    prefix = root.rstrip("/") + "/"
    return entry[len(prefix):] if entry.startswith(prefix) else entry


def health_rows(report: dict[str, Any]) -> list[HealthRow]:
    """The report's findings in the order a user fixes them; empty findings are left out."""
    root = str(report.get("path", ""))

    def rel(entries: list[str]) -> list[str]:
        return [_relative(str(e), root) for e in entries]

    rows = [HealthRow("Images", report.get("num_images", 0), [f"{report.get('num_captioned', 0)} with captions"])]
    sizes = report.get("resolution_histogram") or {}
    if sizes:
        rows.append(HealthRow("Sizes", len(sizes), [f"{size} ×{count}" for size, count in sizes.items()]))
    listed = [
        ("Problems that stop training", "problems", True),
        ("Unreadable images", "unreadable", True),
        ("Missing captions (trained as trigger + class word)", "missing_captions", False),
        ("Smaller than the training size (upscaled)", "small_images", False),
        ("Extreme aspect ratio (mostly cropped unless bucketing)", "extreme_aspect", False),
        ("Warnings", "warnings", False),
    ]
    for title, key, bad in listed:
        entries = report.get(key) or []
        if entries:
            rows.append(HealthRow(title, len(entries), rel(entries), bad=bad))
    groups = report.get("near_duplicates") or []
    if groups:
        rows.append(HealthRow("Near duplicates", len(groups), [" = ".join(rel(g)) for g in groups], groups=groups))
    long = report.get("long_captions") or []
    if long:
        limit = report.get("token_limit")
        rows.append(HealthRow(f"Captions over the text encoder's {limit} tokens (the rest is cut)", len(long),
                              [f"{_relative(str(c['path']), root)}: {c['tokens']} tokens" for c in long]))
    tags = report.get("tag_frequency") or []
    if tags:
        rows.append(HealthRow("Top tags", len(tags), [f"{tag} ({count})" for tag, count in tags[:15]]))
    if report.get("num_images"):
        rows.append(HealthRow("Suggested", "", [f"repeats = {report.get('suggested_repeats')}",
                                                f"max steps = {report.get('suggested_steps')}"]))
    for note in report.get("notes") or []:
        rows.append(HealthRow("Note", "", [str(note)]))
    return rows


def _items_html(row: HealthRow) -> str:
    if row.groups:
        return "".join(
            '<div class="ls-dupes">' + "".join(
                f'<figure><img src="{file_url(path)}" alt="{html.escape(Path(path).name)}" loading="lazy">'
                f"<figcaption>{html.escape(Path(path).name)}</figcaption></figure>" for path in group
            ) + "</div>"
            for group in row.groups[:LISTED]
        )
    shown = ", ".join(html.escape(item) for item in row.items[:LISTED])
    more = f" and {len(row.items) - LISTED} more" if len(row.items) > LISTED else ""
    return shown + more


def health_table_html(report: dict[str, Any]) -> str:
    """The report as an HTML table, with the dataset folder and the verdict above it."""
    ok = bool(report.get("ok"))
    verdict = "OK: training can start" if ok else "Not OK: fix the red rows before training"
    body = "".join(
        f'<tr class="{"ls-bad" if row.bad else ""}" data-finding="{html.escape(row.finding)}">'
        f"<th scope=\"row\">{html.escape(row.finding)}</th><td>{html.escape(str(row.count))}</td>"
        f"<td>{_items_html(row)}</td></tr>"
        for row in health_rows(report)
    )
    return (
        f'<div class="ls-health" data-ok="{str(ok).lower()}"><div class="{"" if ok else "ls-bad"}">'
        f"<b>{verdict}</b> · <code>{html.escape(str(report.get('path', '')))}</code></div>"
        f'<table><thead><tr><th>finding</th><th>count</th><th>files and details</th></tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )
