"""The UI's job manager (app/jobs.py) driving tests/fake_trainer.py: no torch, a few seconds in all.

Every wait is bounded (a bug fails the test instead of hanging the suite) and nothing asserts timings.
"""

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

from app.job_runner import EXIT_FILE, RUNNER_FILE
from app.jobs import DIED_MESSAGE, JOB_STATES, Job, JobManager, _pid_matches
from trainer.events import read_events

FAKE_TRAINER = Path(__file__).resolve().with_name("fake_trainer.py")
TIMEOUT = 20.0
FINAL = ("completed", "stopped", "failed", "died", "cancelled")


def config_text(runs_dir: Path, name: str, **fake) -> str:
    """A config as the UI writes it (run.output_dir / run.name set) plus the fake trainer's [fake] table."""
    lines = ["[run]", f"name = {json.dumps(name)}", f"output_dir = {json.dumps(str(runs_dir))}", "", "[fake]"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in fake.items()]
    return "\n".join(lines) + "\n"


def wait_until(predicate, what: str, timeout: float = TIMEOUT, tick: JobManager | None = None):
    deadline = time.monotonic() + timeout
    while True:
        if tick is not None:
            tick.tick()
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


def wait_state(manager: JobManager, job_id: str, states=FINAL, *, tick: bool = True) -> Job:
    try:
        wait_until(lambda: manager.get(job_id).state in states, f"job in {states}", tick=manager if tick else None)
    except AssertionError as err:
        job = manager.get(job_id)
        raise AssertionError(f"{err}; job is {job.state}; log:\n{manager.log_tail(job_id)}") from None
    return manager.get(job_id)


def wait_event(run_dir: Path, type: str) -> dict:
    return wait_until(
        lambda: next((e for e in read_events(run_dir) if e["type"] == type), None), f"a {type} event in {run_dir}"
    )


@pytest.fixture
def runs(tmp_path) -> Path:
    return tmp_path / "runs"


@pytest.fixture
def make_manager(runs):
    """JobManagers on ``runs`` with the fake trainer; teardown kills whatever still runs."""
    made: list[JobManager] = []

    def make(**kwargs) -> JobManager:
        kwargs.setdefault("trainer_command", [sys.executable, str(FAKE_TRAINER)])
        manager = JobManager(runs, **kwargs)
        made.append(manager)
        return manager

    yield make
    for manager in made:
        manager.close()
        current = manager.current()
        if current is not None and current.pid:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(current.pid, signal.SIGKILL)
        for proc in manager._procs.values():  # reap our own children: no zombies left behind
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)


def test_app_jobs_import_no_torch():
    code = "import sys, app.jobs, app.job_runner; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_job_completes_in_background_thread(make_manager, runs):
    manager = make_manager()
    manager.start_background(interval=0.05)
    manager.start_background(interval=0.05)  # a second call is harmless
    text = config_text(runs, "first", steps=3)
    job = manager.submit(text, "first")
    assert job.state == "running" and job.started is not None  # nothing else ran: started at once
    assert manager.current().id == job.id
    assert job.run_dir == runs / "first" and job.name == "first"
    assert job.config_path.read_text() == text

    done = wait_state(manager, job.id, tick=False)
    assert (done.state, done.exit_code, done.message) == ("completed", 0, "")
    assert done.ended >= done.started
    assert manager.current() is None and manager.queued() == []
    assert [e["type"] for e in read_events(done.run_dir)][-1] == "finished"
    assert "completed at step 3" in manager.log_tail(job.id)
    record = json.loads((done.config_path.parent / "job.json").read_text())
    assert record["state"] == "completed" and record["exit_code"] == 0
    assert set(JOB_STATES) >= {j.state for j in manager.jobs()}


