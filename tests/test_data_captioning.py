"""Auto-captioning offline with tiny random BLIP and tagger models built here, plus the caption command."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from trainer.cli import main as cli_main
from trainer.data.captioning import CaptionerError, CaptionerOptions, caption_folder, load_captioner

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "a", "red", "circle", "on", "blue", "background"]
TAGS = {0: "general", 1: "red_circle", 2: "blue_sky", 3: "dog", 4: "cat"}


@pytest.fixture(scope="module")
def blip_dir(tmp_path_factory) -> Path:
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    folder = tmp_path_factory.mktemp("blip")
    (folder / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    tokenizer = BertTokenizer(str(folder / "vocab.txt"), bos_token="[DEC]")
    BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tokenizer).save_pretrained(folder)
    text = dict(vocab_size=len(WORDS), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
                encoder_hidden_size=32, bos_token_id=5, pad_token_id=0, sep_token_id=3, eos_token_id=3, max_position_embeddings=64)
    vision = dict(hidden_size=32, image_size=32, patch_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37)
    torch.manual_seed(0)
    BlipForConditionalGeneration(BlipConfig(text_config=text, vision_config=vision, projection_dim=32)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tagger_dir(tmp_path_factory) -> Path:
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    folder = tmp_path_factory.mktemp("tagger")
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=37, id2label=TAGS, label2id={v: k for k, v in TAGS.items()},
                       problem_type="multi_label_classification")
    torch.manual_seed(0)
    model = ViTForImageClassification(config)
    with torch.no_grad():  # fixed scores whatever the image: general, red_circle, dog pass 0.35; the rest do not
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([5.0, 6.0, -5.0, 4.0, -5.0]))
    model.save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def images(folder: Path, n: int = 3) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"img {i}.png"
        Image.new("RGB", (40 + 8 * i, 40), (200, 20 * i, 20)).save(path)
        paths.append(path)
    return paths


def test_blip_captions_missing_only_and_keeps_existing(blip_dir, tmp_path):
    paths = images(tmp_path / "data")
    paths[0].with_suffix(".txt").write_text("my own caption")
    (tmp_path / "data" / "broken.png").write_bytes(b"")
    progress = []
    captioner = load_captioner(CaptionerOptions(model=str(blip_dir), device="cpu", max_new_tokens=6))
    run = caption_folder(tmp_path / "data", captioner, batch_size=2, on_progress=lambda d, t: progress.append((d, t)),
                         show_progress=False)
    assert run.written == paths[1:] and run.kept == [paths[0]]
    assert len(run.failed) == 1 and "broken.png" in run.failed[0] and "empty" in run.failed[0]
    assert progress[-1] == (3, 3)
    assert paths[0].with_suffix(".txt").read_text() == "my own caption"
    for path in paths[1:]:
        words = path.with_suffix(".txt").read_text().split()
        assert words and set(words) <= set(WORDS), f"caption must be decoded vocabulary words: {words}"


def test_tagger_writes_tags_above_threshold(tagger_dir, tmp_path):
    paths = images(tmp_path / "data", n=2)
    run = caption_folder(tmp_path / "data", load_captioner(CaptionerOptions(model=str(tagger_dir), kind="tagger", device="cpu")),
                         show_progress=False)
    assert run.written == paths
    assert paths[0].with_suffix(".txt").read_text() == "red circle, dog\n", "best first, underscores as spaces, no rating tag"


def test_caption_command_generates_then_edits(blip_dir, tagger_dir, tmp_path, capsys):
    paths = images(tmp_path / "data", n=2)
    existing = tmp_path / "data" / "img 1.caption"
    existing.write_text("old")
    assert cli_main(["caption", str(tmp_path / "data"), "--model", str(tagger_dir), "--kind", "tagger",
                     "--overwrite", "--prefix", "sks", "--device", "cpu"]) == 0
    assert paths[0].with_suffix(".txt").read_text() == "sks, red circle, dog\n"
    assert existing.read_text() == "sks, red circle, dog\n" and not paths[1].with_suffix(".txt").exists()
    assert cli_main(["caption", str(tmp_path / "data"), "--replace-tag", "dog", "cat", "--sort", "--keep-tokens", "1",
                     "--dry-run"]) == 0
    assert "would change 2 caption file(s)" in capsys.readouterr().out
    assert existing.read_text() == "sks, red circle, dog\n", "dry run writes nothing"
    assert cli_main(["caption", str(tmp_path / "data"), "--replace-tag", "dog", "cat", "--sort", "--keep-tokens", "1"]) == 0
    assert existing.read_text() == "sks, cat, red circle\n"


def test_bad_model_and_missing_options_are_user_errors(tmp_path, capsys):
    with pytest.raises(CaptionerError, match="could not load the blip captioner"):
        load_captioner(CaptionerOptions(model=str(tmp_path / "nothing"), device="cpu"))
    images(tmp_path / "data", n=1)
    assert cli_main(["caption", str(tmp_path / "data")]) == 2
    assert "give --model" in capsys.readouterr().err
