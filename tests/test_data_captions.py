"""Caption text: final-caption assembly and the pure editing helpers the UI reuses."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

from trainer.data.captions import (
    add_prefix,
    add_suffix,
    compose_caption,
    dedupe_tags,
    replace_text,
    shuffle_caption,
    sort_tags,
)

REPO = Path(__file__).resolve().parents[1]


def test_compose_caption():
    assert compose_caption("a dog, grass", "sks", "dog") == "sks, a dog, grass"
    assert compose_caption("sks, a dog", "sks", "dog") == "sks, a dog", "trigger is not added twice"
    assert compose_caption("photo of sks dog", "sks", "dog") == "photo of sks dog"
    assert compose_caption("", "sks", "dog") == "sks dog"
    assert compose_caption("  ", "", "dog") == "dog"
    assert compose_caption("a cat", "", "") == "a cat"


def test_shuffle_keeps_leading_tags():
    rng = random.Random(0)
    out = {shuffle_caption("sks, a, b, c, d", 0, rng) for _ in range(30)}
    assert all(o.startswith("sks, ") for o in out) and len(out) > 3
    assert all(o.startswith("sks, a, ") for o in (shuffle_caption("sks, a, b, c, d", 2, rng) for _ in range(10)))


def test_prefix_suffix():
    assert add_prefix("a, b", "sks") == "sks, a, b"
    assert add_prefix("sks, a", "sks") == "sks, a"
    assert add_prefix("a", "") == "a"
    assert add_suffix("a, b", "best quality") == "a, b, best quality"
    assert add_suffix("a, best quality", "best quality") == "a, best quality"


def test_replace_dedupe_sort():
    assert replace_text("1girl, red hair", "red", "blue") == "1girl, blue hair"
    assert replace_text("1girl, red hair, 1girls", "1girl", "woman", whole_tag=True) == "woman, red hair, 1girls"
    assert replace_text("a, remove me, b", "remove me", "", whole_tag=True) == "a, b"
    assert dedupe_tags("a, B, b, c, a") == "a, B, c"
    assert sort_tags("sks, zebra, Apple, mango", keep_tokens=1) == "sks, Apple, mango, zebra"


def test_caption_helpers_import_without_torch():
    code = "import sys\nimport trainer.data.captions, trainer.data.health\nassert 'torch' not in sys.modules\n"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
