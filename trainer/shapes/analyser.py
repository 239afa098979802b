"""Read a shapes-world scene back from pixels: background, shape, colour, size, position.

The world is procedural, so what a generated image shows can be measured instead of eyeballed: this is
how the base model's quality and an adapter's effect are scored (tests, README figures). The background is
the median of the border pixels; the shape is every pixel far from it; its colour is the nearest palette
colour to their median; its kind is the template (circle, square, triangle, cross) drawn in the shape's own
bounding box that overlaps it best (intersection over union). Pure numpy + Pillow, no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from trainer.shapes import world

FOREGROUND_DISTANCE = 70.0  # RGB distance from the background above which a pixel belongs to the shape
MIN_SHAPE_PIXELS = 12  # at 64 px; fewer means "no shape"
MIN_TEMPLATE_IOU = 0.55  # below this the blob is "unclear", not a shape of the world
# Circles, squares and triangles are convex: their pixels fill >= 0.84 of their convex hull (small triangles
# the least). A cross's arms leave gaps: 0.71-0.86, the most for small anti-aliased ones. Below 0.8 a blob
# can only be a cross; above, the best template decides.
NOVEL_SOLIDITY = 0.8
# Crosses an adapter draws overlap the cross template in their box by 0.72-0.86; half-learned ones (a
# triangle with arms, a fragmented pointed blob) by 0.45-0.66: a blob read as a cross below 0.7 is "unclear".
MIN_NOVEL_IOU = 0.7
ALL_SHAPES = (*world.BASE_SHAPES, *world.NOVEL_SHAPES)


@dataclass(frozen=True)
class Reading:
    background: str
    shape: str  # a shape name, "none" or "unclear"
    colour: str
    size: str
    position: str
    iou: float  # of the best template: how clean the shape is


def _nearest(colour: np.ndarray, palette: dict[str, tuple[int, int, int]]) -> str:
    return min(palette, key=lambda name: float(np.sum((np.asarray(palette[name], dtype=np.float32) - colour) ** 2)))


def _template(shape: str, box: tuple[float, float, float, float], size: int) -> np.ndarray:
    scale = 4
    image = Image.new("L", (size * scale, size * scale), 0)
    world.draw_shape(ImageDraw.Draw(image), shape, tuple(v * scale for v in box), 255)
    return np.asarray(image.resize((size, size), Image.BILINEAR), dtype=np.float32) >= 128


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected region of ``mask``: the shape, without specks a generated background may hold.

    A flood fill by hand: 64x64 pixels take milliseconds, and scipy is not otherwise a dependency.
    """
    labels = np.zeros(mask.shape, dtype=np.int32)
    best, best_size, label = 0, 0, 0
    height, width = mask.shape
    for y0, x0 in zip(*np.nonzero(mask), strict=True):
        if labels[y0, x0]:
            continue
        label += 1
        labels[y0, x0] = label
        stack, size = [(y0, x0)], 0
        while stack:
            y, x = stack.pop()
            size += 1
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < height and 0 <= nx < width and mask[ny, nx] and not labels[ny, nx]:
                    labels[ny, nx] = label
                    stack.append((ny, nx))
        if size > best_size:
            best, best_size = label, size
    return labels == best if best else mask


def solidity(mask: np.ndarray) -> float:
    """The mask's area over its convex hull's (pixel corners, Andrew's monotone chain): 1 for convex shapes."""
    ys, xs = np.nonzero(mask)
    corners = np.unique(
        np.concatenate([np.stack([xs + dx, ys + dy], axis=1) for dx in (0, 1) for dy in (0, 1)]), axis=0
    )
    points = [tuple(p) for p in corners.tolist()]  # sorted by x, then y

    def half(pts):
        hull: list[tuple[int, int]] = []
        for p in pts:
            while len(hull) >= 2 and (
                (hull[-1][0] - hull[-2][0]) * (p[1] - hull[-2][1]) - (hull[-1][1] - hull[-2][1]) * (p[0] - hull[-2][0])
            ) <= 0:
                hull.pop()
            hull.append(p)
        return hull

    hull = half(points)[:-1] + half(points[::-1])[:-1]
    area = 0.5 * abs(sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(hull, hull[1:] + hull[:1], strict=True)))
    return float(mask.sum() / area) if area else 1.0


def read_scene(image: Image.Image) -> Reading:
    """What ``image`` shows, in the world's words (any size; read at 64 px)."""
    size = world.IMAGE_SIZE
    pixels = np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.float32)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    background_rgb = np.median(border, axis=0)
    background = _nearest(background_rgb, world.BACKGROUNDS)
    mask = largest_component(np.linalg.norm(pixels - background_rgb, axis=-1) > FOREGROUND_DISTANCE)
    if mask.sum() < MIN_SHAPE_PIXELS:
        return Reading(background, "none", "none", "none", "none", 0.0)
    ys, xs = np.nonzero(mask)
    box = (float(xs.min()), float(ys.min()), float(xs.max()) + 1, float(ys.max()) + 1)
    ious = {}
    for shape in ALL_SHAPES:
        template = _template(shape, box, size)
        ious[shape] = float((template & mask).sum() / max(1, (template | mask).sum()))
    # A clearly non-convex blob is no circle, square or triangle, however well a template overlaps it; a
    # convex-looking one may still be a small or blurred cross (its arms' corners filled): it is whichever
    # template fits best.
    candidates = ALL_SHAPES if solidity(mask) >= NOVEL_SOLIDITY else world.NOVEL_SHAPES
    shape = max(candidates, key=ious.get)
    colour = _nearest(np.median(pixels[mask], axis=0), world.SHAPE_COLOURS)
    half = max(box[2] - box[0], box[3] - box[1]) / 2
    size_word = min(world.SIZES, key=lambda s: abs(world.SIZES[s] - half))
    centre = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])
    position = min(world.POSITIONS, key=lambda p: float(np.sum((np.asarray(world.POSITIONS[p]) - centre) ** 2)))
    iou = ious[shape]
    if iou < (MIN_NOVEL_IOU if shape in world.NOVEL_SHAPES else MIN_TEMPLATE_IOU):
        shape = "unclear"
    return Reading(background, shape, colour, size_word, position, iou)


def matches(reading: Reading, scene: world.Scene) -> dict[str, bool]:
    """Which of the scene's five attributes the reading got right."""
    return {
        "shape": reading.shape == scene.shape,
        "colour": reading.colour == scene.colour,
        "size": reading.size == scene.size,
        "position": reading.position == scene.position,
        "background": reading.background == scene.background,
    }
