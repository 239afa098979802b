"""The warm trainer: a job started on the standby process behaves as a cold-started one (exit code, log,
stop, re-attach after a UI restart), and no standby outlives its UI. The job manager drives
tests/fake_trainer.py; the real trainer's waiting half is tested in-process."""

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

from app.jobs import STANDBY_PREFIX, JobManager
from tests.test_app_jobs import FAKE_TRAINER, config_text, wait_event, wait_state, wait_until


@pytest.fixture
def managers(tmp_path):
    made: list[JobManager] = []

    def make(**kwargs) -> JobManager:
        kwargs.setdefault("trainer_command", [sys.executable, str(FAKE_TRAINER)])
        manager = JobManager(tmp_path / "runs", **kwargs)
        made.append(manager)
        return manager

    yield make
    for manager in made:
        manager.close()
        for job in manager.jobs():
            if job.active and job.pid:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(job.pid, signal.SIGKILL)


def _standby(manager: JobManager) -> Path:
    manager.tick()
    assert manager._standby is not None, "an idle manager keeps a trainer ready"
    folder = manager._standby[0]
    wait_until(lambda: (folder / "runner.json").exists(), "the standby runner's record")
    return folder


def test_a_job_on_the_warm_trainer_completes_with_its_exit_code_and_log(managers, tmp_path):
    manager = managers(warm_standby=True)
    folder = _standby(manager)
    runner_pid = manager._standby[1].pid
    job = manager.submit(config_text(tmp_path / "runs", "warm", steps=3), "warm")
    assert manager.get(job.id).pid == runner_pid, "the job took the standby over instead of starting cold"
    done = wait_state(manager, job.id)
    assert (done.state, done.exit_code) == ("completed", 0)
    assert json.loads((done.job_dir / "exit.json").read_text())["exit_code"] == 0, "the exit record is the job's"
    assert "completed at step 3" in manager.log_tail(job.id)
    assert json.loads((done.job_dir / "runner.json").read_text())["needle"] == str(folder)
    # Idle again: a fresh standby; closing the manager ends and removes it, and keeps the used one (the log).
    second = _standby(manager)
    assert second != folder
    proc = manager._standby[1]
    manager.close()
    assert proc.poll() is not None and not second.exists() and folder.exists()


def test_stop_and_a_restarted_ui_reach_the_warm_trainer(managers, tmp_path):
    old = managers(warm_standby=True)
    _standby(old)
    job = old.submit(config_text(tmp_path / "runs", "long", steps=400, step_seconds=0.05), "long")
    wait_event(job.run_dir, "step")
    old.close()  # the UI goes away; the job's trainer keeps training
    new = managers()  # re-attaches by pid and the standby folder's name in the command lines
    assert new.get(job.id).state == "running"
    new.tick()
    assert new.get(job.id).state == "running", "a trainer started on the standby is recognised as alive"
    new.stop(job.id)
    done = wait_state(new, job.id)
    assert (done.state, done.exit_code) == ("stopped", 0), new.log_tail(job.id)


def test_leftover_standbys_of_a_crashed_ui_are_removed(managers, tmp_path):
    crashed = managers(warm_standby=True)
    folder = _standby(crashed)
    pid = crashed._standby[1].pid
    crashed._standby = None  # as if the UI died without closing: its standby is left behind
    managers()  # the next UI
    assert not folder.exists()
    with contextlib.suppress(subprocess.TimeoutExpired, ChildProcessError):
        os.waitpid(pid, 0)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not list((tmp_path / "runs" / ".jobs").glob(f"{STANDBY_PREFIX}*"))


def test_the_real_trainer_waits_for_its_start_and_ends_with_its_ui(tmp_path):
    from trainer.commands.train import wait_for_start

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "owner.json").write_text(json.dumps({"pid": int(gone.stdout)}))
    started = time.monotonic()
    with pytest.raises(SystemExit) as ended:
        wait_for_start(tmp_path)
    assert ended.value.code == 0 and time.monotonic() - started < 30
    (tmp_path / "owner.json").write_text(json.dumps({"pid": os.getpid()}))
    (tmp_path / "go.json").write_text(json.dumps({"resume": True, "cwd": str(tmp_path)}))
    assert wait_for_start(tmp_path) == {"resume": True, "cwd": str(tmp_path)}


def test_a_standby_that_dies_by_itself_is_not_restarted_in_a_loop(managers, tmp_path):
    broken = managers(warm_standby=True, trainer_command=[sys.executable, "-c", "raise SystemExit(3)"])
    broken.tick()
    first = broken._standby[1]
    first.wait(timeout=20)
    for _ in range(5):
        broken.tick()
    assert broken._standby is None, "a standby that cannot start is retried after a pause, not at every tick"
    job = broken.submit(config_text(tmp_path / "runs", "cold"), "cold")
    assert wait_state(broken, job.id).state == "failed", "the job starts cold and reports its own failure"
