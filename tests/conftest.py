"""Shared fixtures: a tiny training config on sample_data/ that trains in seconds on a CPU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DATA = REPO / "sample_data"

# Tests must never reach for the network: model loading is offline by construction.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def make_config(tmp_path):
    """Build a Config for a short CPU run in ``tmp_path``; keyword overrides use ``section__field``."""
    from trainer.config import Config

    def factory(name: str = "run", **overrides):
        cfg = Config()
        cfg.run.output_dir = str(tmp_path / "runs")
        cfg.run.name = name
        cfg.model.base = "builtin:tiny-sd"  # random weights, smallest compute: tests of mechanics, not of drawing
        cfg.dataset.path = str(SAMPLE_DATA)
        cfg.dataset.resolution = 64
        cfg.training.max_steps = 8
        cfg.training.device = "cpu"
        cfg.sampling.every_n_steps = 0
        cfg.sampling.at_end = False
        cfg.sampling.at_start = False
        cfg.sampling.steps = 4
        cfg.checkpoint.every_n_steps = 0
        cfg.export.verify = False
        for key, value in overrides.items():
            section, field = key.split("__", 1)
            setattr(getattr(cfg, section), field, value)
        return cfg

    return factory


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """One intra-op thread: the tiny models gain nothing from more, and on a 2-core machine where tests
    also start trainer subprocesses, oversubscribed threads spin and make steps 10x slower."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tiny_sd() -> Path:
    """The builtin random tiny SD 1.x folder (built into the cache on first use)."""
    from trainer.models.builtin import builtin_model_path

    return builtin_model_path("builtin:tiny-sd")
