"""Health report: sample_data is clean; a broken folder shows every planted problem and nothing else."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from trainer.cli import main as cli_main
from trainer.config import Config, DatasetConfig, dumps_config
from trainer.data.health import health_report

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import CLIPTokenizer

    from trainer.models.builtin import write_tokenizer_files

    folder = tmp_path_factory.mktemp("tok")
    write_tokenizer_files(folder)
    return CLIPTokenizer.from_pretrained(folder)


def picture(path: Path, shift: int = 0, size=(96, 96), caption: str | None = "a scene, tree") -> Path:
    image = Image.new("RGB", size, (230, 230, 210))
    draw = ImageDraw.Draw(image)
    draw.rectangle((10 + shift, 20, 50 + shift, 80), fill=(20, 120, 20))
    draw.ellipse((55 - shift, 5, 90 - shift, 40), fill=(250, 200, 0))
    image.save(path, quality=92)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption, encoding="utf-8")
    return path


@pytest.fixture
def broken(tmp_path) -> Path:
    """One instance of each planted problem, beside clean images that must not be reported."""
    picture(tmp_path / "clean_a.png", shift=0)
    picture(tmp_path / "clean_b.png", shift=30, caption="a scene, sun")
    picture(tmp_path / "dup_original.png", shift=12, caption="x")
    Image.open(tmp_path / "dup_original.png").resize((80, 80)).save(tmp_path / "dup_copy.jpg", quality=80)
    (tmp_path / "dup_copy.txt").write_text("x")
    picture(tmp_path / "no caption.png", shift=-8, caption=None)
    picture(tmp_path / "small.png", shift=20, size=(40, 40))
    picture(tmp_path / "long.png", shift=5, caption=", ".join(f"tag number {i}" for i in range(40)))
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("I am text")
    buf = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(buf, "JPEG")
    (tmp_path / "cut.jpg").write_bytes(buf.getvalue()[:300])
    picture(tmp_path / "twin.png", shift=3)
    shutil.copy(tmp_path / "twin.png", tmp_path / "twin.webp")
    picture(tmp_path / "latin.png", shift=-15, caption=None)
    (tmp_path / "latin.txt").write_bytes("café".encode("latin-1"))
    return tmp_path


def names(paths: list[str]) -> list[str]:
    return sorted(Path(p.split(" (")[0].split(": ")[0]).name for p in paths)


def test_sample_data_report_is_clean(tokenizer):
    report = health_report(SAMPLE, DatasetConfig(), tokenizer)
    assert report.ok and report.num_images == 8 and report.num_captioned == 7
    assert names(report.missing_captions) == ["cross_07.png"]
    assert report.resolution_histogram == {"128x128": 8}
    assert report.near_duplicates == [] and report.small_images == [] and report.unreadable == []
    assert report.long_captions == [] and report.token_limit == 77 and report.warnings == [] and report.problems == []
    # Each caption is one sentence without commas: one tag each, all different.
    assert len(report.tag_frequency) == 7 and {count for _, count in report.tag_frequency} == {1}


def test_broken_folder_lists_every_planted_problem_and_nothing_else(broken, tokenizer):
    report = health_report(broken, DatasetConfig(), tokenizer)
    assert not report.ok
    assert names(report.unreadable) == ["cut.jpg", "empty.png", "text.png"]
    assert len(report.problems) == 1 and "twin.png and twin.webp share the name `twin`" in report.problems[0]
    assert names(report.small_images) == ["small.png"]
    assert [names(g) for g in report.near_duplicates] == [["dup_copy.jpg", "dup_original.png"]]
    assert names(report.missing_captions) == ["no caption.png"]
    assert [Path(c.path).name for c in report.long_captions] == ["long.txt"]
    assert report.long_captions[0].tokens > 77
    assert len(report.warnings) == 1 and "latin.txt: not UTF-8" in report.warnings[0]
    assert report.extreme_aspect == []
    assert report.num_images == 8, "every readable image with a unique name is counted"


def test_suggestions_follow_the_preset():
    report = health_report(SAMPLE, DatasetConfig(), preset="character")
    assert report.suggested_steps == 2000 and report.suggested_repeats == 25  # 2000 / (8 images * 10 epochs)
    assert health_report(SAMPLE, DatasetConfig()).suggested_steps == 1500


def test_bucketing_settings_show_in_report(tmp_path):
    picture(tmp_path / "wide.png", size=(192, 96))
    picture(tmp_path / "tall.png", size=(96, 192))
    report = health_report(tmp_path, DatasetConfig(bucketing=True))
    assert len(report.buckets["buckets"]) == 2 and report.small_images == []


def test_check_dataset_command(broken, tmp_path, capsys):
    assert cli_main(["check-dataset", str(SAMPLE), "--no-tokenizer"]) == 0
    assert "OK: training can start" in capsys.readouterr().out
    assert cli_main(["check-dataset", str(broken), "--json", "--no-tokenizer"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is False and len(data["unreadable"]) == 3 and data["notes"] == ["caption lengths not checked (--no-tokenizer)"]
    config = Config()
    config.dataset.path = str(SAMPLE)
    config.model.base = str(tmp_path / "no-such-model")
    (tmp_path / "c.toml").write_text(dumps_config(config))
    assert cli_main(["check-dataset", "--config", str(tmp_path / "c.toml")]) == 0
    out = capsys.readouterr().out
    assert "8 image(s)" in out and "caption lengths not checked" in out and "no-such-model" in out


@pytest.mark.parametrize(("fmt", "kind"), [("GIF", "GIF"), ("WEBP", "WebP")])
def test_check_dataset_lists_animated_images_as_skipped(tmp_path, capsys, fmt, kind):
    picture(tmp_path / "still.png")
    frames = [Image.new("RGB", (96, 96), c) for c in ((255, 0, 0), (0, 0, 255))]
    anim = tmp_path / f"anim.{fmt.lower()}"
    frames[0].save(anim, fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert cli_main(["check-dataset", str(tmp_path), "--no-tokenizer"]) == 0, "the still image can still train"
    out = capsys.readouterr().out
    assert "1 image(s)" in out
    assert f"{anim}: skipped, animated {kind} (2 frames): training uses single frames; export the frame you want as PNG" in out


def test_the_same_shape_at_other_aspect_ratios_is_not_a_near_duplicate(tmp_path):
    """Both hashes squash an image to a square: a centred square at 1:1, 3:1 and 1:3 used to hash alike and
    be reported as near duplicates of each other. A resized copy (same aspect ratio) still is one."""
    def centred_block(path: Path, size: tuple[int, int]) -> None:
        w, h = size
        image = Image.new("RGB", size, (240, 240, 240))
        ImageDraw.Draw(image).rectangle((w // 4, h // 4, 3 * w // 4, 3 * h // 4), fill=(20, 20, 20))
        image.save(path)
        path.with_suffix(".txt").write_text("a block", encoding="utf-8")

    for name, size in [("square", (100, 100)), ("wide", (300, 100)), ("tall", (100, 300)), ("square_copy", (81, 80))]:
        centred_block(tmp_path / f"{name}.png", size)
    report = health_report(tmp_path, DatasetConfig(resolution=64))
    groups = [sorted(Path(p).name for p in group) for group in report.near_duplicates]
    assert groups == [["square.png", "square_copy.png"]], groups
