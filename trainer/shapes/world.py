"""Scenes of one coloured shape on a plain background, and the captions that name them.

Every scene is five choices: shape, colour, size, position, background ("a small red circle at the top left
on a white background"). The base model sees only circles, squares and triangles; ``NOVEL_SHAPES`` (a cross)
are drawn by the same code but never shown to it, so an adapter has something new to learn. A fixed tenth
of the (shape, colour, size, position, background) combinations is held out of the base's training, to
measure whether it draws captions it has not seen. Pure Pillow: the UI and tests can use it without torch.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from itertools import product

from PIL import Image, ImageDraw

IMAGE_SIZE = 64
_SUPERSAMPLE = 4  # drawn at 4x and downscaled: anti-aliased edges, like a photo of a shape, not pixel art

SHAPE_COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 230),
    "yellow": (240, 210, 40),
    "purple": (150, 60, 200),
}
BACKGROUNDS = {"white": (235, 235, 235), "black": (25, 25, 25), "gray": (128, 128, 128)}
BASE_SHAPES = ("circle", "square", "triangle")
NOVEL_SHAPES = ("cross",)
SIZES = {"small": 9, "large": 16}  # half the side of the shape's bounding box, in pixels at 64 px
POSITIONS = {
    "at the top left": (18, 18),
    "at the top right": (46, 18),
    "in the center": (32, 32),
    "at the bottom left": (18, 46),
    "at the bottom right": (46, 46),
}
HELD_OUT_FRACTION = 0.1
JITTER = 2  # pixels a shape's centre may move from its anchor, so the model learns regions, not points


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    size: str
    position: str
    background: str
    dx: int = 0
    dy: int = 0

    @property
    def combination(self) -> tuple[str, str, str, str, str]:
        return (self.shape, self.colour, self.size, self.position, self.background)

    def caption(self, shape_word: str | None = None) -> str:
        """The scene in words; ``shape_word`` replaces the shape's name (e.g. a trigger word)."""
        return (
            f"a {self.size} {self.colour} {shape_word or self.shape} {self.position} on a {self.background} background"
        )

    def box(self) -> tuple[float, float, float, float]:
        """The shape's bounding box (left, top, right, bottom) in pixels at ``IMAGE_SIZE``."""
        cx, cy = POSITIONS[self.position]
        half = SIZES[self.size]
        return (cx + self.dx - half, cy + self.dy - half, cx + self.dx + half, cy + self.dy + half)


CROSS_ARM = 0.36  # a cross's arm width, as a fraction of its box: thick enough to draw at 16x16 latents


def shape_polygon(shape: str, box: tuple[float, float, float, float]) -> list[tuple[float, float]] | None:
    """The outline of ``shape`` filling ``box``; None for a circle (drawn as an ellipse)."""
    left, top, right, bottom = box
    if shape == "circle":
        return None
    if shape == "cross":  # a plus sign: two bars through the centre
        near, far = (1 - CROSS_ARM) / 2, (1 + CROSS_ARM) / 2
        unit = [(near, 0), (far, 0), (far, near), (1, near), (1, far), (far, far), (far, 1), (near, 1), (near, far),
                (0, far), (0, near), (near, near)]  # fmt: skip
        return [(left + x * (right - left), top + y * (bottom - top)) for x, y in unit]
    if shape == "square":
        return [(left, top), (right, top), (right, bottom), (left, bottom)]
    if shape == "triangle":
        return [((left + right) / 2, top), (right, bottom), (left, bottom)]
    raise ValueError(f"unknown shape {shape!r}")


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[float, float, float, float], fill) -> None:
    polygon = shape_polygon(shape, box)
    if polygon is None:
        draw.ellipse(box, fill=fill)
    else:
        draw.polygon(polygon, fill=fill)


def render(scene: Scene, size: int = IMAGE_SIZE) -> Image.Image:
    """The scene as an RGB image of ``size`` pixels (geometry is defined at 64 px and scaled)."""
    big = size * _SUPERSAMPLE
    scale = big / IMAGE_SIZE
    image = Image.new("RGB", (big, big), BACKGROUNDS[scene.background])
    box = tuple(v * scale for v in scene.box())
    draw_shape(ImageDraw.Draw(image), scene.shape, box, SHAPE_COLOURS[scene.colour])
    return image.resize((size, size), Image.LANCZOS)


def all_combinations(shapes=BASE_SHAPES) -> list[tuple[str, str, str, str, str]]:
    return list(product(shapes, SHAPE_COLOURS, SIZES, POSITIONS, BACKGROUNDS))


def is_held_out(combination: tuple[str, ...]) -> bool:
    """A fixed, machine-independent tenth of the combinations (by hash), never shown to the base model."""
    digest = hashlib.sha256("|".join(combination).encode()).digest()
    return digest[0] < 256 * HELD_OUT_FRACTION


def training_combinations() -> list[tuple[str, str, str, str, str]]:
    return [c for c in all_combinations() if not is_held_out(c)]


def held_out_combinations() -> list[tuple[str, str, str, str, str]]:
    return [c for c in all_combinations() if is_held_out(c)]


def jittered(combination: tuple[str, ...], rng: random.Random) -> Scene:
    return Scene(*combination, dx=rng.randint(-JITTER, JITTER), dy=rng.randint(-JITTER, JITTER))
