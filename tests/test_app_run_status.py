"""A run's status from events + job record + run-folder lock (app/run_status.py, trainer/run_lock.py).

Events are written by hand (the trainer's format, see trainer/events.py); live trainers are stood in for
by small Python processes that hold the lock the way the engine does. No torch.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.jobs import Job, describe_exit
from app.run_status import outcome_html, run_info_html, run_status
from app.run_view import load_view
from trainer.run_lock import LOCK_FILE, lock_holder

# Takes the run folder's lock as the engine does (flock LOCK_EX, pid as text), says so, then waits.
HOLDER = """
import fcntl, os, sys, time
handle = open(sys.argv[1], "a+")
fcntl.flock(handle, fcntl.LOCK_EX)
handle.seek(0); handle.truncate(); handle.write(str(os.getpid())); handle.flush()
print("locked", flush=True)
time.sleep(120)
"""


def write_events(run_dir: Path, events: list[dict]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "events.jsonl", "a") as handle:
        for event in events:
            handle.write(json.dumps(event) + "\n")


def started_and_steps(last: int, total: int = 200) -> list[dict]:
    return [{"type": "started", "time": 100.0, "total_steps": total}] + [
        {"type": "step", "time": 100.0 + s, "step": s, "total_steps": total, "loss": 0.5, "lr": 1e-4} for s in range(1, last + 1)
    ]


@pytest.fixture
def hold_lock():
    """Start a process holding ``run_dir/.lock``; yields a starter; kills what it started."""
    started: list[subprocess.Popen] = []

    def start(run_dir: Path) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir / LOCK_FILE)], stdout=subprocess.PIPE, text=True)
        started.append(proc)
        assert proc.stdout.readline().strip() == "locked", "the lock holder did not start"
        return proc

    yield start
    for proc in started:
        proc.kill()
        proc.wait(timeout=10)


def test_lock_holder_is_the_live_process_and_none_once_it_is_killed(tmp_path, hold_lock):
    run = tmp_path / "run"
    run.mkdir()
    assert lock_holder(run) is None  # no lock file: nobody
    assert not (run / LOCK_FILE).exists()  # probing never creates it
    proc = hold_lock(run)
    assert lock_holder(run) == proc.pid
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert lock_holder(run) is None  # the kernel dropped the lock; the stale pid in the file means nothing
    assert (run / LOCK_FILE).read_text() == str(proc.pid)


def test_cli_run_without_finished_event_is_interrupted_unless_a_trainer_holds_it(tmp_path, hold_lock):
    run = tmp_path / "cli-run"
    write_events(run, started_and_steps(11))
    view = load_view(run)
    status = run_status(view, None, lock_holder(run))
    assert (status.state, status.label) == ("interrupted", "interrupted at step 11 (no trainer running)")
    assert status.failed
    proc = hold_lock(run)  # the same folder while a CLI trainer still trains in it
    status = run_status(view, None, lock_holder(run))
    assert (status.state, status.label, status.failed) == ("running", "running", False)
    proc.kill()
    proc.wait(timeout=10)
    assert run_status(view, None, lock_holder(run)).state == "interrupted"
    assert run_status(load_view(tmp_path / "nothing-yet"), None, None).label == (
        "interrupted before its first step (no trainer running)"
    )


def _job(run_dir: Path, **fields) -> Job:
    values = {"id": "j1", "name": run_dir.name, "run_dir": run_dir, "config_path": run_dir.parent / ".jobs/j1/config.toml",
              "state": "running", "created": 90.0, "started": 95.0}
    return Job(**{**values, **fields})


def test_killed_job_is_failed_with_its_exit_code_not_running(tmp_path):
    run = tmp_path / "killed"
    write_events(run, started_and_steps(11))  # the events alone say "running 11/200"
    job = _job(run, state="failed", ended=120.0, exit_code=-9, message=describe_exit(-9))
    status = run_status(load_view(run), job, None)
    assert status.state == "failed" and status.failed
    assert status.label.startswith("failed — killed by SIGKILL (exit -9"), status.label
    # A job whose process vanished without an exit record (runner killed too) is failed, not running.
    died = run_status(load_view(run), _job(run, state="died", ended=120.0, message=""), None)
    assert died.state == "failed" and "ended without reporting" in died.label
    # A failed `finished` event's error is the reason, and the exit code is added to it.
    write_events(run, [{"type": "finished", "time": 119.0, "status": "failed", "step": 11, "error": "ValueError: x"}])
    failed = _job(run, state="failed", ended=120.0, exit_code=1, message="ValueError: x")
    assert run_status(load_view(run), failed, None).label == "failed — ValueError: x (exit 1)"


def test_job_record_of_an_earlier_session_does_not_speak_for_a_later_cli_resume(tmp_path):
    run = tmp_path / "resumed"
    write_events(run, started_and_steps(3))
    job = _job(run, state="failed", ended=110.0, exit_code=-9, message=describe_exit(-9))
    write_events(run, [{"type": "started", "time": 200.0, "total_steps": 200, "resumed_from_step": 3},
                       {"type": "finished", "time": 210.0, "status": "completed", "step": 200}])
    assert run_status(load_view(run), job, None).label == "completed"


@pytest.mark.parametrize("finished", ["completed", "stopped", None])
def test_failed_export_check_is_a_failure_whatever_the_finished_status(tmp_path, finished):
    run = tmp_path / "export"
    message = "max |dW| difference 0.5 > tolerance 0.001"
    write_events(run, started_and_steps(5, total=5) + [
        {"type": "export", "time": 106.0, "step": 5, "path": "export.safetensors", "format": "kohya",
         "verified": False, "message": message},
        {"type": "export", "time": 106.0, "step": 5, "path": "export_diffusers.safetensors", "format": "diffusers",
         "verified": True, "message": "ok"},
    ] + ([{"type": "finished", "time": 107.0, "status": finished, "step": 5}] if finished else []))
    view = load_view(run)
    job = _job(run, state=finished or "running", ended=108.0 if finished else None, exit_code=0 if finished else None)
    for status in (run_status(view, None, os.getpid()), run_status(view, job, None)):
        assert status.failed, status
        assert status.problems == (f"the exported adapter export.safetensors failed its self-check: {message}",)
        if finished:
            assert status.state == "failed" and status.label.startswith(f"failed — {finished}, but an exported adapter")
    shown = outcome_html("export", view, run_status(view, job, None))
    assert 'class="ls-outcome failed"' in shown and f'<ul class="ls-problems"><li>the exported adapter export.safetensors failed its self-check: {message.replace(">", "&gt;")}' in shown
    info = run_info_html("export", view, run_status(view, job, None), adapter_found=True)
    assert '<span class="ls-bad">self-check FAILED</span>' in info and "verified in diffusers" in info
    # A later export of the same file that passes its check replaces the failed one.
    write_events(run, [{"type": "export", "time": 300.0, "step": 5, "path": "export.safetensors", "format": "kohya",
                        "verified": True, "message": "ok"}])
    assert run_status(load_view(run), None, os.getpid()).problems == ()


def test_outcome_of_a_failure_shows_reason_and_log_tail(tmp_path):
    run = tmp_path / "boom"
    write_events(run, started_and_steps(11))
    job = _job(run, state="failed", ended=time.time(), exit_code=-9, message=describe_exit(-9))
    shown = outcome_html("boom", load_view(run), run_status(load_view(run), job), "step 11\nKilled <now>")
    assert "Last finished: <b>boom</b> — failed — killed by SIGKILL (exit -9" in shown
    assert '<pre class="ls-log">step 11\nKilled &lt;now&gt;</pre>' in shown and 'data-state="failed"' in shown
    ok = run_status(load_view(run), _job(run, state="completed", ended=130.0, exit_code=0))
    assert "ls-log" not in outcome_html("boom", load_view(run), ok, "step 11")  # no log under a success
