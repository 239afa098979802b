"""Start runs the pre-flight check in the UI process: a bad setting is refused beside the button, nothing queued."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from app.config_form import config_to_values
from app.datasets import DatasetStore
from app.jobs import JobManager
from app.start_check import start_check
from app.ui import Settings, Studio, build_ui

REPO = Path(__file__).resolve().parents[1]


def _studio(tmp_path: Path) -> Studio:
    settings = Settings(runs_dir=tmp_path / "runs", data_dir=tmp_path / "data")
    return Studio(settings, JobManager(settings.runs_dir), DatasetStore(settings.data_dir))


def _event_fn(page, name: str):
    return next(f.fn for f in page.fns.values() if getattr(f.fn, "__name__", "") == name)


def test_start_with_a_missing_model_is_refused_in_red_and_queues_nothing(tmp_path):
    studio = _studio(tmp_path)
    do_start = _event_fn(build_ui(studio), "do_start")
    cfg = studio.default_config()
    cfg.model.base = str(tmp_path / "no-such-model")
    begin = time.monotonic()
    message, _ = do_start(*config_to_values(cfg))
    assert time.monotonic() - begin < 2.0, "Start must answer within 2 s"
    assert 'class="ls-start-error"' in message, message
    assert f"`model.base` folder not found: {tmp_path / 'no-such-model'}" in message, message
    assert studio.jobs.jobs() == [], "a refused Start must not queue a job"
    assert [p.name for p in studio.settings.runs_dir.iterdir() if not p.name.startswith(".")] == [], "no run folder"


def test_form_problems_are_red_too(tmp_path):
    studio = _studio(tmp_path)
    do_start = _event_fn(build_ui(studio), "do_start")
    cfg = studio.default_config()
    cfg.network.rank = 0
    message, _ = do_start(*config_to_values(cfg))
    assert 'class="ls-start-error"' in message and "`network.rank` must be a positive integer" in message, message
    assert studio.jobs.jobs() == []


def test_warnings_let_start_go_ahead(make_config, tmp_path):
    u = "model.diffusion_model."
    checkpoint = tmp_path / "sd15.safetensors"
    save_file({u + "input_blocks.0.0.weight": np.zeros((8, 4, 1, 1), np.float16), "first_stage_model.x": np.zeros(1, np.float16),
               "cond_stage_model.transformer.text_model.x": np.zeros(1, np.float16)}, str(checkpoint))
    check = start_check(make_config(model__base=str(checkpoint), dataset__resolution=64))  # SD 1.5 at 64 px
    assert check.ok, check.message
    assert 'class="ls-start-warning"' in check.message and "`dataset.resolution` is 64 px" in check.message
    assert start_check(make_config()).message == "", "no warnings, nothing to add to the Started line"
