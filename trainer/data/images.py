"""Open any supported image as RGB, or say exactly why it cannot be used. No torch: the UI reuses it.

Colour handling (one rule, applied everywhere):
- EXIF orientation is applied first (``ImageOps.exif_transpose``), so sizes are the upright sizes.
- Transparency (RGBA, LA, palette with a transparent index) is composited onto WHITE: the usual
  background of cut-out product/character images; kohya's plain ``convert("RGB")`` would instead expose
  whatever colour hides under the transparent pixels (often black).
- 16-bit grayscale (modes ``I;16``/``I``) is scaled down to 8 bits (Pillow's plain convert clips it).
- CMYK, grayscale, bilevel, YCbCr and the rest go through Pillow's ``convert("RGB")``.
- Animated files (GIF, WebP, APNG) are not trained on: ``unusable_reason`` is the one rule that the
  dataset scan (check-dataset, training) and the UI's upload both apply.

Decompression bombs: an image over Pillow's ``Image.MAX_IMAGE_PIXELS`` (about 89 megapixels) is
rejected before decoding, rather than only warned about as Pillow does below twice that limit.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
# Formats Pillow may read but we do not train on: named in warnings so nothing is dropped silently.
UNSUPPORTED_IMAGE_EXTENSIONS = (".tif", ".tiff", ".avif", ".heic", ".heif", ".jxl", ".psd", ".svg", ".ico")
ALPHA_BACKGROUND = (255, 255, 255)
_ORIENTATION_TAG = 0x0112
_SWAPPED_ORIENTATIONS = (5, 6, 7, 8)


class ImageReadError(Exception):
    """Why one file cannot be used as an image; ``str(err)`` is a sentence for the user."""


@dataclass
class ImageInfo:
    """What a full decode of an image found: upright size, source mode/format, frames, warnings."""

    path: Path
    width: int
    height: int
    mode: str
    format: str
    frames: int = 1
    warnings: list[str] = field(default_factory=list)


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _open(path: Path) -> Image.Image:
    """Open lazily (header only), turning every Pillow failure into an ImageReadError."""
    try:
        size = path.stat().st_size
    except OSError as err:
        raise ImageReadError(f"cannot read the file ({err.strerror})") from None
    if size == 0:
        raise ImageReadError("the file is empty (0 bytes); re-export or delete it")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except Image.DecompressionBombError as err:
        raise ImageReadError(f"too large to open safely ({err}); downscale it") from None
    except UnidentifiedImageError:
        raise ImageReadError(
            "not an image Pillow can read (a renamed text or other file, or an unsupported format); "
            "re-export it as PNG or JPEG"
        ) from None
    except OSError as err:
        raise ImageReadError(f"cannot open the image ({err})") from None
    pixels = image.width * image.height
    limit = Image.MAX_IMAGE_PIXELS
    if limit and pixels > limit:
        image.close()
        raise ImageReadError(
            f"too large: {image.width}x{image.height} = {pixels:,} pixels, over Pillow's decompression-bomb "
            f"limit of {limit:,}; downscale it (training never uses more than a few megapixels)"
        )
    return image


def _decode(image: Image.Image) -> None:
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as err:
        message = str(err)
        if "truncated" in message.lower():
            raise ImageReadError("truncated: the file ends before the image data does (incomplete download or copy?)") from None
        raise ImageReadError(f"corrupt image data ({message})") from None


def upright_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) after the EXIF orientation is applied, without transposing the pixels."""
    try:
        orientation = image.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block only loses the orientation
        orientation = 1
    if orientation in _SWAPPED_ORIENTATIONS:
        return image.height, image.width
    return image.width, image.height


def probe_image(path: str | Path) -> ImageInfo:
    """Fully decode ``path`` to prove it is usable; raises ImageReadError with the reason if not.

    A header-only check misses truncated files, which is exactly what would otherwise stop a run
    an hour in, so the pixels are decoded once here.
    """
    path = Path(path)
    image = _open(path)
    with image:
        frames = getattr(image, "n_frames", 1)
        _decode(image)
        to_rgb(image)  # proves the colour mode converts, so training never meets one that does not
        width, height = upright_size(image)
        info = ImageInfo(path, width, height, image.mode, image.format or "", frames)
    return info


def unusable_reason(info: ImageInfo) -> str | None:
    """Why a readable image is still not trained on, or None. The scan skips such a file with this reason
    as a warning; the UI upload rejects it with the same words.

    Animated images: training takes single frames, and which frame should stand for the subject is the
    user's choice, not something to take silently.
    """
    if info.frames > 1:
        kind = {"WEBP": "WebP"}.get(info.format, info.format or "image")
        return f"animated {kind} ({info.frames} frames): training uses single frames; export the frame you want as PNG"
    return None


def load_rgb(path: str | Path, draft_size: tuple[int, int] | None = None) -> Image.Image:
    """The image at ``path`` as an upright 8-bit RGB image (first frame if animated).

    ``draft_size`` (upright w, h): the caller needs no more than this, so a JPEG may be decoded at a
    reduced scale that is still at least that large (Pillow's ``draft``, as ``thumbnail`` does).
    """
    path = Path(path)
    image = _open(path)
    with image:
        if draft_size is not None and image.format == "JPEG" and image.mode in ("RGB", "L"):
            w, h = draft_size
            stored = (h, w) if upright_size(image) != image.size else (w, h)
            image.draft(image.mode, stored)
        _decode(image)
        try:
            upright = ImageOps.exif_transpose(image)
        except Exception:  # noqa: BLE001 - broken EXIF: keep the stored orientation rather than fail
            upright = image.copy()
        return to_rgb(upright)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB following the module's colour rules."""
    try:
        return _to_rgb(image)
    except (ValueError, TypeError, OSError) as err:
        raise ImageReadError(f"colour mode {image.mode} cannot be converted to RGB ({err}); re-save it as 8-bit RGB") from None


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image.copy()
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit grayscale: scale 0..65535 to 0..255 (Pillow's convert("L") would clip at 255).
        gray = image.convert("I").point(lambda v: v * (1 / 256)).convert("L")
        return gray.convert("RGB")
    if mode == "F":
        # Float images are either 0..1 or already 0..255.
        scale = 255.0 if image.getextrema()[1] <= 1.0 else 1.0
        return image.point(lambda v: v * scale).convert("L").convert("RGB")
    if mode == "La":
        image, mode = image.convert("LA"), "LA"
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa") or ("transparency" in image.info and mode in ("P", "L", "1", "RGB"))
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, ALPHA_BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
