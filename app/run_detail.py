"""A run's detail view, as data and HTML: previews over time as a grid, the config as it ran, its facts.

The grid is what a user decides by: rows are the preview prompts, columns the steps they were made at,
so one prompt reads left to right as the adapter learns. Pure Python (no Gradio, no torch); every
string put into HTML is escaped, and images are linked through Gradio's file route (the runs folder is
one of the UI's allowed paths).
"""

from __future__ import annotations

import html
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from app.run_view import RunView
from trainer.prompt_options import parse_prompt
from trainer.run_folder import CONFIG_FILE

FILE_ROUTE = "/gradio_api/file="


def file_url(path: Path | str) -> str:
    """The page's URL of a local file under one of the UI's allowed paths."""
    return FILE_ROUTE + quote(str(path))


@dataclass(frozen=True)
class PreviewGrid:
    """``cells[row][column]``: the preview of ``prompts[row]`` made at ``steps[column]`` (None: none made)."""

    prompts: list[str]
    steps: list[int]
    cells: list[list[Path | None]]


def preview_grid(view: RunView) -> PreviewGrid:
    """The run's previews that exist on disk, one row per prompt (first-seen order), one column per step."""
    prompts: list[str] = []
    steps: set[int] = set()
    by_cell: dict[tuple[str, int], Path] = {}
    for preview in view.previews:
        if not preview.path.exists():
            continue
        if preview.prompt not in prompts:
            prompts.append(preview.prompt)
        steps.add(preview.step)
        by_cell[(preview.prompt, preview.step)] = preview.path  # a resumed run's re-made step: the newest
    columns = sorted(steps)
    return PreviewGrid(prompts, columns, [[by_cell.get((p, s)) for s in columns] for p in prompts])


def preview_grid_html(grid: PreviewGrid) -> str:
    if not grid.prompts:
        return (
            '<div id="run-previews" class="ls-empty">No previews yet: they appear here as the run makes them '
            "(every <i>Previews · every n steps</i>, at the end, or with <b>Sample now</b> while it trains).</div>"
        )
    head = "".join(f"<th>step {step}</th>" for step in grid.steps)
    rows = []
    for prompt, cells in zip(grid.prompts, grid.cells, strict=True):
        tds = "".join(
            f'<td><a href="{file_url(path)}" target="_blank"><img src="{file_url(path)}" alt="{html.escape(prompt)}, '
            f'step {step}" loading="lazy"></a></td>' if path else "<td></td>"
            for step, path in zip(grid.steps, cells, strict=True)
        )
        rows.append(f'<tr><th scope="row">{html.escape(prompt)}</th>{tds}</tr>')
    return (
        f'<div id="run-previews" class="ls-grid" data-rows="{len(grid.prompts)}" data-columns="{len(grid.steps)}">'
        f'<table><thead><tr><th>prompt</th>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'
    )


def run_config_text(run_dir: Path) -> str:
    """The config the run used, as the trainer wrote it (``config.toml`` in the run folder)."""
    try:
        return (run_dir / CONFIG_FILE).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        return f"# {run_dir / CONFIG_FILE} cannot be read: {err}"


@dataclass(frozen=True)
class RunFacts:
    """When a run started and on which base model, also for a run that failed before its first event."""

    started: str  # "YYYY-MM-DD HH:MM", or "" when unknown
    base_model: str


def run_facts(run_dir: Path, view: RunView) -> RunFacts:
    """From the ``started`` event; else the run's ``config.toml`` (written when the trainer set out)."""
    started, base = view.started, view.base_model
    config = run_dir / CONFIG_FILE
    if started is None and config.is_file():
        started = config.stat().st_mtime
    if not base:
        try:
            base = str(tomllib.loads(config.read_text(encoding="utf-8")).get("model", {}).get("base", ""))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            base = ""
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(started)) if started else ""
    return RunFacts(when, base)


def try_it_prompt(run_dir: Path) -> str:
    """The prompt *Try it* starts from: the run's first preview prompt (the one its previews showed), trigger
    word filled in and sd-scripts options dropped; the trigger word alone when the run had no previews.
    A bare trigger word is a poor prompt for a model that learned a concept in scenes (``builtin:shapes-sd``
    draws its default scene for "sks" and no cross)."""
    try:
        config = tomllib.loads((run_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        config = {}
    trigger = str(config.get("dataset", {}).get("trigger_word", "") or "sks")
    prompts = config.get("sampling", {}).get("prompts") or []
    if not prompts or not isinstance(prompts[0], str):
        return trigger
    return parse_prompt(prompts[0].replace("{trigger}", trigger)).prompt or trigger


def adapter_shape_html(view: RunView) -> str:
    """The adapter's rank per block as a bar chart (AdaLoRA's final allocation, from the ``ranks`` event) and,
    for VeRA, its trainable parameters beside LoRA's at the same rank on the same layers. "" when neither."""
    parts = []
    size = view.adapter_size
    if "lora_parameters_same_rank" in size and size.get("trainable_parameters"):
        trained, lora = size["trainable_parameters"], size["lora_parameters_same_rank"]
        parts.append(f'<p id="run-param-count">trainable parameters: <b>{trained:,}</b> '
                     f"(LoRA at the same rank and layers: {lora:,}, {100 * trained / max(lora, 1):.1f}% of it)</p>")
    ranks = view.ranks or {}
    blocks = ranks.get("blocks") if isinstance(ranks.get("blocks"), dict) else {}
    if blocks:
        top = max([int(v) for v in blocks.values()] + [1])
        bars = "".join(
            f'<div class="ls-bar-row"><span class="ls-bar-label">{html.escape(str(block))}</span>'
            f'<span class="ls-bar" style="display:inline-block;background:#4f7bd9;height:0.9em;'
            f'width:{round(200 * int(rank) / top)}px"></span> <span class="ls-bar-value">{int(rank)}</span></div>'
            for block, rank in blocks.items()
        )
        title = (f"Final rank per block ({html.escape(str(ranks.get('method', '')))}, step {int(ranks.get('step', 0))}): "
                 f"total {int(ranks.get('total_rank', 0))} over {int(ranks.get('layers', 0))} layers")
        parts.append(f'<div id="run-rank-chart" data-blocks="{len(blocks)}"><p>{title}</p>{bars}</div>')
    return "".join(parts)
