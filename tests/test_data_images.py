"""Bad and unusual inputs: each gives a named message (or a documented conversion) and nothing is lost."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from trainer.config import DatasetConfig
from trainer.data import DatasetError, build_train_dataset
from trainer.data.captions import read_caption
from trainer.data.images import ImageReadError, load_rgb, probe_image, to_rgb, unusable_reason
from trainer.data.scan import scan_folder


def solid(path: Path, mode: str = "RGB", size=(32, 24), color=(255, 0, 0), **save) -> Path:
    Image.new(mode, size, color).save(path, **save)
    return path


def test_zero_byte_file(tmp_path):
    (tmp_path / "z.png").write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty"):
        probe_image(tmp_path / "z.png")


def test_text_file_renamed_png(tmp_path):
    (tmp_path / "t.png").write_text("hello, I am text")
    with pytest.raises(ImageReadError, match="not an image"):
        probe_image(tmp_path / "t.png")


def test_truncated_jpeg(tmp_path):
    buf = io.BytesIO()
    Image.effect_noise((64, 64), 60).convert("RGB").save(buf, "JPEG", quality=95)
    (tmp_path / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageReadError, match="truncated"):
        probe_image(tmp_path / "cut.jpg")


def test_decompression_bomb_rejected_both_below_and_above_pillows_error(tmp_path, monkeypatch):
    # Lowering Pillow's limit stands in for a >89-megapixel file (which would cost real memory to write).
    solid(tmp_path / "big.png", size=(150, 100))
    solid(tmp_path / "huge.png", size=(300, 300))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    for name in ("big.png", "huge.png"):
        with pytest.raises(ImageReadError, match="too large"):
            probe_image(tmp_path / name)


def test_very_wide_image_trains_at_bucket_size(tmp_path):
    solid(tmp_path / "strip.png", size=(20_000, 40))
    ds = build_train_dataset(DatasetConfig(path=str(tmp_path), bucketing=True), seed=0)
    bw, bh = ds.records[0].bucket
    assert bw / bh >= 4, f"a 500:1 image should get the widest bucket, got {bw}x{bh}"
    assert ds[0]["pixel_values"].shape == (3, bh, bw)


def animated(path: Path, fmt: str) -> Path:
    frames = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 255, 0))]
    frames[0].save(path, fmt, save_all=True, append_images=frames[1:], duration=100, loop=0, **({"lossless": True} if fmt == "WEBP" else {}))
    return path


@pytest.mark.parametrize(("fmt", "kind"), [("GIF", "GIF"), ("WEBP", "WebP")])
def test_animated_images_are_skipped_with_the_reason(tmp_path, fmt, kind):
    path = animated(tmp_path / f"anim.{fmt.lower()}", fmt)
    solid(tmp_path / "still.png")
    reason = f"animated {kind} (2 frames): training uses single frames; export the frame you want as PNG"
    info = probe_image(path)
    assert info.frames == 2 and unusable_reason(info) == reason
    assert unusable_reason(probe_image(tmp_path / "still.png")) is None
    scan = scan_folder(tmp_path)
    assert [r.path.name for r in scan.records] == ["still.png"], "an animated file must not be trained on"
    assert scan.warnings == [f"{path}: skipped, {reason}"]
    ds = build_train_dataset(DatasetConfig(path=str(tmp_path)), seed=0)
    assert len(ds.records) == 1 and f"{path}: skipped, {reason}" in ds.warnings, "training lists it in its warnings"


def test_only_animated_images_is_no_dataset_and_says_why(tmp_path):
    animated(tmp_path / "anim.gif", "GIF")
    with pytest.raises(DatasetError, match="animated GIF"):
        build_train_dataset(DatasetConfig(path=str(tmp_path)), seed=0)


def test_16_bit_grayscale_png_is_scaled_not_clipped(tmp_path):
    path = solid(tmp_path / "g16.png", mode="I;16", color=40_000)
    assert Image.open(path).mode.startswith("I")
    assert load_rgb(path).getpixel((0, 0)) == (156, 156, 156), "40000/256 = 156"


def test_cmyk_jpeg_and_grayscale_become_rgb(tmp_path):
    cmyk = load_rgb(solid(tmp_path / "c.jpg", mode="CMYK", color=(0, 255, 255, 0), quality=95))
    r, g, b = cmyk.getpixel((3, 3))
    assert cmyk.mode == "RGB" and r > 200 and g < 60 and b < 60, (r, g, b)
    gray = load_rgb(solid(tmp_path / "l.png", mode="L", color=77))
    assert gray.mode == "RGB" and gray.getpixel((0, 0)) == (77, 77, 77)


def test_transparency_composited_on_white(tmp_path):
    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.putpixel((0, 0), 0)
    palette.save(tmp_path / "p.png", transparency=0)
    image = load_rgb(tmp_path / "p.png")
    assert image.getpixel((0, 0)) == (255, 255, 255) and image.getpixel((1, 1)) == (255, 0, 0)
    rgba = Image.new("RGBA", (4, 4), (0, 0, 255, 0))
    rgba.save(tmp_path / "a.png")
    assert load_rgb(tmp_path / "a.png").getpixel((0, 0)) == (255, 255, 255)
    keyed = Image.new("RGB", (4, 4), (1, 2, 3))
    keyed.putpixel((3, 3), (9, 9, 9))
    keyed.save(tmp_path / "k.png", transparency=(1, 2, 3))  # tRNS colour key
    assert load_rgb(tmp_path / "k.png").getpixel((0, 0)) == (255, 255, 255)
    assert load_rgb(tmp_path / "k.png").getpixel((3, 3)) == (9, 9, 9)


@pytest.mark.parametrize("mode", ["1", "L", "LA", "La", "P", "PA", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "I", "I;16", "F"])
def test_every_pillow_mode_converts_to_rgb(mode):
    assert to_rgb(Image.new(mode, (3, 3))).mode == "RGB"


def test_exif_orientation_is_honoured(tmp_path):
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 10, 20))  # red on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display needs a 90° clockwise turn
    image.save(tmp_path / "o.jpg", exif=exif, quality=95)
    info = probe_image(tmp_path / "o.jpg")
    upright = load_rgb(tmp_path / "o.jpg")
    assert (info.width, info.height) == upright.size == (20, 40)
    assert upright.getpixel((10, 2))[0] > 200, "the red band must be on top after the turn"


def test_unicode_and_spaces_in_names(tmp_path):
    path = solid(tmp_path / "café au lait ☕.png")
    path.with_suffix(".txt").write_text("crème brûlée", encoding="utf-8")
    ds = build_train_dataset(DatasetConfig(path=str(tmp_path)), seed=0)
    assert ds[0]["caption"] == "sks, crème brûlée"


def test_duplicate_stems_name_both_files(tmp_path):
    solid(tmp_path / "a.png")
    solid(tmp_path / "a.jpg")
    solid(tmp_path / "b.png")
    with pytest.raises(DatasetError, match=r"a\.jpg and a\.png share the name `a`"):
        build_train_dataset(DatasetConfig(path=str(tmp_path), skip_bad_images=True), seed=0)


def test_two_caption_files_for_one_image(tmp_path):
    solid(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("x")
    (tmp_path / "a.caption").write_text("y")
    with pytest.raises(DatasetError, match=r"two caption files \(a\.caption and a\.txt\)"):
        build_train_dataset(DatasetConfig(path=str(tmp_path)), seed=0)


def test_caption_encodings(tmp_path):
    (tmp_path / "bom.txt").write_bytes("\ufeffnaïve, café".encode())
    (tmp_path / "latin.txt").write_bytes("naïve, café".encode("latin-1"))
    (tmp_path / "lines.txt").write_text("one\n\ntwo \r\nthree\n", encoding="utf-8")
    assert read_caption(tmp_path / "bom.txt").text == "naïve, café"
    latin = read_caption(tmp_path / "latin.txt")
    assert latin.text == "naïve, café" and latin.encoding == "latin-1"
    assert read_caption(tmp_path / "lines.txt").text == "one, two, three"
    solid(tmp_path / "latin.png")
    scan = scan_folder(tmp_path)
    assert scan.records[0].caption == "naïve, café"
    assert any("latin.txt: not UTF-8" in w for w in scan.warnings)


def test_unsupported_type_and_plain_subfolder_are_named(tmp_path):
    solid(tmp_path / "ok.png")
    solid(tmp_path / "scan.tiff")
    (tmp_path / "extra").mkdir()
    solid(tmp_path / "extra" / "x.png")
    scan = scan_folder(tmp_path)
    assert [r.path.name for r in scan.records] == ["ok.png"]
    assert any("scan.tiff" in w and "not supported" in w for w in scan.warnings)
    assert any("extra" in w and "N_name class" in w for w in scan.warnings)


def test_jpeg_draft_decodes_smaller_but_never_below_the_need(tmp_path):
    image = Image.effect_noise((400, 200), 40).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6
    image.save(tmp_path / "r.jpg", exif=exif, quality=90)
    full = load_rgb(tmp_path / "r.jpg")
    small = load_rgb(tmp_path / "r.jpg", draft_size=(40, 80))
    assert full.size == (200, 400)
    assert small.size[0] >= 40 and small.size[1] >= 80 and small.size[0] < 200, small.size
    assert abs(small.size[0] / small.size[1] - 0.5) < 0.02, "draft keeps the upright aspect ratio"
