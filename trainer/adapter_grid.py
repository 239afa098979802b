"""``sample --grid``: prompts × strengths (× adapters) as one labelled PNG, every cell from the same seed.

Rows are prompts; the first column is always the base model (no adapter), then one column per
strength — all adapters together at ``weight × strength`` ("combined"), or one group of columns per
adapter on its own ("adapter", for comparing checkpoints of a run). The base pipeline is loaded once
(``adapter_switching``): a column is a ``set_adapters`` call, not a model load. The seed is the same
in every cell, so what differs between two cells is the adapter setting alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.adapter_switching import AdapterBench, RenderSettings, adapter_label, render

GRID_BY = ("combined", "adapter")


@dataclass(frozen=True)
class GridColumn:
    """One column of the grid: its label and the weight of each loaded adapter in it ({}: the base model)."""

    label: str
    weights: dict[str, float] = field(default_factory=dict)


@dataclass
class GridCell:
    row: int
    column: int
    prompt: str
    label: str
    weights: dict[str, float]  # adapter file path -> weight used in this cell


@dataclass
class GridResult:
    path: Path
    prompts: list[str]
    columns: list[str]
    seed: int
    cells: list[GridCell]
    layout: Any  # grid.GridLayout: where each cell is in the PNG


def parse_strengths(text: str) -> list[float]:
    """``"0, 0.5, 0.75, 1"`` (commas or spaces) as floats; a clear error for anything else."""
    from trainer.errors import UserFacingError

    values = []
    for part in text.replace(",", " ").split():
        try:
            values.append(float(part))
        except ValueError:
            raise UserFacingError(
                f"--strengths must be numbers separated by commas (e.g. 0,0.5,1), got {part!r}"
            ) from None
    if not values:
        raise UserFacingError("--strengths must list at least one strength (e.g. 0,0.5,1)")
    return values


def grid_columns(
    names: list[str], labels: list[str], weights: list[float], strengths: list[float], by: str
) -> list[GridColumn]:
    """The base column, then the non-zero strengths: all adapters together, or each adapter alone (``by``)."""
    columns = [GridColumn("base (no adapter)")]
    scales = [s for s in dict.fromkeys(strengths) if s != 0]  # 0 is the base column; repeats once
    if by == "combined":
        # Each adapter's own weight is in the title; the column says how far all of them are turned up.
        columns += [
            GridColumn(f"strength {s:g}", {n: w * s for n, w in zip(names, weights, strict=True)})
            for s in scales
        ]
    else:
        for name, label, weight in zip(names, labels, weights, strict=True):
            columns += [GridColumn(f"{label} @ {weight * s:g}", {name: weight * s}) for s in scales]
    return columns


def render_adapter_grid(
    bench: AdapterBench,
    names: list[str],
    weights: list[float],
    prompts: list[str],
    strengths: list[float],
    *,
    by: str,
    seed: int,
    settings: RenderSettings,
    out: Path,
    title: str,
    progress: Any,  # trainer.tools.progress.Progress
) -> GridResult:
    """Render every cell, paste them into one labelled PNG under ``out`` and return where each cell is."""
    from trainer.grid import render_grid
    from trainer.sampling import save_png, settings_digest

    paths = {name: bench.slots[name].file.path for name in names}
    labels = [adapter_label(paths[n]) for n in names]
    columns = grid_columns(names, labels, weights, strengths, by)
    plan = [(r, c) for r in range(len(prompts)) for c in range(len(columns))]
    images: list[list[Any]] = [[None] * len(columns) for _ in prompts]
    cells = []
    for row, column in progress.stage(plan, len(plan), "rendering the grid"):
        bench.activate(columns[column].weights)
        images[row][column] = render(bench, prompts[row], seed, settings)
        used = {str(paths[n]): w for n, w in columns[column].weights.items()}
        cells.append(GridCell(row, column, prompts[row], columns[column].label, used))
    bench.activate({})
    grid, layout = render_grid(images, prompts, [c.label for c in columns], title)
    digest = settings_digest(
        title, prompts, [(c.label, sorted(c.weights.items())) for c in columns], seed, grid.size
    )
    path = out / f"grid_{digest}.png"
    save_png(
        grid,
        path,
        {"title": title, "prompts": " | ".join(prompts), "columns": " | ".join(c.label for c in columns)},
    )
    return GridResult(path.resolve(), prompts, [c.label for c in columns], seed, cells, layout)
