"""A labelled image grid: rows are prompts, columns are settings (base, strengths, adapters), one PNG.

The layout is computed first (``grid_layout``) and kept, so a test or a caller can find every cell's
pixels in the saved grid again (``GridLayout.box``). Pillow draws; labels use its bundled font, which
needs no font file on the machine (it lacks some symbols, e.g. ×: labels keep to plain characters). Cells keep their own size (never rescaled): a cell of the grid is
the image as generated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PAD = 6  # pixels between cells and around labels
FONT_SIZE = 13
ROW_LABEL_WIDTH = 180  # prompts are wrapped to this width
MIN_COLUMN_WIDTH = 72  # so a short label fits over a tiny (e.g. 32 px) cell
MIN_TITLE_WIDTH = 420  # a narrow grid (one or two tiny columns) still gets a readable title line
BACKGROUND = (255, 255, 255)
TEXT = (20, 20, 20)


@dataclass(frozen=True)
class GridLayout:
    """Where each part of the grid is: the title band, the label column and row, and the cells."""

    rows: int
    columns: int
    cell_width: int
    cell_height: int
    column_width: int
    row_height: int
    left: int  # x of the first column (after the prompt labels)
    top: int  # y of the first row (after the title and column labels)
    title_height: int
    title_width: int = 0  # the title is wrapped to this many pixels; the image is at least this wide

    @property
    def size(self) -> tuple[int, int]:
        return (
            max(self.left + self.columns * (self.column_width + PAD), self.title_width + 2 * PAD),
            self.top + self.rows * (self.row_height + PAD),
        )

    def box(self, row: int, column: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of cell (row, column), as PIL's ``crop`` takes it."""
        x = self.left + column * (self.column_width + PAD) + (self.column_width - self.cell_width) // 2
        y = self.top + row * (self.row_height + PAD) + (self.row_height - self.cell_height) // 2
        return (x, y, x + self.cell_width, y + self.cell_height)


def _font() -> Any:
    from PIL import ImageFont

    return ImageFont.load_default(size=FONT_SIZE)


def _text_width(font: Any, text: str) -> int:
    left, _, right, _ = font.getbbox(text)
    return int(right - left)


def wrap(text: str, width: int, font: Any = None) -> list[str]:
    """Words of ``text`` in lines no wider than ``width`` pixels; a word wider than that is cut into pieces."""
    font = font or _font()
    pieces: list[str] = []
    for word in text.split():
        while len(word) > 1 and _text_width(font, word) > width:
            cut = len(word) - 1
            while cut > 1 and _text_width(font, word[:cut]) > width:
                cut -= 1
            pieces.append(word[:cut])
            word = word[cut:]
        pieces.append(word)
    lines: list[str] = []
    for piece in pieces:
        if lines and _text_width(font, f"{lines[-1]} {piece}") <= width:
            lines[-1] = f"{lines[-1]} {piece}"
        else:
            lines.append(piece)
    return lines or [""]


def grid_layout(
    row_labels: list[str], column_labels: list[str], cell_size: tuple[int, int], title: str = ""
) -> GridLayout:
    font = _font()
    line = FONT_SIZE + 4
    column_width = max(cell_size[0], MIN_COLUMN_WIDTH)
    label_lines = max((len(wrap(label, column_width, font)) for label in column_labels), default=1)
    row_lines = max((len(wrap(label, ROW_LABEL_WIDTH, font)) for label in row_labels), default=1)
    cells_width = ROW_LABEL_WIDTH + 2 * PAD + len(column_labels) * (column_width + PAD)
    title_width = max(cells_width - 2 * PAD, MIN_TITLE_WIDTH) if title else 0
    title_height = (len(wrap(title, title_width, font)) * line + PAD) if title else 0
    return GridLayout(
        rows=len(row_labels),
        columns=len(column_labels),
        cell_width=cell_size[0],
        cell_height=cell_size[1],
        column_width=column_width,
        row_height=max(cell_size[1], row_lines * line),
        left=ROW_LABEL_WIDTH + 2 * PAD,
        top=PAD + title_height + label_lines * line + PAD,
        title_height=title_height,
        title_width=title_width,
    )


def render_grid(
    cells: list[list[Any]], row_labels: list[str], column_labels: list[str], title: str = ""
) -> tuple[Any, GridLayout]:
    """Paste ``cells[row][column]`` (PIL images of one size) into one labelled image; returns it and its layout."""
    from PIL import Image, ImageDraw

    if not cells or not cells[0]:
        raise ValueError("a grid needs at least one cell")
    if len(cells) != len(row_labels) or any(len(row) != len(column_labels) for row in cells):
        raise ValueError(f"cells are not {len(row_labels)} rows × {len(column_labels)} columns")
    size = cells[0][0].size
    layout = grid_layout(row_labels, column_labels, size, title)
    canvas = Image.new("RGB", layout.size, BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = _font()
    line = FONT_SIZE + 4
    for i, text in enumerate(wrap(title, layout.title_width, font) if title else []):
        draw.text((PAD, PAD + i * line), text, fill=TEXT, font=font)
    for column, label in enumerate(column_labels):
        x = layout.left + column * (layout.column_width + PAD)
        for i, text in enumerate(wrap(label, layout.column_width, font)):
            draw.text((x, PAD + layout.title_height + i * line), text, fill=TEXT, font=font)
    for row, label in enumerate(row_labels):
        y = layout.top + row * (layout.row_height + PAD)
        for i, text in enumerate(wrap(label, ROW_LABEL_WIDTH, font)):
            draw.text((PAD, y + i * line), text, fill=TEXT, font=font)
        for column, image in enumerate(cells[row]):
            if image.size != size:
                raise ValueError(f"cell ({row}, {column}) is {image.size}, the others {size}")
            canvas.paste(image.convert("RGB"), layout.box(row, column)[:2])
    return canvas, layout
