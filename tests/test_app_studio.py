"""The UI's state object and its calls into trainer processes (no browser)."""

from __future__ import annotations

import os
from pathlib import Path

from app.config_form import config_to_toml_text
from app.datasets import DatasetStore
from app.jobs import JobManager
from app.trainer_calls import auto_caption, dataset_report, trainer_env, usable_cores
from app.ui import SAMPLE_DATASET, Settings, Studio, build_ui

REPO = Path(__file__).resolve().parents[1]


def _studio(tmp_path: Path) -> Studio:
    settings = Settings(runs_dir=tmp_path / "runs", data_dir=tmp_path / "data")
    return Studio(settings, JobManager(settings.runs_dir), DatasetStore(settings.data_dir))


def test_first_start_preselects_an_editable_copy_of_sample_data(tmp_path):
    studio = _studio(tmp_path)
    copy = studio.store.path(SAMPLE_DATASET)
    assert sorted(p.name for p in copy.iterdir()) == sorted(
        p.name for p in (REPO / "sample_data").iterdir() if p.suffix in (".png", ".txt")
    )
    cfg = studio.default_config()
    assert (cfg.model.base, cfg.dataset.path, cfg.run.output_dir) == ("builtin:tiny-sd", str(copy), str(tmp_path / "runs"))
    # A user who deleted it does not get it back on the next start.
    studio.store.create("mine")
    studio.store.delete_dataset(SAMPLE_DATASET)
    assert SAMPLE_DATASET not in _studio(tmp_path).store.names()


def test_page_builds(tmp_path):
    page = build_ui(_studio(tmp_path))
    ids = {getattr(block, "elem_id", None) for block in page.blocks.values()}
    assert {"dataset-upload", "start-btn", "stop-btn", "loss-plot", "preview-gallery", "download-kohya"} <= ids
    assert "cfg-network-rank" in ids and "cfg-run-output_dir" not in ids


def test_dataset_report_runs_in_a_trainer_process(tmp_path):
    report = dataset_report(REPO / "sample_data")
    assert "8 image(s)" in report and "red_circle_07.png" in report  # the one image without a caption


def test_auto_caption_failure_is_a_message_not_a_traceback(tmp_path):
    message = auto_caption(REPO / "sample_data", str(tmp_path / "no-such-model"), "blip", overwrite=False)
    assert message.startswith("Captioning failed") and "no-such-model" in message and "Traceback" not in message


def test_trainer_processes_leave_a_core_for_the_page_unless_the_user_chose(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    env = trainer_env()
    assert env["OMP_NUM_THREADS"] == str(max(1, usable_cores() - 1))
    assert int(env["OMP_NUM_THREADS"]) < usable_cores() or usable_cores() == 1
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(REPO)
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    assert trainer_env()["OMP_NUM_THREADS"] == "7"


def test_the_form_reopens_with_the_newest_jobs_settings(tmp_path):
    studio = _studio(tmp_path)
    assert studio.form_config().training.max_steps == studio.default_config().training.max_steps
    studio.store.create("dogs")
    cfg = studio.default_config()
    cfg.run.name, cfg.training.max_steps, cfg.dataset.path = "dog-lora", 37, str(studio.store.path("dogs"))
    studio.jobs.submit(config_to_toml_text(cfg), cfg.run.name)  # queued, not started: still remembered
    reopened = _studio(tmp_path).form_config()  # as after a reload or a restarted UI
    assert (reopened.run.name, reopened.training.max_steps) == ("dog-lora", 37)
    assert studio.dataset_name_of(reopened.dataset.path) == "dogs"
    assert studio.dataset_name_of(str(tmp_path / "elsewhere")) is None