def test_queue_runs_in_order_and_is_editable(make_manager, runs):
    manager = make_manager()
    first = manager.submit(config_text(runs, "a", steps=40, step_seconds=0.05), "a")
    b, c, d = (manager.submit(config_text(runs, n, steps=1), n) for n in "bcd")
    assert first.state == "running"
    assert [j.state for j in (b, c, d)] == ["queued"] * 3
    ids = [first.id, b.id, c.id, d.id]
    assert ids == sorted(ids) and len(set(ids)) == 4  # time-sortable, unique
    assert [j.id for j in manager.queued()] == [b.id, c.id, d.id]

    manager.move_queued(d.id, -1)
    assert [j.id for j in manager.queued()] == [b.id, d.id, c.id]
    manager.move_queued(b.id, -1)  # already first: stays
    manager.move_queued(b.id, +5)  # clamped to last
    assert [j.id for j in manager.queued()] == [d.id, c.id, b.id]

    # The order is persisted: another manager (a restarted UI) sees the same queue and the running job.
    other = make_manager()
    assert [j.id for j in other.queued()] == [d.id, c.id, b.id]
    assert other.current().id == first.id
    other.close()

    manager.remove_queued(c.id)
    manager.stop(b.id)  # stop on a queued job cancels it
    assert manager.get(b.id).state == "cancelled"
    assert [j.id for j in manager.queued()] == [d.id]
    with pytest.raises(KeyError):
        manager.get(c.id)
    with pytest.raises(ValueError):
        manager.remove_queued(first.id)
    with pytest.raises(ValueError):
        manager.move_queued(b.id, 1)

    done_d = wait_state(manager, d.id)
    done_a = manager.get(first.id)
    assert (done_a.state, done_d.state) == ("completed", "completed")
    assert done_d.started >= done_a.ended  # one job at a time
    assert manager.get(b.id).state == "cancelled" and manager.get(b.id).started is None
    assert [j.id for j in manager.jobs()] == [d.id, b.id, first.id]  # newest first


def test_graceful_stop(make_manager, runs):
    manager = make_manager()
    job = manager.submit(config_text(runs, "long", steps=400, step_seconds=0.05), "long")
    wait_event(job.run_dir, "step")  # the trainer is in its loop (signal handlers installed)
    manager.stop(job.id)
    assert manager.get(job.id).state == "stopping"
    assert (job.run_dir / "STOP").exists()
    done = wait_state(manager, job.id)
    assert (done.state, done.exit_code, done.killed) == ("stopped", 0, False)
    assert read_events(job.run_dir)[-1]["status"] == "stopped"
    manager.stop(job.id)  # stopping a finished job does nothing
    assert manager.get(job.id).state == "stopped"


def test_stop_is_forced_after_grace_period(make_manager, runs):
    manager = make_manager(grace_seconds=1.0)
    job = manager.submit(config_text(runs, "stubborn", mode="ignore_stop", steps=1000), "stubborn")
    wait_event(job.run_dir, "step")
    trainer_pid = wait_until(
        lambda: json.loads((job.config_path.parent / RUNNER_FILE).read_text()).get("trainer_pid")
        if (job.config_path.parent / RUNNER_FILE).exists()
        else None,
        "runner.json",
    )
    manager.stop(job.id)
    done = wait_state(manager, job.id)
    assert (done.state, done.exit_code, done.killed) == ("stopped", -signal.SIGKILL, True)
    assert "killed" in done.message
    wait_until(lambda: not _pid_matches(trainer_pid, str(job.config_path)), "the trainer process to be gone")
    assert not any(e["type"] == "finished" for e in read_events(job.run_dir))


def test_crash_is_failed_with_exit_code_and_traceback(make_manager, runs):
    manager = make_manager()
    job = manager.submit(config_text(runs, "crash", mode="crash"), "crash")
    done = wait_state(manager, job.id)
    assert (done.state, done.exit_code) == ("failed", 3)
    assert done.message == "exit code 3: RuntimeError: fake crash at step 2"
    tail = manager.log_tail(job.id)
    assert "Traceback (most recent call last)" in tail and "RuntimeError: fake crash at step 2" in tail
    assert manager.log_tail(job.id, lines=1) == "RuntimeError: fake crash at step 2"


def test_failed_event_error_becomes_the_message(make_manager, runs):
    manager = make_manager()
    job = manager.submit(config_text(runs, "fail", mode="fail"), "fail")
    done = wait_state(manager, job.id)
    assert (done.state, done.exit_code, done.message) == ("failed", 1, "ValueError: fake failure")


