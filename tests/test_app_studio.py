"""The UI's state object and its calls into trainer processes (no browser)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.config_form import config_to_toml_text
from app.datasets import DatasetStore
from app.jobs import JobManager
from app.run_status import run_info_html
from app.trainer_calls import auto_caption, dataset_report, trainer_env, usable_cores
from app.ui import SAMPLE_DATASET, Settings, Studio, build_ui, runs_table

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
    assert (cfg.model.base, cfg.dataset.path, cfg.run.output_dir) == ("builtin:shapes-sd", str(copy), str(tmp_path / "runs"))
    # A user who deleted it does not get it back on the next start.
    studio.store.create("mine")
    studio.store.delete_dataset(SAMPLE_DATASET)
    assert SAMPLE_DATASET not in _studio(tmp_path).store.names()


def test_page_builds(tmp_path):
    page = build_ui(_studio(tmp_path))
    ids = {getattr(block, "elem_id", None) for block in page.blocks.values()}
    assert {"dataset-upload", "start-btn", "stop-btn", "loss-plot", "preview-gallery", "download-kohya"} <= ids
    assert "cfg-network-rank" in ids and "cfg-run-output_dir" not in ids
    assert page.analytics_enabled is False  # no telemetry or version check, whatever the environment says


def test_dataset_report_runs_in_a_trainer_process(tmp_path):
    report = dataset_report(REPO / "sample_data")
    assert "8 image(s)" in report and "cross_07.png" in report  # the one image without a caption


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


FAKE_TRAINER = REPO / "tests" / "fake_trainer.py"


def _fake_config(runs: Path, name: str, **fake) -> str:
    lines = ["[run]", f"name = {json.dumps(name)}", f"output_dir = {json.dumps(str(runs))}", "", "[fake]"]
    return "\n".join(lines + [f"{key} = {json.dumps(value)}" for key, value in fake.items()]) + "\n"


def _wait(predicate, what: str, studio: Studio, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; jobs: {studio.jobs.jobs()}")
        studio.jobs.tick()
        time.sleep(0.05)


@pytest.fixture
def fake_studio(tmp_path):
    """A Studio whose jobs run tests/fake_trainer.py; teardown kills whatever still runs."""
    settings = Settings(runs_dir=tmp_path / "runs", data_dir=tmp_path / "data")
    jobs = JobManager(settings.runs_dir, trainer_command=[sys.executable, str(FAKE_TRAINER)])
    yield Studio(settings, jobs, DatasetStore(settings.data_dir))
    current = jobs.current()
    if current is not None and current.pid:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(current.pid, signal.SIGKILL)
    for proc in jobs._procs.values():
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)


def test_trainer_killed_while_a_job_waits_is_failed_in_runs_and_stays_in_the_monitor(fake_studio):
    studio, runs = fake_studio, fake_studio.settings.runs_dir
    first = studio.jobs.submit(_fake_config(runs, "first", steps=400, step_seconds=0.05), "first")
    second = studio.jobs.submit(_fake_config(runs, "second", mode="hang"), "second")
    runner = first.config_path.parent / "runner.json"
    _wait(lambda: runner.exists() and (runs / "first" / "events.jsonl").exists()
          and '"step"' in (runs / "first" / "events.jsonl").read_text(), "the first trainer's steps", studio)
    os.kill(json.loads(runner.read_text())["trainer_pid"], signal.SIGKILL)
    _wait(lambda: studio.jobs.get(second.id).state == "running", "the queued job to start", studio)

    by_name = {run_dir.name: status for run_dir, _, status in studio.runs()}
    assert by_name["first"].state == "failed", by_name
    assert by_name["first"].label.startswith("failed — killed by SIGKILL (exit -9"), by_name["first"].label
    table = runs_table(studio.runs())
    assert "killed by SIGKILL (exit -9" in table.data.set_index("run").loc["first", "status"]
    assert "color: #b42318" in table.to_html()  # the failed row's status is red
    # The monitor follows the second job and keeps the first one's failure beside it, with the log's end.
    assert studio.watched_job().id == second.id
    outcome = studio.last_outcome_html()
    assert 'data-run="first"' in outcome and "killed by SIGKILL (exit -9" in outcome and "ls-outcome failed" in outcome
    assert "fake trainer started" in outcome  # the last log lines
    view, status = studio.run_status_of(runs / "first")
    assert "killed by SIGKILL (exit -9" in run_info_html("first", view, status, adapter_found=False)


def test_completed_run_whose_export_check_failed_is_shown_failed(fake_studio):
    studio, runs = fake_studio, fake_studio.settings.runs_dir
    job = studio.jobs.submit(_fake_config(runs, "unchecked", steps=2, export_check="failed"), "unchecked")
    _wait(lambda: studio.jobs.get(job.id).final, "the job to end", studio)
    assert (studio.jobs.get(job.id).state, studio.jobs.get(job.id).exit_code) == ("completed", 0)  # the engine's word
    (_, _, status), = studio.runs()
    assert status.state == "failed" and "failed its self-check: fake: max |dW| difference 0.5" in status.problems[0]
    outcome = studio.last_outcome_html()
    assert "ls-outcome failed" in outcome and "fake: max |dW| difference 0.5 &gt; tolerance 0.001" in outcome


def test_cli_run_folder_killed_without_a_word_is_interrupted_in_runs(fake_studio):
    runs = fake_studio.settings.runs_dir
    run = runs / "from-cli"
    run.mkdir(parents=True)
    (run / "config.toml").write_text("")
    (run / "events.jsonl").write_text(
        json.dumps({"type": "started", "time": 1.0, "total_steps": 200}) + "\n"
        + "".join(json.dumps({"type": "step", "time": 2.0, "step": s, "total_steps": 200}) + "\n" for s in range(1, 12))
    )
    (_, _, status), = fake_studio.runs()
    assert status.label == "interrupted at step 11 (no trainer running)"
