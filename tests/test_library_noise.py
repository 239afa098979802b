"""Two known-irrelevant library warnings are kept out of the run log; everything else still shows."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.library_noise import quiet_known_library_noise

REPO = Path(__file__).resolve().parents[1]
IMPORT_PIPELINE = "from diffusers import StableDiffusionPipeline; StableDiffusionPipeline.__init__"


def _stderr_of(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True).stderr


def test_torchvision_fallback_warning_is_dropped():
    control = _stderr_of(IMPORT_PIPELINE)
    if "requires torchvision" not in control:
        pytest.skip("this transformers/torchvision pair does not emit the warning")
    quiet = _stderr_of(f"from trainer.library_noise import quiet_known_library_noise as q; q(); {IMPORT_PIPELINE}")
    assert "requires torchvision" not in quiet


def test_only_the_known_messages_are_dropped():
    quiet_known_library_noise()
    quiet_known_library_noise()  # idempotent: one filter per logger
    logger = logging.getLogger("diffusers.loaders.lora_base")
    assert sum(type(f).__name__ == "_DropMessages" for f in logger.filters) == 1
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger.addHandler(handler)
    try:
        logger.warning("No LoRA keys associated to CLIPTextModel found with the prefix='text_encoder'.")
        logger.warning("something else went wrong")
    finally:
        logger.removeHandler(handler)
    assert seen == ["something else went wrong"]