def test_resumed_run_reads_only_its_own_events(make_manager, runs):
    manager = make_manager()
    first = manager.submit(config_text(runs, "same", steps=2), "same")
    assert wait_state(manager, first.id).state == "completed"
    # The earlier session's `finished: completed` must not make a crashed resume look completed.
    again = manager.submit(config_text(runs, "same", mode="crash"), "same", resume=True)
    assert (wait_state(manager, again.id).state, manager.get(again.id).exit_code) == ("failed", 3)
    # Without --resume the trainer refuses the used run folder; its one-line error is the message.
    clash = manager.submit(config_text(runs, "same"), "same")
    done = wait_state(manager, clash.id)
    assert (done.state, done.exit_code) == ("failed", 2)
    assert "already holds a run" in done.message


def test_missing_trainer_command_fails_cleanly(make_manager, runs, tmp_path):
    manager = make_manager(trainer_command=[str(tmp_path / "no-such-trainer")])
    job = manager.submit(config_text(runs, "x"), "x")
    done = wait_state(manager, job.id)
    assert (done.state, done.exit_code) == ("failed", 127)
    assert "could not be started" in done.message
    assert "no-such-trainer" in manager.log_tail(job.id)


def test_reattach_to_running_job_after_ui_restart(make_manager, runs):
    old = make_manager()
    job = old.submit(config_text(runs, "survivor", steps=30, step_seconds=0.05), "survivor")
    wait_event(job.run_dir, "step")
    old.close()  # the UI goes away; the trainer keeps running

    new = make_manager()
    current = new.current()
    assert current is not None and current.id == job.id and current.state == "running"
    queued = new.submit(config_text(runs, "next", steps=1), "next")
    assert queued.state == "queued"  # still one job at a time
    new.start_background(interval=0.05)
    done = wait_state(new, job.id, tick=False)
    assert (done.state, done.exit_code) == ("completed", 0)  # exit code from the runner's exit record
    assert wait_state(new, queued.id, tick=False).state == "completed"


def test_stop_after_reattach(make_manager, runs):
    old = make_manager()
    job = old.submit(config_text(runs, "later", steps=400, step_seconds=0.05), "later")
    wait_event(job.run_dir, "step")
    old.close()
    new = make_manager()
    new.stop(job.id)  # signals by pid: the new manager did not start the process
    done = wait_state(new, job.id)
    assert (done.state, done.exit_code) == ("stopped", 0)


def test_run_that_ended_while_ui_was_down_is_finalised(make_manager, runs):
    old = make_manager()
    job = old.submit(config_text(runs, "quick", steps=2), "quick")
    old.close()  # never ticks again
    wait_until(lambda: (job.config_path.parent / EXIT_FILE).exists(), "the runner's exit record")
    new = make_manager()
    done = new.get(job.id)
    assert (done.state, done.exit_code) == ("completed", 0)


def test_process_gone_without_exit_record_is_died(make_manager, runs):
    old = make_manager()
    job = old.submit(config_text(runs, "doomed", mode="hang"), "doomed")
    wait_event(job.run_dir, "started")
    old.close()
    os.killpg(job.pid, signal.SIGKILL)  # runner and trainer vanish at once: nobody writes an exit record
    old._procs[job.id].wait(timeout=TIMEOUT)  # reap it here (a UI restart would leave that to init)
    # SIGKILL is delivered at once but the orphaned trainer is torn down asynchronously (slowly on a busy
    # machine): until then it still looks alive, which is "a trainer still runs", not this test's case.
    trainer_pid = json.loads((job.config_path.parent / RUNNER_FILE).read_text())["trainer_pid"]
    wait_until(lambda: not _pid_matches(trainer_pid, str(job.config_path)), "the killed trainer to be gone")
    new = make_manager()
    done = new.get(job.id)
    assert (done.state, done.exit_code, done.message) == ("died", None, DIED_MESSAGE)
    assert not (job.config_path.parent / EXIT_FILE).exists()
